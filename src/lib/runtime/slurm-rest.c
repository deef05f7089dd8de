/* A blocking client of slurmrestd: JSON over HTTP with libcurl, one easy
 * handle per call (pool threads), authenticated with Slurm's JWT headers
 * X-SLURM-USER-NAME and X-SLURM-USER-TOKEN. */
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <time.h>

#include "slurm-internal.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define CALL_TIMEOUT_S 30L
#define MAX_REPLY (64u << 20)
#define TOKEN_LIFETIME_S 300

struct sg_slurmrest {
  char *url, *user, *token, *api;
  unsigned char *key;
  size_t key_len;
};

static char *b64url(const unsigned char *data, size_t n) {
  static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  char *out = xmalloc(n * 4 / 3 + 4);
  size_t o = 0;
  for (size_t i = 0; i < n; i += 3) {
    unsigned v = (unsigned)data[i] << 16 | (i + 1 < n ? (unsigned)data[i + 1] << 8 : 0) | (i + 2 < n ? data[i + 2] : 0);
    out[o++] = tbl[(v >> 18) & 63];
    out[o++] = tbl[(v >> 12) & 63];
    if (i + 1 < n)
      out[o++] = tbl[(v >> 6) & 63];
    if (i + 2 < n)
      out[o++] = tbl[v & 63];
  }
  out[o] = '\0';
  return out;
}

char *sg_slurmrest_sign(const unsigned char *key, size_t key_len, const char *user, long lifetime_s) {
  long now = (long)time(NULL);
  cleanup_free char *payload_json = NULL;
  json_t *p = json_pack("{s:I, s:I, s:s}", "exp", (json_int_t)(now + lifetime_s), "iat", (json_int_t)now, "sun", user);
  payload_json = json_dumps(p, JSON_COMPACT);
  json_decref(p);
  static const char header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
  cleanup_free char *h = b64url((const unsigned char *)header, strlen(header));
  cleanup_free char *pl = b64url((const unsigned char *)payload_json, strlen(payload_json));
  cleanup_free char *signing = xasprintf("%s.%s", h, pl);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)signing, strlen(signing), mac, &mac_len);
  cleanup_free char *sig = b64url(mac, mac_len);
  return xasprintf("%s.%s", signing, sig);
}

typedef struct reply_buf {
  char *data;
  size_t len;
  bool too_big;
} reply_buf_t;

static size_t on_data(char *ptr, size_t size, size_t n, void *ud) {
  reply_buf_t *b = ud;
  size_t add = size * n;
  if (b->len + add > MAX_REPLY) {
    b->too_big = true;
    return 0;
  }
  b->data = xrealloc(b->data, b->len + add + 1);
  memcpy(b->data + b->len, ptr, add);
  b->len += add;
  b->data[b->len] = '\0';
  return add;
}

/* The first entry of a reply's "errors", or NULL. */
static char *first_error(json_t *reply) {
  json_t *e = json_array_get(json_object_get(reply, "errors"), 0);
  if (!e)
    return NULL;
  const char *msg = json_string_value(json_object_get(e, "error"));
  const char *desc = json_string_value(json_object_get(e, "description"));
  json_int_t num = json_integer_value(json_object_get(e, "error_number"));
  if (msg && *msg)
    return desc && *desc && strcmp(desc, msg) ? xasprintf("%s (%s, error %lld)", msg, desc, (long long)num)
                                              : xasprintf("%s (error %lld)", msg, (long long)num);
  return desc ? xasprintf("%s (error %lld)", desc, (long long)num) : NULL;
}

