/* The scale policy: a pure function over (params, metrics window, now), so
 * every case builds a synthetic window on a virtual clock and checks the
 * decision exactly. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "sgpu/policy.h"
#include "sgpu/util.h"

#define T0 1000000 /* virtual clock start, ms */

static sg_scale_params_t params(sg_scale_policy_t policy, int min, int max, int mc, double value,
                                int64_t idle_timeout_ms) {
  return (sg_scale_params_t){.min = min,
                             .max = max,
                             .max_concurrency = mc,
                             .policy = policy,
                             .value = value,
                             .idle_timeout_ms = idle_timeout_ms,
                             .stable_ms = SG_SCALE_STABLE_MS,
                             .panic_ms = SG_SCALE_PANIC_MS,
                             .panic_threshold = SG_SCALE_PANIC_THRESHOLD};
}

static sg_scale_params_t conc(int min, int max, int mc, double value) {
  return params(SG_SCALE_CONCURRENCY, min, max, mc, value, 30000);
}

static sg_scale_params_t qdelay(int min, int max, int mc, double delay_s) {
  return params(SG_SCALE_QUEUE_DELAY, min, max, mc, delay_s, 30000);
}

/* Metrics with unlimited start slots and no history. */
static sg_scale_metrics_t metrics(int ready, int starting, int idle_expired, int in_flight, int queued,
                                  int64_t oldest_wait_ms) {
  return (sg_scale_metrics_t){.ready = ready,
                              .starting = starting,
                              .idle_expired = idle_expired,
                              .in_flight = in_flight,
                              .queued = queued,
                              .oldest_wait_ms = oldest_wait_ms,
                              .start_slots = -1};
}

static sg_scale_decision_t decide_at(sg_scale_params_t p, sg_scale_metrics_t m, int64_t now) {
  sg_scale_decision_t d;
  memset(&d, 0x5a, sizeof(d));
  sg_scale_decide(&p, &m, now, &d);
  assert_non_null(memchr(d.reason, '\0', sizeof(d.reason)));
  return d;
}

static sg_scale_decision_t decide(sg_scale_params_t p, sg_scale_metrics_t m) { return decide_at(p, m, T0); }

#define assert_decision(d, want_desired, want_start, want_stop)                                                        \
  do {                                                                                                                 \
    assert_int_equal((d).desired, (want_desired));                                                                     \
    assert_int_equal((d).start, (want_start));                                                                         \
    assert_int_equal((d).stop, (want_stop));                                                                           \
  } while (0)

/* A window fed on a virtual clock the way the scaler loop feeds it: one
 * observation every 250 ms. */
typedef struct feed {
  sg_scale_window_t w;
  int64_t now;
  uint64_t done;
  double done_frac;
} feed_t;

static void feed_init(feed_t *f) {
  memset(f, 0, sizeof(*f));
  sg_scale_window_init(&f->w);
  f->now = T0;
}

/* Holds a state for ms from now on, completing completions_per_s requests a
 * second. */
static void hold(feed_t *f, int64_t ms, int in_flight, int queued, int ready, double completions_per_s) {
  int idle = ready > in_flight ? ready - in_flight : 0; /* one request per worker */
  sg_scale_window_observe(&f->w, f->now, in_flight, queued, ready, idle, f->done);
  for (int64_t end = f->now + ms; f->now < end;) {
    int64_t step = end - f->now < 250 ? end - f->now : 250;
    f->now += step;
    f->done_frac += completions_per_s * (double)step / 1000;
    while (f->done_frac >= 1) {
      f->done++;
      f->done_frac -= 1;
    }
    sg_scale_window_observe(&f->w, f->now, in_flight, queued, ready, idle, f->done);
  }
}

/* Metrics of the current state with the window attached. */
static sg_scale_metrics_t at(feed_t *f, int ready, int starting, int idle_expired, int in_flight, int queued) {
  sg_scale_metrics_t m = metrics(ready, starting, idle_expired, in_flight, queued, 0);
  m.window = &f->w;
  return m;
}

/* A window that knows the service time (1 s: four requests in flight on
 * four or more workers, four completions a second, for 30 s) and the start
 * delay. */
static void feed_known(feed_t *f, int ready, int64_t start_delay_ms) {
  feed_init(f);
  hold(f, 30000, 4, 0, ready > 4 ? ready : 4, 4);
  sg_scale_window_note_start(&f->w, start_delay_ms);
}

/* ------------------------------------------------------------------ window */

static void test_window_empty(void **state) {
  (void)state;
  sg_scale_window_t a, zero;
  memset(&a, 0x5a, sizeof(a));
  sg_scale_window_init(&a);
  memset(&zero, 0, sizeof(zero));
  assert_memory_equal(&a, &zero, sizeof(a)); /* a calloc'd window is an empty one */
  assert_false(a.seen);
  assert_true(sg_scale_window_avg(&a, T0, 60000) == 0);
  assert_true(sg_scale_window_avg(NULL, T0, 60000) == 0);
}

static void test_window_averages(void **state) {
  (void)state;
  feed_t f;
  feed_init(&f);
  hold(&f, 60000, 4, 0, 4, 0);
  assert_true(fabs(sg_scale_window_avg(&f.w, f.now, 60000) - 4) < 1e-9);
  assert_true(fabs(sg_scale_window_avg(&f.w, f.now, 6000) - 4) < 1e-9);
  /* Six quiet seconds: the panic window forgets, the stable window barely. */
  hold(&f, 6000, 0, 0, 4, 0);
  assert_true(sg_scale_window_avg(&f.w, f.now, 6000) == 0);
  double stable = sg_scale_window_avg(&f.w, f.now, 60000);
  assert_true(stable > 3.5 && stable < 3.7);
  /* Queued requests count as demand, like in-flight ones. */
  hold(&f, 6000, 1, 3, 1, 0);
  assert_true(fabs(sg_scale_window_avg(&f.w, f.now, 6000) - 4) < 1e-9);
}

/* Averages are time integrals: the same history observed 25 times more often
 * gives the same numbers. */
