/* CDI (Container Device Interface): the nvidia.com/gpu specs of a directory,
 * the container edits they give a worker's GPUs, and those edits applied to
 * an OCI config. Loaded once at runtime init; read-only afterwards. */
#ifndef SGPU_CDI_H
#define SGPU_CDI_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "sgpu/error.h"

typedef struct sg_cdi sg_cdi_t;

/* Loads the nvidia.com/gpu specs (*.json, *.yaml, *.yml) of dir; others and
 * unparsable files are ignored, with a log line. A missing dir gives none.
 * Never NULL. */
sg_cdi_t *sg_cdi_load(const char *dir);
void sg_cdi_free(sg_cdi_t *cdi);
/* Number of specs loaded. */
size_t sg_cdi_count(const sg_cdi_t *cdi);
/* The container edits for GPUs gpus[0..n): each spec's global edits (once)
 * and each device's, matched by name (the GPU index). New reference. */
json_t *sg_cdi_edits(const sg_cdi_t *cdi, const int *gpus, int n);
/* Applies edits (from sg_cdi_edits) to OCI config c: env, device nodes,
 * mounts, hooks. Device numbers come from the host's nodes; with userns the
 * host's nodes are bound instead. Blocks on stat(2): pool thread. */
int sg_cdi_apply(json_t *c, const json_t *edits, bool userns, sg_error_t **err);

#endif
