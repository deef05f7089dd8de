/* The slurm runtime's parts (slurm.c holds the runtime's ops): its job
 * script (slurm-script.c), what Slurm prints parsed (slurm-parse.c), and the
 * backends that talk to Slurm: its commands (slurm-cli.c) or slurmrestd,
 * Slurm's REST API (slurm-rest.c). */
#ifndef SGPU_SLURM_INTERNAL_H
#define SGPU_SLURM_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "sgpu/runtime.h"

struct event_base;
struct sg_pool;
struct sg_images;

/* ---- the runtime's typed setup (called by its init, stop and shutdown
 * ops) ---- */

typedef struct sg_slurm_config {
  const char *dir;       /* job scripts, addresses and output: shared with the nodes */
  const char *partition; /* defaults for specs that name none; NULL: Slurm's */
  const char *account;
  const char *time_limit;
  bool cleanup; /* look for jobs left by an earlier sgpud of this dir (blocks) */
  /* Images: pulled into this store, whose layer dirs under images_dir the
   * nodes see under node_images_dir (NULL: the same path), and run with the
   * OCI runtime oci_runtime ("crun" when NULL) on the node. */
  struct sg_images *images;
  const char *images_dir;
  const char *node_images_dir;
  const char *oci_runtime;
  /* Jobs through slurmrestd at rest_url ("http://host:port") instead of the
   * commands, as rest_user with the JWT rest_token or one signed with the
   * key in rest_key_file; rest_api: Slurm's API version (NULL: the newest
   * offered). NULL rest_url: the commands. */
  const char *rest_url, *rest_user, *rest_token, *rest_key_file, *rest_api;
} sg_slurm_config_t;

/* Sets the runtime up (blocks; at startup). With cfg->cleanup it looks for
 * the jobs an earlier sgpud of the same dir submitted: those that run and
 * have written their address are kept for the adopt op, every
 * other one is cancelled. When Slurm cannot be reached (its commands, or
 * slurmrestd with rest_url) it logs why and returns
 * 0: starting a slurm worker then fails with that reason. */
int sg_slurm_runtime_init(struct event_base *base, struct sg_pool *pool, const sg_slurm_config_t *cfg,
                          sg_error_t **err);
/* The runtime's adopt and adopt_instance ops take over the running jobs an
 * earlier sgpud of the same dir left ("sgpu.WORKER" and
 * "sgpu:TAG:ENDPOINT:VERSION"); sg_slurm_leftover_t is their sg_leftover_t. */
typedef sg_leftover_t sg_slurm_leftover_t;

/* Lets go of the image store (pulls waited for, images held): before it is
 * freed, at shutdown. */
void sg_slurm_runtime_drop_images(void);
/* Cancels what jobs remain, except those detached (blocks), and frees the
 * runtime; after the pool is freed. */
void sg_slurm_runtime_shutdown(void);
/* Why slurm workers cannot start here, or NULL when they can. */
const char *sg_slurm_unavailable(void);

/* One node as Slurm reports it (the runtime's nodes op). */
typedef sg_runtime_node_t sg_slurm_node_t;

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

/* ---- backends ---- */

/* A job to submit: the script (already written to script_path) and sbatch's
 * options. */
typedef struct sg_slurm_submit {
  const char *name;    /* "sgpu.WORKER" */
  const char *comment; /* "sgpu:TAG:ENDPOINT:VERSION" */
  const char *script, *script_path;
  const char *out_path, *err_path;              /* the job's stdout and stderr */
  const char *dir;                              /* its working directory */
  const char *gres;                             /* "gpu:TYPE:N", "gpu:N" or NULL */
  const char *partition, *account, *time_limit; /* NULL: Slurm's defaults */
} sg_slurm_submit_t;

