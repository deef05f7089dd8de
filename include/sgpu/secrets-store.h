/* The store's secrets table (store/secrets.c) and the key that seals
 * registry passwords (store/images.c). Same contract as sgpu/store.h:
 * caller's thread, short single-row operations. */
#ifndef SGPU_SECRETS_STORE_H
#define SGPU_SECRETS_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "sgpu/seal.h"
#include "sgpu/store.h"

/* A secret as stored: its value sealed by the caller (sgpu/seal.h, with
 * "secret:<name>" as associated data); the store never sees it in clear. */
typedef struct sg_secret_record {
  const char *name;
  const unsigned char *sealed;
  size_t sealed_len;
  int64_t created_ms, updated_ms;
} sg_secret_record_t;

/* Inserts, or replaces the value and updated_ms of, the secret rec->name
 * (created_ms stays the first one). */
int sg_store_secret_put(sg_store_t *store, const sg_secret_record_t *rec, sg_error_t **err);
/* SG_ENOTFOUND when absent; SG_EEXIST, naming them, while a stored
 * endpoint's spec references it in env. */
int sg_store_secret_delete(sg_store_t *store, const char *name, sg_error_t **err);
/* Calls cb for every secret (sealed value included), in name order. */
int sg_store_secret_load(sg_store_t *store, void (*cb)(void *ud, const sg_secret_record_t *rec), void *ud,
                         sg_error_t **err);

/* The key registry passwords are sealed under (copied): from now on
 * sg_store_auth_put seals the secret column ("registry_auth:<name>" as
 * associated data) and the reads unseal it; without a key they fail. */
void sg_store_set_seal_key(sg_store_t *store, const unsigned char key[SG_SEAL_KEY_LEN]);

#endif
