/* The fleet: endpoints and workers with their core fields, and their
 * lifecycle (daemon/fleet.c: endpoints and subscribers; daemon/worker.c:
 * workers; daemon/health.c: probes; daemon/images.c and daemon/cluster.c:
 * the images and cluster nodes they run on). Modules keep their own per-endpoint and
 * per-worker state behind the opaque pointers below and hear of changes as
 * events (sg_fleet_subscribe) instead of being called by the fleet.
 * `sg_daemon_t` is the context every module is handed: configuration, loop,
 * store, GPUs, the endpoint lists, and each module's opaque state.
 * Loop-thread only. */
#ifndef SGPU_DAEMON_FLEET_H
#define SGPU_DAEMON_FLEET_H

#include <event2/event.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "sgpu/daemon.h"
#include "sgpu/gpu.h"
#include "sgpu/meter.h"
#include "sgpu/runtime.h"
#include "sgpu/seal.h"
#include "sgpu/spec.h"
#include "sgpu/store.h"

typedef struct sg_endpoint sg_endpoint_t;
typedef struct sg_worker sg_worker_t;
typedef struct sg_meter sg_meter_t;
typedef struct sg_series sg_series_t;

enum sg_worker_state { SG_W_STARTING, SG_W_READY, SG_W_DRAINING, SG_W_STOPPED, SG_W_FAILED };

/* Output lines of a worker kept for display (its log source's ring, ep->last_logs). */
#define SG_RECENT_LINES 20

struct sg_worker {
  TAILQ_ENTRY(sg_worker) link;
  sg_daemon_t *d;
  sg_endpoint_t *ep;
  char *id;
  int version;
  enum sg_worker_state state;
  const sg_runtime_ops_t *rt;
  sg_instance_t *inst;
  int port;
  char *host; /* numeric address of its node; NULL: 127.0.0.1 */
  pid_t pid;
  int gpus[SG_SPEC_MAX_GPUS];
  int n_gpus;
  int64_t started_mono, ready_mono, last_used_mono;
  int64_t started_wall, ready_wall, ended_wall;
  int in_flight;
  uint64_t served;
  bool exited;
  int exit_status;
  bool stopping;  /* sgpud asked it to stop (draining, then SIGTERM) */
  bool term_sent; /* SIGTERM sent: its drain is over */
  bool unhealthy; /* stopped for failing its health checks: ends as failed */
  bool suspect;   /* a request to it failed at the connection level: no new
                     requests until a health probe answers 200 */
  bool counted_failure;
  bool never_ran;       /* its start failed before any process ran */
  bool adopted;         /* started by an earlier sgpud and taken over */
  bool detached;        /* left running for the next sgpud (slurm) */
  int64_t running_mono; /* its process started (probing from then on) */
  bool replaced_old;    /* scaler.c's rollout retired an older worker for this one */
  char *last_error;
  struct sg_log_source *logs;     /* its output: rate limit and last lines (logs/logs.c) */
  struct sg_health_state *health; /* its probing (daemon/health.c); NULL when not probed */
  struct event *kill_timer;
  struct event *drain_timer;     /* ends a drain that outlasts request_timeout_s */
  struct sg_worker_conns *conns; /* upstream connections not in use (gateway/conns.c) */
  struct sg_worker_meter *meter; /* its usage record (meter/recorder.c) */
  struct sg_worker_pull *pull;   /* a pull worker's polls, held slots, pings (gateway/jobs-pull.c) */
};

TAILQ_HEAD(sg_worker_list, sg_worker);

/* Upper bounds (seconds) of the latency and queue-wait histogram buckets,
 * and of the long ones (cold starts, job executions: 0.1 s to an hour). */
#define SG_METRIC_BUCKETS 14
extern const double sg_metric_bounds[SG_METRIC_BUCKETS];
extern const double sg_metric_long_bounds[SG_METRIC_BUCKETS];

typedef struct sg_histogram {
  uint64_t buckets[SG_METRIC_BUCKETS + 1]; /* the last one is +Inf */
  uint64_t count;
  double sum;
} sg_histogram_t;

