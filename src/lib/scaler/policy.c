/* The scale policy. See include/sgpu/policy.h for the contract and
 * bench/scaler-sim.md for the rules, why they differ from Knative's KPA, and
 * what they cost on simulated traces.
 *
 * In short, with t the concurrency one worker is sized for (the policy's
 * value, at most max_concurrency) and D the measured start delay:
 *
 *  - Observed demand is the time average of (in flight + queued) over the
 *    stable (60 s) and panic (6 s) windows, as in the KPA. Panic mode starts
 *    when the panic-window need is twice the ready workers and lasts a
 *    stable window after the last such second; it never scales down.
 *  - Scale-up (concurrency): ceil(observed demand / t), the larger of now
 *    and (while requests wait) the panic-window average, but only as many
 *    workers as will still
 *    have work when ready: a worker started now serves after D, so only the
 *    demand now plus the arrivals expected within D, less what the ready and
 *    starting workers serve meanwhile, drained within one more D, plus the
 *    steady load (arrival rate x service time) count. The arrival rate is
 *    the stable window's, or the last D's when that is higher (a rising
 *    load), or in panic the panic window's while requests keep arriving;
 *    arrivals are extrapolated no further than three times the busy period's
 *    age, so two seconds of requests are not taken for twenty. Until D and
 *    the service time are measured, the formula alone decides.
 *  - Scale-up (queue_delay): more workers once the oldest queued request has
 *    waited the value, enough for the queue less the starting ones, capped
 *    the same way.
 *  - Scale-from-zero: a request at zero workers starts one at once.
 *  - Scale-down: only capacity idle for the idle timeout. A stopped GPU
 *    worker costs a restart (D of billing, and D of waiting for whoever comes
 *    next), so, as in ski rental, capacity needed within the restart horizon
 *    max(idle timeout, D) stays: the highest one-second demand of that
 *    horizon, and the stable-window average (the KPA's stable decision)
 *    while the stable arrival rate expects a request within the horizon.
 *    That keeps a worker no longer than the idle timeout plus scale.hold_s
 *    (default 0): past it a worker stops whatever the windows (panic, the
 *    horizon's peak) say, unless workers.min or the demand now needs it, so
 *    idle_timeout_s is what a user reads. */
#include "sgpu/policy.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void sg_scale_params_from_spec(const sg_spec_t *spec, sg_scale_params_t *out) {
  memset(out, 0, sizeof(*out));
  out->min = spec->workers.min;
  out->max = spec->workers.max;
  out->max_concurrency = spec->workers.max_concurrency;
  out->policy = spec->scale.policy;
  out->value = spec->scale.value;
  out->idle_timeout_ms = (int64_t)(spec->workers.idle_timeout_s * 1000);
  out->hold_ms = (int64_t)(spec->scale.hold_s * 1000);
  out->stable_ms = SG_SCALE_STABLE_MS;
  out->panic_ms = SG_SCALE_PANIC_MS;
  out->panic_threshold = SG_SCALE_PANIC_THRESHOLD;
}

/* ------------------------------------------------------------------ window */

/* The service time is busy slot-time over completions (Little's law),
 * both summed with weights that fade by e every SERVICE_MEMORY_MS of busy
 * time, and trusted after MIN_COMPLETIONS. Quiet time fades nothing, so the
 * estimate outlives idle periods. */
#define SERVICE_MEMORY_MS 120000.0
#define MIN_COMPLETIONS 4

/* Arrivals are extrapolated over at most this many times the age of the
 * current busy period, and in panic mode at the rate of the panic window
 * only as far as the last ARRIVING_MS keep it up. */
#define BURST_AHEAD 3
#define ARRIVING_MS 2000

void sg_scale_window_init(sg_scale_window_t *w) { memset(w, 0, sizeof(*w)); }

static int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* The bucket for second k, emptied first when it still holds an older one. */
static sg_scale_bucket_t *bucket_for(sg_scale_window_t *w, int64_t k) {
  sg_scale_bucket_t *b = &w->b[(uint64_t)k % SG_SCALE_BUCKETS];
  if (b->tag != k + 1) {
    memset(b, 0, sizeof(*b));
    b->tag = k + 1;
    b->ready = w->ready;
    b->min_idle = w->idle_workers;
  }
  return b;
}

/* The bucket of second k, or NULL when the ring no longer holds it. */
static const sg_scale_bucket_t *bucket_at(const sg_scale_window_t *w, int64_t k) {
  const sg_scale_bucket_t *b = &w->b[(uint64_t)k % SG_SCALE_BUCKETS];
  return b->tag == k + 1 ? b : NULL;
}

