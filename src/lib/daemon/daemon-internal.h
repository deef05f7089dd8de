/* sgpud's live state, shared by the modules that run on its event loop
 * (api, gateway, scaler, worker lifecycle). Loop-thread only. */
#ifndef SGPU_DAEMON_INTERNAL_H
#define SGPU_DAEMON_INTERNAL_H

#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "http/http.h"
#include "http/router.h"
#include "http/upstream.h"
#include "logs/limit.h"
#include "sgpu/daemon.h"
#include "sgpu/gpu.h"
#include "sgpu/meter.h"
#include "sgpu/policy.h"
#include "sgpu/runtime.h"
#include "sgpu/spec.h"
#include "sgpu/store.h"

typedef struct sg_endpoint sg_endpoint_t;
typedef struct sg_worker sg_worker_t;
typedef struct sg_proxy sg_proxy_t;
typedef struct sg_follower sg_follower_t;
typedef struct sg_meter sg_meter_t;
typedef struct sg_series sg_series_t;

enum sg_worker_state { SG_W_STARTING, SG_W_READY, SG_W_DRAINING, SG_W_STOPPED, SG_W_FAILED };

#define SG_RECENT_LINES 20

/* A worker's meter (meter/recorder.c): its current usage record. */
typedef struct sg_worker_meter {
  bool on;                /* metered: started and its last record not closed */
  sg_meter_acc_t acc;     /* the current record's time by state */
  int seg;                /* the current record's number */
  int64_t seg_start_wall; /* the current record's start */
  int64_t seg_start_hour; /* the hour it is in */
  int64_t closed_ms;      /* metered time of the worker's earlier records */
  int64_t requests;       /* requests that ended during the current record */
  double price;           /* per GPU-second, fixed when the worker started */
  int64_t base_wall;      /* the metered start: wall time ... */
  int64_t base_mono;      /* ... and the monotonic time it corresponds to */
  int gpu_count;
  char gpu_type[64];
} sg_worker_meter_t;

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
  bool stopping;  /* sgpud asked it to stop */
  bool unhealthy; /* stopped for failing its health checks: ends as failed */
  bool suspect;   /* a request to it failed at the connection level: no new
                     requests until a health probe answers 200 */
  bool counted_failure;
  bool never_ran;         /* its start failed before any process ran */
  bool adopted;           /* started by an earlier sgpud and taken over */
  bool detached;          /* left running for the next sgpud (slurm) */
  int64_t running_mono;   /* its process started (probing from then on) */
  int64_t probe_since_us; /* the start-up probe schedule counts from here (monotonic us) */
  char *last_error;
  char *recent[SG_RECENT_LINES]; /* ring of its last output lines */
  int recent_next;
  /* health */
  struct evhttp_connection *probe_conn;
  struct evhttp_request *probe_req;
  struct event *probe_timer;
  int probe_failures;
  struct event *kill_timer;
  /* upstream connections not in use */
  sg_upstream_t **idle_conns;
  size_t n_idle, cap_idle;
  sg_worker_meter_t meter;
  sg_log_limit_t log_limit; /* output lines per second */
};

TAILQ_HEAD(sg_worker_list, sg_worker);

/* Upper bounds (seconds) of the latency and queue-wait histogram buckets. */
#define SG_METRIC_BUCKETS 14
extern const double sg_metric_bounds[SG_METRIC_BUCKETS];

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
} sg_ep_metrics_t;
TAILQ_HEAD(sg_proxy_list, sg_proxy);

struct sg_endpoint {
  TAILQ_ENTRY(sg_endpoint) link;
  sg_daemon_t *d;
  char *name;
  sg_spec_t *spec;
  int version;
  int64_t created_wall, updated_wall;
  bool deleted;
  struct sg_worker_list workers; /* live and recently ended */
  struct sg_proxy_list queue;    /* requests waiting for a worker */
  int queued;
  int in_flight;
  int proxies; /* sg_proxy objects referring to this endpoint */
  uint64_t served;
  /* crash-loop tracking: failures before reaching ready */
  int consecutive_failures;
  int64_t backoff_until_mono;
  char *last_error;
  char *last_logs[SG_RECENT_LINES];
  int n_last_logs;
  char *last_decision;
  int desired;
  /* scaler: demand history, and the newest worker ready time it has measured */
  sg_scale_window_t scale_window;
  int64_t scale_seen_ready_mono;
  sg_ep_metrics_t metrics;
  struct sg_ep_jobs *jobs; /* async jobs (gateway/jobs.c); NULL until used */
  sg_series_t *series;     /* the last hour, for charts (meter/series.c) */
};

TAILQ_HEAD(sg_endpoint_list, sg_endpoint);