/* Counters of one endpoint, exposed at /metrics. */
typedef struct sg_ep_metrics {
  uint64_t requests;       /* invocations that arrived */
  uint64_t by_status[600]; /* answers by status code */
  uint64_t aborted;        /* clients that went away before their answer */
  uint64_t retries;        /* attempts sent again to another worker */
  uint64_t cold_starts;    /* workers that became ready */
  uint64_t scale_ups, scale_downs;
  sg_histogram_t latency;    /* arrival to end of answer */
  sg_histogram_t queue_wait; /* arrival to dispatch */
  sg_histogram_t cold_start; /* worker started to ready (long bounds; metrics.c) */
  /* Async jobs that ended, by final status, and their executions (dispatch
   * to the end of the answer, long bounds; jobs.c). */
  uint64_t jobs_completed, jobs_failed, jobs_cancelled, jobs_timed_out;
  sg_histogram_t job_duration;
  /* GPU-milliseconds by sg_meter_state_t of this sgpud's usage records
   * (recorder.c): closed ones, and closed plus open ones as of the last
   * tick (never decreasing). */
  int64_t gpu_ms_closed[SG_METER_NSTATES];
  int64_t gpu_ms[SG_METER_NSTATES];
} sg_ep_metrics_t;

struct sg_endpoint {
  TAILQ_ENTRY(sg_endpoint) link;
  sg_daemon_t *d;
  char *name;
  sg_spec_t *spec;
  int version;
  int64_t created_wall, updated_wall;
  bool deleted;
  struct sg_worker_list workers; /* live and recently ended */
  int in_flight;
  /* Requests (gateway/proxy.c) and job dispatches (gateway/jobs.c) that
   * refer to this endpoint: a deleted endpoint is freed once it is 0. */
  int proxies;
  uint64_t served;
  /* crash-loop tracking: failures before reaching ready */
  int consecutive_failures;
  int64_t backoff_until_mono;
  char *last_error;
  bool image_failed; /* its image could not be pulled (daemon/images.c); cleared by a pull, a ready worker, an update */
  char *last_logs[SG_RECENT_LINES];
  int n_last_logs;
  /* Counters several modules write (proxy.c, jobs.c, worker.c, scaler.c)
   * and metrics.c and series.c read: shared, so the fleet holds them. */
  sg_ep_metrics_t metrics;
  struct sg_ep_proxy *proxy; /* the request queue (gateway/proxy.c); NULL until used */
  struct sg_ep_scale *scale; /* the scaler's window and decision (scaler/scaler.c); NULL until its first pass */
  struct sg_ep_jobs *jobs;   /* async jobs (gateway/jobs.c); NULL until used */
  sg_series_t *series;       /* the last hour, for charts (meter/series.c) */
};

TAILQ_HEAD(sg_endpoint_list, sg_endpoint);

#define SG_FLEET_MAX_SUBSCRIBERS 8

/* token.c: a worker's token (RUNPOD_AI_API_KEY of a runpod endpoint's workers). */
#define SG_WORKER_KEY_LEN 32   /* bytes of DATA_DIR/worker.key */
#define SG_WORKER_TOKEN_LEN 64 /* lowercase hex of an HMAC-SHA256 */