/* Adds the state held since the last observation over [from, to). */
static void integrate(sg_scale_window_t *w, int64_t from, int64_t to) {
  if (to - from > (int64_t)SG_SCALE_BUCKETS * SG_SCALE_BUCKET_MS)
    from = to - (int64_t)SG_SCALE_BUCKETS * SG_SCALE_BUCKET_MS;
  int demand = w->in_flight + w->queued;
  int64_t t = from;
  while (t < to) {
    int64_t k = floor_div(t, SG_SCALE_BUCKET_MS);
    int64_t end = (k + 1) * SG_SCALE_BUCKET_MS;
    if (end > to)
      end = to;
    sg_scale_bucket_t *b = bucket_for(w, k);
    double dt = (double)(end - t);
    b->demand_ms += demand * dt;
    b->covered_ms += (int32_t)(end - t);
    t = end;
  }
  if (w->in_flight > 0) {
    double fade = exp(-(double)(to - from) / SERVICE_MEMORY_MS);
    w->busy_sum_ms = w->busy_sum_ms * fade + w->in_flight * (double)(to - from);
    w->done_sum *= fade;
  }
}

/* The state an observation leaves for the next one to compare with. */
static void remember(sg_scale_window_t *w, int64_t now, int in_flight, int queued, int ready, int idle_workers,
                     uint64_t completed) {
  w->in_flight = in_flight;
  w->queued = queued;
  w->ready = ready;
  w->idle_workers = idle_workers;
  w->completed = completed;
  w->last_ms = now;
}

void sg_scale_window_observe(sg_scale_window_t *w, int64_t now, int in_flight, int queued, int ready, int idle_workers,
                             uint64_t completed) {
  if (in_flight < 0)
    in_flight = 0;
  if (queued < 0)
    queued = 0;
  if (idle_workers < 0)
    idle_workers = 0;
  int demand = in_flight + queued;
  if (!w->seen) {
    w->seen = true;
    w->first_ms = now;
    w->busy_since_ms = now;
    w->idle = demand == 0;
    w->idle_since_ms = now;
    sg_scale_bucket_t *b = bucket_for(w, floor_div(now, SG_SCALE_BUCKET_MS));
    b->ready = ready;
    b->min_idle = idle_workers;
    b->arrived += demand;
    remember(w, now, in_flight, queued, ready, idle_workers, completed);
    return;
  }
  if (now < w->last_ms)
    return;
  integrate(w, w->last_ms, now);

  int before = w->in_flight + w->queued;
  uint64_t done = completed >= w->completed ? completed - w->completed : 0;
  int64_t arrived = (int64_t)done + demand - before;
  if (arrived < 0)
    arrived = 0;
  sg_scale_bucket_t *b = bucket_for(w, floor_div(now, SG_SCALE_BUCKET_MS));
  w->done_sum += (double)done;
  if (w->done_sum >= MIN_COMPLETIONS)
    w->service_ms = w->busy_sum_ms / w->done_sum;
  b->arrived += (int32_t)arrived;
  b->ready = ready;
  /* Each request that arrived since the last observation may have held an
   * idle worker for a while, unseen. */
  int64_t idle_low = (int64_t)w->idle_workers - arrived;
  if (idle_workers < idle_low)
    idle_low = idle_workers;
  if (idle_low < b->min_idle)
    b->min_idle = (int32_t)(idle_low > 0 ? idle_low : 0);

  /* A request that came and went between two observations counts as demand. */
  if ((demand > 0 || arrived > 0) && w->idle) {
    if (now - w->idle_since_ms >= SG_SCALE_QUIET_MS)
      w->busy_since_ms = now;
    w->idle = false;
  }
  if (demand == 0 && !w->idle) {
    w->idle = true;
    w->idle_since_ms = now;
  }

  remember(w, now, in_flight, queued, ready, idle_workers, completed);
}

void sg_scale_window_note_start(sg_scale_window_t *w, int64_t start_to_ready_ms) {
  if (start_to_ready_ms < 0)
    return;
  double ms = start_to_ready_ms > 0 ? (double)start_to_ready_ms : 1;
  w->start_ms = w->start_ms > 0 ? 0.7 * w->start_ms + 0.3 * ms : ms;
}

/* Sums over the seconds of the span_ms before now, plus the state held since
 * the last observation. */