struct sg_daemon {
  sg_daemon_config_t cfg;
  struct event_base *base;
  sg_http_server_t *http;
  sg_router_t *router; /* routes of api, gateway, jobs and metrics */
  sg_store_t *store;
  sg_gpu_inventory_t *gpus;
  char *api_key;
  char *url;
  char *self_dir; /* directory of the sgpud binary */
  struct sg_endpoint_list endpoints;
  struct sg_endpoint_list deleted; /* freed once nothing refers to them */
  struct event *tick;
  struct event *log_flush;
  struct event *sigterm, *sigint;
  struct event *kick; /* deferred scaler pass */
  bool kick_pending;
  bool shutting_down;
  /* log lines waiting to be written in one transaction */
  struct {
    sg_log_line_t *lines;
    size_t n, cap;
    uint64_t dropped;
  } logbuf;
  LIST_HEAD(, sg_follower) followers;
  struct sg_log_writer *log_writer;
  uint64_t log_seq;       /* the newest batch handed to the writer */
  uint64_t log_submitted; /* lines handed to the writer since the start */
  struct sg_jobs *jobs;   /* async jobs (gateway/jobs.c) */
  struct {
    uint64_t lines;           /* lines emitted (worker output and events) */
    uint64_t rate_dropped;    /* worker lines over their rate limit */
    uint64_t backlog_dropped; /* lines dropped while the writer was behind */
  } log_stats;
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
};

/* images.c: thread pool, image cache and oci runtime */
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
/* Starts pulling ep's image when it is not cached; a failure becomes ep's last_error. */
void sg_endpoint_prepull(sg_endpoint_t *ep);

/* cluster.c: the slurm runtime's setup and nodes (its config keys' parsers: config.h) */
/* Sets the slurm runtime up when configured (after the pool); blocks. */
int sg_daemon_cluster_init(sg_daemon_t *d, sg_error_t **err);
/* Adopts the workers an earlier sgpud left (each runtime's adopt op) whose
 * endpoint still exists with that runtime at the same version; the runtime
 * stops the others (blocks; after the endpoints are loaded). */
void sg_daemon_cluster_adopt(sg_daemon_t *d);
/* After the pool is freed. */
void sg_daemon_cluster_free(sg_daemon_t *d);
/* Sets "runtime" of a spec that names none to the daemon's default. */
void sg_daemon_default_runtime(sg_daemon_t *d, json_t *spec);
/* The cluster's nodes as /v1/nodes entries (new reference), or NULL without Slurm. */
json_t *sg_daemon_cluster_nodes(sg_daemon_t *d);

/* daemon.c */
sg_endpoint_t *sg_daemon_find_endpoint(sg_daemon_t *d, const char *name);
/* Creates live state for a stored or new endpoint (takes spec). */
sg_endpoint_t *sg_endpoint_new(sg_daemon_t *d, sg_spec_t *spec, int version, int64_t created, int64_t updated);
/* Replaces the spec: workers of older versions drain and are replaced. Takes spec. */
void sg_endpoint_update(sg_endpoint_t *ep, sg_spec_t *spec, int version, int64_t updated);
/* Stops all workers, fails queued requests; frees once nothing refers to it. */
void sg_endpoint_delete(sg_endpoint_t *ep);
/* Frees a deleted endpoint once nothing refers to it. Only from a fresh
 * stack frame (a timer), never from inside a connection's callback. */
void sg_endpoint_maybe_free(sg_endpoint_t *ep);
json_t *sg_endpoint_to_json(sg_endpoint_t *ep);

/* worker.c */
sg_worker_t *sg_worker_start(sg_endpoint_t *ep, sg_error_t **err);
/* Takes over a worker of runtime rt an earlier sgpud started for ep (at its
 * current version), through rt->adopt_instance; metered on from the earlier sgpud's records. Returns
 * the worker's instance. At startup. */
sg_instance_t *sg_worker_adopt(sg_endpoint_t *ep, const sg_runtime_ops_t *rt, const sg_leftover_t *job);
/* Asks a worker to stop: SIGTERM now, SIGKILL after the grace period. */
void sg_worker_stop(sg_worker_t *w, const char *why);
const char *sg_worker_state_name(enum sg_worker_state s);
json_t *sg_worker_to_json(const sg_worker_t *w);
bool sg_worker_live(const sg_worker_t *w);
/* Frees ended workers no one refers to, keeping the newest few for display.
 * Only from a fresh stack frame (a timer). */
void sg_worker_prune(sg_endpoint_t *ep);
/* Called by the gateway when a request ends on w. */
void sg_worker_release_request(sg_worker_t *w);
/* Called by health checks: first 200, or too many failed probes. */
void sg_worker_became_ready(sg_worker_t *w);
void sg_worker_unhealthy(sg_worker_t *w, const char *why);
/* Upstream connection pool. */
/* An idle keep-alive connection to w, or a new one. */
sg_upstream_t *sg_worker_get_conn(sg_worker_t *w);
/* Takes u back into w's pool when it may carry another request, else frees it. */
void sg_worker_put_conn(sg_worker_t *w, sg_upstream_t *u);

/* health.c */
void sg_health_start(sg_worker_t *w);
/* The runtime says the worker's process is about to run (a container was
 * created): a starting worker is probed at once, then on the tight schedule. */