struct sg_daemon {
  sg_daemon_config_t cfg;
  struct event_base *base;
  struct sg_http_server *http;
  struct sg_router *router; /* routes of api, gateway, jobs and metrics */
  sg_store_t *store;
  sg_gpu_inventory_t *gpus;
  char *api_key;
  unsigned char worker_key[SG_WORKER_KEY_LEN]; /* DATA_DIR/worker.key, loaded at start (token.c) */
  unsigned char secret_key[SG_SEAL_KEY_LEN];   /* DATA_DIR/secret.key: seals secrets and registry passwords */
  char *url;
  char *self_dir; /* directory of the sgpud binary */
  struct sg_endpoint_list endpoints;
  struct sg_endpoint_list deleted; /* freed once nothing refers to them */
  struct event *tick;
  struct event *sigterm, *sigint;
  struct event *kick; /* deferred scaler pass */
  bool kick_pending;
  bool shutting_down;
  struct sg_logs *logs; /* the log store's buffer, followers, writer and counters (logs/logs.c) */
  struct sg_jobs *jobs; /* async jobs (gateway/jobs.c) */
  sg_meter_t *meter;
  struct sg_pool *pool; /* threads for work that blocks */
  /* Threads for log and usage queries, each on a read-only connection
   * from readers: no query runs on the loop. */
  struct sg_pool *query_pool;
  struct sg_store_readers *readers;
  struct sg_images *images; /* image cache (image/images.c) */
  /* The one thread that runs the statements on `store` once the loop
   * serves (store/thread.c), in the order they were submitted. */
  struct sg_store_thread *store_thread;
  LIST_HEAD(, sg_ep_write) ep_writes; /* endpoint writes in flight (api/endpoints.c) */
  struct sg_auth_cache *auths;        /* registry credentials as stored (daemon/images.c) */
  struct sg_keys *keys;               /* API keys as stored, with their counters (api/keys.c) */
  struct sg_secret_cache *secrets;    /* secrets, sealed as stored (daemon/secrets.c) */
  struct sg_volumes *volumes;         /* named volumes as stored (daemon/volumes.c) */
  /* Modules told of endpoint and worker events, in the order they subscribed. */
  struct sg_fleet_sub {
    const struct sg_fleet_subscriber *ops;
    void *ud;
  } subs[SG_FLEET_MAX_SUBSCRIBERS];
  size_t n_subs;
};

/* fleet.c: endpoints */
sg_endpoint_t *sg_daemon_find_endpoint(sg_daemon_t *d, const char *name);
/* Creates live state for a stored or new endpoint (takes spec). */
sg_endpoint_t *sg_endpoint_new(sg_daemon_t *d, sg_spec_t *spec, int version, int64_t created, int64_t updated);
/* Replaces the spec (takes it). When the change needs new workers
 * (sg_spec_restart_needed), the running ones keep their version and serve
 * until the scaler's rollout (scaler.c) has replaced each by a ready worker
 * of this version, then drain; otherwise the workers of the version before
 * take this version and go on. Returns whether workers are replaced. */
bool sg_endpoint_update(sg_endpoint_t *ep, sg_spec_t *spec, int version, int64_t updated);
/* Stops all workers, fails queued requests; frees once nothing refers to it. */
void sg_endpoint_delete(sg_endpoint_t *ep);
/* Frees a deleted endpoint once nothing refers to it. Only from a fresh
 * stack frame (a timer), never from inside a connection's callback. */
void sg_endpoint_maybe_free(sg_endpoint_t *ep);
json_t *sg_endpoint_to_json(sg_endpoint_t *ep);
/* Consecutive failed starts that make a crash loop. */
#define SG_CRASH_LOOP_FAILURES 3
/* The endpoint's state word, "status.state" (docs/API.md): "serving" (a
 * worker is ready), then, while no worker of its version runs, "unschedulable"
 * (no node here has gpu.count GPUs of gpu.type), "image_pull_failed",
 * "crash_loop" (SG_CRASH_LOOP_FAILURES starts in a row failed), then
 * "starting" (a worker of its version runs but is not ready, or min > 0) or
 * "scaled_to_zero". Computed here only; calls no subscriber. */
const char *sg_endpoint_state(const sg_endpoint_t *ep);
/* True when ep cannot start workers now: unschedulable, or crash_loop or
 * image_pull_failed while its start backoff lasts (after it, work queues and
 * starts a worker again). *code is the state word, which is also the error
 * code of the 503 that requests get at once. */
bool sg_endpoint_failing(const sg_endpoint_t *ep, const char **code);

/* worker.c */
/* The base URL (no trailing '/') the workers of runpod endpoints are given
 * for sgpud's /worker/ routes: config advertise_url when set, else the listen
 * address with the port bound (http://127.0.0.1:PORT for a wildcard address).
 * *local_only: it is reachable from this host only (loopback or wildcard
 * without advertise_url). A new string. */
char *sg_worker_base_url(const sg_daemon_t *d, bool *local_only);
sg_worker_t *sg_worker_start(sg_endpoint_t *ep, sg_error_t **err);
/* Takes over a worker of runtime rt an earlier sgpud started for ep (at its
 * current version), through rt->adopt_instance; metered on from the earlier sgpud's records. Returns
 * the worker's instance. At startup. */
