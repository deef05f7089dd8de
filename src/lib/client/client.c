/* The client of sgpud's HTTP API (libcurl): target resolution and requests.
 * See include/sgpu/client.h for the contract. */
#include "sgpu/client.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>

#include "sgpu/util.h"

/* Bounds on what is read whole: answers and error bodies. */
#define DEFAULT_MAX_ANSWER ((size_t)64 * 1024 * 1024)
#define MAX_ERROR_BYTES ((size_t)64 * 1024)
#define DEFAULT_TIMEOUT_MS 120000L
#define CONNECT_TIMEOUT_S 10L
/* Bound on the url and admin.key files. */
#define MAX_SMALL_FILE 4096
/* Longest error message taken from an answer body. */
#define MAX_MESSAGE 512

struct sg_client {
  char *url;
  char *key;
  char *key_source;
  char *user_agent;
  bool no_proxy;
  CURL *curl;
  char errbuf[CURL_ERROR_SIZE];
};

static inline void curl_slist_freep(struct curl_slist **l) { curl_slist_free_all(*l); }
static inline void json_decrefp_(json_t **j) { json_decref(*j); }
#define cleanup_slist __attribute__((cleanup(curl_slist_freep)))
#define cleanup_json __attribute__((cleanup(json_decrefp_)))

/* ---- where to connect ---------------------------------------------------------- */

/* Reads dir/name trimmed; NULL when the file is missing, unreadable or empty. */
static char *read_setting(const char *dir, const char *name) {
  cleanup_free char *path = xasprintf("%s/%s", dir, name);
  cleanup_fclose FILE *f = fopen(path, "re");
  if (!f)
    return NULL;
  char data[MAX_SMALL_FILE];
  size_t n = fread(data, 1, sizeof data - 1, f);
  data[n] = '\0';
  char *v = sg_str_trim(data);
  return *v ? xstrdup(v) : NULL;
}

static char *normalize_url(const char *raw) {
  cleanup_free char *copy = xstrdup(raw);
  char *u = sg_str_trim(copy);
  size_t n = strlen(u);
  while (n > 0 && u[n - 1] == '/')
    u[--n] = '\0';
  if (strstr(u, "://"))
    return xstrdup(u);
  return xasprintf("http://%s", u);
}

int sg_client_resolve(const sg_client_flags_t *flags, sg_client_target_t *out, sg_error_t **err) {
  static const sg_client_flags_t none = {0};
  if (!flags)
    flags = &none;
  memset(out, 0, sizeof *out);
  cleanup_free char *dir = flags->data_dir && *flags->data_dir ? xstrdup(flags->data_dir) : sg_default_data_dir();

  cleanup_free char *url = NULL;
  const char *env_url = getenv("SGPU_URL");
  if (flags->url && *flags->url)
    url = xstrdup(flags->url);
  else if (env_url && *env_url)
    url = xstrdup(env_url);
  else
    url = read_setting(dir, "url");
  if (!url)
    return sg_make_error(err, ENOENT,
                         "no server URL: pass --url, set SGPU_URL, or point --data-dir at sgpud's data "
                         "directory (%s/url not found)",
                         dir);

  const char *env_key = getenv("SGPU_API_KEY");
  if (flags->key) {
    out->key = xstrdup(flags->key);
    out->key_source = xstrdup("--key");
  } else if (env_key) {
    out->key = xstrdup(env_key);
    out->key_source = xstrdup("SGPU_API_KEY");
  } else if ((out->key = read_setting(dir, "admin.key"))) {
    out->key_source = xasprintf("%s/admin.key", dir);
  }
  out->url = normalize_url(url);
  out->data_dir = steal_pointer(&dir);
  return 0;
}

void sg_client_target_free(sg_client_target_t *t) {
  free(t->url);
  free(t->key);
  free(t->key_source);
  free(t->data_dir);
  memset(t, 0, sizeof *t);
}

/* ---- the handle ------------------------------------------------------------------ */

sg_client_t *sg_client_new(const char *base_url, const char *key, const char *key_source,
                           const sg_client_options_t *opts, sg_error_t **err) {
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    sg_make_error(err, SG_EUNAVAIL, "cannot initialise libcurl");
    return NULL;
  }
  CURL *h = curl_easy_init();
  if (!h) {
    curl_global_cleanup();
    sg_make_error(err, SG_EUNAVAIL, "cannot initialise libcurl");
    return NULL;
  }
  sg_client_t *c = xcalloc(1, sizeof *c);
  c->curl = h;
  c->url = xstrdup(base_url ? base_url : "");
  c->key = key ? xstrdup(key) : NULL;
  c->key_source = key_source ? xstrdup(key_source) : NULL;
  if (opts) {
    c->user_agent = opts->user_agent ? xstrdup(opts->user_agent) : NULL;
    c->no_proxy = opts->no_proxy;
  }
  return c;
}

sg_client_t *sg_client_open(const sg_client_target_t *t, const sg_client_options_t *opts, sg_error_t **err) {
  return sg_client_new(t->url, t->key, t->key_source, opts, err);
}