static void test_window_rate_independent(void **state) {
  (void)state;
  static const struct {
    int64_t ms;
    int in_flight, queued;
  } pattern[] = {{1250, 1, 0}, {2750, 3, 2}, {500, 0, 0}, {4000, 2, 7}, {1000, 1, 1}};
  sg_scale_window_t coarse, fine;
  sg_scale_window_init(&coarse);
  sg_scale_window_init(&fine);
  int64_t now = T0;
  for (size_t i = 0; i < SG_ARRAY_SIZE(pattern); i++) {
    sg_scale_window_observe(&fine, now, pattern[i].in_flight, pattern[i].queued, 1, 0, 0);
    sg_scale_window_observe(&coarse, now, pattern[i].in_flight, pattern[i].queued, 1, 0, 0);
    for (int64_t t = 10; t <= pattern[i].ms; t += 10) {
      sg_scale_window_observe(&fine, now + t, pattern[i].in_flight, pattern[i].queued, 1, 0, 0);
      if (t % 250 == 0)
        sg_scale_window_observe(&coarse, now + t, pattern[i].in_flight, pattern[i].queued, 1, 0, 0);
    }
    now += pattern[i].ms;
  }
  for (int64_t span = 1000; span <= 60000; span += 1000)
    assert_true(fabs(sg_scale_window_avg(&coarse, now, span) - sg_scale_window_avg(&fine, now, span)) < 1e-9);
  /* An observation from the past is ignored. */
  sg_scale_window_t copy = coarse;
  sg_scale_window_observe(&coarse, now - 5000, 50, 50, 1, 0, 0);
  assert_memory_equal(&copy, &coarse, sizeof(copy));
}

static void test_window_estimates(void **state) {
  (void)state;
  feed_t f;
  feed_init(&f);
  /* Too few completions: no service time yet. */
  hold(&f, 1000, 2, 0, 2, 2);
  assert_true(f.w.service_ms == 0);
  /* Little's law: 4 in flight, 4 completions a second -> 1 s each. */
  hold(&f, 30000, 4, 0, 4, 4);
  assert_true(fabs(f.w.service_ms - 1000) < 50);
  /* Kept once traffic stops and the ring forgets. */
  hold(&f, 300000, 0, 0, 0, 0);
  assert_true(fabs(f.w.service_ms - 1000) < 50);
  /* Start delays: the first one, then a moving average. */
  assert_true(f.w.start_ms == 0);
  sg_scale_window_note_start(&f.w, 20000);
  assert_true(f.w.start_ms == 20000);
  sg_scale_window_note_start(&f.w, 10000);
  assert_true(fabs(f.w.start_ms - 17000) < 1e-6);
  sg_scale_window_note_start(&f.w, -5);
  assert_true(fabs(f.w.start_ms - 17000) < 1e-6);
}

/* ------------------------------------------------------------------ scale from zero */

static void test_idle_at_zero_holds(void **state) {
  (void)state;
  sg_scale_decision_t d = decide(conc(0, 4, 1, 1), metrics(0, 0, 0, 0, 0, 0));
  assert_decision(d, 0, 0, 0);
  assert_int_equal(d.rule, SG_SCALE_RULE_HOLD);
  assert_true(sg_str_has_prefix(d.reason, "hold at 0"));
  d = decide(qdelay(0, 4, 1, 2), metrics(0, 0, 0, 0, 0, 0));
  assert_decision(d, 0, 0, 0);
}

static void test_scale_from_zero_immediate(void **state) {
  (void)state;
  sg_scale_decision_t d = decide(conc(0, 4, 1, 1), metrics(0, 0, 0, 0, 1, 0));
  assert_decision(d, 1, 1, 0);
  assert_int_equal(d.rule, SG_SCALE_RULE_ZERO);
  assert_true(sg_str_has_prefix(d.reason, "scale up 0 -> 1 (from zero"));
  /* queue_delay starts at once from zero, whatever the delay. */
  d = decide(qdelay(0, 4, 1, 30), metrics(0, 0, 0, 0, 1, 0));
  assert_decision(d, 1, 1, 0);
  d = decide(qdelay(0, 4, 2, 30), metrics(0, 0, 0, 0, 3, 0));
  assert_decision(d, 2, 2, 0);

  /* With long quiet history and a model that predicts little: still one at
   * once, at the very observation where the request is queued. */
  feed_t f;
  feed_known(&f, 1, 20000);
  hold(&f, 600000, 0, 0, 0, 0);
  hold(&f, 10, 0, 1, 0, 0);
  d = decide_at(conc(0, 4, 1, 1), at(&f, 0, 0, 0, 0, 1), f.now);
  assert_decision(d, 1, 1, 0);
  assert_int_equal(d.rule, SG_SCALE_RULE_ZERO);
  d = decide_at(qdelay(0, 4, 1, 5), at(&f, 0, 0, 0, 0, 1), f.now);
  assert_decision(d, 1, 1, 0);
  /* Not twice: the one starting takes the request. */
  d = decide_at(conc(0, 4, 1, 1), at(&f, 0, 1, 0, 0, 1), f.now + 250);
  assert_decision(d, 1, 0, 0);
}

/* ------------------------------------------------------------------ bounds */

static void test_min_kept(void **state) {
  (void)state;
  /* Started up to min with no traffic. */
  sg_scale_decision_t d = decide(conc(2, 4, 1, 1), metrics(0, 0, 0, 0, 0, 0));
  assert_decision(d, 2, 2, 0);
  assert_int_equal(d.rule, SG_SCALE_RULE_MIN);
  d = decide(qdelay(2, 4, 1, 1), metrics(1, 0, 0, 0, 0, 0));
  assert_decision(d, 2, 1, 0);
  /* Idle-expired workers above min stop, down to min. */
  d = decide(conc(2, 4, 1, 1), metrics(3, 0, 3, 0, 0, 0));
  assert_decision(d, 2, 0, 1);
  assert_int_equal(d.rule, SG_SCALE_RULE_IDLE);
  assert_true(sg_str_has_prefix(d.reason, "scale down 3 -> 2"));
  d = decide(conc(2, 4, 1, 1), metrics(2, 0, 2, 0, 0, 0));
  assert_decision(d, 2, 0, 0);
  d = decide(qdelay(1, 4, 1, 1), metrics(4, 0, 4, 0, 0, 0));
  assert_decision(d, 1, 0, 3);
}

static void test_max_never_exceeded(void **state) {
  (void)state;
  sg_scale_decision_t d = decide(conc(0, 4, 1, 1), metrics(0, 0, 0, 0, 100, 0));
  assert_decision(d, 4, 4, 0);
  d = decide(conc(0, 4, 1, 1), metrics(3, 0, 0, 3, 97, 0));
  assert_decision(d, 4, 1, 0);
  d = decide(conc(0, 4, 1, 1), metrics(2, 2, 0, 2, 50, 0));
  assert_decision(d, 4, 0, 0);
  d = decide(qdelay(0, 3, 1, 0), metrics(3, 0, 0, 3, 50, 60000));
  assert_decision(d, 3, 0, 0);
  /* More workers than max (max lowered): only idle-expired ones stop. */
  d = decide(conc(0, 2, 1, 1), metrics(5, 0, 0, 5, 0, 0));
  assert_int_equal(d.desired, 2);
  assert_int_equal(d.start, 0);
  assert_int_equal(d.stop, 0);
  d = decide(conc(0, 2, 1, 1), metrics(5, 0, 1, 4, 0, 0));
  assert_int_equal(d.start, 0);
  assert_int_equal(d.stop, 1);
  d = decide(conc(1, 2, 1, 1), metrics(5, 0, 5, 0, 0, 0));
  assert_decision(d, 1, 0, 4);
  d = decide(conc(0, 2, 1, 1), metrics(5, 0, 5, 0, 0, 0));
  assert_decision(d, 0, 0, 5);
}