sg_instance_t *sg_worker_adopt(sg_endpoint_t *ep, const sg_runtime_ops_t *rt, const sg_leftover_t *job);
/* Asks a worker to stop: SIGTERM now, SIGKILL after the grace period (a
 * draining worker's drain ends now). */
void sg_worker_stop(sg_worker_t *w, const char *why);
/* Takes a worker out of rotation (state draining) and stops it once its
 * requests and jobs in flight have ended, or after the endpoint's
 * request_timeout_s, whichever comes first: for updates and scale-downs. */
void sg_worker_drain(sg_worker_t *w, const char *why);
/* Draining: out of rotation, not yet sent SIGTERM. */
bool sg_worker_draining(const sg_worker_t *w);
const char *sg_worker_state_name(enum sg_worker_state s);
json_t *sg_worker_to_json(const sg_worker_t *w);
bool sg_worker_live(const sg_worker_t *w);
/* Frees ended workers no one refers to, keeping the newest few for display.
 * Only from a fresh stack frame (a timer). */
void sg_worker_prune(sg_endpoint_t *ep);
/* Called by the gateway when a request ends on w: counts it off, then
 * worker_load(-1), request_ended, worker_released and demand_changed go to
 * the subscribers. */
void sg_worker_release_request(sg_worker_t *w);
/* As sg_worker_release_request for an attempt that failed and will be tried
 * again: the slot is free, but no request ended (no request_ended event), so
 * a request or job is counted once however many attempts it took. */
void sg_worker_release_attempt(sg_worker_t *w);
/* Called by health checks (first 200) or, for a runpod worker, by the
 * gateway at its first job take: a starting worker becomes ready (a worker
 * in any other state, or stopping, is left as it is). */
void sg_worker_became_ready(sg_worker_t *w);
/* Called by health checks: too many failed probes, or a start that outlasted
 * health.startup_timeout_s. */
void sg_worker_unhealthy(sg_worker_t *w, const char *why);

/* health.c: w->health is owned there. */
/* Starts probing w on the start-up schedule (the first probe in 0.5 ms); a
 * worker whose spec has no health.path is not probed, only failed once
 * health.startup_timeout_s passes before it became ready. */
void sg_health_start(sg_worker_t *w);
/* The runtime says the worker's process is about to run (a container was
 * created): a starting worker is probed at once, then on the tight schedule. */
void sg_health_process_started(sg_worker_t *w);
/* Stops probing w and frees its health state (a probe in flight is dropped,
 * its callbacks never run); safe from inside a probe's verdict. */
void sg_health_stop(sg_worker_t *w);
/* Takes a ready worker out of rotation until a probe, sent at once, passes. */
void sg_health_suspect(sg_worker_t *w);

/* token.c. Reads the worker key from path (exactly SG_WORKER_KEY_LEN bytes;
 * any other length or an unreadable file is an error naming it), or, when
 * there is none, makes one from getrandom in a mode 0600 file linked into
 * place (a key another process made first is read instead). Blocks. */
int sg_worker_key_load(const char *path, unsigned char key[SG_WORKER_KEY_LEN], sg_error_t **err);
/* The token of worker_id: lowercase hex of HMAC-SHA256(d->worker_key,
 * "sgpu-worker:" + worker_id), NUL-terminated in out. The same for the same
 * key and id, so it survives an sgpud restart; it is worth something only
 * while the gateway accepts it (a live worker of that endpoint). */
void sg_worker_token(const sg_daemon_t *d, const char *worker_id, char out[SG_WORKER_TOKEN_LEN + 1]);
/* Whether token (len bytes, not NUL-terminated) is worker_id's, compared in
 * constant time. */
bool sg_worker_token_valid(const sg_daemon_t *d, const char *worker_id, const char *token, size_t len);

/* volumes.c: named volumes (the loop's copy of the store's table), their
 * directories, host paths, and what a worker start gets. */
typedef struct sg_volume {
  char *name;
  int64_t size_bytes; /* 0: no limit */
  int64_t created_ms;
  int64_t used_bytes; /* as last measured; -1 before the first measure */
  bool deleting;      /* a delete is being written */
  int uploads;        /* uploads in flight (api/volumes.c) */
} sg_volume_t;
/* Loads the table, makes DATA_DIR/volumes (0711), measures each volume.
 * Before the loop serves, after the pool exists. */