void sg_health_process_started(sg_worker_t *w);
void sg_health_stop(sg_worker_t *w);
/* Takes a ready worker out of rotation until a probe, sent at once, passes. */
void sg_health_suspect(sg_worker_t *w);

/* proxy.c */
/* Registers /e/ (invocations of an endpoint by name) with the router. */
void sg_gateway_routes(sg_router_t *r, sg_daemon_t *d);
/* Hands queued requests to free workers of ep. */
void sg_gateway_pump(sg_endpoint_t *ep);
/* Fails every queued request of ep with status/code/message. */
void sg_gateway_fail_queue(sg_endpoint_t *ep, int status, const char *code, const char *message);
int64_t sg_gateway_oldest_wait(sg_endpoint_t *ep, int64_t now);

/* metrics.c */
void sg_histogram_observe(sg_histogram_t *h, double value);
/* Counts an answer (status) given after `seconds`. */
void sg_metrics_response(sg_endpoint_t *ep, int status, double seconds);
/* Registers GET /metrics (Prometheus text format) with the router. */
void sg_metrics_routes(sg_router_t *r, sg_daemon_t *d);

/* scaler.c */
void sg_scaler_kick(sg_daemon_t *d);
void sg_scaler_run(sg_daemon_t *d);

/* logs.c */
void sg_logs_emit(sg_daemon_t *d, const char *endpoint, const char *worker, const char *stream, const char *line,
                  size_t len);
void sg_logs_event(sg_daemon_t *d, const char *endpoint, const char *worker, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Starts the log writer on its own connection to the database. */
int sg_logs_init(sg_daemon_t *d, const char *db_path, sg_error_t **err);
void sg_logs_flush(sg_daemon_t *d);
void sg_logs_handle(sg_daemon_t *d, sg_http_req_t *req, sg_endpoint_t *ep);
void sg_logs_shutdown(sg_daemon_t *d);

/* logs.c: reports the lines each worker lost to its rate limit as events. */
void sg_logs_report_drops(sg_daemon_t *d, bool force);
/* Appends the log store's counters to a /metrics answer. */
void sg_logs_metrics(sg_daemon_t *d, struct evbuffer *b);

/* meter/recorder.c */
int sg_meter_init(sg_daemon_t *d, const char *db_path, sg_error_t **err);
const sg_price_table_t *sg_meter_prices(sg_daemon_t *d);
/* Worker lifecycle: started (the runtime started it), ready (healthy),
 * load (in_flight changed by delta; a negative delta is a request that
 * ended), ended (its exit was noticed). */
void sg_meter_worker_started(sg_worker_t *w);
void sg_meter_worker_ready(sg_worker_t *w);
void sg_meter_worker_load(sg_worker_t *w, int delta);
void sg_meter_worker_ended(sg_worker_t *w);
/* The same for a worker whose scheduler reports when it started and ended
 * (wall ms; 0: now): its record spans exactly that time. */
void sg_meter_worker_started_at(sg_worker_t *w, int64_t start_wall);
/* An adopted worker: its last usage record, which the earlier sgpud closed,
 * is reopened and goes on from where it ended (the time between counts as
 * idle, or starting if it never was ready), so that its records cover
 * start_wall (Slurm's start) to its end once. Without records, as
 * sg_meter_worker_started_at(). Reads the store: at startup. */
void sg_meter_worker_adopted(sg_worker_t *w, int64_t start_wall);
void sg_meter_worker_ended_at(sg_worker_t *w, int64_t end_wall);
/* Checkpoints every worker when the interval passed (called every tick). */
void sg_meter_tick(sg_daemon_t *d);
void sg_meter_checkpoint_all(sg_daemon_t *d);
/* Checkpoints every worker and returns the barrier a query waits for off
 * the loop (sg_usage_writer_wait(*writer, *seq)) before it reads usage:
 * *writer is NULL when there is nothing to wait for. Never blocks. */
struct sg_usage_writer;
void sg_meter_barrier(sg_daemon_t *d, struct sg_usage_writer **writer, uint64_t *seq);
/* Closes every open record now and stops the writer. */
void sg_meter_shutdown(sg_daemon_t *d);

/* meter/series.c: per-endpoint time series of the last hour */
void sg_series_tick(sg_daemon_t *d);
void sg_series_free(sg_series_t *s);
json_t *sg_series_to_json(sg_endpoint_t *ep, int64_t since_wall_ms);

/* api/ */
/* Log and usage queries waiting or running on the query pool, at most. */
#define SG_QUERY_QUEUE_MAX 64
/* When the query pool holds SG_QUERY_QUEUE_MAX queries already, answers
 * 503 busy (with Retry-After) and returns true. */
bool sg_api_queries_busy(sg_daemon_t *d, sg_http_req_t *req);
/* Registers /healthz, the console's files and /v1. */
void sg_api_routes(sg_router_t *r, sg_daemon_t *d);

#endif