static void test_gpu_exhaustion(void **state) {
  (void)state;
  sg_scale_params_t p = conc(0, 8, 1, 1);
  sg_scale_metrics_t m = metrics(0, 0, 0, 0, 5, 0);
  m.start_slots = 2;
  sg_scale_decision_t d = decide(p, m);
  assert_decision(d, 5, 2, 0);
  assert_non_null(strstr(d.reason, "limited by free GPUs"));
  m.start_slots = 0;
  d = decide(p, m);
  assert_decision(d, 5, 0, 0);
  assert_int_equal(d.rule, SG_SCALE_RULE_WAIT_GPUS);
  assert_true(sg_str_has_prefix(d.reason, "want 5 workers, have 0"));
  m.start_slots = 5;
  d = decide(p, m);
  assert_decision(d, 5, 5, 0);
  assert_null(strstr(d.reason, "limited"));
  m.start_slots = 100;
  d = decide(p, m);
  assert_decision(d, 5, 5, 0);
  /* Slots do not matter when scaling down. */
  m = metrics(3, 0, 3, 0, 0, 0);
  m.start_slots = 0;
  d = decide(p, m);
  assert_decision(d, 0, 0, 3);
  /* min waits for GPUs the same way. */
  m = metrics(0, 0, 0, 0, 0, 0);
  m.start_slots = 0;
  d = decide(conc(2, 4, 1, 1), m);
  assert_decision(d, 2, 0, 0);
  assert_int_equal(d.rule, SG_SCALE_RULE_WAIT_GPUS);
}

/* ------------------------------------------------------------------ idle timeout */

static void test_only_idle_expired_stopped(void **state) {
  (void)state;
  sg_scale_params_t p = conc(0, 8, 1, 1);
  /* No traffic but nobody has been idle long enough: hold. */
  sg_scale_decision_t d = decide(p, metrics(3, 0, 0, 0, 0, 0));
  assert_decision(d, 3, 0, 0);
  d = decide(p, metrics(3, 0, 1, 0, 0, 0));
  assert_decision(d, 2, 0, 1);
  /* One busy, two idle-expired: the two go. */
  d = decide(p, metrics(3, 0, 2, 1, 0, 0));
  assert_decision(d, 1, 0, 2);
  /* Starting workers are never stopped for idleness. */
  d = decide(p, metrics(1, 2, 1, 0, 0, 0));
  assert_decision(d, 2, 0, 1);
  d = decide(qdelay(0, 8, 1, 2), metrics(4, 0, 1, 2, 0, 0));
  assert_decision(d, 3, 0, 1);
  d = decide(qdelay(0, 8, 1, 2), metrics(4, 0, 0, 2, 0, 0));
  assert_decision(d, 4, 0, 0);
}

/* A balancer that spreads requests keeps every worker recently used: one
 * request at a time on four workers leaves none idle past the timeout, but
 * three of them were spare all along, and those stop. */
static void test_spare_capacity_stops(void **state) {
  (void)state;
  sg_scale_params_t p = params(SG_SCALE_CONCURRENCY, 0, 8, 1, 1, 10000);
  feed_t f;
  feed_init(&f);
  hold(&f, 5000, 1, 0, 4, 0);
  /* The window does not cover the idle timeout yet: nothing stops. */
  assert_int_equal(sg_scale_window_spare(&f.w, f.now, 10000), 0);
  sg_scale_decision_t d = decide_at(p, at(&f, 4, 0, 0, 1, 0), f.now);
  assert_decision(d, 4, 0, 0);
  hold(&f, 70000, 1, 0, 4, 0);
  assert_int_equal(sg_scale_window_spare(&f.w, f.now, 10000), 3);
  d = decide_at(p, at(&f, 4, 0, 0, 1, 0), f.now);
  assert_decision(d, 1, 0, 3);
  assert_int_equal(d.rule, SG_SCALE_RULE_IDLE);
  /* Two requests at once for a moment within the timeout: one fewer spare. */
  hold(&f, 500, 2, 0, 4, 0);
  hold(&f, 5000, 1, 0, 4, 1);
  assert_int_equal(sg_scale_window_spare(&f.w, f.now, 10000), 2);
  d = decide_at(p, at(&f, 4, 0, 0, 1, 0), f.now);
  assert_decision(d, 2, 0, 2);
  /* A request that came and went between two observations may have held a
   * worker too: requests turning over one a second leave 2, not 3. */
  hold(&f, 20000, 1, 0, 4, 1);
  assert_int_equal(sg_scale_window_spare(&f.w, f.now, 10000), 2);
}

/* ------------------------------------------------------------------ policies */

static void test_concurrency_formula(void **state) {
  (void)state;
  /* Without history: ceil((in flight + queued) / value). */
  sg_scale_decision_t d = decide(conc(0, 100, 4, 2), metrics(0, 0, 0, 0, 5, 0));
  assert_decision(d, 3, 3, 0);
  d = decide(conc(0, 100, 4, 2), metrics(2, 0, 0, 4, 0, 0));
  assert_decision(d, 2, 0, 0);
  d = decide(conc(0, 100, 4, 2), metrics(2, 0, 0, 4, 1, 0));
  assert_decision(d, 3, 1, 0);
  d = decide(conc(0, 100, 4, 2.5), metrics(0, 0, 0, 0, 5, 0));
  assert_decision(d, 2, 2, 0);
  d = decide(conc(0, 100, 4, 2.5), metrics(0, 0, 0, 0, 6, 0));
  assert_decision(d, 3, 3, 0);
  d = decide(conc(0, 100, 10, 0.5), metrics(0, 0, 0, 0, 3, 0));
  assert_decision(d, 6, 6, 0);
  /* A value above max_concurrency is held to max_concurrency. */
  d = decide(conc(0, 100, 2, 8), metrics(0, 0, 0, 0, 8, 0));
  assert_decision(d, 4, 4, 0);
  /* An unset value counts as one. */
  d = decide(conc(0, 100, 4, 0), metrics(0, 0, 0, 0, 3, 0));
  assert_decision(d, 3, 3, 0);
  /* While requests wait, a burst seen by the panic window keeps counting
   * after the instant value falls: the observed concurrency, not the last
   * sample. */
  feed_t f;
  feed_init(&f);
  hold(&f, 60000, 0, 0, 1, 0);
  hold(&f, 3000, 1, 11, 1, 0);
  d = decide_at(conc(0, 100, 1, 1), at(&f, 1, 0, 0, 1, 2), f.now);
  assert_true(d.panic);
  assert_int_equal(d.desired, 6); /* 12 for 3 of the last 6 s */
  assert_int_equal(d.rule, SG_SCALE_RULE_PANIC);
  /* With nothing waiting, no worker starts for a past average. */
  d = decide_at(conc(0, 100, 1, 1), at(&f, 1, 0, 0, 1, 0), f.now);
  assert_decision(d, 1, 0, 0);
  hold(&f, 2000, 0, 0, 0, 0);
  d = decide_at(conc(0, 100, 1, 1), at(&f, 0, 0, 0, 0, 0), f.now);
  assert_decision(d, 0, 0, 0);
}