typedef struct span_sums {
  double demand_ms, covered_ms;
  int64_t arrived;
  double peak_second; /* highest one-second average demand */
} span_sums_t;

static span_sums_t span_sums(const sg_scale_window_t *w, int64_t now, int64_t span_ms) {
  span_sums_t s = {0};
  if (!w || !w->seen || span_ms <= 0)
    return s;
  /* The seconds that start within the span. */
  int64_t last_k = floor_div(now, SG_SCALE_BUCKET_MS);
  int64_t first_k = -floor_div(span_ms - now, SG_SCALE_BUCKET_MS);
  if (last_k - first_k >= SG_SCALE_BUCKETS)
    first_k = last_k - SG_SCALE_BUCKETS + 1;
  for (int64_t k = first_k; k <= last_k; k++) {
    const sg_scale_bucket_t *b = bucket_at(w, k);
    if (!b)
      continue;
    s.demand_ms += b->demand_ms;
    s.covered_ms += b->covered_ms;
    s.arrived += b->arrived;
    if (b->covered_ms > 0 && b->demand_ms / b->covered_ms > s.peak_second)
      s.peak_second = b->demand_ms / b->covered_ms;
  }
  if (now > w->last_ms) {
    int64_t from = w->last_ms > now - span_ms ? w->last_ms : now - span_ms;
    double dt = (double)(now - from);
    s.demand_ms += (w->in_flight + w->queued) * dt;
    s.covered_ms += dt;
  }
  return s;
}

double sg_scale_window_avg(const sg_scale_window_t *w, int64_t now, int64_t span_ms) {
  span_sums_t s = span_sums(w, now, span_ms);
  return s.covered_ms > 0 ? s.demand_ms / s.covered_ms : 0;
}

int sg_scale_window_spare(const sg_scale_window_t *w, int64_t now, int64_t span_ms) {
  if (!w || !w->seen || span_ms < 0 || now - span_ms < w->first_ms)
    return 0;
  int64_t first_k = floor_div(now - span_ms, SG_SCALE_BUCKET_MS);
  int64_t last_k = floor_div(now, SG_SCALE_BUCKET_MS);
  if (last_k - first_k >= SG_SCALE_BUCKETS)
    return 0;
  int spare = w->idle_workers;
  for (int64_t k = first_k; k <= last_k; k++) {
    const sg_scale_bucket_t *b = bucket_at(w, k);
    if (!b)
      return 0;
    if (b->min_idle < spare)
      spare = b->min_idle;
  }
  return spare;
}

/* ------------------------------------------------------------------ decision */

const char *sg_scale_rule_name(sg_scale_rule_t rule) {
  switch (rule) {
  case SG_SCALE_RULE_HOLD:
    return "hold";
  case SG_SCALE_RULE_ZERO:
    return "from_zero";
  case SG_SCALE_RULE_DEMAND:
    return "demand";
  case SG_SCALE_RULE_PANIC:
    return "panic";
  case SG_SCALE_RULE_MIN:
    return "min";
  case SG_SCALE_RULE_IDLE:
    return "idle";
  case SG_SCALE_RULE_WAIT_GPUS:
    return "wait_gpus";
  }
  return "?";
}

static int ceil_pos(double x) {
  if (x <= 1e-9)
    return 0;
  double c = ceil(x - 1e-9);
  return c > 1e6 ? 1000000 : (int)c;
}

/* Concurrency one worker is sized for. */
static double per_worker(const sg_scale_params_t *p) {
  double mc = p->max_concurrency > 0 ? p->max_concurrency : 1;
  if (p->policy != SG_SCALE_CONCURRENCY)
    return mc;
  double t = p->value > 0 ? p->value : 1;
  return t < mc ? t : mc;
}

/* Knative's panic test: the panic-window need is at least threshold times the
 * ready workers (at least one). */
static bool over_threshold(const sg_scale_params_t *p, double avg, int ready, double t) {
  if (avg <= 0)
    return false;
  return ceil_pos(avg / t) >= p->panic_threshold * (ready > 1 ? ready : 1);
}

/* True when the panic test held at the end of any second of the stable
 * window: Knative stays in panic mode for a stable window after the last time
 * the threshold was crossed. Rebuilt from the ring, so no state is kept. */
