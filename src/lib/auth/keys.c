/* API keys: the table on the loop, the router's auth hook, the per-key
 * counters. See keys.h. */
#include <errno.h>
#include <event2/event.h>
#include <math.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "auth/keys.h"
#include "sgpu/keys-store.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define FLUSH_DELAY_MS 2000 /* last_used times are written at most this late */

typedef struct key {
  char *name;
  char prefix[SG_KEY_PREFIX_MAX];
  unsigned char hash[SG_KEY_HASH_LEN];
  unsigned scopes;
  char **endpoints; /* NULL-terminated; NULL: every endpoint */
  size_t n_endpoints;
  int64_t created_ms, last_used_ms, expires_ms;
  double rate, burst; /* 0: no limit */
  sg_bucket_t bucket;
  bool dirty; /* last_used_ms not yet written */
  uint64_t requests, rate_limited;
  uint64_t serial;      /* the requests' principal (sg_http_set_principal) */
  struct event *expiry; /* ends its open requests when it expires */
  struct sg_keys *K;
} api_key_t;

struct sg_keys {
  sg_daemon_t *d;
  api_key_t **keys;
  size_t n, cap;
  uint64_t serials; /* the last one given */
  unsigned char admin_hash[SG_KEY_HASH_LEN];
  struct event *flush;
};

/* ---- pure pieces ---- */

void sg_bucket_init(sg_bucket_t *b, double rate, double burst, int64_t now_ms) {
  b->rate = rate;
  b->burst = burst;
  b->tokens = burst;
  b->last_ms = now_ms;
}

int64_t sg_bucket_take(sg_bucket_t *b, int64_t now_ms) {
  if (now_ms > b->last_ms) {
    b->tokens += (double)(now_ms - b->last_ms) * b->rate / 1000.0;
    if (b->tokens > b->burst)
      b->tokens = b->burst;
    b->last_ms = now_ms;
  }
  if (b->tokens >= 1.0) {
    b->tokens -= 1.0;
    return 0;
  }
  double wait_s = (1.0 - b->tokens) / b->rate;
  int64_t s = (int64_t)ceil(wait_s);
  return s < 1 ? 1 : s;
}

int sg_key_check(unsigned scopes, char *const *endpoints, size_t n, const sg_route_t *rt, const char *endpoint,
                 char **why) {
  if (!rt)
    return 0;
  if (!sg_scope_grants(scopes, rt->scope)) {
    sg_strbuf_t b = SG_STRBUF_INIT;
    sg_strbuf_append(&b, "this route needs an API key with scope ");
    bool any = false;
    for (unsigned bit = SG_SCOPE_DEPLOY; bit <= SG_SCOPE_READ; bit <<= 1) {
      if (!(rt->scope & bit))
        continue;
      char name[16];
      sg_strbuf_appendf(&b, "%s\"%s\"", any ? " or " : "", sg_scope_str(bit, name, sizeof(name)));
      any = true;
    }
    sg_strbuf_appendf(&b, "%s\"admin\"", any ? " or " : "");
    *why = sg_strbuf_steal(&b);
    return -1;
  }
  if (n == 0)
    return 0;
  if (endpoint) {
    for (size_t i = 0; i < n; i++)
      if (!strcmp(endpoints[i], endpoint))
        return 0;
    *why = xasprintf("this API key is limited to other endpoints than \"%s\"", endpoint);
    return -1;
  }
  if (rt->flags & SG_ROUTE_LISTS_ENDPOINTS)
    return 0;
  *why = xstrdup("this API key is limited to some endpoints: only routes about one of them are open to it");
  return -1;
}

/* ---- the table ---- */

void sg_key_hash(const char *s, size_t len, unsigned char out[SG_KEY_HASH_LEN]) {
  unsigned int n = 0;
  EVP_Digest(s, len, out, &n, EVP_sha256(), NULL);
}

static void key_free(api_key_t *k) {
  if (!k)
    return;
  if (k->expiry)
    event_free(k->expiry);
  free(k->name);
  sg_strv_free(k->endpoints);
  free(k);
}

/* The key whose hash is h: every key is compared, each in constant time. */
static api_key_t *find_hash(struct sg_keys *K, const unsigned char h[SG_KEY_HASH_LEN]) {
  api_key_t *found = NULL;
  for (size_t i = 0; i < K->n; i++)
    if (CRYPTO_memcmp(K->keys[i]->hash, h, SG_KEY_HASH_LEN) == 0)
      found = K->keys[i];
  return found;
}

static api_key_t *find_name(struct sg_keys *K, const char *name, size_t *at) {
  for (size_t i = 0; i < K->n; i++)
    if (!strcmp(K->keys[i]->name, name)) {
      if (at)
        *at = i;
      return K->keys[i];
    }
  return NULL;
}