static long call_url(sg_slurmrest_t *c, const char *method, const char *url, json_t *body, json_t **reply,
                     char **error) {
  if (reply)
    *reply = NULL;
  if (error)
    *error = NULL;
  CURL *h = curl_easy_init();
  if (!h) {
    if (error)
      *error = xstrdup("cannot create an HTTP handle");
    return -1;
  }
  cleanup_free char *token =
      c->token ? xstrdup(c->token) : sg_slurmrest_sign(c->key, c->key_len, c->user, TOKEN_LIFETIME_S);
  cleanup_free char *hu = xasprintf("X-SLURM-USER-NAME: %s", c->user);
  cleanup_free char *ht = xasprintf("X-SLURM-USER-TOKEN: %s", token);
  struct curl_slist *hdrs = NULL;
  hdrs = curl_slist_append(hdrs, hu);
  hdrs = curl_slist_append(hdrs, ht);
  hdrs = curl_slist_append(hdrs, "Accept: application/json");
  cleanup_free char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
  if (text)
    hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
  reply_buf_t b = {0};
  char errbuf[CURL_ERROR_SIZE] = "";
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_TIMEOUT, CALL_TIMEOUT_S);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
  if (text) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, text);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(text));
  }
  CURLcode rc = curl_easy_perform(h);
  long status = -1;
  if (rc == CURLE_OK)
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  else if (error)
    *error = xasprintf("slurmrestd %s: %s", url,
                       b.too_big ? "answer too large"
                       : *errbuf ? errbuf
                                 : curl_easy_strerror(rc));
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(h);
  explicit_bzero(token, strlen(token));
  json_t *j = b.data ? json_loadb(b.data, b.len, 0, NULL) : NULL;
  free(b.data);
  if (status >= 0 && (status < 200 || status > 299) && error) {
    char *e = first_error(j);
    *error = e ? e : xasprintf("slurmrestd answered HTTP %ld to %s %s", status, method, url);
  }
  if (reply)
    *reply = j;
  else
    json_decref(j);
  return status;
}

long sg_slurmrest_call(sg_slurmrest_t *c, const char *method, const char *path, json_t *body, json_t **reply,
                       char **error) {
  cleanup_free char *url = xasprintf("%s/slurm/%s/%s", c->url, c->api, path);
  return call_url(c, method, url, body, reply, error);
}

const char *sg_slurmrest_api(const sg_slurmrest_t *c) { return c->api; }

/* "v0.0.38" -> 38 (and the like) for ordering; -1 when not one. */
static long api_rank(const char *v, size_t n) {
  int a, b, cc, used = 0;
  cleanup_free char *s = xstrndup(v, n);
  if (sscanf(s, "v%d.%d.%d%n", &a, &b, &cc, &used) != 3 || (size_t)used != n)
    return -1;
  return ((long)a * 1000 + b) * 1000 + cc;
}

sg_slurmrest_t *sg_slurmrest_new(const char *url, const char *user, const char *token, const char *key_file,
                                 const char *api, sg_error_t **err) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  sg_slurmrest_t *c = xcalloc(1, sizeof(*c));
  c->url = xstrdup(url);
  size_t n = strlen(c->url);
  while (n > 0 && c->url[n - 1] == '/')
    c->url[--n] = '\0';
  c->user = xstrdup(user);
  if (token) {
    c->token = xstrdup(token);
  } else {
    size_t len = 0;
    char *key = sg_read_file(key_file, 1 << 16, &len);
    if (!key || len == 0) {
      sg_make_error(err, errno ? errno : EINVAL, "cannot read the JWT key %s", key_file);
      free(key);
      sg_slurmrest_free(c);
      return NULL;
    }
    c->key = (unsigned char *)key;
    c->key_len = len;
  }
  if (api) {
    c->api = xstrdup(api);
    return c;
  }
  cleanup_free char *doc_url = xasprintf("%s/openapi/v3", c->url);
  json_t *doc = NULL;
  cleanup_free char *why = NULL;
  long st = call_url(c, "GET", doc_url, NULL, &doc, &why);
  const char *path;
  json_t *v;
  long best = -1;
  json_object_foreach(json_object_get(doc, "paths"), path, v) {
    if (strncmp(path, "/slurm/", 7) || !strstr(path, "/job/submit"))
      continue;
    const char *ver = path + 7;
    size_t vn = strcspn(ver, "/");
    long r = api_rank(ver, vn);
    if (r > best) {
      best = r;
      free(c->api);
      c->api = xstrndup(ver, vn);
    }
  }
  json_decref(doc);
  if (!c->api) {
    sg_make_error(err, EPROTO, "slurmrestd at %s offers no job submission API: %s", c->url,
                  why      ? why
                  : st < 0 ? "no answer"
                           : "not in its OpenAPI document");
    sg_slurmrest_free(c);
    return NULL;
  }
  return c;
}