static bool panicked_within(const sg_scale_params_t *p, const sg_scale_window_t *w, int64_t now, double t) {
  if (!w || !w->seen)
    return false;
  int64_t panic_n = p->panic_ms / SG_SCALE_BUCKET_MS;
  if (panic_n < 1)
    panic_n = 1;
  int64_t last_k = floor_div(now, SG_SCALE_BUCKET_MS) - 1;
  int64_t first_k = last_k - p->stable_ms / SG_SCALE_BUCKET_MS + 1;
  if (last_k - first_k > SG_SCALE_BUCKETS - panic_n)
    first_k = last_k - (SG_SCALE_BUCKETS - panic_n);
  for (int64_t k = first_k; k <= last_k; k++) {
    const sg_scale_bucket_t *end = bucket_at(w, k);
    if (!end)
      continue;
    double demand = 0, covered = 0;
    for (int64_t j = k - panic_n + 1; j <= k; j++) {
      const sg_scale_bucket_t *b = bucket_at(w, j);
      if (b) {
        demand += b->demand_ms;
        covered += b->covered_ms;
      }
    }
    if (covered > 0 && over_threshold(p, demand / covered, end->ready, t))
      return true;
  }
  return false;
}

void sg_scale_decide(const sg_scale_params_t *p, const sg_scale_metrics_t *m, int64_t now, sg_scale_decision_t *out) {
  const sg_scale_window_t *w = m->window && m->window->seen ? m->window : NULL;
  double t = per_worker(p);
  int active = m->ready + m->starting;
  int demand = m->in_flight + m->queued;

  span_sums_t ps = span_sums(w, now, p->panic_ms);
  span_sums_t ss = span_sums(w, now, p->stable_ms);
  double panic_avg = ps.covered_ms > 0 ? ps.demand_ms / ps.covered_ms : demand;
  double stable_avg = ss.covered_ms > 0 ? ss.demand_ms / ss.covered_ms : demand;
  bool panic = over_threshold(p, panic_avg, m->ready, t) || panicked_within(p, w, now, t);

  double service = w ? w->service_ms : 0;
  double start_delay = w ? w->start_ms : 0;
  double rate_stable = ss.covered_ms > 0 ? ss.arrived / ss.covered_ms : 0; /* per ms */
  double rate_panic = ps.covered_ms > 0 ? ps.arrived / ps.covered_ms : 0;
  /* A burst's rate counts only while it is still arriving. */
  span_sums_t ls = span_sums(w, now, ARRIVING_MS);
  double rate_last = ls.covered_ms > 0 ? ls.arrived / ls.covered_ms : 0;
  if (rate_last < rate_panic)
    rate_panic = rate_last;
  double rate = panic && rate_panic > rate_stable ? rate_panic : rate_stable;
  /* A rising load: the last start delay's rate (over a panic window at
   * least), if higher, is the better guess of the rate when a worker started
   * now is ready. */
  if (start_delay > 0 && start_delay < p->stable_ms) {
    int64_t span = (int64_t)start_delay > p->panic_ms ? (int64_t)start_delay : p->panic_ms;
    span_sums_t ds = span_sums(w, now, span);
    double rate_recent = ds.covered_ms > 0 ? ds.arrived / ds.covered_ms : 0;
    if (rate_recent > rate)
      rate = rate_recent;
  }

  /* Scale-up: concurrency worth starting workers for (-1: not modelled yet). */
  double useful = -1;
  if (service > 0 && start_delay > 0) {
    double ahead = start_delay, share = 1;
    double age = w ? (double)(now - w->busy_since_ms) * BURST_AHEAD : start_delay;
    if (age < ahead) {
      ahead = age > 0 ? age : 0;
      share = ahead / start_delay;
    }
    double work = demand + rate * ahead;
    double can = (m->ready * start_delay + (double)m->starting_age_ms) * t / service;
    double backlog = work > can ? work - can : 0;
    useful = share * rate * service + backlog * service / start_delay;
  }
  int need;
  if (p->policy == SG_SCALE_CONCURRENCY) {
    /* The panic-window average counts while requests wait: a worker started
     * for a past average with nothing queued would sit idle. */
    double seen = m->queued > 0 && panic_avg > demand ? panic_avg : demand;
    need = ceil_pos((useful >= 0 && useful < seen ? useful : seen) / t);
  } else {
    /* Busy workers are needed; more only once the oldest queued request has
     * waited past the delay (or nothing runs at all), enough for the queue
     * less what is starting. */
    need = ceil_pos(m->in_flight / t);
    if (m->queued > 0 && (active == 0 || m->oldest_wait_ms >= (int64_t)(p->value * 1000))) {
      int extra = ceil_pos(m->queued / t) - m->starting;
      if (useful >= 0) {
        int cap = ceil_pos(useful / t) - active;
        if (extra > cap)
          extra = cap > 0 ? cap : (m->starting == 0 ? 1 : 0);
      }
      need = active + (extra > 0 ? extra : 0);
    } else if (m->queued > 0 && need < active) {
      need = active;
    }
  }
  sg_scale_rule_t rule = panic ? SG_SCALE_RULE_PANIC : SG_SCALE_RULE_DEMAND;
  if (active == 0 && demand > 0) {
    rule = SG_SCALE_RULE_ZERO;
    if (need < 1)
      need = 1;
  }

  /* Scale-down: what stays although idle past the idle timeout. Within the
   * restart horizon, capacity for its highest one-second demand; and
   * capacity for the stable-window average while, at the stable rate, a
   * request is expected within the horizon (a lone request long ago keeps
   * nothing). */
  int64_t horizon = p->idle_timeout_ms > (int64_t)start_delay ? p->idle_timeout_ms : (int64_t)start_delay;
  if (horizon > p->stable_ms)
    horizon = p->stable_ms;
  span_sums_t rs = span_sums(w, now, horizon);
  int keep = rate_stable * (double)horizon >= 1 ? ceil_pos(stable_avg / t) : 0;
  if (ceil_pos(rs.peak_second / t) > keep)
    keep = ceil_pos(rs.peak_second / t);
  if (panic || keep > active)
    keep = active;

  int expired = m->idle_expired;
  int spare = sg_scale_window_spare(w, now, p->idle_timeout_ms);
  if (spare > expired)
    expired = spare < m->ready ? spare : m->ready;
  int desired = need;
  if (desired < keep)
    desired = keep;
  if (desired < active - expired)
    desired = active - expired;
  if (desired < p->min) {
    desired = p->min;
    if (desired > active)
      rule = SG_SCALE_RULE_MIN;
  }
  if (desired > p->max)
    desired = p->max;

  /* The bound: workers idle past the idle timeout and the hold stop, down
   * to what min and the demand now need, whatever the windows want. */
  int floor_now = ceil_pos(demand / t);
  if (floor_now < p->min)
    floor_now = p->min;
  int force = m->idle_over_hold;
  if (force > active - floor_now)
    force = active - floor_now > 0 ? active - floor_now : 0;
  if (force > 0 && desired > active - force)
    desired = active - force;

  int start = 0, stop = 0, held = 0;
  if (desired > active) {
    start = desired - active;
    if (m->start_slots >= 0 && start > m->start_slots)
      start = m->start_slots;
    if (start == 0)
      rule = SG_SCALE_RULE_WAIT_GPUS;
  } else if (desired < active) {
    stop = active - desired;
    if (stop > expired)
      stop = expired;
    if (stop < force)
      stop = force;
    rule = stop > 0 ? SG_SCALE_RULE_IDLE : SG_SCALE_RULE_HOLD;
  } else {
    rule = SG_SCALE_RULE_HOLD;
  }
  if (start == 0) {
    /* Workers idle past the timeout that the policy keeps, within the hold. */
    int can = m->idle_expired < active - floor_now ? m->idle_expired : active - floor_now;
    held = can - stop > 0 ? can - stop : 0;
  }
  out->desired = desired;
  out->start = start;
  out->stop = stop;
  out->held = held;
  out->panic = panic;
  out->rule = rule;

  char basis[128];
  if (p->policy == SG_SCALE_CONCURRENCY)
    snprintf(basis, sizeof(basis), "concurrency %g: %d in flight, %d queued, avg %.1f over 6s, %.1f over 60s%s", t,
             m->in_flight, m->queued, panic_avg, stable_avg, panic ? ", panic" : "");
  else
    snprintf(basis, sizeof(basis), "queue_delay %gs: %d in flight, %d queued, oldest waited %lld ms%s", p->value,
             m->in_flight, m->queued, (long long)m->oldest_wait_ms, panic ? ", panic" : "");
  switch (rule) {
  case SG_SCALE_RULE_ZERO:
  case SG_SCALE_RULE_DEMAND:
  case SG_SCALE_RULE_PANIC:
  case SG_SCALE_RULE_MIN:
    snprintf(out->reason, sizeof(out->reason), "scale up %d -> %d (%s%s)%s", active, active + start,
             rule == SG_SCALE_RULE_ZERO  ? "from zero; "
             : rule == SG_SCALE_RULE_MIN ? "workers.min; "
                                         : "",
             basis, start < desired - active ? "; limited by free GPUs or backoff" : "");
    break;
  case SG_SCALE_RULE_WAIT_GPUS:
    snprintf(out->reason, sizeof(out->reason), "want %d workers, have %d: waiting for free GPUs or backoff (%s)",
             desired, active, basis);
    break;
  case SG_SCALE_RULE_IDLE:
    snprintf(out->reason, sizeof(out->reason), "scale down %d -> %d (%d idle past the idle timeout, keeping %d; %s)",
             active, active - stop, expired > stop ? expired : stop, desired, basis);
    break;
  case SG_SCALE_RULE_HOLD:
    snprintf(out->reason, sizeof(out->reason), "hold at %d (%s)", active, basis);
    break;
  }
  if (held > 0) {
    size_t len = strlen(out->reason);
    snprintf(out->reason + len, sizeof(out->reason) - len,
             "; holding %d worker%s idle past the idle timeout for scale.hold_s (%gs)", held, held == 1 ? "" : "s",
             (double)p->hold_ms / 1000);
  }
}