/* Ends the requests made with k that are still open (a log follow, a
 * stream, a long wait), except keep; returns how many. */
static size_t end_requests(struct sg_keys *K, api_key_t *k, const sg_http_req_t *keep) {
  return sg_http_server_end_principal(K->d->http, k->serial, keep);
}

#define EXPIRY_RECHECK_MS (3600 * 1000) /* the wall clock may move under a long timer */

static void arm_expiry(api_key_t *k);

static void expiry_cb(evutil_socket_t fd, short what, void *arg) {
  api_key_t *k = arg;
  if (sg_wall_ms() < k->expires_ms) {
    arm_expiry(k);
    return;
  }
  size_t n = end_requests(k->K, k, NULL);
  sg_info("API key %s expired%s", k->name, n ? "; its open requests were ended" : "");
}

static void arm_expiry(api_key_t *k) {
  int64_t left = k->expires_ms - sg_wall_ms();
  if (left < 0)
    left = 0;
  if (left > EXPIRY_RECHECK_MS)
    left = EXPIRY_RECHECK_MS;
  struct timeval tv = {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
  evtimer_add(k->expiry, &tv);
}

static void add_key(struct sg_keys *K, api_key_t *k) {
  if (K->n == K->cap) {
    K->cap = K->cap ? K->cap * 2 : 8;
    K->keys = xrealloc(K->keys, K->cap * sizeof(*K->keys));
  }
  K->keys[K->n++] = k;
  k->K = K;
  k->serial = ++K->serials;
  if (k->expires_ms && sg_wall_ms() < k->expires_ms) {
    k->expiry = evtimer_new(K->d->base, expiry_cb, k);
    arm_expiry(k);
  }
}

/* "read,invoke" -> bits; 0 when a name is unknown. */
static unsigned scopes_parse(const char *list) {
  unsigned bits = 0;
  cleanup_free char *copy = xstrdup(list);
  char *save = NULL;
  for (char *s = strtok_r(copy, ",|", &save); s; s = strtok_r(NULL, ",|", &save)) {
    unsigned b = sg_scope_parse(s);
    if (!b)
      return 0;
    bits |= b;
  }
  return bits;
}

static json_t *scopes_json(unsigned bits) {
  json_t *a = json_array();
  for (unsigned bit = SG_SCOPE_ADMIN; bit <= SG_SCOPE_READ; bit <<= 1) {
    char name[16];
    if (bits & bit)
      json_array_append_new(a, json_string(sg_scope_str(bit, name, sizeof(name))));
  }
  return a;
}

/* A key from a record (the endpoints a JSON array); NULL when malformed. */
static api_key_t *key_from_record(const sg_key_record_t *r) {
  api_key_t *k = xcalloc(1, sizeof(*k));
  k->name = xstrdup(r->name);
  snprintf(k->prefix, sizeof(k->prefix), "%s", r->prefix ? r->prefix : "");
  memcpy(k->hash, r->hash, SG_KEY_HASH_LEN);
  k->scopes = r->scopes ? scopes_parse(r->scopes) : 0;
  k->created_ms = r->created_ms;
  k->last_used_ms = r->last_used_ms;
  k->expires_ms = r->expires_ms;
  k->rate = r->rate;
  k->burst = r->burst;
  if (k->rate > 0)
    sg_bucket_init(&k->bucket, k->rate, k->burst, sg_now_ms());
  if (r->endpoints) {
    cleanup_json json_t *a = json_loads(r->endpoints, 0, NULL);
    if (!json_is_array(a)) {
      key_free(k);
      return NULL;
    }
    k->endpoints = xcalloc(json_array_size(a) + 1, sizeof(char *));
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) {
      if (json_is_string(v))
        k->endpoints[k->n_endpoints++] = xstrdup(json_string_value(v));
    }
  }
  if (!k->scopes) {
    key_free(k);
    return NULL;
  }
  return k;
}

static void load_key(void *ud, const sg_key_record_t *r) {
  struct sg_keys *K = ud;
  api_key_t *k = key_from_record(r);
  if (!k) {
    sg_errlog("API key %s in the store is malformed, skipped", r->name);
    return;
  }
  add_key(K, k);
}

int sg_keys_init(sg_daemon_t *d, sg_error_t **err) {
  struct sg_keys *K = xcalloc(1, sizeof(*K));
  K->d = d;
  d->keys = K;
  sg_key_hash(d->api_key, strlen(d->api_key), K->admin_hash);
  return sg_store_key_load(d->store, load_key, K, err);
}

