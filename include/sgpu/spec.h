/* Endpoint specs: parsing with full validation, defaults, and serialization. */
#ifndef SGPU_SPEC_H
#define SGPU_SPEC_H

#include <jansson.h>
#include <stdbool.h>

#include "sgpu/error.h"
#include "sgpu/json.h"

typedef enum { SG_SCALE_CONCURRENCY, SG_SCALE_QUEUE_DELAY } sg_scale_policy_t;

#define SG_SPEC_MAX_ARGS 64
#define SG_SPEC_MAX_ENV 128
#define SG_SPEC_MAX_WORKERS 1000
#define SG_SPEC_MAX_GPUS 16
#define SG_SPEC_MAX_VOLUMES 16
#define SG_SPEC_MAX_VOLUME_PATH 1024

/* One entry of a spec's "volumes": a named volume (name set) or a host
 * directory (host_path set), never both, seen by the worker at path. */
typedef struct sg_spec_volume {
  char *name;      /* a volume of /v1/volumes (a DNS label), or NULL */
  char *host_path; /* an absolute, normalized host directory, or NULL */
  char *path;      /* absolute and normalized: where a container sees it */
  bool read_only;
} sg_spec_volume_t;

typedef struct sg_spec {
  char *name;
  char *type;          /* "sync" or "async" */
  char *runtime;       /* "process", "oci" or "slurm" */
  char *image;         /* may be NULL; required by "oci" (the default when set) */
  char *registry_auth; /* name of stored registry credentials, or NULL */
  char **command;
  size_t n_command;
  char **env_keys;
  char **env_values;
  /* Per entry, the secret it names ({"secret": "hf"}), or NULL: then the
   * value is env_values[i]; with a secret, env_values[i] is "" and the
   * worker gets the secret's value (daemon/worker.c). n_env entries. */
  char **env_secrets;
  size_t n_env;
  int port;
  struct {
    char *path; /* NULL: no probes (a runpod endpoint that names none: ready at its first take) */
    double period_s;
    double timeout_s;
    int failure_threshold;
    double startup_timeout_s;
  } health;
  struct {
    char *type; /* NULL when count == 0 */
    int count;
  } gpu;
  struct {
    int min;
    int max;
    double idle_timeout_s;
    int max_concurrency;
    double request_timeout_s; /* queued and in flight, up to the answer's head */
    int max_queue;
    double stream_timeout_s; /* the answer's body, from its head to its end */
  } workers;
  struct {
    sg_scale_policy_t policy;
    double value;
    double hold_s; /* idle workers the policy wants may stay this long past workers.idle_timeout_s (0) */
  } scale;
  /* Jobs of "async" endpoints (defaults filled for every type). */
  struct {
    char *path;              /* where jobs are POSTed on the worker ("/run") */
    int max_retries;         /* re-runs after the worker was lost (2) */
    double retention_s;      /* results kept after a job ends (1800) */
    double ttl_s;            /* default whole life of a job (86400) */
    int64_t max_input_bytes; /* input as JSON (10 MiB) */
    int max_queue;           /* jobs waiting (100000) */
    /* How jobs reach workers: "http" (pushed to path) or "runpod" (workers
     * take them over RunPod's worker protocol); always set. */
    char *protocol;
    double ping_timeout_s; /* runpod: a worker whose pings stop this long is lost (30; 3..3600) */
    double take_wait_s;    /* runpod: a take or stop poll is held this long before 204 (20; 1..60) */
  } async;
  /* The slurm runtime's job options; NULL: the daemon's default. */
  struct {
    char *partition;
    char *account;
    char *time_limit; /* Slurm's format: "30", "1:00:00", "1-00:00:00" */
  } slurm;
  sg_spec_volume_t *volumes; /* "volumes", in the spec's order */
  size_t n_volumes;
} sg_spec_t;

/* True for "type": "async". */
bool sg_spec_is_async(const sg_spec_t *spec);

/* True for an async endpoint with "async": {"protocol": "runpod"}. */
bool sg_spec_is_runpod(const sg_spec_t *spec);

/* RUNPOD_PING_INTERVAL of a runpod endpoint's workers, in ms: a third of
 * async.ping_timeout_s, at least 1000 (RunPod's SDK sleeps interval/1000
 * whole seconds between pings). */
int sg_spec_ping_interval_ms(const sg_spec_t *spec);

/* True when s is a DNS label: 1-63 of [a-z0-9-], alphanumeric at both ends. */
bool sg_name_valid(const char *s);

/* Builds a spec from a JSON object, filling defaults. Rejects unknown fields,
 * wrong types and out-of-range values with an SG_EINVAL error naming the field.
 * Returns a new spec the caller frees with sg_spec_free(), or NULL. */
sg_spec_t *sg_spec_from_json(json_t *j, sg_error_t **err);

/* Parses and validates spec JSON text (SG_EJSON when it is not a JSON object). */
sg_spec_t *sg_spec_parse(const char *text, size_t len, sg_error_t **err);

/* The normalized spec as JSON, every default spelled out. New reference. */
json_t *sg_spec_to_json(const sg_spec_t *spec);

/* Whether going from spec old to spec new needs new workers: true when a
 * field that shapes a worker's process differs (type, runtime, image,
 * registry_auth, command, env, port, gpu, slurm, volumes, and any field added later
 * unless listed as live here). The fields that apply to running workers at
 * once are "workers" (bounds, idle and request timeouts, concurrency,
 * queue), "scale", "health" (probes read the spec each time) and "async"
 * (read at each dispatch), except async.protocol and, for runpod, the ping
 * interval that follows from async.ping_timeout_s: both are in the workers'
 * environment. */
bool sg_spec_restart_needed(const sg_spec_t *old, const sg_spec_t *new);

/* The environment variable that tells a worker where volume v is:
 * SGPU_VOLUME_<NAME> with the volume's name (a host path volume: the last
 * component of its path) upper-cased, '-' and '.' as '_'. New string. */
char *sg_spec_volume_env_name(const sg_spec_volume_t *v);

/* True when p is an absolute path in normal form: starts with '/', no
 * empty, "." or ".." component, no trailing '/' (except "/" itself). */
bool sg_spec_path_normalized(const char *p);

void sg_spec_free(sg_spec_t *spec);
static inline void sg_spec_freep(sg_spec_t **s) {
  if (*s)
    sg_spec_free(*s);
}
#define cleanup_spec __attribute__((cleanup(sg_spec_freep)))

const char *sg_scale_policy_name(sg_scale_policy_t p);

#endif
