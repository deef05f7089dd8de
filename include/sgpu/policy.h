/* Scale policy: a pure function from (spec bounds, a metrics window, now) to
 * the number of workers an endpoint should have and why. No I/O, no clocks:
 * the same code runs in sgpud and in the trace simulator (bench/scaler-sim).
 *
 * The caller keeps one sg_scale_window_t per endpoint and feeds it every
 * observation (sg_scale_window_observe) and every measured worker start
 * (sg_scale_window_note_start); sg_scale_decide() reads it and never changes
 * it. All times are milliseconds on one monotonic clock chosen by the caller. */
#ifndef SGPU_POLICY_H
#define SGPU_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sgpu/spec.h"

/* The window is a ring of one-second buckets, enough for the stable window
 * plus the panic window with room to spare (and for idle timeouts up to two
 * minutes; longer ones rely on per-worker idle times alone). */
#define SG_SCALE_BUCKET_MS 1000
#define SG_SCALE_BUCKETS 128
/* A pause in demand at least this long ends a busy period. */
#define SG_SCALE_QUIET_MS 5000

/* Defaults learned from Knative's KPA. */
#define SG_SCALE_STABLE_MS 60000
#define SG_SCALE_PANIC_MS 6000
#define SG_SCALE_PANIC_THRESHOLD 2.0

typedef struct sg_scale_params {
  int min;
  int max;
  int max_concurrency;
  sg_scale_policy_t policy;
  double value;            /* concurrency target per worker, or queue delay in seconds */
  int64_t idle_timeout_ms; /* capacity is stopped only after being idle this long */
  int64_t hold_ms;         /* scale.hold_s: how much longer than idle_timeout_ms the policy may keep an idle
                              worker it expects to need (bursts, panic); past both it stops, min permitting */
  int64_t stable_ms;       /* stable window */
  int64_t panic_ms;        /* panic window */
  double panic_threshold;  /* panic when the panic-window need is this many times the ready workers */
} sg_scale_params_t;

/* One second of history: time integrals, so averages are exact whatever the
 * observation rate. */
typedef struct sg_scale_bucket {
  int64_t tag;        /* start time / SG_SCALE_BUCKET_MS + 1; 0 when never used */
  double demand_ms;   /* integral of (in flight + queued) over the covered time */
  int32_t covered_ms; /* observed part of the second */
  int32_t ready;      /* ready workers at the last observation */
  int32_t min_idle;   /* fewest ready workers with nothing in flight */
  int32_t arrived;    /* requests that arrived */
} sg_scale_bucket_t;

/* All zeroes is an empty window. */
typedef struct sg_scale_window {
  sg_scale_bucket_t b[SG_SCALE_BUCKETS];
  bool seen;        /* false before the first observation */
  int64_t first_ms; /* time of the first observation */
  int64_t last_ms;  /* time of the last observation */
  int in_flight, queued, ready, idle_workers;
  uint64_t completed;
  /* Busy periods: a pause shorter than SG_SCALE_QUIET_MS does not end one. */
  bool idle; /* demand has been zero since idle_since_ms */
  int64_t idle_since_ms;
  int64_t busy_since_ms; /* start of the current (or, while idle, the last) busy period */
  /* Estimates that outlive the ring; 0 while unknown. */
  double service_ms;            /* mean time a request holds a worker slot */
  double start_ms;              /* mean time from start to ready */
  double busy_sum_ms, done_sum; /* the service time's sums, fading while busy */
} sg_scale_window_t;

/* What is true now, besides the window. */
typedef struct sg_scale_metrics {
  int ready;                       /* workers taking traffic */
  int starting;                    /* workers started and not yet ready */
  int64_t starting_age_ms;         /* sum over starting workers of the time since each was started */
  int idle_expired;                /* ready workers idle for at least the idle timeout */
  int idle_over_hold;              /* of those, idle for at least the idle timeout plus hold_ms: they stop
                                      whatever the policy wants, unless min or the demand now needs them */
  int in_flight;                   /* requests being served */
  int queued;                      /* requests waiting for a worker */
  int64_t oldest_wait_ms;          /* how long the oldest queued request has waited */
  int start_slots;                 /* workers that could still be started (GPUs, backoff); -1: unlimited */
  const sg_scale_window_t *window; /* may be NULL: no history */
} sg_scale_metrics_t;

/* The rule that set the decision, for logs and tests. */
typedef enum {
  SG_SCALE_RULE_HOLD,      /* nothing to change */
  SG_SCALE_RULE_ZERO,      /* a request arrived at zero workers */
  SG_SCALE_RULE_DEMAND,    /* observed demand (concurrency) or queue wait (queue_delay) */
  SG_SCALE_RULE_PANIC,     /* a burst: the panic window sees twice the ready workers' worth */
  SG_SCALE_RULE_MIN,       /* raised to workers.min */
  SG_SCALE_RULE_IDLE,      /* idle past the idle timeout, and not needed by the stable window or recent peak */
  SG_SCALE_RULE_WAIT_GPUS, /* more wanted, none can start now */
} sg_scale_rule_t;

typedef struct sg_scale_decision {
  int desired;
  int start; /* workers to start now */
  int stop;  /* workers to stop now (sg_scale_step chooses which) */
  int held;  /* workers idle past the idle timeout kept within scale.hold_s */
  bool panic;
  sg_scale_rule_t rule;
  char reason[320];
} sg_scale_decision_t;