void sg_keys_free(sg_daemon_t *d) {
  struct sg_keys *K = d->keys;
  if (!K)
    return;
  for (size_t i = 0; i < K->n; i++)
    key_free(K->keys[i]);
  free(K->keys);
  if (K->flush)
    event_free(K->flush);
  OPENSSL_cleanse(K->admin_hash, sizeof(K->admin_hash));
  free(K);
  d->keys = NULL;
}

/* ---- last_used, written in batches off the loop ---- */

typedef struct touch_job {
  char **names;
  int64_t *ms;
  size_t n;
} touch_job_t;

static void touch_work(sg_store_t *store, void *data) {
  touch_job_t *j = data;
  cleanup_error sg_error_t *err = NULL;
  if (sg_store_key_touch(store, j->names, j->ms, j->n, &err) < 0)
    sg_warn("last use of API keys not recorded: %s", err->message);
}

static void touch_done(void *data) {
  touch_job_t *j = data;
  for (size_t i = 0; i < j->n; i++)
    free(j->names[i]);
  free(j->names);
  free(j->ms);
  free(j);
}

void sg_keys_flush(sg_daemon_t *d) {
  struct sg_keys *K = d->keys;
  if (!K || !d->store_thread)
    return;
  touch_job_t *j = xcalloc(1, sizeof(*j));
  for (size_t i = 0; i < K->n; i++) {
    api_key_t *k = K->keys[i];
    if (!k->dirty)
      continue;
    k->dirty = false;
    j->names = xrealloc(j->names, (j->n + 1) * sizeof(*j->names));
    j->ms = xrealloc(j->ms, (j->n + 1) * sizeof(*j->ms));
    j->names[j->n] = xstrdup(k->name);
    j->ms[j->n++] = k->last_used_ms;
  }
  if (j->n == 0) {
    touch_done(j);
    return;
  }
  sg_store_thread_submit(d->store_thread, touch_work, touch_done, j);
}

static void flush_cb(evutil_socket_t fd, short what, void *arg) { sg_keys_flush(arg); }

static void touched(sg_daemon_t *d, api_key_t *k) {
  k->last_used_ms = sg_wall_ms();
  k->requests++;
  if (k->dirty)
    return;
  k->dirty = true;
  struct sg_keys *K = d->keys;
  if (!d->base)
    return;
  if (!K->flush)
    K->flush = evtimer_new(d->base, flush_cb, d);
  if (!evtimer_pending(K->flush, NULL)) {
    struct timeval tv = {FLUSH_DELAY_MS / 1000, (FLUSH_DELAY_MS % 1000) * 1000};
    evtimer_add(K->flush, &tv);
  }
}

/* ---- the auth hook ---- */

/* The bearer secret of req, or NULL; *len its length (spaces trimmed). */
static const char *bearer(const sg_http_req_t *req, size_t *len) {
  const char *h = sg_http_header(req, "Authorization");
  if (!h || strncasecmp(h, "Bearer ", 7))
    return NULL;
  const char *s = h + 7;
  while (*s == ' ')
    s++;
  size_t n = strlen(s);
  while (n > 0 && s[n - 1] == ' ')
    n--;
  *len = n;
  return n ? s : NULL;
}

typedef enum { WHO_NONE, WHO_ADMIN, WHO_KEY } who_t;

static who_t identify(struct sg_keys *K, const sg_http_req_t *req, api_key_t **out) {
  size_t len = 0;
  const char *s = bearer(req, &len);
  *out = NULL;
  if (!s)
    return WHO_NONE;
  unsigned char h[SG_KEY_HASH_LEN];
  sg_key_hash(s, len, h);
  if (CRYPTO_memcmp(h, K->admin_hash, SG_KEY_HASH_LEN) == 0)
    return WHO_ADMIN;
  *out = find_hash(K, h);
  return *out ? WHO_KEY : WHO_NONE;
}

static bool check(void *ud, sg_http_req_t *req, const sg_route_t *rt, const char *endpoint) {
  sg_daemon_t *d = ud;
  api_key_t *k;
  switch (identify(d->keys, req, &k)) {
  case WHO_NONE:
    sg_router_unauthorized(req);
    return false;
  case WHO_ADMIN:
    return true;
  case WHO_KEY:
    break;
  }
  if (k->expires_ms && sg_wall_ms() >= k->expires_ms) {
    sg_http_add_header(req, "WWW-Authenticate", "Bearer realm=\"sgpu\", error=\"invalid_token\"");
    sg_http_send_error(req, 401, "unauthorized", "the API key has expired", NULL);
    return false;
  }
  touched(d, k);
  if (k->rate > 0) {
    int64_t retry = sg_bucket_take(&k->bucket, sg_now_ms());
    if (retry) {
      k->rate_limited++;
      char v[32];
      snprintf(v, sizeof(v), "%lld", (long long)retry);
      sg_http_add_header(req, "Retry-After", v);
      cleanup_free char *msg = xasprintf("API key \"%s\" is over its rate limit of %g requests/s; retry in %lld s",
                                         k->name, k->rate, (long long)retry);
      sg_http_send_error(req, 429, "rate_limited", msg, NULL);
      return false;
    }
  }
  cleanup_free char *why = NULL;
  if (sg_key_check(k->scopes, k->endpoints, k->n_endpoints, rt, endpoint, &why) < 0) {
    sg_http_send_error(req, 403, "forbidden", why, NULL);
    return false;
  }
  /* Revoking or expiring the key ends the request if it is still open. */
  sg_http_set_principal(req, k->serial);
  return true;
}

