/* The store's table of named volumes (store/volumes.c). Same contract as
 * sgpu/store.h: caller's thread (never the loop), short single-row
 * operations. A volume's files live in DATA_DIR/volumes/NAME (daemon/volumes.c). */
#ifndef SGPU_VOLUMES_STORE_H
#define SGPU_VOLUMES_STORE_H

#include <stdint.h>

#include "sgpu/store.h"

typedef struct sg_volume_record {
  const char *name;
  int64_t size_bytes; /* 0: no limit */
  int64_t created_ms;
} sg_volume_record_t;

/* Adds a volume; SG_EEXIST when one of that name exists. */
int sg_store_volume_add(sg_store_t *store, const sg_volume_record_t *rec, sg_error_t **err);
/* SG_ENOTFOUND when there is none of that name; SG_EEXIST when a stored
 * endpoint mounts it. */
int sg_store_volume_delete(sg_store_t *store, const char *name, sg_error_t **err);
/* Every volume, in name order. */
int sg_store_volume_each(sg_store_t *store, void (*cb)(void *ud, const sg_volume_record_t *rec), void *ud,
                         sg_error_t **err);

#endif