void sg_client_free(sg_client_t *c) {
  if (!c)
    return;
  curl_easy_cleanup(c->curl);
  curl_global_cleanup();
  free(c->url);
  free(c->key);
  free(c->key_source);
  free(c->user_agent);
  free(c);
}

const char *sg_client_url(const sg_client_t *c) { return c->url; }

void sg_client_response_free(sg_client_response_t *r) {
  free(r->body);
  json_decref(r->json);
  memset(r, 0, sizeof *r);
}

/* ---- errors from answers ------------------------------------------------------------ */

/* Copies text to out as one line (control characters become spaces), white
 * space trimmed, cut to fit. */
static void one_line(const char *text, size_t len, char *out, size_t outlen) {
  size_t j = 0;
  for (size_t i = 0; i < len && j + 1 < outlen; i++) {
    unsigned char ch = (unsigned char)text[i];
    out[j++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
  }
  out[j] = '\0';
  char *t = sg_str_trim(out);
  memmove(out, t, strlen(t) + 1);
}

/* Fills *err from an answer with status >= 400; returns the negative value. */
static int answer_error(const sg_client_t *c, long status, const char *body, size_t len, sg_error_t **err) {
  char msg[MAX_MESSAGE + 64] = "";
  cleanup_json json_t *j = body && len ? json_loadb(body, len, 0, NULL) : NULL;
  json_t *e = json_object_get(j, "error");
  const char *m = json_string_value(json_object_get(e, "message"));
  if (!m)
    m = json_string_value(e);
  if (m && *m) {
    one_line(m, strlen(m), msg, sizeof msg);
  } else if (body && len) {
    char text[MAX_MESSAGE + 1];
    one_line(body, len, text, sizeof text);
    snprintf(msg, sizeof msg, "HTTP %ld: %s", status, text);
  } else {
    snprintf(msg, sizeof msg, "HTTP %ld", status);
  }
  int code = status == 401 ? EACCES : status == 404 ? SG_ENOTFOUND : status < 500 ? EPERM : EPROTO;
  if (status == 401 && c->key_source)
    return sg_make_error(err, code, "%s (key from %s)", msg, c->key_source);
  if (status == 401)
    return sg_make_error(err, code, "%s (no API key: pass --key, set SGPU_API_KEY, or use --data-dir)", msg);
  return sg_make_error(err, code, "%s", msg);
}

static int transfer_error(const sg_client_t *c, CURLcode rc, sg_error_t **err) {
  const char *why = c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc);
  char text[MAX_MESSAGE + 1];
  one_line(why, strlen(why), text, sizeof text);
  return sg_make_error(err, rc == CURLE_OPERATION_TIMEDOUT ? ETIMEDOUT : ECONNREFUSED, "%s: %s", c->url, text);
}

/* ---- requests ------------------------------------------------------------------------ */

/* Resets the handle (its connections stay open for reuse) and sets what every
 * request shares. Stores in *headers_out the header list (extra appended),
 * which the caller keeps until the transfer is over and then frees. */
static void prepare(sg_client_t *c, const char *method, const char *path, const struct curl_slist *extra,
                    const char *body, size_t body_len, struct curl_slist **headers_out) {
  CURL *h = c->curl;
  curl_easy_reset(h);
  c->errbuf[0] = '\0';
  cleanup_free char *url = xasprintf("%s%s", c->url, path);
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->errbuf);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  if (c->user_agent)
    curl_easy_setopt(h, CURLOPT_USERAGENT, c->user_agent);
  if (c->no_proxy)
    curl_easy_setopt(h, CURLOPT_PROXY, "");
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT_S);
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);

  struct curl_slist *headers = NULL;
  if (c->key) {
    cleanup_free char *auth = xasprintf("Authorization: Bearer %s", c->key);
    headers = curl_slist_append(headers, auth);
  }
  /* The answer to a large body must not wait for a 100 Continue. */
  headers = curl_slist_append(headers, "Expect:");
  for (const struct curl_slist *l = extra; l; l = l->next)
    headers = curl_slist_append(headers, l->data);
  if (!headers)
    abort();
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  *headers_out = headers;

  if (strcmp(method, "HEAD") == 0) {
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  } else if (body) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    if (strcmp(method, "POST") != 0)
      curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  } else if (strcmp(method, "GET") != 0) {
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  }
}

struct whole_ctx {
  sg_strbuf_t buf;
  size_t max;
  bool too_large;
};

static size_t whole_write(char *data, size_t size, size_t n, void *ud) {
  struct whole_ctx *w = ud;
  size_t len = size * n;
  if (w->buf.len + len > w->max) {
    w->too_large = true;
    return 0;
  }
  sg_strbuf_append_n(&w->buf, data, len);
  return len;
}