void sg_slurmrest_free(sg_slurmrest_t *c) {
  if (!c)
    return;
  if (c->key)
    explicit_bzero(c->key, c->key_len);
  if (c->token)
    explicit_bzero(c->token, strlen(c->token));
  free(c->key);
  free(c->token);
  free(c->url);
  free(c->user);
  free(c->api);
  free(c);
}

/* ---- the runtime's backend over slurmrestd ---- */

typedef struct rest_backend {
  sg_slurm_backend_t be;
  sg_slurmrest_t *c;
} rest_backend_t;

static sg_slurmrest_t *client(sg_slurm_backend_t *be) { return ((rest_backend_t *)be)->c; }

static bool ok(long st) { return st >= 200 && st <= 299; }

/* Slurm's time format ("M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S") in
 * whole minutes, rounded up; -1 when not one. */
static long time_minutes(const char *t) {
  long d = 0, v[3] = {0, 0, 0};
  int n = 0;
  const char *p = t;
  const char *dash = strchr(t, '-');
  if (dash) {
    d = strtol(t, NULL, 10);
    p = dash + 1;
  }
  for (char *end; n < 3; n++) {
    v[n] = strtol(p, &end, 10);
    if (end == p)
      return -1;
    p = end;
    if (*p != ':')
      break;
    p++;
  }
  if (*p || n > 2)
    return -1;
  long secs;
  if (dash) /* D-H, D-H:M, D-H:M:S */
    secs = ((d * 24 + v[0]) * 60 + (n >= 1 ? v[1] : 0)) * 60 + (n >= 2 ? v[2] : 0);
  else if (n == 0) /* M */
    secs = v[0] * 60;
  else if (n == 1) /* M:S */
    secs = v[0] * 60 + v[1];
  else /* H:M:S */
    secs = (v[0] * 60 + v[1]) * 60 + v[2];
  return (secs + 59) / 60;
}

/* The job's properties as the command backend gives them to sbatch:
 * sgpud's environment (sbatch's --export=ALL) and the same options. */
static json_t *job_json(const sg_slurm_submit_t *s) {
  extern char **environ;
  json_t *env = json_object();
  for (char **e = environ; e && *e; e++) {
    const char *eq = strchr(*e, '=');
    if (!eq || eq == *e)
      continue;
    cleanup_free char *k = xstrndup(*e, (size_t)(eq - *e));
    json_object_set_new(env, k, json_string(eq + 1));
  }
  if (!json_object_get(env, "PATH"))
    json_object_set_new(env, "PATH", json_string("/usr/local/bin:/usr/bin:/bin"));
  json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:b, s:[i, i], s:i, s:o}", "name", s->name, "comment", s->comment,
                        "standard_output", s->out_path, "standard_error", s->err_path, "current_working_directory",
                        s->dir, "requeue", 0, "nodes", 1, 1, "tasks", 1, "environment", env);
  if (s->gres)
    json_object_set_new(j, "gres", json_string(s->gres));
  if (s->partition)
    json_object_set_new(j, "partition", json_string(s->partition));
  if (s->account)
    json_object_set_new(j, "account", json_string(s->account));
  if (s->time_limit && time_minutes(s->time_limit) > 0)
    json_object_set_new(j, "time_limit", json_integer(time_minutes(s->time_limit)));
  return j;
}