void sg_keys_attach(sg_daemon_t *d, sg_router_t *r) { sg_router_set_auth(r, check, d); }

bool sg_keys_endpoint_visible(sg_daemon_t *d, sg_http_req_t *req, const char *name) {
  api_key_t *k;
  switch (identify(d->keys, req, &k)) {
  case WHO_ADMIN:
    return true;
  case WHO_NONE:
    return false;
  case WHO_KEY:
    break;
  }
  if (k->n_endpoints == 0)
    return true;
  for (size_t i = 0; i < k->n_endpoints; i++)
    if (!strcmp(k->endpoints[i], name))
      return true;
  return false;
}

void sg_keys_metrics(sg_daemon_t *d, struct evbuffer *b) {
  struct sg_keys *K = d->keys;
  if (!K)
    return;
  evbuffer_add_printf(b, "# HELP sgpu_api_key_requests_total Requests authenticated with each API key.\n"
                         "# TYPE sgpu_api_key_requests_total counter\n");
  for (size_t i = 0; i < K->n; i++)
    evbuffer_add_printf(b, "sgpu_api_key_requests_total{key=\"%s\"} %llu\n", K->keys[i]->name,
                        (unsigned long long)K->keys[i]->requests);
  evbuffer_add_printf(b, "# HELP sgpu_api_key_rate_limited_total Requests refused (429) by an API key's rate limit.\n"
                         "# TYPE sgpu_api_key_rate_limited_total counter\n");
  for (size_t i = 0; i < K->n; i++)
    evbuffer_add_printf(b, "sgpu_api_key_rate_limited_total{key=\"%s\"} %llu\n", K->keys[i]->name,
                        (unsigned long long)K->keys[i]->rate_limited);
}

/* ---- /v1/api-keys ---- */

static json_t *time_or_null(int64_t ms) {
  char t[64];
  return ms ? json_string(sg_format_time(ms, t, sizeof(t))) : json_null();
}

static json_t *key_json(const api_key_t *k) {
  json_t *eps = json_null();
  if (k->endpoints) {
    eps = json_array();
    for (size_t i = 0; i < k->n_endpoints; i++)
      json_array_append_new(eps, json_string(k->endpoints[i]));
  }
  json_t *rate =
      k->rate > 0 ? json_pack("{s:f, s:I}", "requests_per_s", k->rate, "burst", (json_int_t)k->burst) : json_null();
  return json_pack("{s:s, s:s, s:o, s:o, s:o, s:o, s:o, s:o}", "name", k->name, "prefix", k->prefix, "scopes",
                   scopes_json(k->scopes), "endpoints", eps, "created_at", time_or_null(k->created_ms), "last_used_at",
                   time_or_null(k->last_used_ms), "expires_at", time_or_null(k->expires_ms), "rate_limit", rate);
}

void sg_keys_list(sg_daemon_t *d, sg_http_req_t *req) {
  struct sg_keys *K = d->keys;
  json_t *arr = json_array();
  for (size_t i = 0; i < K->n; i++)
    json_array_append_new(arr, key_json(K->keys[i]));
  sg_http_send_json(req, 200, json_pack("{s:o}", "api_keys", arr));
}

bool sg_keys_has(sg_daemon_t *d, const char *name) { return find_name(d->keys, name, NULL) != NULL; }

size_t sg_keys_count(sg_daemon_t *d) { return d->keys->n; }

json_t *sg_keys_add(sg_daemon_t *d, const sg_key_record_t *rec) {
  api_key_t *k = key_from_record(rec);
  if (!k)
    return NULL;
  add_key(d->keys, k);
  return key_json(k);
}

bool sg_keys_remove(sg_daemon_t *d, const char *name, const sg_http_req_t *keep, size_t *ended) {
  struct sg_keys *K = d->keys;
  size_t at;
  api_key_t *k = find_name(K, name, &at);
  if (!k)
    return false;
  memmove(&K->keys[at], &K->keys[at + 1], (K->n - at - 1) * sizeof(*K->keys));
  K->n--;
  *ended = end_requests(K, k, keep);
  key_free(k);
  return true;
}