/* Start slots: none during a backoff; the free GPUs' worth otherwise; and
 * while starts keep failing one at a time (none while one is starting). */
static int step_start_slots(const sg_scale_input_t *in, int starting) {
  if (in->backing_off)
    return 0;
  int slots = in->gpu_slots;
  if (in->failing)
    slots = starting > 0 ? 0 : (slots < 0 || slots > 1 ? 1 : slots);
  return slots;
}

/* Victim classes, the first stopped first: outdated idle ready workers
 * (replaced anyway), workers not ready yet (a pending job serves nothing),
 * idle ready workers; -1: never a victim. */
static int victim_class(const sg_scale_worker_t *w) {
  if (w->stopping || w->in_flight > 0)
    return -1;
  if (w->state == SG_SCALE_W_READY)
    return w->outdated ? 0 : 2;
  if (w->state == SG_SCALE_W_STARTING)
    return 1;
  return -1;
}

/* True when a is to stop before b (both victims). */
static bool stops_before(const sg_scale_worker_t *a, const sg_scale_worker_t *b) {
  int ca = victim_class(a), cb = victim_class(b);
  if (ca != cb)
    return ca < cb;
  if (ca == 1)
    return a->started_ms > b->started_ms; /* the newest start is the furthest from serving */
  return a->last_used_ms < b->last_used_ms;
}

