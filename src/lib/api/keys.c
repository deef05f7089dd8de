/* The /v1/api-keys routes: create (the secret is made here and shown once),
 * list and revoke. The table and the checks are auth/keys.c's; writes go
 * through the store thread and reach the table in done(). */
#include <math.h>
#include <openssl/crypto.h>
#include <string.h>
#include <time.h>

#include "api-internal.h"
#include "auth/keys.h"
#include "sgpu/keys-store.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define MAX_KEYS 1024
#define MAX_KEY_ENDPOINTS 64
#define MAX_RATE 1e6
#define SECRET_BYTES 32
#define SECRET_PREFIX "sgpu_"
#define SHOWN_HEX 8 /* hex characters of the secret kept as its public prefix */

void sg_api_keys_list(sg_daemon_t *d, sg_http_req_t *req) { sg_keys_list(d, req); }

/* An RFC 3339 UTC time ("2026-05-01T10:00:00Z", fractions ignored) or a
 * date, as epoch ms; -1 when malformed. */
static int64_t parse_time(const char *s) {
  struct tm tm = {0};
  const char *rest = strptime(s, "%Y-%m-%d", &tm);
  if (!rest)
    return -1;
  if (*rest == 'T' || *rest == 't' || *rest == ' ') {
    rest = strptime(rest + 1, "%H:%M:%S", &tm);
    if (!rest)
      return -1;
    if (*rest == '.')
      for (rest++; *rest >= '0' && *rest <= '9'; rest++)
        ;
    if (*rest == 'Z' || *rest == 'z')
      rest++;
    else if (!strcmp(rest, "+00:00"))
      rest += 6;
  }
  if (*rest)
    return -1;
  time_t t = timegm(&tm);
  return t < 0 ? -1 : (int64_t)t * 1000;
}

typedef struct create_job {
  sg_daemon_t *d;
  sg_http_req_t *req;
  char *secret; /* shown in the answer, then wiped */
  char *name, *prefix, *scopes, *endpoints;
  unsigned char hash[SG_KEY_HASH_LEN];
  int64_t created_ms, expires_ms;
  double rate, burst;
  sg_error_t *err;
} create_job_t;

static void create_job_free(create_job_t *j) {
  if (j->secret) {
    OPENSSL_cleanse(j->secret, strlen(j->secret));
    free(j->secret);
  }
  free(j->name);
  free(j->prefix);
  free(j->scopes);
  free(j->endpoints);
  sg_error_free(j->err);
  free(j);
}

static sg_key_record_t record_of(const create_job_t *j) {
  return (sg_key_record_t){j->name,       j->prefix, j->hash,       j->scopes, j->endpoints,
                           j->created_ms, 0,         j->expires_ms, j->rate,   j->burst};
}

static void create_work(sg_store_t *store, void *data) {
  create_job_t *j = data;
  sg_key_record_t r = record_of(j);
  sg_store_key_insert(store, &r, &j->err);
}

static void create_closed(sg_http_req_t *req, void *arg) { ((create_job_t *)arg)->req = NULL; }

static void create_done(void *data) {
  create_job_t *j = data;
  sg_http_req_t *req = j->req;
  if (req)
    sg_http_set_close_cb(req, NULL, NULL);
  if (j->err) {
    if (req)
      sg_http_send_sg_error(req, j->err);
    create_job_free(j);
    return;
  }
  sg_key_record_t r = record_of(j);
  json_t *body = sg_keys_add(j->d, &r);
  sg_info("API key %s created (%s, scopes %s)", j->name, j->prefix, j->scopes);
  if (req && body) {
    json_object_set_new(body, "key", json_string(j->secret));
    sg_http_send_json(req, 201, body);
  } else {
    json_decref(body);
    if (req)
      sg_http_send_error(req, 500, "internal", "the key was stored but could not be loaded", NULL);
  }
  create_job_free(j);
}

static void invalid(sg_http_req_t *req, const char *field, const char *why) {
  sg_http_send_error(req, 422, "invalid_field", why, field);
}