int sg_daemon_volumes_init(sg_daemon_t *d, sg_error_t **err);
/* After the pool is freed. */
void sg_daemon_volumes_free(sg_daemon_t *d);
sg_volume_t *sg_daemon_volume_find(sg_daemon_t *d, const char *name);
/* Adds to the loop's copy after the store thread wrote the volume. */
sg_volume_t *sg_daemon_volume_add(sg_daemon_t *d, const char *name, int64_t size_bytes, int64_t created_ms);
void sg_daemon_volume_forget(sg_daemon_t *d, const char *name);
size_t sg_daemon_volume_count(const sg_daemon_t *d);
/* The i-th volume in name order (i < sg_daemon_volume_count). */
sg_volume_t *sg_daemon_volume_at(sg_daemon_t *d, size_t i);
/* DATA_DIR/volumes, DATA_DIR/volumes/NAME, and a volume's directory for slurm
 * workers (slurm.volume_dir/NAME, else SLURM_DIR/volumes/NAME). New strings. */
char *sg_daemon_volumes_root(const sg_daemon_t *d);
char *sg_daemon_volume_dir(const sg_daemon_t *d, const char *name);
char *sg_daemon_volume_remote_dir(const sg_daemon_t *d, const char *name);
/* Makes dir (and its parents) with mode 0777 for workers of any user. Blocks. */
int sg_volume_make_dir(const char *dir, sg_error_t **err);
/* The sizes of the regular files beneath dir, links not followed. Blocks. */
int64_t sg_volume_measure(const char *dir);
/* The names of the endpoints whose spec mounts volume `name`. New reference. */
json_t *sg_daemon_volume_users(sg_daemon_t *d, const char *name);
/* Measures the volumes (only: just that one) on the pool, updates their
 * used_bytes, then calls cb (d NULL: the pool was freed first). */
void sg_daemon_volumes_measure(sg_daemon_t *d, const char *only, void (*cb)(sg_daemon_t *d, void *arg), void *arg);
/* Whether host_path may be mounted: its realpath (*resolved, a new string)
 * must be a directory beneath the realpath of a directory of
 * volume_host_paths. Blocks on the filesystem briefly (realpath). */
int sg_daemon_volume_host_path(const sg_daemon_t *d, const char *host_path, char **resolved, sg_error_t **err);
/* The spec's volumes as a start gives them to the runtime (*out, freed with
 * sg_launch_volumes_free): named volumes' directories (remote: as slurm
 * nodes see them), host paths resolved and checked again. Fails when a named
 * volume is gone, holds more than its size_bytes, or would be mounted
 * read-write here while an upload into it runs. Returns the count. */
int sg_daemon_volumes_for_start(sg_daemon_t *d, const sg_spec_t *spec, bool remote, sg_launch_volume_t **out,
                                sg_error_t **err);
void sg_launch_volumes_free(sg_launch_volume_t *v, int n);

/* images.c: thread pool and image cache; the fleet's images */
struct sg_registry_auth;
int sg_daemon_images_init(sg_daemon_t *d, sg_error_t **err);
void sg_daemon_images_free(sg_daemon_t *d);
/* The stored credential `name` (a copy the caller frees), or NULL with *err. */
struct sg_registry_auth *sg_daemon_registry_auth(sg_daemon_t *d, const char *name, sg_error_t **err);
void sg_registry_auth_free(struct sg_registry_auth *auth);
/* The credentials kept on the loop (see images.c): set (insert, or replace
 * keeping created_ms) and forget after the store thread wrote the same. */
struct sg_registry_auth_record;
void sg_daemon_auth_set(sg_daemon_t *d, const struct sg_registry_auth_record *rec);
bool sg_daemon_auth_forget(sg_daemon_t *d, const char *name);
/* *out points into the cache until its next change; SG_ENOTFOUND when absent. */
int sg_daemon_auth_get(sg_daemon_t *d, const char *name, struct sg_registry_auth_record *out, sg_error_t **err);
/* In name order, secret NULL. */
void sg_daemon_auth_each(sg_daemon_t *d, void (*cb)(void *ud, const struct sg_registry_auth_record *rec), void *ud);
/* Starts pulling ref (a preheat); the outcome shows in GET /v1/images. */
void sg_daemon_pull(sg_daemon_t *d, const char *ref, const struct sg_registry_auth *auth);
/* A preheat of a cached tag: pulls again when the registry names a newer
 * manifest for it. Returns false when ref is not a cached tag. */
