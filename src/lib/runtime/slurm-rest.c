/* A blocking client of slurmrestd: JSON over HTTP with libcurl, one easy
 * handle per call (pool threads), authenticated with Slurm's JWT headers
 * X-SLURM-USER-NAME and X-SLURM-USER-TOKEN. */
#include <curl/curl.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <time.h>

#include "slurm-internal.h"
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
