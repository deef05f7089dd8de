/* API keys (auth/keys.c): the keys table on the loop, the router's auth
 * hook (key, expiry, rate limit, scope and endpoint checks, once per
 * request), and the pure pieces it is made of (token bucket, scope check),
 * which the unit tests call directly. The /v1/api-keys routes are api/keys.c's.
 *
 * Keys live in the store (table api_keys, store/keys.c) as SHA-256 hashes
 * of their secrets and in memory (d->keys), loaded at start; the routes
 * write through the store thread and change the memory table in done(), so
 * no SQLite runs on the loop. A request hashes the presented secret and
 * compares it with every key (CRYPTO_memcmp). last_used is set in memory and
 * written in batches, off the loop. The bootstrap key (DATA_DIR/admin.key)
 * is admin and is not in the table. Loop-thread only, except the pure
 * functions. */
#ifndef SGPU_AUTH_KEYS_H
#define SGPU_AUTH_KEYS_H

#include <event2/buffer.h>
#include <stdbool.h>
#include <stdint.h>

#include "daemon/fleet.h"
#include "http/http.h"
#include "http/router.h"
#include "sgpu/keys-store.h"

/* Room for a key's public prefix ("sgpu_" and 8 hex characters). */
#define SG_KEY_PREFIX_MAX 24

/* Loads the keys from the store (before the loop runs). */
int sg_keys_init(sg_daemon_t *d, sg_error_t **err);
/* Makes the router check keys and scopes with this module. */
void sg_keys_attach(sg_daemon_t *d, sg_router_t *r);
/* Queues the last_used times not yet written (before the store thread drains). */
void sg_keys_flush(sg_daemon_t *d);
void sg_keys_free(sg_daemon_t *d);
/* The per-key counters for /metrics. */
void sg_keys_metrics(sg_daemon_t *d, struct evbuffer *b);
/* Whether the caller of req (its bearer key) may see endpoint name: the
 * filter of lists (routes flagged SG_ROUTE_LISTS_ENDPOINTS). */
bool sg_keys_endpoint_visible(sg_daemon_t *d, sg_http_req_t *req, const char *name);

/* The table, for the /v1/api-keys routes. */
/* Answers GET /v1/api-keys: every key (never a secret or a hash). */
void sg_keys_list(sg_daemon_t *d, sg_http_req_t *req);
bool sg_keys_has(sg_daemon_t *d, const char *name);
size_t sg_keys_count(sg_daemon_t *d);
/* Adds a key just stored; returns its listing (a new reference), or NULL
 * when the record is malformed. */
json_t *sg_keys_add(sg_daemon_t *d, const sg_key_record_t *rec);
/* Forgets a key at once and ends the requests made with it that are still
 * open (log follows, streams, long waits), except keep, counted in *ended;
 * false when there is no key of that name. */
bool sg_keys_remove(sg_daemon_t *d, const char *name, const sg_http_req_t *keep, size_t *ended);

/* ---- pure pieces ---- */

/* The SHA-256 of a secret: what the store and the table hold. */
void sg_key_hash(const char *s, size_t len, unsigned char out[SG_KEY_HASH_LEN]);

/* A token bucket: rate tokens a second up to burst; starts full. */
typedef struct sg_bucket {
  double rate, burst, tokens;
  int64_t last_ms; /* monotonic */
} sg_bucket_t;

void sg_bucket_init(sg_bucket_t *b, double rate, double burst, int64_t now_ms);
/* Takes one token. Returns 0, or (none there) the whole seconds until one
 * is, rounded up (at least 1). */
int64_t sg_bucket_take(sg_bucket_t *b, int64_t now_ms);

/* Whether a key with scopes, limited to endpoints (n 0: every endpoint),
 * may call route rt (NULL: no route matched, always allowed) about
 * endpoint (rt's {endpoint} segment, or NULL). Returns 0, or -1 with *why
 * (a new string for the 403 message). */
int sg_key_check(unsigned scopes, char *const *endpoints, size_t n, const sg_route_t *rt, const char *endpoint,
                 char **why);

#endif