bool sg_daemon_recheck(sg_daemon_t *d, const char *ref, const struct sg_registry_auth *auth);
/* (sg_daemon_images_init subscribes to endpoint events: a created or updated
 * endpoint's image is pulled when it is not cached.) */

/* secrets.c: the secrets kept on the loop, sealed (see secrets.c). */
struct sg_secret_record;
/* Loads every stored secret (blocks; before the loop serves). */
int sg_daemon_secrets_init(sg_daemon_t *d, sg_error_t **err);
/* Frees them and wipes d->secret_key. */
void sg_daemon_secrets_free(sg_daemon_t *d);
/* "secret:<name>", the associated data a secret's value is sealed with (new string). */
char *sg_secret_ad(const char *name);
/* Set (insert, or replace keeping created_ms) and forget after the store
 * thread wrote the same. */
void sg_daemon_secret_set(sg_daemon_t *d, const struct sg_secret_record *rec);
bool sg_daemon_secret_forget(sg_daemon_t *d, const char *name);
/* *out points into the cache until its next change; SG_ENOTFOUND when absent. */
int sg_daemon_secret_get(sg_daemon_t *d, const char *name, struct sg_secret_record *out, sg_error_t **err);
/* In name order. */
void sg_daemon_secret_each(sg_daemon_t *d, void (*cb)(void *ud, const struct sg_secret_record *rec), void *ud);
/* The value of secret name, unsealed (the caller frees it with
 * sg_unsealed_free), or NULL with SG_ENOTFOUND or SG_EINVAL (it does not
 * open). Never logged by anyone. */
char *sg_daemon_secret_value(sg_daemon_t *d, const char *name, sg_error_t **err);

/* cluster.c: the runtimes' life through the registry, adoption and nodes
 * (the parsers of default_runtime and slurm: config.h) */
/* Every runtime's init op, in registry order (after the pool and the image
 * store); blocks. */
int sg_daemon_runtimes_init(sg_daemon_t *d, sg_error_t **err);
/* Every runtime's stop op: before the pool and the image store are freed. */
void sg_daemon_runtimes_stop(sg_daemon_t *d);
/* Every runtime's shutdown op, in reverse order: after the pool is freed. */
void sg_daemon_runtimes_free(sg_daemon_t *d);
/* Adopts the workers an earlier sgpud left (each runtime's adopt op) whose
 * endpoint still exists with that runtime at the same version; the runtime
 * stops the others (blocks; after the endpoints are loaded). */
void sg_daemon_cluster_adopt(sg_daemon_t *d);
/* Sets "runtime" of a spec that names none to the daemon's default. */
void sg_daemon_default_runtime(sg_daemon_t *d, json_t *spec);
/* The nodes of every runtime with a nodes op as /v1/nodes entries (new
 * reference; empty when none has any). */
json_t *sg_daemon_cluster_nodes(sg_daemon_t *d);

/* fleet.c: events. A module subscribes once at init with a table of
 * callbacks (NULL for the events it ignores) and a pointer handed back to
 * each; every event goes to the subscribers in the order they subscribed,
 * synchronously, on the loop. */
typedef enum sg_fleet_start {
  SG_FLEET_START_LOCAL,   /* started here now (started_wall/started_mono) */
  SG_FLEET_START_PLACED,  /* its scheduler reports when it started (start_wall, 0: now) */
  SG_FLEET_START_ADOPTED, /* taken over from an earlier sgpud that started it at start_wall */
} sg_fleet_start_t;