static void test_queue_delay_adds_only_past_delay(void **state) {
  (void)state;
  sg_scale_params_t p = qdelay(0, 8, 1, 2);
  /* One busy worker, two waiting for 1.999 s: hold. */
  sg_scale_decision_t d = decide(p, metrics(1, 0, 0, 1, 2, 1999));
  assert_decision(d, 1, 0, 0);
  /* At the delay: add enough for the queue. */
  d = decide(p, metrics(1, 0, 0, 1, 2, 2000));
  assert_decision(d, 3, 2, 0);
  d = decide(p, metrics(1, 0, 0, 1, 2, 9000));
  assert_decision(d, 3, 2, 0);
  /* Several requests per worker: ceil(queued / max_concurrency). */
  d = decide(qdelay(0, 8, 4, 2), metrics(1, 0, 0, 4, 5, 2500));
  assert_decision(d, 3, 2, 0);
  /* A queue holds workers even if some are idle-expired. */
  d = decide(p, metrics(3, 0, 2, 1, 1, 100));
  assert_decision(d, 3, 0, 0);
  /* Fractional delays. */
  d = decide(qdelay(0, 8, 1, 0.25), metrics(1, 0, 0, 1, 1, 249));
  assert_decision(d, 1, 0, 0);
  d = decide(qdelay(0, 8, 1, 0.25), metrics(1, 0, 0, 1, 1, 250));
  assert_decision(d, 2, 1, 0);
  /* Without a queue the busy workers are what is needed. */
  d = decide(qdelay(0, 8, 2, 2), metrics(4, 0, 4, 3, 0, 0));
  assert_decision(d, 2, 0, 2);
}

/* ------------------------------------------------------------------ starting workers */

static void test_starting_counted(void **state) {
  (void)state;
  /* Three requests queued, three workers already starting: start none. */
  sg_scale_decision_t d = decide(conc(0, 8, 1, 1), metrics(0, 3, 0, 0, 3, 500));
  assert_decision(d, 3, 0, 0);
  d = decide(conc(0, 8, 1, 1), metrics(0, 3, 0, 0, 4, 500));
  assert_decision(d, 4, 1, 0);
  /* queue_delay from zero: once one is starting, no second one for the same request. */
  d = decide(qdelay(0, 8, 1, 2), metrics(0, 1, 0, 0, 1, 500));
  assert_decision(d, 1, 0, 0);
  d = decide(qdelay(0, 8, 1, 2), metrics(0, 1, 0, 0, 1, 5000));
  assert_decision(d, 1, 0, 0);
  d = decide(qdelay(0, 8, 1, 0), metrics(0, 1, 0, 0, 1, 10));
  assert_decision(d, 1, 0, 0);
  /* Past the delay, workers already starting absorb the queue first. */
  d = decide(qdelay(0, 8, 1, 2), metrics(1, 2, 0, 1, 2, 5000));
  assert_decision(d, 3, 0, 0);
  d = decide(qdelay(0, 8, 1, 2), metrics(1, 2, 0, 1, 3, 5000));
  assert_decision(d, 4, 1, 0);
}

/* A burst on a virtual clock fed through the window the way the scaler loop
 * feeds it: every request arrives at once, a worker is ready start_ms after
 * it is started, a request holds a slot for 1 s. Returns the workers started,
 * which never exceed what the queue needed, and checks the queue drains and
 * nothing stops before it has. */
static int burst(sg_scale_params_t p, int requests, int64_t start_ms) {
  enum { CAP = 64 };
  int64_t ready_at[CAP], busy_until[CAP][8];
  int n = 0, started = 0, queued = requests;
  uint64_t done = 0;
  sg_scale_window_t w;
  sg_scale_window_init(&w);
  assert_true(p.max_concurrency <= 8);
  for (int64_t now = T0; now < T0 + 120000; now += 250) {
    int ready = 0, starting = 0, in_flight = 0, idle = 0;
    int64_t ages = 0;
    for (int i = 0; i < n; i++) {
      if (ready_at[i] == now)
        sg_scale_window_note_start(&w, start_ms);
      if (ready_at[i] > now) {
        starting++;
        ages += now - (ready_at[i] - start_ms);
        continue;
      }
      ready++;
      int busy = 0;
      for (int s = 0; s < p.max_concurrency; s++) {
        if (busy_until[i][s] == now)
          done++;
        if (busy_until[i][s] <= now && queued > 0) {
          busy_until[i][s] = now + 1000;
          queued--;
        }
        if (busy_until[i][s] > now)
          busy++;
      }
      in_flight += busy;
      idle += busy == 0;
    }
    sg_scale_window_observe(&w, now, in_flight, queued, ready, idle, done);
    sg_scale_metrics_t m = metrics(ready, starting, 0, in_flight, queued, queued ? now - T0 : 0);
    m.starting_age_ms = ages;
    m.window = &w;
    sg_scale_decision_t d = decide_at(p, m, now);
    if (queued > 0 || in_flight > 0)
      assert_int_equal(d.stop, 0);
    if (ready + starting + d.start > p.max)
      fail_msg("%lld ms: %d ready + %d starting + %d to start > max %d", (long long)(now - T0), ready, starting,
               d.start, p.max);
    for (int k = 0; k < d.start && n < CAP; k++, n++) {
      ready_at[n] = now + start_ms;
      for (int s = 0; s < 8; s++)
        busy_until[n][s] = 0;
    }
    started += d.start;
  }
  assert_int_equal(queued, 0);
  return started;
}

static void test_burst_does_not_double_start(void **state) {
  (void)state;
  /* Fast starts: exactly what the formula asks, never more. */
  assert_int_equal(burst(conc(0, 16, 1, 1), 5, 250), 5);
  assert_int_equal(burst(conc(0, 16, 2, 2), 5, 250), 3);
  assert_int_equal(burst(conc(0, 4, 1, 1), 10, 250), 4);
  assert_int_equal(burst(qdelay(0, 16, 1, 0), 5, 250), 5);
  assert_int_equal(burst(qdelay(0, 16, 2, 0.5), 5, 250), 3);
  /* Slow starts: at most the formula's count, with the queue drained. */
  int n = burst(conc(0, 16, 1, 1), 12, 3000);
  assert_in_range(n, 1, 12);
  n = burst(qdelay(0, 16, 1, 1), 12, 3000);
  assert_in_range(n, 1, 12);
}