void sg_api_keys_create(sg_daemon_t *d, sg_http_req_t *req) {
  cleanup_json json_t *j = sg_api_read_json(req);
  if (!j)
    return;
  const char *field;
  json_t *v;
  json_object_foreach(j, field, v) {
    if (strcmp(field, "name") && strcmp(field, "scopes") && strcmp(field, "endpoints") && strcmp(field, "expires_at") &&
        strcmp(field, "rate_limit"))
      return invalid(req, field, "unknown field");
  }
  const char *name = json_string_value(json_object_get(j, "name"));
  if (!name || !sg_name_valid(name))
    return invalid(req, "name", "must be a DNS label: 1-63 of [a-z0-9-]");
  json_t *sj = json_object_get(j, "scopes");
  unsigned scopes = 0;
  size_t i;
  if (!json_is_array(sj) || json_array_size(sj) == 0)
    return invalid(req, "scopes", "must be a non-empty list of \"admin\", \"deploy\", \"invoke\", \"read\"");
  json_array_foreach(sj, i, v) {
    unsigned bit = json_is_string(v) ? sg_scope_parse(json_string_value(v)) : 0;
    if (!bit)
      return invalid(req, "scopes", "must be a non-empty list of \"admin\", \"deploy\", \"invoke\", \"read\"");
    scopes |= bit;
  }
  json_t *ej = json_object_get(j, "endpoints");
  if (ej && !json_is_null(ej)) {
    if (!json_is_array(ej) || json_array_size(ej) == 0 || json_array_size(ej) > MAX_KEY_ENDPOINTS)
      return invalid(req, "endpoints", "must be a list of 1 to 64 endpoint names");
    json_array_foreach(ej, i, v) {
      if (!json_is_string(v) || !sg_name_valid(json_string_value(v)))
        return invalid(req, "endpoints", "must be a list of endpoint names (DNS labels)");
    }
    if (scopes & SG_SCOPE_ADMIN)
      return invalid(req, "endpoints", "an admin key reaches everything: it cannot be limited to endpoints");
  } else {
    ej = NULL;
  }
  int64_t now = sg_wall_ms(), expires = 0;
  json_t *xj = json_object_get(j, "expires_at");
  if (xj && !json_is_null(xj)) {
    if (json_is_integer(xj))
      expires = json_integer_value(xj);
    else if (json_is_string(xj))
      expires = parse_time(json_string_value(xj));
    else
      expires = -1;
    if (expires < 0)
      return invalid(req, "expires_at", "must be an RFC 3339 UTC time (\"2027-01-01T00:00:00Z\") or epoch ms");
    if (expires <= now)
      return invalid(req, "expires_at", "is in the past");
  }
  double rate = 0, burst = 0;
  json_t *rj = json_object_get(j, "rate_limit");
  if (rj && !json_is_null(rj)) {
    json_t *rps = json_object_get(rj, "requests_per_s"), *bj = json_object_get(rj, "burst");
    if (!json_is_object(rj) || !json_is_number(rps) || json_number_value(rps) <= 0 ||
        json_number_value(rps) > MAX_RATE || json_object_size(rj) != (bj ? 2u : 1u))
      return invalid(req, "rate_limit", "must be {\"requests_per_s\": N > 0, \"burst\": M >= 1 (optional)}");
    rate = json_number_value(rps);
    burst = rate < 1 ? 1 : ceil(rate);
    if (bj) {
      if (!json_is_integer(bj) || json_integer_value(bj) < 1 || json_integer_value(bj) > MAX_RATE)
        return invalid(req, "rate_limit", "burst must be an integer of at least 1");
      burst = (double)json_integer_value(bj);
    }
  }
  if (sg_keys_has(d, name)) {
    cleanup_free char *msg = xasprintf("an API key named \"%s\" already exists", name);
    return sg_http_send_error(req, 409, "conflict", msg, "name");
  }
  if (sg_keys_count(d) >= MAX_KEYS)
    return sg_http_send_error(req, 409, "conflict", "too many API keys (1024): revoke some first", NULL);

  unsigned char raw[SECRET_BYTES];
  sg_random_bytes(raw, sizeof(raw));
  char secret[sizeof(SECRET_PREFIX) + 2 * SECRET_BYTES];
  int off = snprintf(secret, sizeof(secret), "%s", SECRET_PREFIX);
  for (size_t b = 0; b < sizeof(raw); b++)
    off += snprintf(secret + off, sizeof(secret) - (size_t)off, "%02x", raw[b]);
  OPENSSL_cleanse(raw, sizeof(raw));

  create_job_t *job = xcalloc(1, sizeof(*job));
  job->d = d;
  job->req = req;
  job->name = xstrdup(name);
  job->prefix = xstrndup(secret, strlen(SECRET_PREFIX) + SHOWN_HEX);
  sg_key_hash(secret, strlen(secret), job->hash);
  job->secret = xstrdup(secret);
  OPENSSL_cleanse(secret, sizeof(secret));
  char text[64];
  job->scopes = xstrdup(sg_scope_str(scopes, text, sizeof(text)));
  job->endpoints = ej ? json_dumps(ej, JSON_COMPACT) : NULL;
  job->created_ms = now;
  job->expires_ms = expires;
  job->rate = rate;
  job->burst = burst;
  sg_http_set_close_cb(req, create_closed, job);
  sg_store_thread_submit(d->store_thread, create_work, create_done, job);
}

typedef struct revoke_job {
  sg_http_req_t *req;
  char *name;
  sg_error_t *err;
} revoke_job_t;

static void revoke_work(sg_store_t *store, void *data) {
  revoke_job_t *j = data;
  sg_store_key_delete(store, j->name, &j->err);
}

static void revoke_closed(sg_http_req_t *req, void *arg) { ((revoke_job_t *)arg)->req = NULL; }

static void revoke_done(void *data) {
  revoke_job_t *j = data;
  if (j->req) {
    sg_http_set_close_cb(j->req, NULL, NULL);
    if (j->err)
      sg_http_send_sg_error(j->req, j->err);
    else
      sg_http_send_json(j->req, 200, json_pack("{s:s, s:b}", "name", j->name, "revoked", 1));
  }
  if (j->err)
    sg_warn("API key %s revoked, but not deleted from the store: %s", j->name, j->err->message);
  free(j->name);
  sg_error_free(j->err);
  free(j);
}

void sg_api_keys_revoke(sg_daemon_t *d, sg_http_req_t *req, const char *name) {
  /* Revoked at once: the next request with it finds no key. */
  size_t ended = 0;
  if (!sg_keys_remove(d, name, req, &ended)) {
    cleanup_free char *msg = xasprintf("no API key named \"%s\"", name);
    return sg_http_send_error(req, 404, "not_found", msg, NULL);
  }
  sg_info("API key %s revoked (open requests made with it ended: %zu)", name, ended);
  revoke_job_t *j = xcalloc(1, sizeof(*j));
  j->req = req;
  j->name = xstrdup(name);
  sg_http_set_close_cb(req, revoke_closed, j);
  sg_store_thread_submit(d->store_thread, revoke_work, revoke_done, j);
}
