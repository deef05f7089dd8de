/* The scale policy: a pure function, so every case states metrics and
 * checks the decision exactly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "sgpu/policy.h"
#include "sgpu/util.h"

static sg_scale_params_t conc(int min, int max, int mc, double value) {
  return (sg_scale_params_t){min, max, mc, SG_SCALE_CONCURRENCY, value};
}

static sg_scale_params_t qdelay(int min, int max, int mc, double delay_s) {
  return (sg_scale_params_t){min, max, mc, SG_SCALE_QUEUE_DELAY, delay_s};
}

/* Metrics with unlimited start slots. */
static sg_scale_metrics_t metrics(int ready, int starting, int idle_expired, int in_flight, int queued,
                                  int64_t oldest_wait_ms) {
  return (sg_scale_metrics_t){ready, starting, idle_expired, in_flight, queued, oldest_wait_ms, -1};
}

static sg_scale_decision_t decide(sg_scale_params_t p, sg_scale_metrics_t m) {
  sg_scale_decision_t d;
  memset(&d, 0x5a, sizeof(d));
  sg_scale_decide(&p, &m, &d);
  assert_non_null(memchr(d.reason, '\0', sizeof(d.reason)));
  return d;
}

#define assert_decision(d, want_desired, want_start, want_stop) \
  do {                                                           \
    assert_int_equal((d).desired, (want_desired));               \
    assert_int_equal((d).start, (want_start));                   \
    assert_int_equal((d).stop, (want_stop));                     \
  } while (0)

static void test_idle_at_zero_holds(void **state) {
  (void)state;
  sg_scale_decision_t d = decide(conc(0, 4, 1, 1), metrics(0, 0, 0, 0, 0, 0));
  assert_decision(d, 0, 0, 0);
  assert_true(sg_str_has_prefix(d.reason, "hold at 0"));
  d = decide(qdelay(0, 4, 1, 2), metrics(0, 0, 0, 0, 0, 0));
  assert_decision(d, 0, 0, 0);
}

static void test_scale_from_zero(void **state) {
  (void)state;
  sg_scale_decision_t d = decide(conc(0, 4, 1, 1), metrics(0, 0, 0, 0, 1, 0));
  assert_decision(d, 1, 1, 0);
  assert_true(sg_str_has_prefix(d.reason, "scale up 0 -> 1"));
  d = decide(conc(0, 4, 1, 1), metrics(0, 0, 0, 0, 3, 0));
  assert_decision(d, 3, 3, 0);
  /* queue_delay starts at once from zero, whatever the delay. */
  d = decide(qdelay(0, 4, 1, 30), metrics(0, 0, 0, 0, 1, 0));
  assert_decision(d, 1, 1, 0);
  d = decide(qdelay(0, 4, 2, 30), metrics(0, 0, 0, 0, 3, 0));
  assert_decision(d, 2, 2, 0);
}