/* ------------------------------------------------------------------ GPU-aware scale-up */

/* A short queue that ready workers clear before a new worker could start
 * does not start one; with fast starts the same queue does. */
static void test_scale_up_counts_start_delay(void **state) {
  (void)state;
  sg_scale_params_t p = conc(0, 16, 1, 1);
  feed_t f;
  feed_known(&f, 6, 20000); /* 4 req/s of 1 s on 6 workers, 20 s starts */
  hold(&f, 250, 6, 2, 6, 4);
  sg_scale_decision_t d = decide_at(p, at(&f, 6, 0, 0, 6, 2), f.now);
  assert_decision(d, 6, 0, 0);
  assert_int_equal(d.rule, SG_SCALE_RULE_HOLD);

  feed_known(&f, 6, 20);
  hold(&f, 250, 6, 2, 6, 4);
  d = decide_at(p, at(&f, 6, 0, 0, 6, 2), f.now);
  assert_decision(d, 8, 2, 0); /* ceil((6 + 2) / 1) */

  /* A backlog that outlasts a start delay does start workers, fewer than the
   * formula's one per queued request: the ready ones drain part of it. */
  feed_known(&f, 4, 20000);
  hold(&f, 2000, 4, 60, 4, 4);
  d = decide_at(p, at(&f, 4, 0, 0, 4, 60), f.now);
  assert_true(d.start > 0);
  assert_true(d.desired < 64);
  int first = d.desired;
  /* Workers already starting count: the same backlog starts no more. */
  sg_scale_metrics_t m = at(&f, 4, first - 4, 0, 4, 60);
  d = decide_at(p, m, f.now);
  assert_int_equal(d.start, 0);
}

/* The same instant (20 requests queued on 2 ready workers) after a quiet
 * gap is a batch the ready workers absorb; in the middle of a long busy
 * period it is a surge that needs more. */
static void test_scale_up_burst_age(void **state) {
  (void)state;
  sg_scale_params_t p = conc(0, 32, 1, 1);
  feed_t batch, surge;
  feed_known(&batch, 2, 20000);
  hold(&batch, 10000, 0, 0, 2, 0);
  hold(&batch, 1000, 2, 18, 2, 0);
  sg_scale_decision_t d = decide_at(p, at(&batch, 2, 0, 0, 2, 18), batch.now);
  assert_int_equal(d.start, 0);

  feed_known(&surge, 2, 20000);
  hold(&surge, 1000, 2, 18, 2, 0);
  sg_scale_decision_t e = decide_at(p, at(&surge, 2, 0, 0, 2, 18), surge.now);
  assert_true(e.start > 0);
  assert_true(e.desired < 20);
}

/* ------------------------------------------------------------------ smoothing */

static void test_panic_no_scale_down(void **state) {
  (void)state;
  sg_scale_params_t p = params(SG_SCALE_CONCURRENCY, 0, 16, 1, 1, 1000);
  feed_t f;
  feed_init(&f);
  hold(&f, 60000, 0, 0, 1, 0);
  /* 5 requests on 1 ready worker for 3 s: 6-s average 2.5 -> need 3 >= 2 x 1. */
  hold(&f, 3000, 1, 4, 1, 0);
  sg_scale_decision_t d = decide_at(p, at(&f, 1, 0, 0, 1, 4), f.now);
  assert_true(d.panic);
  assert_int_equal(d.rule, SG_SCALE_RULE_PANIC);
  assert_decision(d, 5, 4, 0);
  assert_non_null(strstr(d.reason, "panic"));
  /* Served; 20 quiet seconds later every worker is idle past the timeout,
   * but panic mode lasts a stable window after the last crossing. */
  hold(&f, 2000, 5, 0, 5, 0);
  hold(&f, 20000, 0, 0, 5, 0);
  d = decide_at(p, at(&f, 5, 0, 5, 0, 0), f.now);
  assert_true(d.panic);
  assert_decision(d, 5, 0, 0);
  /* A stable window after the burst: out of panic, all idle, all stop. */
  hold(&f, 41000, 0, 0, 5, 0);
  d = decide_at(p, at(&f, 5, 0, 5, 0, 0), f.now);
  assert_false(d.panic);
  assert_decision(d, 0, 0, 5);
  assert_int_equal(d.rule, SG_SCALE_RULE_IDLE);
}

/* Below the threshold there is no panic, and scale-down follows the stable
 * window: capacity for the 60-s average demand stays while requests keep
 * coming often enough to be expected within the restart horizon (here the
 * 5-s idle timeout). */
static void test_stable_window_keeps_capacity(void **state) {
  (void)state;
  sg_scale_params_t p = params(SG_SCALE_CONCURRENCY, 0, 16, 1, 1, 5000);
  feed_t f;
  feed_init(&f);
  hold(&f, 60000, 3, 0, 3, 3); /* 3 requests a second, 1 s each */
  hold(&f, 10000, 0, 0, 3, 0);
  /* 50 s of 3 and 10 s of 0 over the last 60 s: 2.5 -> keep 3. */
  sg_scale_decision_t d = decide_at(p, at(&f, 3, 0, 3, 0, 0), f.now);
  assert_false(d.panic);
  assert_decision(d, 3, 0, 0);
  hold(&f, 20000, 0, 0, 3, 0); /* 30 s of 3: 1.5 -> keep 2 */
  d = decide_at(p, at(&f, 3, 0, 3, 0, 0), f.now);
  assert_decision(d, 2, 0, 1);
  hold(&f, 20000, 0, 0, 2, 0); /* 10 s of 3: 0.5 -> keep 1 */
  d = decide_at(p, at(&f, 2, 0, 2, 0, 0), f.now);
  assert_decision(d, 1, 0, 1);
  hold(&f, 11000, 0, 0, 1, 0);
  d = decide_at(p, at(&f, 1, 0, 1, 0, 0), f.now);
  assert_decision(d, 0, 0, 1);
  /* The idle timeout still rules: used within it, nothing stops. */
  hold(&f, 500, 1, 0, 1, 0);
  hold(&f, 600, 0, 0, 1, 0);
  assert_int_equal(sg_scale_window_spare(&f.w, f.now, 5000), 0);
  d = decide_at(p, at(&f, 1, 0, 0, 0, 0), f.now);
  assert_int_equal(d.stop, 0);

  /* One request, long enough ago: the stable average is not zero, but no
   * request is expected within the horizon, so the worker stops at its idle
   * timeout. */
  p = params(SG_SCALE_CONCURRENCY, 0, 16, 1, 1, 1000);
  feed_init(&f);
  hold(&f, 1000, 0, 0, 1, 0);
  hold(&f, 300, 1, 0, 1, 0);
  hold(&f, 3000, 0, 0, 1, 0);
  assert_true(sg_scale_window_avg(&f.w, f.now, 60000) > 0);
  d = decide_at(p, at(&f, 1, 0, 1, 0, 0), f.now);
  assert_decision(d, 0, 0, 1);
}