typedef struct sg_fleet_subscriber {
  /* An endpoint was created (stored or new) or its spec replaced. */
  void (*endpoint_created)(void *ud, sg_endpoint_t *ep);
  void (*endpoint_updated)(void *ud, sg_endpoint_t *ep);
  /* An endpoint was deleted: what waits for it should end now; its workers
   * are stopped after the subscribers heard. */
  void (*endpoint_deleted)(void *ud, sg_endpoint_t *ep);
  /* The endpoint is being freed: drop per-endpoint state. */
  void (*endpoint_freed)(void *ud, sg_endpoint_t *ep);
  /* A worker runs (is metered) from now on. */
  void (*worker_started)(void *ud, sg_worker_t *w, sg_fleet_start_t how, int64_t start_wall);
  /* Its first health probe passed (w->state is SG_W_READY). */
  void (*worker_ready)(void *ud, sg_worker_t *w);
  /* A suspect worker passed a probe: it takes requests again. */
  void (*worker_in_rotation)(void *ud, sg_worker_t *w);
  /* Its in_flight changed by delta; a negative delta is a request that ended. */
  void (*worker_load)(void *ud, sg_worker_t *w, int delta);
  /* A request or job ended on w, its last attempt (after worker_load(-1);
   * an attempt that is tried again elsewhere has none): usage counts it. */
  void (*request_ended)(void *ud, sg_worker_t *w);
  /* A request or job ended on w (after worker_load(-1)): a slot is free. */
  void (*worker_released)(void *ud, sg_worker_t *w);
  /* Its exit was noticed (or its start failed after worker_started). With
   * `scheduled`, end_wall is the end its scheduler reports (0: unknown). */
  void (*worker_ended)(void *ud, sg_worker_t *w, bool scheduled, int64_t end_wall);
  /* The worker is being freed: drop per-worker state. */
  void (*worker_freed)(void *ud, sg_worker_t *w);
  /* Demand or supply changed (a request queued, a worker ready or gone). */
  void (*demand_changed)(void *ud, sg_daemon_t *d);
  /* Adds what waits for a worker of ep in this module to *queued, and
   * raises *oldest_wait_ms to its oldest wait (ms, monotonic now). */
  void (*waiting)(void *ud, const sg_endpoint_t *ep, int64_t now, int *queued, int64_t *oldest_wait_ms);
  /* Sets this module's fields of ep's "status" object (sg_endpoint_to_json).
   * The fleet puts every field in first, in their order, with the value
   * they have when no module sets them (0, null): a module replaces values
   * (json_object_set_new on a key already there keeps its place). */
  void (*endpoint_status)(void *ud, const sg_endpoint_t *ep, json_t *status);
} sg_fleet_subscriber_t;

/* Adds a subscriber (ops is not copied and must outlive it). At most
 * SG_FLEET_MAX_SUBSCRIBERS: aborts past that, a wiring error. */
void sg_fleet_subscribe(sg_daemon_t *d, const sg_fleet_subscriber_t *ops, void *ud);
/* Removes the subscriber added with ops and ud; never from inside a delivery. */
void sg_fleet_unsubscribe(sg_daemon_t *d, const sg_fleet_subscriber_t *ops, void *ud);

/* Event deliveries (the fleet's own files, and modules that change load or demand). */
void sg_fleet_endpoint_created(sg_endpoint_t *ep);
void sg_fleet_endpoint_updated(sg_endpoint_t *ep);
void sg_fleet_endpoint_deleted(sg_endpoint_t *ep);
void sg_fleet_endpoint_freed(sg_endpoint_t *ep);
void sg_fleet_worker_started(sg_worker_t *w, sg_fleet_start_t how, int64_t start_wall);
void sg_fleet_worker_ready(sg_worker_t *w);
void sg_fleet_worker_in_rotation(sg_worker_t *w);
void sg_fleet_worker_load(sg_worker_t *w, int delta);
void sg_fleet_request_ended(sg_worker_t *w);
void sg_fleet_worker_released(sg_worker_t *w);
void sg_fleet_worker_ended(sg_worker_t *w, bool scheduled, int64_t end_wall);
void sg_fleet_worker_freed(sg_worker_t *w);
void sg_fleet_demand_changed(sg_daemon_t *d);
/* What waits for a worker of ep, over every subscriber: the count, and the
 * oldest wait in ms (0 when nothing waits). */
void sg_fleet_waiting(const sg_endpoint_t *ep, int64_t now, int *queued, int64_t *oldest_wait_ms);

#endif
