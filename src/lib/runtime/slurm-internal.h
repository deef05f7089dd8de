/* The slurm runtime's parts: its job script (slurm-script.c) and its client
 * of slurmrestd (Slurm's REST API, slurm-rest.c). */
#ifndef SGPU_SLURM_INTERNAL_H
#define SGPU_SLURM_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>

#include "sgpu/error.h"

/* What a worker's batch script runs: a command (argv and envp) or, with cid
 * set, a container (its id, config.json with the port and GPU tokens, the
 * OCI runtime on the node and the overlay's layer dirs as the node sees
 * them, top first). addr_path: where the script writes "NODE PORT GPUS". */
typedef struct sg_slurm_script {
  const char *addr_path;
  char *const *argv; /* "$PORT" in an argument is the port chosen on the node */
  char *const *envp; /* NAME=VALUE; those the node sets (PORT, ...) are skipped */
  const char *cid;
  const char *config_path;
  const char *oci_runtime;
  char *const *lower;
} sg_slurm_script_t;

/* The script (slurm-job.sh with p's values, each quoted for sh; caller
 * frees). */
char *sg_slurm_script(const sg_slurm_script_t *p);
/* Whether kv ("NAME=VALUE") is a variable the node sets for the worker
 * (PORT, the GPU variables, PATH, HOME) rather than the spec. */
bool sg_slurm_node_sets(const char *kv);

typedef struct sg_slurmrest sg_slurmrest_t;

/* A client of slurmrestd at url ("http://host:port") acting as user: with a
 * fixed JWT token, or signing a short-lived one per request (HS256, Slurm's
 * auth/jwt claims sun, iat, exp) with the key in key_file. api is the Slurm
 * API version ("v0.0.38"); NULL: the newest that slurmrestd's OpenAPI
 * document offers for job submission. Blocks (the key, the document). */
sg_slurmrest_t *sg_slurmrest_new(const char *url, const char *user, const char *token, const char *key_file,
                                 const char *api, sg_error_t **err);
void sg_slurmrest_free(sg_slurmrest_t *c);
/* The API version in use. */
const char *sg_slurmrest_api(const sg_slurmrest_t *c);

/* METHOD /slurm/API/path with body (JSON, or none when NULL); blocks, at
 * most 30 s: pool threads and startup only. Returns the HTTP status, or -1
 * when no answer came (*error says why). *reply (optional) gets the parsed
 * answer or NULL; *error (optional, caller frees) gets the first of its
 * "errors", or the status line, when the status is not 2xx. */
long sg_slurmrest_call(sg_slurmrest_t *c, const char *method, const char *path, json_t *body, json_t **reply,
                       char **error);

/* A JWT for Slurm's auth/jwt: HS256 over {"exp", "iat", "sun": user} with
 * key. Caller frees. */
char *sg_slurmrest_sign(const unsigned char *key, size_t key_len, const char *user, long lifetime_s);

#endif