/* One job's state as Slurm reports it. */
typedef struct sg_slurm_job_info {
  const char *job_id; /* in */
  bool seen;          /* Slurm knows the job */
  char state[32];     /* "PENDING", "RUNNING", ... */
  char reason[128];   /* "None" when none */
  char node[128];
  int64_t start_wall, end_wall; /* ms since the epoch; 0: unknown */
  char exit_code[32];           /* "CODE:SIGNAL" once ended, else "" */
} sg_slurm_job_info_t;

/* A job not ended, as listed for the jobs an earlier sgpud left. */
typedef struct sg_slurm_listed {
  char *job_id, *state, *name, *comment;
  int64_t start_wall; /* 0: not started */
} sg_slurm_listed_t;

typedef struct sg_slurm_backend sg_slurm_backend_t;

/* How the runtime talks to Slurm. Every op blocks (at most about 30 s per
 * command or request): pool threads and startup only. Strings returned
 * through char ** are the caller's. */
typedef struct sg_slurm_backend_ops {
  const char *name; /* for messages: "sbatch", "slurmrestd" */
  /* Submits a job; 0 and *job_id, or -1 and *error. */
  int (*submit)(sg_slurm_backend_t *be, const sg_slurm_submit_t *job, char **job_id, char **error);
  /* Cancels a job, with SIGTERM to its steps first when term; 0, or -1
   * and *error (optional). */
  int (*cancel)(sg_slurm_backend_t *be, const char *job_id, bool term, char **error);
  /* Fills in the state of each of jobs (ended ones with exit code and
   * times). Returns false when Slurm did not answer (the states say
   * nothing); *error (maybe set even on true) says what went wrong. */
  bool (*query)(sg_slurm_backend_t *be, sg_slurm_job_info_t *jobs, size_t n, char **error);
  /* The cluster's nodes (caller frees *out); false when Slurm did not
   * answer. */
  bool (*nodes)(sg_slurm_backend_t *be, sg_runtime_node_t **out, size_t *n);
  /* Every job that has not ended (sg_slurm_listed_free); false when Slurm
   * did not answer. */
  bool (*list)(sg_slurm_backend_t *be, sg_slurm_listed_t **out, size_t *n);
  void (*free)(sg_slurm_backend_t *be);
} sg_slurm_backend_ops_t;

struct sg_slurm_backend {
  const sg_slurm_backend_ops_t *ops;
};

/* Slurm's commands (sbatch, squeue, scontrol, scancel) found in PATH; NULL
 * with *err when sbatch cannot be run (blocks). */
sg_slurm_backend_t *sg_slurm_cli_new(sg_error_t **err);
/* slurmrestd (see sg_slurmrest_new); NULL with *err when it cannot be used
 * (blocks). */
sg_slurm_backend_t *sg_slurm_rest_new(const char *url, const char *user, const char *token, const char *key_file,
                                      const char *api, sg_error_t **err);
void sg_slurm_listed_free(sg_slurm_listed_t *jobs, size_t n);

/* ---- what Slurm prints (slurm-parse.c) ---- */

/* Whether a job in state s has ended (s not empty and not a live state). */
bool sg_slurm_ended_state(const char *s);
/* Slurm's local time "2024-05-01T12:00:00" as ms since the epoch; 0 for
 * none. */
int64_t sg_slurm_parse_time(const char *s);
/* The value of " KEY=" in a one-line scontrol record, up to the next
 * space, into out (len bytes); false (out empty) when absent. */
bool sg_slurm_field(const char *rec, const char *key, char *out, size_t len);
/* n bytes of src into dst (len bytes), cut to fit, NUL-terminated. */
void sg_slurm_copy(char *dst, size_t len, const char *src, size_t n);
/* A GRES list ("gpu:a100:4(S:0),gpu:2"): the GPUs counted into *count and
 * the first type into type (when type is not NULL and still empty). */
void sg_slurm_parse_gres(const char *g, char *type, size_t tlen, int *count);
/* The last non-empty line of text, trimmed (caller frees). */
char *sg_slurm_last_line(const char *text);

/* ---- slurmrestd's client (slurm-rest.c) ---- */

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
