/* GPU inventory of this node: discovered through NVML (loaded with dlopen, so
 * nothing NVIDIA is needed to build) or declared ("a100:4,h100:2").
 * Workers hold GPUs exclusively. Loop-thread only. */
#ifndef SGPU_GPU_H
#define SGPU_GPU_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "sgpu/error.h"

typedef struct sg_gpu {
  int index;
  char *type;         /* short lowercase model name, e.g. "a100" */
  char *name;         /* full model name as reported, or the declared type */
  char *uuid;         /* NVML uuid, or NULL for declared GPUs */
  uint64_t memory;    /* total memory in bytes as NVML reports it; 0: unknown (declared GPUs) */
  const char *source; /* "nvml" or "declared" */
  char *holder;       /* worker id holding it, or NULL */
  char *endpoint;     /* that worker's endpoint, or NULL */
} sg_gpu_t;

typedef struct sg_gpu_inventory {
  sg_gpu_t *gpus;
  size_t n;
} sg_gpu_inventory_t;

/* Builds the inventory: from `declared` when not NULL, else from NVML when a
 * driver is present, else from `fallback` (may be NULL for none). */
sg_gpu_inventory_t *sg_gpu_inventory_new(const char *declared, const char *fallback, sg_error_t **err);
void sg_gpu_inventory_free(sg_gpu_inventory_t *inv);

/* Parses "type:N[,type:N...]" and appends to inv; SG_EINVAL on bad syntax. */
int sg_gpu_declare(sg_gpu_inventory_t *inv, const char *declared, sg_error_t **err);

/* Number of free GPUs of type. */
int sg_gpu_free_count(const sg_gpu_inventory_t *inv, const char *type);
/* Number of GPUs of type in all. */
int sg_gpu_total_count(const sg_gpu_inventory_t *inv, const char *type);

/* Gives `count` free GPUs of `type` to holder and writes their indexes to
 * out (room for count). Returns 0, or -1 and takes nothing when too few are free. */
int sg_gpu_acquire(sg_gpu_inventory_t *inv, const char *type, int count, const char *holder, const char *endpoint,
                   int *out);
/* Releases every GPU that holder holds. */
void sg_gpu_release(sg_gpu_inventory_t *inv, const char *holder);

/* Maps an NVML device name to its short type ("NVIDIA A100-SXM4-80GB" -> "a100"). Caller frees. */
char *sg_gpu_type_from_name(const char *name);

#endif