size_t sg_scale_step(const sg_scale_params_t *p, sg_scale_window_t *window, const sg_scale_input_t *in, int64_t now,
                     sg_scale_decision_t *out, size_t *victims) {
  sg_scale_metrics_t m = {0};
  int idle = 0;
  for (size_t i = 0; i < in->n_workers; i++) {
    const sg_scale_worker_t *w = &in->workers[i];
    if (w->state == SG_SCALE_W_READY) {
      m.ready++;
      if (w->in_flight == 0) {
        idle++;
        if (now - w->last_used_ms >= p->idle_timeout_ms)
          m.idle_expired++;
        if (now - w->last_used_ms >= p->idle_timeout_ms + p->hold_ms)
          m.idle_over_hold++;
      }
    } else if (w->state == SG_SCALE_W_STARTING) {
      m.starting++;
      m.starting_age_ms += now - w->started_ms;
    }
  }
  sg_scale_window_observe(window, now, in->in_flight, in->queued, m.ready, idle, in->completed);
  m.in_flight = in->in_flight;
  m.queued = in->queued;
  m.oldest_wait_ms = in->oldest_wait_ms;
  m.start_slots = step_start_slots(in, m.starting);
  m.window = window;
  sg_scale_decide(p, &m, now, out);

  /* The victims: the stop count's worth, in victim_class order. */
  size_t n = 0;
  for (int k = 0; k < out->stop; k++) {
    size_t best = in->n_workers;
    for (size_t i = 0; i < in->n_workers; i++) {
      const sg_scale_worker_t *w = &in->workers[i];
      if (victim_class(w) < 0 || (best < in->n_workers && !stops_before(w, &in->workers[best])))
        continue;
      bool taken = false;
      for (size_t j = 0; j < n && !taken; j++)
        taken = victims[j] == i;
      if (!taken)
        best = i;
    }
    if (best == in->n_workers)
      break;
    victims[n++] = best;
  }
  return n;
}
