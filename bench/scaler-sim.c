/* scaler-sim: replays request traces on a virtual clock against scale
 * policies and prints what each costs and how long requests waited.
 *
 *   scaler-sim [--trace NAME] [--start-delay S] [--price USD_PER_GPU_HOUR] [--seed N]
 *
 * Policies: sgpu's own (the same sg_scale_step() sgpud runs: the same
 * metrics, window, decision and choice of workers to stop, at the same 250 ms
 * tick plus the same event kicks),
 * Knative's KPA with its defaults, RunPod-style queue delay, always-on at the
 * trace's peak, and a clairvoyant schedule that knows every arrival.
 *
 * Every simulated worker bills from its start to its stop, rounded up to the
 * second; it takes the start delay to become ready, serves up to
 * max_concurrency requests at once; requests wait in one FIFO queue and go
 * to the worker sgpud's balancer picks. */
#include <getopt.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sgpu/balancer.h"
#include "sgpu/policy.h"

/* ------------------------------------------------------------------ random */

typedef struct rng {
  uint64_t s;
} rng_t;

static uint64_t rng_next(rng_t *r) { /* splitmix64 */
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static double rng_unit(rng_t *r) { return ((double)(rng_next(r) >> 11) + 0.5) / 9007199254740992.0; }

static double rng_exp(rng_t *r, double mean) { return -mean * log(rng_unit(r)); }

static double rng_normal(rng_t *r) { return sqrt(-2.0 * log(rng_unit(r))) * cos(2.0 * M_PI * rng_unit(r)); }

/* Lognormal with the given mean and shape sigma. */
static double rng_lognormal(rng_t *r, double mean, double sigma) {
  double mu = log(mean) - sigma * sigma / 2;
  return exp(mu + sigma * rng_normal(r));
}

/* Pareto with shape alpha and the given mean (alpha > 1). */
static double rng_pareto(rng_t *r, double mean, double alpha) {
  double xm = mean * (alpha - 1) / alpha;
  return xm / pow(rng_unit(r), 1.0 / alpha);
}

/* ------------------------------------------------------------------ traces */

typedef struct trace {
  const char *name;
  const char *about;
  int64_t *arrival; /* ms, ascending */
  int64_t *service; /* ms */
  size_t n, cap;
  int64_t duration;
} trace_t;

static void trace_add(trace_t *t, double arrival_s, double service_s) {
  if (t->n == t->cap) {
    t->cap = t->cap ? t->cap * 2 : 1024;
    t->arrival = realloc(t->arrival, t->cap * sizeof(int64_t));
    t->service = realloc(t->service, t->cap * sizeof(int64_t));
    if (!t->arrival || !t->service)
      abort();
  }
  int64_t svc = (int64_t)llround(service_s * 1000);
  t->arrival[t->n] = (int64_t)llround(arrival_s * 1000);
  t->service[t->n] = svc < 1 ? 1 : svc;
  t->n++;
}

#define SERVICE_MEAN_S 1.5
#define SERVICE_SIGMA 0.5

/* Poisson arrivals at rate(t) per second over [from, to), by thinning. */
static void poisson(trace_t *t, rng_t *r, double from, double to, double (*rate)(double, void *), void *arg,
                    double rate_max) {
  double now = from;
  for (;;) {
    now += rng_exp(r, 1.0 / rate_max);
    if (now >= to)
      return;
    if (rng_unit(r) * rate_max <= rate(now, arg))
      trace_add(t, now, rng_lognormal(r, SERVICE_MEAN_S, SERVICE_SIGMA));
  }
}

static double const_rate(double now, void *arg) { return *(double *)arg; }

static void gen_steady(trace_t *t, rng_t *r) {
  double rate = 2.0;
  t->duration = 2 * 3600 * 1000;
  poisson(t, r, 0, 2 * 3600, const_rate, &rate, rate);
}

/* Two compressed days of two hours each: from 0.02 req/s at night to 4 at noon. */
static double diurnal_rate(double now, void *arg) {
  double day = 7200;
  double x = (1 - cos(2 * M_PI * now / day)) / 2;
  return 0.02 + 3.98 * x * x;
}

static void gen_diurnal(trace_t *t, rng_t *r) {
  t->duration = 4 * 3600 * 1000;
  poisson(t, r, 0, 4 * 3600, diurnal_rate, NULL, 4.0);
}

/* On/off: busy periods of 4 req/s lasting 2 min on average, idle periods of
 * 3 min on average, both exponential. */
static void gen_bursty(trace_t *t, rng_t *r) {
  double end = 4 * 3600, now = 30, rate = 4.0;
  t->duration = (int64_t)end * 1000;
  while (now < end) {
    double on = 20 + rng_exp(r, 100);
    double stop = now + on < end ? now + on : end;
    poisson(t, r, now, stop, const_rate, &rate, rate);
    now = stop + 10 + rng_exp(r, 170);
  }
}

/* Quiet, then 60 requests within 3 s, then nothing for about 10 min. */
static void gen_spike(trace_t *t, rng_t *r) {
  double end = 2 * 3600, now = 60;
  t->duration = (int64_t)end * 1000;
  while (now < end) {
    double at[60];
    for (int i = 0; i < 60; i++)
      at[i] = now + 3 * rng_unit(r);
    for (int i = 1; i < 60; i++)
      for (int j = i; j > 0 && at[j - 1] > at[j]; j--) {
        double tmp = at[j];
        at[j] = at[j - 1];
        at[j - 1] = tmp;
      }
    for (int i = 0; i < 60 && at[i] < end; i++)
      trace_add(t, at[i], rng_lognormal(r, SERVICE_MEAN_S, SERVICE_SIGMA));
    now += 480 + rng_exp(r, 120);
  }
}

/* Steady 1 req/s with Pareto (alpha 1.5) service times of mean 2 s, capped at 5 min. */
static void gen_heavy(trace_t *t, rng_t *r) {
  double now = 0, end = 2 * 3600;
  t->duration = (int64_t)end * 1000;
  for (;;) {
    now += rng_exp(r, 1.0);
    if (now >= end)
      break;
    double s = rng_pareto(r, 2.0, 1.5);
    trace_add(t, now, s > 300 ? 300 : s);
  }
}

/* A batch job: 20 requests within 2 s every 60 s (+-3 s). */
static void gen_periodic(trace_t *t, rng_t *r) {
  double end = 2 * 3600, now = 30;
  t->duration = (int64_t)end * 1000;
  while (now < end) {
    double at[20];
    for (int i = 0; i < 20; i++)
      at[i] = now + 2 * rng_unit(r);
    for (int i = 1; i < 20; i++)
      for (int j = i; j > 0 && at[j - 1] > at[j]; j--) {
        double tmp = at[j];
        at[j] = at[j - 1];
        at[j - 1] = tmp;
      }
    for (int i = 0; i < 20 && at[i] < end; i++)
      trace_add(t, at[i], rng_lognormal(r, SERVICE_MEAN_S, SERVICE_SIGMA));
    now += 57 + 6 * rng_unit(r);
  }
}

typedef struct trace_kind {
  const char *name;
  const char *about;
  void (*gen)(trace_t *, rng_t *);
} trace_kind_t;

static const trace_kind_t trace_kinds[] = {
    {"steady", "Poisson 2 req/s, lognormal service mean 1.5 s, 2 h", gen_steady},
    {"diurnal", "Poisson 0.02-4 req/s over a 2 h day, 2 days", gen_diurnal},
    {"bursty", "on/off: 4 req/s for ~2 min, idle ~3 min, 4 h", gen_bursty},
    {"spike-to-zero", "60 requests in 3 s every ~10 min, 2 h", gen_spike},
    {"heavy-tailed", "Poisson 1 req/s, Pareto(1.5) service mean 2 s, 2 h", gen_heavy},
    {"periodic", "20 requests within 2 s every 60 s, 2 h", gen_periodic},
};

/* ------------------------------------------------------------------ simulation */

typedef enum { POL_OURS, POL_KNATIVE, POL_RUNPOD, POL_ALWAYS_ON, POL_CLAIRVOYANT } policy_kind_t;

typedef struct config {
  int64_t start_delay;
  double price; /* per GPU-hour */
  int max_workers;
  int max_concurrency;
  int64_t idle_timeout;
  double hold_s;      /* sgpu's scale.hold_s */
  bool log_decisions; /* sgpu's decisions to stderr */
} config_t;

enum wstate { W_STARTING, W_READY, W_DRAINING, W_STOPPED };

typedef struct sim_worker {
  enum wstate state;
  int64_t started, ready_at, stopped;
  int64_t last_used;
  int in_flight;
  int64_t *done_at; /* per slot; -1 when free */
} sim_worker_t;

typedef struct result {
  double gpu_s;
  double p50_wait, p99_wait, mean_wait;
  int starts;
  int peak_workers;
} result_t;

typedef struct sim {
  const trace_t *t;
  const config_t *cfg;
  policy_kind_t kind;
  sim_worker_t *w;
  size_t n_w, cap_w;
  sg_balancer_slot_t *slots;
  size_t n_slots;
  sg_scale_worker_t *scale; /* sgpu's policy: the workers as the step sees them */
  size_t *victims;
  size_t n_scale;
  size_t next_arrival; /* first request not yet arrived */
  size_t queue_head;   /* first request not yet dispatched; [queue_head, next_arrival) wait */
  int64_t *wait;
  int in_flight;
  uint64_t completed;
  int starts;
  int peak_live;
  /* sgpu's policy */
  sg_scale_window_t window;
  /* Knative's autoscaler */
  int64_t panic_time; /* -1: not panicking */
  int max_panic_pods;
  int64_t zero_since; /* -1: desired is not zero */
} sim_t;

static int live_workers(const sim_t *s, int *ready, int *starting) {
  int r = 0, st = 0;
  for (size_t i = 0; i < s->n_w; i++) {
    if (s->w[i].state == W_READY)
      r++;
    else if (s->w[i].state == W_STARTING)
      st++;
  }
  if (ready)
    *ready = r;
  if (starting)
    *starting = st;
  return r + st;
}

static void start_worker(sim_t *s, int64_t now) {
  if (s->n_w == s->cap_w) {
    s->cap_w = s->cap_w ? s->cap_w * 2 : 64;
    s->w = realloc(s->w, s->cap_w * sizeof(*s->w));
    if (!s->w)
      abort();
  }
  sim_worker_t *w = &s->w[s->n_w++];
  memset(w, 0, sizeof(*w));
  w->state = W_STARTING;
  w->started = now;
  w->ready_at = now + s->cfg->start_delay;
  w->done_at = malloc(sizeof(int64_t) * (size_t)s->cfg->max_concurrency);
  for (int i = 0; i < s->cfg->max_concurrency; i++)
    w->done_at[i] = -1;
  s->starts++;
  int live = live_workers(s, NULL, NULL);
  if (live > s->peak_live)
    s->peak_live = live;
}

static void stop_worker(sim_worker_t *w, int64_t now) {
  if (w->in_flight > 0) {
    w->state = W_DRAINING; /* finishes what it holds, takes nothing new */
    return;
  }
  w->state = W_STOPPED;
  w->stopped = now;
}

/* Hands queued requests to free slots, choosing workers with sgpud's own
 * balancer (sg_balancer_pick). */
static void dispatch(sim_t *s, int64_t now) {
  while (s->queue_head < s->next_arrival) {
    if (s->n_slots < s->n_w) {
      s->slots = realloc(s->slots, s->cap_w * sizeof(*s->slots));
      if (!s->slots)
        abort();
      s->n_slots = s->cap_w;
    }
    for (size_t i = 0; i < s->n_w; i++)
      s->slots[i] = (sg_balancer_slot_t){s->w[i].state == W_READY, s->w[i].in_flight, s->w[i].last_used};
    int pick = sg_balancer_pick(s->slots, s->n_w, s->cfg->max_concurrency);
    if (pick < 0)
      return;
    sim_worker_t *best = &s->w[pick];
    size_t r = s->queue_head++;
    for (int i = 0; i < s->cfg->max_concurrency; i++)
      if (best->done_at[i] < 0) {
        best->done_at[i] = now + s->t->service[r];
        break;
      }
    best->in_flight++;
    best->last_used = now;
    s->in_flight++;
    s->wait[r] = now - s->t->arrival[r];
  }
}

static int64_t oldest_wait(const sim_t *s, int64_t now) {
  return s->queue_head < s->next_arrival ? now - s->t->arrival[s->queue_head] : 0;
}

static int queued(const sim_t *s) { return (int)(s->next_arrival - s->queue_head); }

static sg_scale_wstate_t scale_state(enum wstate st) {
  return st == W_READY ? SG_SCALE_W_READY : st == W_STARTING ? SG_SCALE_W_STARTING : SG_SCALE_W_GONE;
}

/* sgpu: the pass src/lib/scaler/scaler.c makes, through the same
 * sg_scale_step() (metrics, window, decision and the workers to stop). */
static void run_ours(sim_t *s, int64_t now) {
  if (s->n_scale < s->n_w) {
    s->scale = realloc(s->scale, s->cap_w * sizeof(*s->scale));
    s->victims = realloc(s->victims, s->cap_w * sizeof(*s->victims));
    if (!s->scale || !s->victims)
      abort();
    s->n_scale = s->cap_w;
  }
  for (size_t i = 0; i < s->n_w; i++)
    s->scale[i] = (sg_scale_worker_t){.state = scale_state(s->w[i].state),
                                      .in_flight = s->w[i].in_flight,
                                      .started_ms = s->w[i].started,
                                      .last_used_ms = s->w[i].last_used};
  sg_spec_t spec = {0};
  spec.workers.min = 0;
  spec.workers.max = s->cfg->max_workers;
  spec.workers.max_concurrency = s->cfg->max_concurrency;
  spec.workers.idle_timeout_s = (double)s->cfg->idle_timeout / 1000;
  spec.scale.policy = SG_SCALE_CONCURRENCY;
  spec.scale.value = s->cfg->max_concurrency; /* the spec's default */
  spec.scale.hold_s = s->cfg->hold_s;
  sg_scale_params_t p;
  sg_scale_params_from_spec(&spec, &p);
  sg_scale_input_t in = {.workers = s->scale,
                         .n_workers = s->n_w,
                         .in_flight = s->in_flight,
                         .queued = queued(s),
                         .completed = s->completed,
                         .oldest_wait_ms = oldest_wait(s, now),
                         .gpu_slots = -1};
  sg_scale_decision_t d;
  size_t n_victims = sg_scale_step(&p, &s->window, &in, now, &d, s->victims);
  if (s->cfg->log_decisions && (d.start > 0 || d.stop > 0))
    fprintf(stderr, "%s %9.2f s: %s\n", s->t->name, (double)now / 1000, d.reason);
  for (size_t k = 0; k < n_victims; k++)
    stop_worker(&s->w[s->victims[k]], now);
  for (int k = 0; k < d.start; k++)
    start_worker(s, now);
}

/* Knative's KPA (pkg/autoscaler/scaling/autoscaler.go) with the defaults of
 * config-autoscaler: target = containerConcurrency x 0.7, stable window 60 s,
 * panic window 6 s, panic threshold 200%, max scale-up rate 1000, max
 * scale-down rate 2, scale-down delay 0, scale-to-zero grace period 30 s,
 * ticking every 2 s. The observed concurrency is the per-second average of
 * requests in flight and queued (queue-proxy plus activator). The
 * Deployment's replica count is the decision: extra pods are removed starting
 * with those not ready, then idle ones; busy ones drain. */
#define KN_TARGET_UTILIZATION 0.7
#define KN_GRACE_MS 30000

static void knative_scale_to(sim_t *s, int want, int64_t now) {
  int live = live_workers(s, NULL, NULL);
  for (; live < want; live++)
    start_worker(s, now);
  while (live > want) {
    sim_worker_t *victim = NULL;
    for (size_t i = 0; i < s->n_w; i++) {
      sim_worker_t *w = &s->w[i];
      if (w->state == W_STARTING) {
        victim = w;
        break;
      }
      if (w->state == W_READY && (!victim || w->in_flight < victim->in_flight ||
                                  (w->in_flight == victim->in_flight && w->last_used < victim->last_used)))
        victim = w;
    }
    if (!victim)
      break;
    stop_worker(victim, now);
    live--;
  }
}

static void run_knative(sim_t *s, int64_t now) {
  int ready, starting;
  live_workers(s, &ready, &starting);
  sg_scale_window_observe(&s->window, now, s->in_flight, queued(s), ready, 0, s->completed);
  double target = s->cfg->max_concurrency * KN_TARGET_UTILIZATION;
  double ready_pods = ready > 1 ? ready : 1;
  double stable = sg_scale_window_avg(&s->window, now, 60000);
  double panic = sg_scale_window_avg(&s->window, now, 6000);
  double max_up = ceil(1000.0 * ready_pods);
  double max_down = floor(ready_pods / 2.0);
  double dspc = ceil(stable / target - 1e-9), dppc = ceil(panic / target - 1e-9);
  int dsp = (int)fmin(fmax(dspc, max_down), max_up);
  int dpp = (int)fmin(fmax(dppc, max_down), max_up);
  bool over = dppc / ready_pods >= 2.0;
  if (over) { /* start panicking, or extend the panic */
    s->panic_time = now;
  } else if (s->panic_time >= 0 && s->panic_time + 60000 < now) {
    s->panic_time = -1;
    s->max_panic_pods = 0;
  }
  int want = dsp;
  if (s->panic_time >= 0) {
    if (want < dpp)
      want = dpp;
    if (want > s->max_panic_pods)
      s->max_panic_pods = want;
    want = s->max_panic_pods;
  }
  if (want > s->cfg->max_workers)
    want = s->cfg->max_workers;
  int live = ready + starting;
  if (want == 0) {
    /* Inactive: at most one pod for the grace period, then none. */
    if (s->zero_since < 0)
      s->zero_since = now;
    if (now - s->zero_since < KN_GRACE_MS)
      want = live > 0 ? 1 : 0;
  } else {
    s->zero_since = -1;
  }
  knative_scale_to(s, want, now);
}

/* RunPod-style: a worker for a request queued at zero; more once the oldest
 * queued request has waited 4 s (enough for the queue, counting starting
 * ones); workers idle for RunPod's default 5 s stop. */
#define RP_DELAY_MS 4000
#define RP_IDLE_MS 5000

static void run_runpod(sim_t *s, int64_t now) {
  int ready, starting;
  int live = live_workers(s, &ready, &starting);
  int q = queued(s);
  int want = live;
  if (q > 0 && live == 0)
    want = 1;
  else if (q > 0 && oldest_wait(s, now) >= RP_DELAY_MS) {
    int extra = (q + s->cfg->max_concurrency - 1) / s->cfg->max_concurrency - starting;
    if (extra > 0)
      want = live + extra;
  }
  if (want > s->cfg->max_workers)
    want = s->cfg->max_workers;
  for (int k = live; k < want; k++)
    start_worker(s, now);
  for (size_t i = 0; i < s->n_w; i++) {
    sim_worker_t *w = &s->w[i];
    if (w->state == W_READY && w->in_flight == 0 && now - w->last_used >= RP_IDLE_MS)
      stop_worker(w, now);
  }
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

static double billed_seconds(int64_t from, int64_t to) { return (double)((to - from + 999) / 1000); }

static void finish_result(sim_t *s, int64_t end, result_t *res) {
  double gpu_s = 0;
  for (size_t i = 0; i < s->n_w; i++) {
    sim_worker_t *w = &s->w[i];
    gpu_s += billed_seconds(w->started, w->state == W_STOPPED ? w->stopped : end);
    free(w->done_at);
  }
  size_t n = s->t->n;
  double sum = 0;
  for (size_t i = 0; i < n; i++)
    sum += (double)s->wait[i];
  qsort(s->wait, n, sizeof(int64_t), cmp_i64);
  res->gpu_s = gpu_s;
  res->mean_wait = n ? sum / (double)n / 1000 : 0;
  res->p50_wait = n ? (double)s->wait[(n - 1) / 2] / 1000 : 0;
  res->p99_wait = n ? (double)s->wait[(size_t)((double)(n - 1) * 0.99)] / 1000 : 0;
  res->starts = s->starts;
  res->peak_workers = s->peak_live;
}

/* The reactive policies: an event loop over arrivals, completions, workers
 * becoming ready and scaler passes. */
static void simulate(const trace_t *t, const config_t *cfg, policy_kind_t kind, result_t *res) {
  sim_t s = {.t = t, .cfg = cfg, .kind = kind, .panic_time = -1, .zero_since = -1};
  s.wait = calloc(t->n ? t->n : 1, sizeof(int64_t));
  sg_scale_window_init(&s.window);
  int64_t tick = kind == POL_OURS ? 250 : kind == POL_KNATIVE ? 2000 : 1000;
  int64_t next_tick = 0, now = 0;
  bool kick = true;
  for (;;) {
    int64_t next = next_tick;
    if (s.next_arrival < t->n && t->arrival[s.next_arrival] < next)
      next = t->arrival[s.next_arrival];
    for (size_t i = 0; i < s.n_w; i++) {
      sim_worker_t *w = &s.w[i];
      if (w->state == W_STARTING && w->ready_at < next)
        next = w->ready_at;
      if (w->state == W_READY || w->state == W_DRAINING)
        for (int k = 0; k < cfg->max_concurrency; k++)
          if (w->done_at[k] >= 0 && w->done_at[k] < next)
            next = w->done_at[k];
    }
    if (kick && now < next)
      next = now;
    now = next;
    if (now > t->duration && s.next_arrival == t->n && s.in_flight == 0)
      break;

    /* Completions and workers becoming ready. */
    for (size_t i = 0; i < s.n_w; i++) {
      sim_worker_t *w = &s.w[i];
      if (w->state == W_STARTING && w->ready_at == now) {
        w->state = W_READY;
        w->last_used = now;
        if (kind == POL_OURS)
          sg_scale_window_note_start(&s.window, now - w->started);
        kick = kind == POL_OURS ? true : kick;
      }
      if (w->state == W_READY || w->state == W_DRAINING)
        for (int k = 0; k < cfg->max_concurrency; k++)
          if (w->done_at[k] == now) {
            w->done_at[k] = -1;
            w->in_flight--;
            w->last_used = now;
            s.in_flight--;
            s.completed++;
            kick = kind == POL_OURS ? true : kick;
          }
      if (w->state == W_DRAINING && w->in_flight == 0) {
        w->state = W_STOPPED;
        w->stopped = now;
      }
    }
    /* Arrivals. */
    while (s.next_arrival < t->n && t->arrival[s.next_arrival] == now) {
      s.next_arrival++;
      dispatch(&s, now);
      if (s.queue_head < s.next_arrival) {
        /* Queued: sgpud kicks its scaler; Knative's activator and RunPod
         * react at once only at zero workers. */
        if (kind == POL_OURS || live_workers(&s, NULL, NULL) == 0)
          kick = true;
      }
    }
    dispatch(&s, now);
    if (now == next_tick || kick) {
      if (kind == POL_OURS)
        run_ours(&s, now);
      else if (kind == POL_KNATIVE)
        run_knative(&s, now);
      else
        run_runpod(&s, now);
      kick = false;
      if (now == next_tick)
        next_tick += tick;
    }
  }
  int64_t end = now > t->duration ? now : t->duration;
  finish_result(&s, end, res);
  free(s.slots);
  free(s.scale);
  free(s.victims);
  free(s.w);
  free(s.wait);
}

/* The zero-wait worker count over time: requests served on arrival. */
static int peak_concurrency(const trace_t *t, int mc) {
  int64_t *ends = calloc(t->n ? t->n : 1, sizeof(int64_t));
  size_t n_ends = 0;
  int peak = 0;
  for (size_t i = 0; i < t->n; i++) {
    /* ends is a min-heap of completion times */
    int64_t a = t->arrival[i];
    while (n_ends > 0 && ends[0] <= a) {
      ends[0] = ends[--n_ends];
      for (size_t k = 0;;) {
        size_t l = 2 * k + 1, r = l + 1, m = k;
        if (l < n_ends && ends[l] < ends[m])
          m = l;
        if (r < n_ends && ends[r] < ends[m])
          m = r;
        if (m == k)
          break;
        int64_t tmp = ends[k];
        ends[k] = ends[m];
        ends[m] = tmp;
        k = m;
      }
    }
    size_t k = n_ends++;
    ends[k] = a + t->service[i];
    while (k > 0 && ends[(k - 1) / 2] > ends[k]) {
      int64_t tmp = ends[k];
      ends[k] = ends[(k - 1) / 2];
      ends[(k - 1) / 2] = tmp;
      k = (k - 1) / 2;
    }
    int need = (int)((n_ends + (size_t)mc - 1) / (size_t)mc);
    if (need > peak)
      peak = need;
  }
  free(ends);
  return peak;
}

static void always_on(const trace_t *t, const config_t *cfg, result_t *res) {
  int n = peak_concurrency(t, cfg->max_concurrency);
  memset(res, 0, sizeof(*res));
  res->gpu_s = n * billed_seconds(-cfg->start_delay, t->duration);
  res->starts = n;
  res->peak_workers = n;
}

/* Knows every arrival: each request is served on arrival by a worker that
 * was started exactly one start delay earlier, or by one already running; a
 * worker stays up across an idle gap only when the gap is shorter than a
 * restart would cost (the start delay). Requests go to a busy worker with a
 * free slot first, then to the idle worker freed most recently. */
typedef struct cv_worker {
  int64_t life_start, last_end;
  int64_t *busy_until;
  bool dead;
} cv_worker_t;

static void clairvoyant(const trace_t *t, const config_t *cfg, result_t *res) {
  int mc = cfg->max_concurrency;
  int64_t d = cfg->start_delay;
  cv_worker_t *w = NULL;
  size_t n_w = 0, cap = 0;
  double gpu_s = 0;
  int starts = 0;
  for (size_t i = 0; i < t->n; i++) {
    int64_t a = t->arrival[i], end = a + t->service[i];
    cv_worker_t *best = NULL;
    int best_busy = -1;
    for (size_t k = 0; k < n_w; k++) {
      cv_worker_t *x = &w[k];
      if (x->dead)
        continue;
      int busy = 0, free_slot = -1;
      for (int j = 0; j < mc; j++) {
        if (x->busy_until[j] > a)
          busy++;
        else if (free_slot < 0)
          free_slot = j;
      }
      if (busy == 0 && a - x->last_end > d) {
        /* Idle for longer than a restart costs: its life ended. */
        gpu_s += billed_seconds(x->life_start, x->last_end);
        x->dead = true;
        continue;
      }
      if (free_slot < 0)
        continue;
      if (busy > best_busy || (busy == best_busy && busy == 0 && x->last_end > best->last_end)) {
        best = x;
        best_busy = busy;
      }
    }
    if (!best) {
      if (n_w == cap) {
        cap = cap ? cap * 2 : 64;
        w = realloc(w, cap * sizeof(*w));
        if (!w)
          abort();
      }
      best = &w[n_w++];
      best->life_start = a - d;
      best->last_end = a;
      best->dead = false;
      best->busy_until = calloc((size_t)mc, sizeof(int64_t));
      for (int j = 0; j < mc; j++)
        best->busy_until[j] = INT64_MIN;
      starts++;
    }
    for (int j = 0; j < mc; j++)
      if (best->busy_until[j] <= a) {
        best->busy_until[j] = end;
        break;
      }
    if (end > best->last_end)
      best->last_end = end;
  }
  for (size_t k = 0; k < n_w; k++) {
    if (!w[k].dead)
      gpu_s += billed_seconds(w[k].life_start, w[k].last_end);
    free(w[k].busy_until);
  }
  free(w);
  memset(res, 0, sizeof(*res));
  res->gpu_s = gpu_s;
  res->starts = starts;
}

/* ------------------------------------------------------------------ report */

static const char *policy_names[] = {
    [POL_OURS] = "sgpu (concurrency, defaults)",     [POL_KNATIVE] = "Knative KPA (defaults)",
    [POL_RUNPOD] = "RunPod-style queue_delay 4 s",   [POL_ALWAYS_ON] = "always-on at peak",
    [POL_CLAIRVOYANT] = "clairvoyant (lower bound)",
};

static void usage(FILE *f) {
  fprintf(f, "usage: scaler-sim [--trace NAME|all] [--start-delay SECONDS] [--idle-timeout SECONDS]\n"
             "                  [--hold SECONDS] [--price USD_PER_GPU_HOUR] [--seed N] [--decisions]\n"
             "traces:");
  for (size_t i = 0; i < sizeof(trace_kinds) / sizeof(trace_kinds[0]); i++)
    fprintf(f, " %s", trace_kinds[i].name);
  fprintf(f, "\n");
}

int main(int argc, char **argv) {
  const char *only = "all";
  double start_delay_s = 20, price = 2.0, idle_timeout_s = 30, hold_s = 0;
  uint64_t seed = 1;
  static const struct option opts[] = {{"trace", required_argument, NULL, 't'},
                                       {"start-delay", required_argument, NULL, 'd'},
                                       {"price", required_argument, NULL, 'p'},
                                       {"seed", required_argument, NULL, 's'},
                                       {"idle-timeout", required_argument, NULL, 'i'},
                                       {"hold", required_argument, NULL, 'H'},
                                       {"decisions", no_argument, NULL, 'l'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  int c;
  bool log_decisions = false;
  while ((c = getopt_long(argc, argv, "t:d:p:s:i:H:lh", opts, NULL)) != -1) {
    switch (c) {
    case 'l':
      log_decisions = true;
      break;
    case 'i':
      idle_timeout_s = atof(optarg);
      break;
    case 'H':
      hold_s = atof(optarg);
      break;
    case 't':
      only = optarg;
      break;
    case 'd':
      start_delay_s = atof(optarg);
      break;
    case 'p':
      price = atof(optarg);
      break;
    case 's':
      seed = strtoull(optarg, NULL, 10);
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      usage(stderr);
      return 2;
    }
  }
  if (start_delay_s < 0 || price < 0 || idle_timeout_s < 0 || hold_s < 0) {
    usage(stderr);
    return 2;
  }
  config_t cfg = {.start_delay = (int64_t)(start_delay_s * 1000),
                  .price = price,
                  .max_workers = 64,
                  .max_concurrency = 1,
                  .idle_timeout = (int64_t)(idle_timeout_s * 1000),
                  .hold_s = hold_s,
                  .log_decisions = log_decisions};
  bool known = !strcmp(only, "all");
  for (size_t k = 0; k < sizeof(trace_kinds) / sizeof(trace_kinds[0]); k++)
    known = known || !strcmp(only, trace_kinds[k].name);
  if (!known) {
    fprintf(stderr, "scaler-sim: unknown trace %s\n", only);
    usage(stderr);
    return 2;
  }
  printf("scaler-sim: worker start delay %.1f s, GPU price $%.2f/h, max_concurrency %d, max %d workers,\n"
         "idle_timeout_s %g, scale.hold_s %g, seed %llu\n",
         start_delay_s, price, cfg.max_concurrency, cfg.max_workers, (double)cfg.idle_timeout / 1000, cfg.hold_s,
         (unsigned long long)seed);
  int failed = 0;
  for (size_t k = 0; k < sizeof(trace_kinds) / sizeof(trace_kinds[0]); k++) {
    const trace_kind_t *tk = &trace_kinds[k];
    if (strcmp(only, "all") && strcmp(only, tk->name))
      continue;
    trace_t t = {.name = tk->name, .about = tk->about};
    rng_t r = {seed * 1000003u + k};
    tk->gen(&t, &r);
    double work = 0;
    for (size_t i = 0; i < t.n; i++)
      work += (double)t.service[i] / 1000;
    printf("\n## %s: %s (%zu requests, %.0f GPU-s of work)\n\n", tk->name, tk->about, t.n, work);
    printf("| policy | GPU-s | $ | x clairvoyant | p50 wait s | p99 wait s | cold starts |\n"
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    result_t res[5];
    for (int pk = 0; pk < 5; pk++) {
      if (pk == POL_ALWAYS_ON)
        always_on(&t, &cfg, &res[pk]);
      else if (pk == POL_CLAIRVOYANT)
        clairvoyant(&t, &cfg, &res[pk]);
      else
        simulate(&t, &cfg, (policy_kind_t)pk, &res[pk]);
    }
    for (int pk = 0; pk < 5; pk++)
      printf("| %s | %.0f | %.2f | %.2f | %.2f | %.2f | %d |\n", policy_names[pk], res[pk].gpu_s,
             res[pk].gpu_s * price / 3600, res[pk].gpu_s / res[POL_CLAIRVOYANT].gpu_s, res[pk].p50_wait,
             res[pk].p99_wait, res[pk].starts);
    double vs_kn = res[POL_OURS].gpu_s / res[POL_KNATIVE].gpu_s;
    double vs_cv = res[POL_OURS].gpu_s / res[POL_CLAIRVOYANT].gpu_s;
    bool p99_ok = res[POL_OURS].p99_wait <= res[POL_KNATIVE].p99_wait;
    printf("\nsgpu vs Knative: %.2fx GPU-s, p99 wait %.2f s vs %.2f s; sgpu vs clairvoyant: %.2fx", vs_kn,
           res[POL_OURS].p99_wait, res[POL_KNATIVE].p99_wait, vs_cv);
    if (!strcmp(tk->name, "bursty") || !strcmp(tk->name, "diurnal")) {
      bool ok = vs_kn <= 0.8 && p99_ok && vs_cv <= 1.3;
      printf(" -- target (<= 0.8x Knative at <= its p99, <= 1.3x clairvoyant): %s", ok ? "met" : "NOT met");
      failed += !ok;
    }
    printf("\n");
    free(t.arrival);
    free(t.service);
  }
  if (failed)
    printf("\n%d target trace(s) not met\n", failed);
  return 0;
}