/* With a short idle timeout, capacity for the highest one-second demand of
 * the last restart horizon (here the 20-s start delay) stays: workers that
 * were all busy 10 s ago are likely to be needed again. */
static void test_recent_peak_kept_for_a_start_delay(void **state) {
  (void)state;
  sg_scale_params_t p = params(SG_SCALE_CONCURRENCY, 0, 16, 1, 1, 1000);
  feed_t f;
  feed_init(&f);
  sg_scale_window_note_start(&f.w, 20000);
  hold(&f, 60000, 0, 0, 6, 0);
  hold(&f, 2000, 6, 0, 6, 0);
  hold(&f, 10000, 0, 0, 6, 0);
  sg_scale_decision_t d = decide_at(p, at(&f, 6, 0, 6, 0, 0), f.now);
  assert_false(d.panic);
  assert_decision(d, 6, 0, 0);
  hold(&f, 11000, 0, 0, 6, 0);
  /* Past the horizon: only the stable average (12/60 s -> 1) stays. */
  d = decide_at(p, at(&f, 6, 0, 6, 0, 0), f.now);
  assert_decision(d, 1, 0, 5);
  assert_true(sg_str_has_prefix(d.reason, "scale down 6 -> 1"));
}

/* ------------------------------------------------------------------ invariants */

static void check_invariants(sg_scale_params_t p, sg_scale_metrics_t m, int64_t now) {
  sg_scale_decision_t d = decide_at(p, m, now);
  int active = m.ready + m.starting;
  assert_in_range(d.desired, p.min, p.max);
  assert_true(d.start >= 0 && d.stop >= 0);
  assert_false(d.start > 0 && d.stop > 0);
  int spare = sg_scale_window_spare(m.window, now, p.idle_timeout_ms);
  assert_true(d.stop <= (m.idle_expired > spare ? m.idle_expired : (spare < m.ready ? spare : m.ready)));
  if (m.start_slots >= 0)
    assert_true(d.start <= m.start_slots);
  if (d.start > 0) {
    assert_true(active + d.start <= p.max);
    assert_true(d.desired > active);
  }
  if (d.stop > 0) {
    assert_true(active - d.stop >= p.min);
    assert_true(!d.panic || active > p.max); /* panic keeps workers, up to max */
  }
  if (active == 0 && m.in_flight + m.queued > 0 && p.max > 0 && m.start_slots != 0)
    assert_true(d.start >= 1);
}

static void test_invariants(void **state) {
  (void)state;
  static feed_t windows[3];
  feed_init(&windows[0]);
  hold(&windows[0], 60000, 3, 2, 3, 0); /* busy, no model */
  feed_known(&windows[1], 4, 20000);    /* model known, steady */
  feed_known(&windows[2], 2, 5000);
  hold(&windows[2], 30000, 0, 0, 2, 0); /* model known, quiet */
  const sg_scale_policy_t policies[] = {SG_SCALE_CONCURRENCY, SG_SCALE_QUEUE_DELAY};
  for (int wi = -1; wi < 3; wi++)
    for (size_t pi = 0; pi < 2; pi++)
      for (int min = 0; min <= 2; min++)
        for (int max = (min ? min : 1); max <= 5; max += 2)
          for (int mc = 1; mc <= 3; mc++)
            for (int ready = 0; ready <= 6; ready++)
              for (int starting = 0; starting <= 2; starting++)
                for (int idle = 0; idle <= ready; idle++)
                  for (int in_flight = 0; in_flight <= (ready - idle) * mc; in_flight += 2)
                    for (int queued = 0; queued <= 7; queued += 3)
                      for (int slots = -1; slots <= 2; slots++)
                        for (int64_t wait = 0; wait <= 4000; wait += 2000) {
                          sg_scale_params_t p = params(policies[pi], min, max, mc, 2, 1000);
                          sg_scale_metrics_t m = metrics(ready, starting, idle, in_flight, queued, queued ? wait : 0);
                          m.start_slots = slots;
                          m.starting_age_ms = 1000LL * starting;
                          int64_t now = T0;
                          if (wi >= 0) {
                            m.window = &windows[wi].w;
                            now = windows[wi].now;
                          }
                          check_invariants(p, m, now);
                        }
}

static void test_params_from_spec(void **state) {
  (void)state;
  const char *text = "{\"name\": \"p\", \"command\": [\"/w\"],"
                     " \"workers\": {\"min\": 1, \"max\": 7, \"max_concurrency\": 3, \"idle_timeout_s\": 2.5},"
                     " \"scale\": {\"policy\": \"queue_delay\", \"value\": 1.5}}";
  sg_error_t *err = NULL;
  sg_spec_t *s = sg_spec_parse(text, strlen(text), &err);
  assert_non_null(s);
  sg_scale_params_t p;
  sg_scale_params_from_spec(s, &p);
  assert_int_equal(p.min, 1);
  assert_int_equal(p.max, 7);
  assert_int_equal(p.max_concurrency, 3);
  assert_int_equal(p.policy, SG_SCALE_QUEUE_DELAY);
  assert_true(p.value == 1.5);
  assert_int_equal(p.idle_timeout_ms, 2500);
  assert_int_equal(p.hold_ms, 0);
  assert_int_equal(p.stable_ms, 60000);
  assert_int_equal(p.panic_ms, 6000);
  assert_true(p.panic_threshold == 2.0);
  sg_spec_free(s);
  assert_string_equal(sg_scale_rule_name(SG_SCALE_RULE_PANIC), "panic");
  assert_string_equal(sg_scale_rule_name(SG_SCALE_RULE_ZERO), "from_zero");
}

/* ------------------------------------------------------------------ the step */

#define STEP_MAX 8

/* A step over workers ws with nothing queued, on a fresh window. */
typedef struct step {
  sg_scale_window_t w;
  sg_scale_decision_t d;
  size_t victims[STEP_MAX];
  size_t n_victims;
} step_t;

static sg_scale_worker_t ready_w(int in_flight, int64_t last_used) {
  return (sg_scale_worker_t){.state = SG_SCALE_W_READY, .in_flight = in_flight, .last_used_ms = last_used};
}

static sg_scale_worker_t starting_w(int64_t started) {
  return (sg_scale_worker_t){.state = SG_SCALE_W_STARTING, .started_ms = started};
}

static sg_scale_input_t input(const sg_scale_worker_t *ws, size_t n) {
  return (sg_scale_input_t){.workers = ws, .n_workers = n, .gpu_slots = -1};
}

static void step_run(step_t *st, sg_scale_params_t p, const sg_scale_input_t *in, int64_t now) {
  assert_true(in->n_workers <= STEP_MAX);
  sg_scale_window_init(&st->w);
  memset(st->victims, 0x5a, sizeof(st->victims));
  st->n_victims = sg_scale_step(&p, &st->w, in, now, &st->d, st->victims);
  assert_true(st->n_victims <= (size_t)st->d.stop);
}