int sg_client_send(sg_client_t *c, const sg_client_request_t *req, sg_client_response_t *resp, sg_error_t **err) {
  memset(resp, 0, sizeof *resp);
  cleanup_slist struct curl_slist *headers = NULL;
  prepare(c, req->method, req->path, req->headers, req->body, req->body_len, &headers);
  struct whole_ctx w = {.buf = SG_STRBUF_INIT, .max = req->max_bytes ? req->max_bytes : DEFAULT_MAX_ANSWER};
  curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, whole_write);
  curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &w);
  curl_easy_setopt(c->curl, CURLOPT_TIMEOUT_MS, req->timeout_ms > 0 ? req->timeout_ms : DEFAULT_TIMEOUT_MS);
  CURLcode rc = curl_easy_perform(c->curl);
  if (rc != CURLE_OK) {
    sg_strbuf_free(&w.buf);
    if (w.too_large)
      return sg_make_error(err, SG_ETOOLARGE, "%s%s: answer larger than %zu bytes", c->url, req->path, w.max);
    return transfer_error(c, rc, err);
  }
  curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &resp->status);
  resp->len = w.buf.len;
  resp->body = sg_strbuf_steal(&w.buf);
  resp->json = resp->len ? json_loadb(resp->body, resp->len, 0, NULL) : NULL;
  return 0;
}

int sg_client_call(sg_client_t *c, const char *method, const char *path, json_t *body, sg_client_response_t *resp,
                   sg_error_t **err) {
  memset(resp, 0, sizeof *resp);
  cleanup_free char *payload = body ? json_dumps(body, JSON_COMPACT) : NULL;
  if (body && !payload)
    abort();
  cleanup_slist struct curl_slist *extra = NULL;
  if (payload)
    extra = curl_slist_append(NULL, "Content-Type: application/json");
  extra = curl_slist_append(extra, "Accept: application/json");
  if (!extra)
    abort();
  sg_client_request_t req = {
      .method = method,
      .path = path,
      .body = payload,
      .body_len = payload ? strlen(payload) : 0,
      .headers = extra,
  };
  int r = sg_client_send(c, &req, resp, err);
  if (r < 0)
    return r;
  if (resp->status >= 400) {
    r = answer_error(c, resp->status, resp->body, resp->len, err);
    sg_client_response_free(resp);
    return r;
  }
  return 0;
}

/* ---- streamed requests ----------------------------------------------------------------- */

struct stream_ctx {
  sg_client_t *c;
  sg_client_stream_t *s;
  bool checked; /* the status was looked at */
  bool failed;  /* status >= 400: the body is collected in err */
  bool stopped; /* on_data asked to stop */
  sg_strbuf_t err;
};

static size_t stream_write(char *data, size_t size, size_t n, void *ud) {
  struct stream_ctx *x = ud;
  size_t len = size * n;
  if (!x->checked) {
    long status = 0;
    curl_easy_getinfo(x->c->curl, CURLINFO_RESPONSE_CODE, &status);
    x->s->status = status;
    x->failed = status >= 400;
    x->checked = true;
  }
  if (x->failed) {
    if (x->err.len < MAX_ERROR_BYTES)
      sg_strbuf_append_n(&x->err, data, len < MAX_ERROR_BYTES - x->err.len ? len : MAX_ERROR_BYTES - x->err.len);
    return len;
  }
  if (len && x->s->on_data(data, len, x->s->ud) != 0) {
    x->stopped = true;
    return 0;
  }
  return len;
}

static size_t stream_header(char *data, size_t size, size_t n, void *ud) {
  struct stream_ctx *x = ud;
  size_t len = size * n, l = len;
  while (l > 0 && (data[l - 1] == '\n' || data[l - 1] == '\r'))
    l--;
  if (l > 0 && x->s->on_header)
    x->s->on_header(data, l, x->s->ud);
  return len;
}

int sg_client_stream(sg_client_t *c, sg_client_stream_t *s, sg_error_t **err) {
  s->status = 0;
  cleanup_slist struct curl_slist *headers = NULL;
  prepare(c, s->method, s->path, s->headers, s->body, s->body_len, &headers);
  struct stream_ctx x = {.c = c, .s = s, .err = SG_STRBUF_INIT};
  curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, stream_write);
  curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &x);
  curl_easy_setopt(c->curl, CURLOPT_HEADERFUNCTION, stream_header);
  curl_easy_setopt(c->curl, CURLOPT_HEADERDATA, &x);
  curl_easy_setopt(c->curl, CURLOPT_TIMEOUT, s->timeout_s > 0 ? s->timeout_s : 0L);
  /* Hand data over as it comes: no decoding that could hold it back. */
  curl_easy_setopt(c->curl, CURLOPT_HTTP_CONTENT_DECODING, 0L);
  CURLcode rc = curl_easy_perform(c->curl);
  if (s->status == 0)
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &s->status);

  int ret = 0;
  if (x.stopped)
    ret = 0;
  else if (s->status >= 400 && (rc == CURLE_OK || x.failed))
    ret = answer_error(c, s->status, x.err.s, x.err.len, err);
  else if (rc != CURLE_OK)
    ret = transfer_error(c, rc, err);
  sg_strbuf_free(&x.err);
  return ret;
}

char *sg_client_escape(const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  size_t n = strlen(s);
  char *out = xmalloc(n * 3 + 1), *o = out;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (isalnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~') {
      *o++ = (char)*p;
    } else {
      *o++ = '%';
      *o++ = hex[*p >> 4];
      *o++ = hex[*p & 15];
    }
  }
  *o = '\0';
  return out;
}