static int rest_submit(sg_slurm_backend_t *be, const sg_slurm_submit_t *s, char **job_id, char **error) {
  json_t *body = json_pack("{s:s, s:o}", "script", s->script, "job", job_json(s));
  json_t *reply = NULL;
  cleanup_free char *why = NULL;
  long st = sg_slurmrest_call(client(be), "POST", "job/submit", body, &reply, &why);
  json_decref(body);
  json_int_t id = json_integer_value(json_object_get(reply, "job_id"));
  json_decref(reply);
  if (ok(st) && id > 0) {
    *job_id = xasprintf("%lld", (long long)id);
    return 0;
  }
  *error = xasprintf("slurmrestd refused the job: %s", why ? why : "no job id in its answer");
  return -1;
}

/* DELETE job/ID, with SIGTERM when term. */
static int rest_cancel(sg_slurm_backend_t *be, const char *job_id, bool term, char **error) {
  cleanup_free char *path = xasprintf("job/%s%s", job_id, term ? "?signal=SIGTERM" : "");
  char *why = NULL;
  long st = sg_slurmrest_call(client(be), "DELETE", path, NULL, NULL, &why);
  if (ok(st)) {
    free(why);
    return 0;
  }
  if (error)
    *error = why ? why : xstrdup(st < 0 ? "no answer" : "refused");
  else
    free(why);
  return -1;
}

/* Slurm's wait status of a job as "CODE:SIGNAL", as squeue shows it. */
static void exit_code_text(json_int_t st, char *out, size_t len) {
  snprintf(out, len, "%d:%d", (int)((st >> 8) & 0xff), (int)(st & 0x7f));
}

/* One job as slurmrestd describes it, into it. */
static void job_info(json_t *job, sg_slurm_job_info_t *it) {
  const char *state = json_string_value(json_object_get(job, "job_state"));
  const char *reason = json_string_value(json_object_get(job, "state_reason"));
  const char *nodes = json_string_value(json_object_get(job, "nodes"));
  it->seen = true;
  sg_slurm_copy(it->state, sizeof(it->state), state ? state : "", state ? strlen(state) : 0);
  sg_slurm_copy(it->reason, sizeof(it->reason), reason ? reason : "None", reason ? strlen(reason) : 4);
  sg_slurm_copy(it->node, sizeof(it->node), nodes ? nodes : "", nodes ? strlen(nodes) : 0);
  json_int_t start = json_integer_value(json_object_get(job, "start_time"));
  json_int_t end = json_integer_value(json_object_get(job, "end_time"));
  it->start_wall = strcmp(it->state, "PENDING") && start > 0 ? (int64_t)start * 1000 : 0;
  it->end_wall = end > 0 ? (int64_t)end * 1000 : 0;
  exit_code_text(json_integer_value(json_object_get(job, "exit_code")), it->exit_code, sizeof(it->exit_code));
}

/* GET job/ID for each job: the answer counts when any job's did. */
static bool rest_query(sg_slurm_backend_t *be, sg_slurm_job_info_t *jobs, size_t n, char **error) {
  bool answered = false;
  for (size_t i = 0; i < n; i++) {
    sg_slurm_job_info_t *it = &jobs[i];
    cleanup_free char *path = xasprintf("job/%s", it->job_id);
    json_t *reply = NULL;
    cleanup_free char *why = NULL;
    long st = sg_slurmrest_call(client(be), "GET", path, NULL, &reply, &why);
    json_t *job = json_array_get(json_object_get(reply, "jobs"), 0);
    if (ok(st) && job) {
      answered = true;
      job_info(job, it);
    } else if (st > 0 && why && strstr(why, "Invalid job id")) {
      answered = true; /* gone from Slurm */
    } else if (!*error) {
      *error = xasprintf("slurmrestd: job %s: %s", it->job_id, why ? why : "no answer");
    }
    json_decref(reply);
  }
  return answered;
}