static void test_min_kept(void **state) {
  (void)state;
  /* Started up to min with no traffic. */
  sg_scale_decision_t d = decide(conc(2, 4, 1, 1), metrics(0, 0, 0, 0, 0, 0));
  assert_decision(d, 2, 2, 0);
  d = decide(qdelay(2, 4, 1, 1), metrics(1, 0, 0, 0, 0, 0));
  assert_decision(d, 2, 1, 0);
  /* Idle-expired workers above min stop, down to min. */
  d = decide(conc(2, 4, 1, 1), metrics(3, 0, 3, 0, 0, 0));
  assert_decision(d, 2, 0, 1);
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

static void test_start_slots_limit(void **state) {
  (void)state;
  sg_scale_params_t p = conc(0, 8, 1, 1);
  sg_scale_metrics_t m = metrics(0, 0, 0, 0, 5, 0);
  m.start_slots = 2;
  sg_scale_decision_t d = decide(p, m);
  assert_decision(d, 5, 2, 0);
  assert_non_null(strstr(d.reason, "limited"));
  m.start_slots = 0;
  d = decide(p, m);
  assert_decision(d, 5, 0, 0);
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
}

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

static void test_concurrency_ceil(void **state) {
  (void)state;
  /* ceil(demand / value) with demand = in flight + queued. */
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
  /* A target above max_concurrency is held to max_concurrency. */
  d = decide(conc(0, 100, 2, 8), metrics(0, 0, 0, 0, 8, 0));
  assert_decision(d, 4, 4, 0);
  /* An unset target counts as one. */
  d = decide(conc(0, 100, 4, 0), metrics(0, 0, 0, 0, 3, 0));
  assert_decision(d, 3, 3, 0);
}

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

/* A burst on a virtual clock of one-second ticks: every request arrives at
 * tick 0, a worker becomes ready 3 ticks after it is started, and a request
 * finishes one tick after a worker takes it. The number of workers started
 * is exactly what the burst needs, never more. */
static void burst(sg_scale_params_t p, int requests, int want_workers) {
  int ready = 0, starting_age[64], starting = 0, started_total = 0;
  int queued = requests, in_flight = 0;
  for (int64_t now = 0; now < 20000; now += 1000) {
    in_flight = 0;
    int still = 0;
    for (int i = 0; i < starting; i++) {
      if (++starting_age[i] >= 3)
        ready++;
      else
        starting_age[still++] = starting_age[i];
    }
    starting = still;
    int room = ready * p.max_concurrency;
    int take = room < queued ? room : queued;
    in_flight += take;
    queued -= take;
    sg_scale_decision_t d = decide(p, metrics(ready, starting, 0, in_flight, queued, queued ? now : 0));
    assert_int_equal(d.stop, 0);
    if (ready + starting + d.start > p.max)
      fail_msg("%lld ms: %d ready + %d starting + %d to start > max %d", (long long)now, ready, starting, d.start,
               p.max);
    for (int i = 0; i < d.start; i++)
      starting_age[starting++] = 0;
    started_total += d.start;
  }
  assert_int_equal(queued, 0);
  if (started_total != want_workers)
    fail_msg("%s: %d requests started %d workers, want %d", sg_scale_policy_name(p.policy), requests,
             started_total, want_workers);
}

static void test_burst_does_not_double_start(void **state) {
  (void)state;
  burst(conc(0, 16, 1, 1), 5, 5);
  burst(conc(0, 16, 2, 2), 5, 3);
  burst(conc(0, 4, 1, 1), 10, 4);
  burst(qdelay(0, 16, 1, 0), 5, 5);
  burst(qdelay(0, 16, 1, 1), 5, 5);
  burst(qdelay(0, 16, 2, 0.5), 5, 3);
}

/* Invariants over a grid of metrics. */
static void test_invariants(void **state) {
  (void)state;
  const sg_scale_policy_t policies[] = {SG_SCALE_CONCURRENCY, SG_SCALE_QUEUE_DELAY};
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
                        sg_scale_params_t p = {min, max, mc, policies[pi], 2};
                        sg_scale_metrics_t m = {ready, starting, idle, in_flight, queued, queued ? wait : 0, slots};
                        sg_scale_decision_t d = decide(p, m);
                        int active = ready + starting;
                        assert_in_range(d.desired, min, max);
                        assert_true(d.start >= 0 && d.stop >= 0);
                        assert_false(d.start > 0 && d.stop > 0);
                        assert_true(d.stop <= idle);
                        if (slots >= 0)
                          assert_true(d.start <= slots);
                        if (d.start > 0)
                          assert_true(active + d.start <= max);
                        if (d.stop > 0)
                          assert_true(active - d.stop >= min);
                        if (d.start > 0)
                          assert_true(d.desired > active);
                      }
}

static void test_params_from_spec(void **state) {
  (void)state;
  const char *text = "{\"name\": \"p\", \"command\": [\"/w\"],"
                     " \"workers\": {\"min\": 1, \"max\": 7, \"max_concurrency\": 3},"
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
  sg_spec_free(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_idle_at_zero_holds),
      cmocka_unit_test(test_scale_from_zero),
      cmocka_unit_test(test_min_kept),
      cmocka_unit_test(test_max_never_exceeded),
      cmocka_unit_test(test_start_slots_limit),
      cmocka_unit_test(test_only_idle_expired_stopped),
      cmocka_unit_test(test_queue_delay_adds_only_past_delay),
      cmocka_unit_test(test_concurrency_ceil),
      cmocka_unit_test(test_starting_counted),
      cmocka_unit_test(test_burst_does_not_double_start),
      cmocka_unit_test(test_invariants),
      cmocka_unit_test(test_params_from_spec),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