/* Workers not ready yet stop first (a pending job would run for nothing),
 * then the ready ones unused the longest; busy, gone and already stopping
 * ones never do; ties go to the earlier one. */
static void test_step_victims_longest_idle(void **state) {
  (void)state;
  int64_t now = T0 + 100000; /* everyone below idle for more than 30 s */
  sg_scale_worker_t ws[] = {
      ready_w(0, T0 + 500), /* 0 */
      ready_w(0, T0 + 100), /* 1: idle the longest */
      ready_w(1, T0),       /* 2: busy */
      ready_w(0, T0 + 300), /* 3 */
      ready_w(0, T0 + 300), /* 4: ties with 3 */
      starting_w(T0),       /* 5 */
  };
  sg_scale_input_t in = input(ws, SG_ARRAY_SIZE(ws));
  in.in_flight = 1;
  step_t st;
  step_run(&st, conc(0, 8, 1, 1), &in, now);
  /* Ready 5, starting 1, one in flight: four idle past the timeout go. */
  assert_int_equal(st.d.stop, 4);
  assert_int_equal(st.n_victims, 4);
  size_t want[] = {5, 1, 3, 4};
  for (size_t i = 0; i < 4; i++)
    assert_int_equal(st.victims[i], want[i]);

  /* min 4 (the starting worker counts): the starting one and the one unused
   * the longest stop. */
  step_run(&st, conc(4, 8, 1, 1), &in, now);
  assert_int_equal(st.d.desired, 4);
  assert_int_equal(st.n_victims, 2);
  assert_int_equal(st.victims[0], 5);
  assert_int_equal(st.victims[1], 1);

  /* Already stopping and gone workers are passed over (and a gone one is
   * not capacity). */
  ws[1].stopping = true;
  ws[3].state = SG_SCALE_W_GONE;
  step_run(&st, conc(0, 8, 1, 1), &in, now);
  assert_int_equal(st.d.stop, 3);
  assert_int_equal(st.n_victims, 3);
  assert_int_equal(st.victims[0], 5);
  assert_int_equal(st.victims[1], 4);
  assert_int_equal(st.victims[2], 0);
}

/* Demand fell on a remote runtime: two ready workers idle past the timeout
 * and a job still pending. The pending job is cancelled first, then the
 * newest pending of several, and a ready worker stays for min. */
static void test_step_victims_pending_first(void **state) {
  (void)state;
  int64_t now = T0 + 100000;
  sg_scale_worker_t ws[] = {ready_w(0, T0 + 100), starting_w(T0 + 50000), ready_w(0, T0 + 200)};
  sg_scale_input_t in = input(ws, SG_ARRAY_SIZE(ws));
  step_t st;
  step_run(&st, conc(1, 8, 1, 1), &in, now);
  assert_int_equal(st.d.desired, 1);
  assert_int_equal(st.d.stop, 2);
  assert_int_equal(st.n_victims, 2);
  assert_int_equal(st.victims[0], 1); /* the pending one */
  assert_int_equal(st.victims[1], 0); /* then the ready one idle the longest */

  /* Two pending: the one started last goes first. */
  sg_scale_worker_t ws2[] = {ready_w(0, T0), starting_w(T0 + 40000), starting_w(T0 + 60000), ready_w(0, T0)};
  in = input(ws2, SG_ARRAY_SIZE(ws2));
  step_run(&st, conc(2, 8, 1, 1), &in, now);
  assert_int_equal(st.d.stop, 2);
  assert_int_equal(st.victims[0], 2);
  assert_int_equal(st.victims[1], 1);

  /* An outdated idle worker (being replaced) goes before anything. */
  sg_scale_worker_t ws3[] = {ready_w(0, T0), starting_w(T0 + 60000), ready_w(0, T0 + 500)};
  ws3[2].outdated = true;
  in = input(ws3, SG_ARRAY_SIZE(ws3));
  step_run(&st, conc(2, 8, 1, 1), &in, now);
  assert_int_equal(st.d.stop, 1);
  assert_int_equal(st.n_victims, 1);
  assert_int_equal(st.victims[0], 2);
}

/* Feeds a burst to the step on a 250 ms tick: n workers all busy with n
 * more queued (a panic: twice the ready workers' worth), from T0 to end;
 * then every worker is idle from end on. */
static void feed_burst(sg_scale_params_t p, sg_scale_window_t *w, sg_scale_worker_t *ws, size_t n, int64_t end) {
  sg_scale_window_init(w);
  size_t victims[STEP_MAX];
  sg_scale_decision_t d;
  for (int64_t t = T0; t < end; t += 250) {
    for (size_t i = 0; i < n; i++)
      ws[i] = (sg_scale_worker_t){.state = SG_SCALE_W_READY, .in_flight = 1, .started_ms = T0, .last_used_ms = t};
    sg_scale_input_t in = input(ws, n);
    in.in_flight = (int)n;
    in.queued = (int)n;
    in.oldest_wait_ms = 1000;
    in.gpu_slots = 0;
    in.completed = (uint64_t)(t - T0) / 250 * n;
    sg_scale_step(&p, w, &in, t, &d, victims);
  }
  for (size_t i = 0; i < n; i++)
    ws[i] = (sg_scale_worker_t){.state = SG_SCALE_W_READY, .started_ms = T0, .last_used_ms = end};
}

/* idle_timeout_s is the bound: after a burst (panic), workers idle past it
 * stop although the panic and stable windows would keep them; with
 * scale.hold_s the policy may keep them that much longer, and says so. */
