/* The slurm runtime's client of slurmrestd (Slurm's REST API). */
#ifndef SGPU_SLURM_INTERNAL_H
#define SGPU_SLURM_INTERNAL_H

#include <jansson.h>

#include "sgpu/error.h"

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