void sg_scale_params_from_spec(const sg_spec_t *spec, sg_scale_params_t *out);

/* An empty window (no history, nothing known). */
void sg_scale_window_init(sg_scale_window_t *w);

/* Records the endpoint's state at now: the previous state is integrated over
 * the time since the last observation, then the new one is kept. ready
 * counts workers taking traffic, idle_workers those of them with nothing in
 * flight; completed counts every request that ever completed (it only
 * grows). Observations with now earlier than the last one are ignored. */
void sg_scale_window_observe(sg_scale_window_t *w, int64_t now, int in_flight, int queued, int ready, int idle_workers,
                             uint64_t completed);

/* The fewest idle workers (ready, nothing in flight) at any time in the
 * span_ms before now: capacity that was spare all along. 0 unless the window
 * covers the whole span. */
int sg_scale_window_spare(const sg_scale_window_t *w, int64_t now, int64_t span_ms);

/* Records that a worker took start_to_ready_ms to become ready. */
void sg_scale_window_note_start(sg_scale_window_t *w, int64_t start_to_ready_ms);

/* Average demand (in flight + queued) over the span_ms before now; 0 without
 * history. */
double sg_scale_window_avg(const sg_scale_window_t *w, int64_t now, int64_t span_ms);

/* Decides the worker count. Never below min, never above max, never starts
 * more than start_slots. The idle timeout is the bound a user reads: a
 * worker idle for the idle timeout plus hold_ms (idle_over_hold) is stopped
 * whatever the windows say (panic, recent peaks), unless workers.min or the
 * demand now (in flight + queued) needs it; below that bound the policy may
 * keep idle capacity it expects to need (held, said in the reason), and
 * never scales down otherwise while panicking (except down to max). Stops
 * only capacity idle for the idle timeout: at most the larger of
 * idle_expired and the workers that were all idle at once for the whole
 * timeout (with a balancer that spreads requests over idle workers, no
 * single worker stays idle that long although the capacity does); the
 * caller stops the idle workers unused the longest. */
void sg_scale_decide(const sg_scale_params_t *p, const sg_scale_metrics_t *m, int64_t now, sg_scale_decision_t *out);

const char *sg_scale_rule_name(sg_scale_rule_t rule);

/* ---- the scaler's step: one pass over one endpoint ----
 *
 * sgpud's scaler (src/lib/scaler/scaler.c) and the simulator
 * (bench/scaler-sim.c) both describe the endpoint's workers and demand as an
 * sg_scale_input_t and call sg_scale_step(), which assembles the metrics,
 * feeds the window, decides and chooses the workers to stop. The callers only
 * carry the result out. */

typedef enum {
  SG_SCALE_W_STARTING, /* started, not ready yet */
  SG_SCALE_W_READY,    /* taking traffic */
  SG_SCALE_W_GONE,     /* draining, stopped or failed: neither capacity nor a victim */
} sg_scale_wstate_t;

/* One worker as the scaler sees it. */
typedef struct sg_scale_worker {
  sg_scale_wstate_t state;
  bool stopping;        /* already asked to stop: never chosen again */
  bool outdated;        /* of an older version, being replaced: the first to stop */
  int in_flight;        /* requests and jobs it serves now */
  int64_t started_ms;   /* when it was started */
  int64_t last_used_ms; /* when work last started or ended on it, or when it became ready */
} sg_scale_worker_t;

/* What is true of the endpoint now. */
typedef struct sg_scale_input {
  const sg_scale_worker_t *workers; /* n_workers of them, in the caller's order */
  size_t n_workers;
  int in_flight;          /* requests and jobs being served */
  int queued;             /* requests and jobs waiting for a worker */
  uint64_t completed;     /* everything that ever completed (only grows) */
  int64_t oldest_wait_ms; /* how long the oldest queued one has waited */
  int gpu_slots;          /* workers the free GPUs allow now; -1: unlimited */
  bool backing_off;       /* after failed starts, the backoff runs: start none */
  bool failing;           /* the last start failed: start one at a time */
} sg_scale_input_t;

/* Why sg_scale_step() chooses a worker to stop. */
#define SG_SCALE_STOP_REASON "idle past workers.idle_timeout_s"
/* Why it chooses a worker that is not ready yet (pending or starting). */
#define SG_SCALE_STOP_STARTING_REASON "scale-down: not needed before it is ready"

/* Counts the input's workers into metrics (ready, starting and their ages,
 * idle past p->idle_timeout_ms; start slots from gpu_slots, backing_off and
 * failing), records the observation at now in window, and decides with
 * sg_scale_decide() into *out. Writes the indices into in->workers of the
 * workers to stop to victims (room for in->n_workers) and returns how many:
 * up to out->stop workers not already stopping, in this order: outdated
 * ready workers with nothing in flight, then workers not ready yet (a
 * pending Slurm job serves nothing and would run for nothing), the newest
 * start first, then ready workers with nothing in flight, those used the
 * longest ago first (ties to the earlier index). A worker with work in
 * flight is never chosen.
 * Pure: no I/O, no clock; window is the only state it changes. The caller
 * records measured starts (sg_scale_window_note_start) before the step. */
size_t sg_scale_step(const sg_scale_params_t *p, sg_scale_window_t *window, const sg_scale_input_t *in, int64_t now,
                     sg_scale_decision_t *out, size_t *victims);

#endif