static void test_step_idle_timeout_bounds_hold(void **state) {
  (void)state;
  enum { N = 4 };
  sg_scale_worker_t ws[N];
  sg_scale_window_t w;
  sg_scale_decision_t d;
  size_t victims[STEP_MAX];
  int64_t end = T0 + 10000;
  sg_scale_params_t p = params(SG_SCALE_CONCURRENCY, 0, 8, 1, 1, 2000);
  feed_burst(p, &w, ws, N, end);
  sg_scale_input_t in = input(ws, N);
  in.completed = 1000;
  /* Idle for less than the timeout: nothing stops yet. */
  sg_scale_step(&p, &w, &in, end + 1000, &d, victims);
  assert_true(d.panic);
  assert_int_equal(d.stop, 0);
  /* Past the timeout: all stop, in panic though. */
  assert_int_equal(sg_scale_step(&p, &w, &in, end + 2000, &d, victims), N);
  assert_true(d.panic);
  assert_int_equal(d.stop, N);
  assert_int_equal(d.desired, 0);
  assert_int_equal(d.held, 0);
  assert_int_equal(d.rule, SG_SCALE_RULE_IDLE);

  /* min 1 keeps one. */
  p.min = 1;
  feed_burst(p, &w, ws, N, end);
  in = input(ws, N);
  in.completed = 1000;
  assert_int_equal(sg_scale_step(&p, &w, &in, end + 2000, &d, victims), N - 1);
  assert_int_equal(d.desired, 1);

  /* scale.hold_s 30: held past the timeout, said in the reason, and
   * stopped once idle for both. */
  p.min = 0;
  p.hold_ms = 30000;
  feed_burst(p, &w, ws, N, end);
  in = input(ws, N);
  in.completed = 1000;
  assert_int_equal(sg_scale_step(&p, &w, &in, end + 2000, &d, victims), 0);
  assert_int_equal(d.held, N);
  assert_int_equal(d.rule, SG_SCALE_RULE_HOLD);
  assert_non_null(strstr(d.reason, "holding 4 workers idle past the idle timeout for scale.hold_s (30s)"));
  assert_int_equal(sg_scale_step(&p, &w, &in, end + 31999, &d, victims), 0);
  assert_true(d.panic); /* the windows alone would hold on */
  assert_int_equal(sg_scale_step(&p, &w, &in, end + 32000, &d, victims), N);
  assert_int_equal(d.desired, 0);
  assert_int_equal(d.held, 0);
  assert_null(strstr(d.reason, "holding"));
}

/* Only workers idle for the whole timeout count, and the stop never goes
 * below min or leaves more than max. */
static void test_step_idle_timeout_and_bounds(void **state) {
  (void)state;
  int64_t now = T0 + 100000;
  sg_scale_worker_t ws[] = {ready_w(0, now - 30000), ready_w(0, now - 29999), ready_w(0, now - 60000), ready_w(0, now)};
  sg_scale_input_t in = input(ws, SG_ARRAY_SIZE(ws));
  step_t st;
  step_run(&st, conc(0, 8, 1, 1), &in, now);
  assert_decision(st.d, 2, 0, 2);
  assert_int_equal(st.n_victims, 2);
  assert_int_equal(st.victims[0], 2);
  assert_int_equal(st.victims[1], 0);
  /* min 4: nobody stops. */
  step_run(&st, conc(4, 8, 1, 1), &in, now);
  assert_decision(st.d, 4, 0, 0);
  assert_int_equal(st.n_victims, 0);
  /* max 1 (lowered): still only the idle-expired ones stop. */
  step_run(&st, conc(0, 1, 1, 1), &in, now);
  assert_int_equal(st.d.stop, 2);
  assert_int_equal(st.n_victims, 2);
  /* A queue at max: nothing starts past max. */
  in.queued = 50;
  in.oldest_wait_ms = 1000;
  step_run(&st, conc(0, 4, 1, 1), &in, now);
  assert_int_equal(st.d.start, 0);
  assert_int_equal(st.n_victims, 0);
  step_run(&st, conc(0, 6, 1, 1), &in, now);
  assert_decision(st.d, 6, 2, 0);
}

/* The metrics the step assembles: starting workers and their age, start
 * slots from the free GPUs, the backoff and failing starts; and the window
 * is fed. */
static void test_step_metrics(void **state) {
  (void)state;
  int64_t now = T0 + 5000;
  sg_scale_worker_t ws[] = {starting_w(T0), starting_w(T0 + 4000)};
  sg_scale_input_t in = input(ws, SG_ARRAY_SIZE(ws));
  in.queued = 10;
  in.oldest_wait_ms = 5000;
  step_t st;
  step_run(&st, conc(0, 8, 1, 1), &in, now);
  assert_true(st.w.seen);
  assert_int_equal(st.w.last_ms, now);
  assert_int_equal(st.w.queued, 10);
  assert_int_equal(st.w.ready, 0);
  /* Same as the policy on hand-made metrics. */
  sg_scale_metrics_t m = metrics(0, 2, 0, 0, 10, 5000);
  m.starting_age_ms = 5000 + 1000;
  sg_scale_window_t w;
  sg_scale_window_init(&w);
  sg_scale_window_observe(&w, now, 0, 10, 0, 0, 0);
  m.window = &w;
  sg_scale_decision_t d = decide_at(conc(0, 8, 1, 1), m, now);
  assert_decision(st.d, d.desired, d.start, d.stop);
  assert_string_equal(st.d.reason, d.reason);
  assert_true(st.d.start > 0);
  /* Free GPUs for one more. */
  in.gpu_slots = 1;
  step_run(&st, conc(0, 8, 1, 1), &in, now);
  assert_int_equal(st.d.start, 1);
  /* Backoff: none. */
  in.gpu_slots = -1;
  in.backing_off = true;
  step_run(&st, conc(0, 8, 1, 1), &in, now);
  assert_int_equal(st.d.start, 0);
  /* Failing starts: none while one is starting, then one at a time. */
  in.backing_off = false;
  in.failing = true;
  step_run(&st, conc(0, 8, 1, 1), &in, now);
  assert_int_equal(st.d.start, 0);
  in.n_workers = 0;
  step_run(&st, conc(0, 8, 1, 1), &in, now);
  assert_int_equal(st.d.start, 1);
  in.gpu_slots = 0;
  step_run(&st, conc(0, 8, 1, 1), &in, now);
  assert_int_equal(st.d.start, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_window_empty),
      cmocka_unit_test(test_window_averages),
      cmocka_unit_test(test_window_rate_independent),
      cmocka_unit_test(test_window_estimates),
      cmocka_unit_test(test_idle_at_zero_holds),
      cmocka_unit_test(test_scale_from_zero_immediate),
      cmocka_unit_test(test_min_kept),
      cmocka_unit_test(test_max_never_exceeded),
      cmocka_unit_test(test_gpu_exhaustion),
      cmocka_unit_test(test_only_idle_expired_stopped),
      cmocka_unit_test(test_spare_capacity_stops),
      cmocka_unit_test(test_concurrency_formula),
      cmocka_unit_test(test_queue_delay_adds_only_past_delay),
      cmocka_unit_test(test_starting_counted),
      cmocka_unit_test(test_burst_does_not_double_start),
      cmocka_unit_test(test_scale_up_counts_start_delay),
      cmocka_unit_test(test_scale_up_burst_age),
      cmocka_unit_test(test_panic_no_scale_down),
      cmocka_unit_test(test_stable_window_keeps_capacity),
      cmocka_unit_test(test_recent_peak_kept_for_a_start_delay),
      cmocka_unit_test(test_invariants),
      cmocka_unit_test(test_params_from_spec),
      cmocka_unit_test(test_step_victims_longest_idle),
      cmocka_unit_test(test_step_victims_pending_first),
      cmocka_unit_test(test_step_idle_timeout_bounds_hold),
      cmocka_unit_test(test_step_idle_timeout_and_bounds),
      cmocka_unit_test(test_step_metrics),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
