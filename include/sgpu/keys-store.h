/* The store's table of API keys (store/keys.c). Same contract as
 * sgpu/store.h: caller's thread (never the loop), short operations. A key is
 * stored as the SHA-256 of its secret, never the secret. */
#ifndef SGPU_KEYS_STORE_H
#define SGPU_KEYS_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "sgpu/store.h"

#define SG_KEY_HASH_LEN 32 /* SHA-256 */

typedef struct sg_key_record {
  const char *name;
  const char *prefix;                           /* the start of the secret, shown in lists */
  const unsigned char *hash;                    /* SG_KEY_HASH_LEN bytes */
  const char *scopes;                           /* "read,invoke" */
  const char *endpoints;                        /* a JSON array of names, or NULL: every endpoint */
  int64_t created_ms, last_used_ms, expires_ms; /* 0: never used, never expires */
  double rate, burst;                           /* requests per second and burst; 0: no limit */
} sg_key_record_t;

/* Inserts a key; SG_EEXIST when the name is taken. */
int sg_store_key_insert(sg_store_t *store, const sg_key_record_t *rec, sg_error_t **err);
/* Deletes a key; SG_ENOTFOUND when absent. */
int sg_store_key_delete(sg_store_t *store, const char *name, sg_error_t **err);
/* Sets last_used_ms of n keys in one transaction (absent names are skipped). */
int sg_store_key_touch(sg_store_t *store, char *const *names, const int64_t *last_used_ms, size_t n, sg_error_t **err);
/* Calls cb for every key, by name; the record is valid during the call. */
int sg_store_key_load(sg_store_t *store, void (*cb)(void *ud, const sg_key_record_t *rec), void *ud, sg_error_t **err);

#endif