static bool rest_nodes(sg_slurm_backend_t *be, sg_runtime_node_t **list, size_t *count) {
  json_t *reply = NULL;
  long st = sg_slurmrest_call(client(be), "GET", "nodes", NULL, &reply, NULL);
  json_t *nodes = json_object_get(reply, "nodes");
  if (!ok(st) || !json_is_array(nodes)) {
    json_decref(reply);
    return false;
  }
  size_t i;
  json_t *x;
  json_array_foreach(nodes, i, x) {
    sg_runtime_node_t n = {0};
    const char *name = json_string_value(json_object_get(x, "name"));
    if (!name)
      continue;
    snprintf(n.name, sizeof(n.name), "%s", name);
    json_t *state = json_object_get(x, "state");
    snprintf(n.state, sizeof(n.state), "%s", json_is_string(state) ? json_string_value(state) : "");
    for (char *c = n.state; *c; c++)
      *c = (char)toupper((unsigned char)*c);
    json_t *parts = json_object_get(x, "partitions");
    size_t k;
    json_t *p;
    json_array_foreach(parts, k, p) {
      size_t used = strlen(n.partitions);
      snprintf(n.partitions + used, sizeof(n.partitions) - used, "%s%s", k ? "," : "",
               json_string_value(p) ? json_string_value(p) : "");
    }
    const char *g = json_string_value(json_object_get(x, "gres"));
    sg_slurm_parse_gres(g ? g : "", n.gpu_type, sizeof(n.gpu_type), &n.gpus_total);
    g = json_string_value(json_object_get(x, "gres_used"));
    sg_slurm_parse_gres(g ? g : "", NULL, 0, &n.gpus_used);
    *list = xrealloc(*list, (*count + 1) * sizeof(**list));
    (*list)[(*count)++] = n;
  }
  json_decref(reply);
  return true;
}

/* GET jobs: every job slurmrestd knows that has not ended. */
static bool rest_list(sg_slurm_backend_t *be, sg_slurm_listed_t **out, size_t *count) {
  json_t *reply = NULL;
  long st = sg_slurmrest_call(client(be), "GET", "jobs", NULL, &reply, NULL);
  json_t *jobs = json_object_get(reply, "jobs");
  if (!ok(st) || !json_is_array(jobs)) {
    json_decref(reply);
    return false;
  }
  size_t i;
  json_t *j;
  json_array_foreach(jobs, i, j) {
    const char *state = json_string_value(json_object_get(j, "job_state"));
    const char *name = json_string_value(json_object_get(j, "name"));
    const char *comment = json_string_value(json_object_get(j, "comment"));
    if (!state || sg_slurm_ended_state(state))
      continue;
    json_int_t start = json_integer_value(json_object_get(j, "start_time"));
    *out = xrealloc(*out, (*count + 1) * sizeof(**out));
    (*out)[(*count)++] = (sg_slurm_listed_t){
        xasprintf("%lld", (long long)json_integer_value(json_object_get(j, "job_id"))), xstrdup(state),
        xstrdup(name ? name : ""), xstrdup(comment ? comment : ""), start > 0 ? (int64_t)start * 1000 : 0};
  }
  json_decref(reply);
  return true;
}

static void rest_free(sg_slurm_backend_t *be) {
  sg_slurmrest_free(client(be));
  free(be);
}

static const sg_slurm_backend_ops_t rest_ops = {"slurmrestd", rest_submit, rest_cancel, rest_query,
                                                rest_nodes,   rest_list,   rest_free};

sg_slurm_backend_t *sg_slurm_rest_new(const char *url, const char *user, const char *token, const char *key_file,
                                      const char *api, sg_error_t **err) {
  cleanup_error sg_error_t *rerr = NULL;
  sg_slurmrest_t *c = sg_slurmrest_new(url, user, token, key_file, api, &rerr);
  if (!c) {
    sg_make_error(err, rerr->status, "slurmrestd cannot be used: %s", rerr->message);
    return NULL;
  }
  rest_backend_t *r = xcalloc(1, sizeof(*r));
  r->be.ops = &rest_ops;
  r->c = c;
  sg_info("slurm: jobs through slurmrestd at %s (API %s) as %s", url, sg_slurmrest_api(c), user);
  return &r->be;
}
