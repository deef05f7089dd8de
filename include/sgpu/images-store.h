/* The store's tables for the image cache and registry credentials
 * (store/images.c). Same contract as sgpu/store.h: caller's thread, short
 * single-row operations. */
#ifndef SGPU_IMAGES_STORE_H
#define SGPU_IMAGES_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "sgpu/store.h"

typedef struct sg_image_record {
  const char *ref;
  const char *digest;
  const char *config_json; /* {"entrypoint", "cmd", "env", "workdir", "user"} */
  const char *layers_json; /* [{"digest", "bytes"}...], lowest first */
  int64_t size_bytes, compressed_bytes;
  int64_t pulled_ms, pull_ms, last_used_ms;
  bool with_auth; /* pulled with registry credentials: a private image, perhaps */
} sg_image_record_t;

int sg_store_image_put(sg_store_t *store, const sg_image_record_t *rec, sg_error_t **err);
int sg_store_image_touch(sg_store_t *store, const char *ref, int64_t last_used_ms, sg_error_t **err);
int sg_store_image_delete(sg_store_t *store, const char *ref, sg_error_t **err);
/* The writes queued on the store thread (arguments copied); a failed put is logged. */
void sg_store_thread_image_put(sg_store_thread_t *t, const sg_image_record_t *rec);
void sg_store_thread_image_touch(sg_store_thread_t *t, const char *ref, int64_t last_used_ms);
void sg_store_thread_image_delete(sg_store_thread_t *t, const char *ref);
int sg_store_image_each(sg_store_t *store, void (*cb)(void *ud, const sg_image_record_t *rec), void *ud,
                        sg_error_t **err);

typedef struct sg_registry_auth_record {
  const char *name;
  const char *registry; /* "127.0.0.1:5000", "docker.io" */
  const char *username;
  const char *secret; /* the password or token; never shown */
  int64_t created_ms, updated_ms;
} sg_registry_auth_record_t;

/* Inserts (replace false: SG_EEXIST when the name is taken) or replaces.
 * The secret is sealed (sg_store_set_seal_key, sgpu/secrets-store.h). */
int sg_store_auth_put(sg_store_t *store, const sg_registry_auth_record_t *rec, bool replace, sg_error_t **err);
/* Calls cb with the record named name (secret included); SG_ENOTFOUND when absent. */
int sg_store_auth_get(sg_store_t *store, const char *name, void (*cb)(void *ud, const sg_registry_auth_record_t *rec),
                      void *ud, sg_error_t **err);
/* Every credential with its secret, by name; one whose sealed secret does
 * not open (another key, changed bytes) is left out with a warning. */
int sg_store_auth_load(sg_store_t *store, void (*cb)(void *ud, const sg_registry_auth_record_t *rec), void *ud,
                       sg_error_t **err);
int sg_store_auth_delete(sg_store_t *store, const char *name, sg_error_t **err);
/* Seals every password a store before sealing wrote in clear, once (later
 * calls find none), zeroing the space they held. Returns how many. */
int sg_store_auth_seal_clear(sg_store_t *store, sg_error_t **err);
/* Every record, in name order, with secret NULL. */
int sg_store_auth_each(sg_store_t *store, void (*cb)(void *ud, const sg_registry_auth_record_t *rec), void *ud,
                       sg_error_t **err);

#endif
