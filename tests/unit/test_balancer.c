/* Worker choice: fewest in flight, below max_concurrency, ready only,
 * ties to the most recently used, -1 when nothing can take the request; and
 * the same rule over an endpoint's workers (sg_balancer_pick_worker, used by
 * the proxy and by job dispatch), which also leaves suspect workers out. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "gateway/balancer-internal.h"
#include "sgpu/balancer.h"
#include "sgpu/util.h"

static void test_empty(void **state) {
  (void)state;
  assert_int_equal(sg_balancer_pick(NULL, 0, 1), -1);
  sg_balancer_slot_t one[1] = {{true, 0, 0}};
  assert_int_equal(sg_balancer_pick(one, 0, 1), -1);
}

static void test_single(void **state) {
  (void)state;
  sg_balancer_slot_t s[1] = {{true, 0, 100}};
  assert_int_equal(sg_balancer_pick(s, 1, 1), 0);
  s[0].in_flight = 1;
  assert_int_equal(sg_balancer_pick(s, 1, 1), -1);
  assert_int_equal(sg_balancer_pick(s, 1, 2), 0);
}

static void test_fewest_in_flight(void **state) {
  (void)state;
  sg_balancer_slot_t s[4] = {{true, 3, 1}, {true, 1, 9}, {true, 2, 0}, {true, 4, 0}};
  assert_int_equal(sg_balancer_pick(s, 4, 10), 1);
  s[1].in_flight = 5;
  assert_int_equal(sg_balancer_pick(s, 4, 10), 2);
  s[3].in_flight = 0;
  assert_int_equal(sg_balancer_pick(s, 4, 10), 3);
}

static void test_never_at_or_above_max(void **state) {
  (void)state;
  sg_balancer_slot_t s[3] = {{true, 2, 0}, {true, 3, 0}, {true, 7, 0}};
  assert_int_equal(sg_balancer_pick(s, 3, 2), -1);
  assert_int_equal(sg_balancer_pick(s, 3, 3), 0);
  s[0].in_flight = 3;
  assert_int_equal(sg_balancer_pick(s, 3, 3), -1);
  assert_int_equal(sg_balancer_pick(s, 3, 4), 0); /* tie at 3: index 0 and 1 equal in last use */
  /* Greater than max (max lowered by an update): skipped too. */
  sg_balancer_slot_t t[2] = {{true, 9, 0}, {true, 1, 50}};
  assert_int_equal(sg_balancer_pick(t, 2, 2), 1);
}

static void test_not_ready_skipped(void **state) {
  (void)state;
  sg_balancer_slot_t s[3] = {{false, 0, 0}, {true, 2, 0}, {false, 0, 0}};
  assert_int_equal(sg_balancer_pick(s, 3, 4), 1);
  s[1].ready = false;
  assert_int_equal(sg_balancer_pick(s, 3, 4), -1);
}

static void test_ties_most_recently_used(void **state) {
  (void)state;
  sg_balancer_slot_t s[4] = {{true, 1, 500}, {true, 1, 200}, {true, 1, 300}, {true, 0, 100}};
  /* The idle one wins over recency. */
  assert_int_equal(sg_balancer_pick(s, 4, 2), 3);
  s[3].in_flight = 1;
  assert_int_equal(sg_balancer_pick(s, 4, 2), 0);
  s[1].last_used_ms = 1000;
  assert_int_equal(sg_balancer_pick(s, 4, 2), 1);
  /* Not-ready slots are ignored even when most recently used. */
  sg_balancer_slot_t t[3] = {{false, 0, 99}, {true, 0, 10}, {true, 0, 20}};
  assert_int_equal(sg_balancer_pick(t, 3, 1), 2);
}

/* Repeated picks with max_concurrency 1 hand out every ready slot once, then -1. */
static void test_fills_every_slot(void **state) {
  (void)state;
  sg_balancer_slot_t s[5];
  for (int i = 0; i < 5; i++)
    s[i] = (sg_balancer_slot_t){i != 2, 0, 100 - i};
  int picked[5] = {0};
  for (int round = 0; round < 4; round++) {
    int i = sg_balancer_pick(s, 5, 1);
    assert_in_range(i, 0, 4);
    assert_int_not_equal(i, 2);
    assert_int_equal(picked[i], 0);
    picked[i] = 1;
    s[i].in_flight++;
  }
  assert_int_equal(sg_balancer_pick(s, 5, 1), -1);
}

/* Sequential requests that finish before the next arrives stay on one
 * worker, so the others idle and can be stopped. */
static void test_light_load_concentrates(void **state) {
  (void)state;
  sg_balancer_slot_t s[3] = {{true, 0, 3}, {true, 0, 2}, {true, 0, 1}};
  int64_t now = 10;
  for (int k = 0; k < 6; k++) {
    int i = sg_balancer_pick(s, 3, 1);
    assert_int_equal(i, 0);
    s[i].last_used_ms = now++;
  }
  /* Overlapping requests still spread: the busy one is not chosen. */
  s[0].in_flight = 1;
  assert_int_equal(sg_balancer_pick(s, 3, 1), 1);
}

/* ---- over an endpoint's workers ---- */

#define N_FAKE 4

typedef struct fake_ep {
  sg_spec_t spec;
  sg_endpoint_t ep;
  sg_worker_t w[N_FAKE];
} fake_ep_t;

/* An endpoint with n ready, idle workers w[0..n) in list order, w[i] last
 * used at 100 + i (so the last one is the most recently used). */
static void fake_init(fake_ep_t *f, size_t n, int max_concurrency) {
  memset(f, 0, sizeof(*f));
  f->spec.workers.max_concurrency = max_concurrency;
  f->ep.spec = &f->spec;
  TAILQ_INIT(&f->ep.workers);
  for (size_t i = 0; i < n; i++) {
    f->w[i].state = SG_W_READY;
    f->w[i].last_used_mono = 100 + (int64_t)i;
    f->w[i].ep = &f->ep;
    TAILQ_INSERT_TAIL(&f->ep.workers, &f->w[i], link);
  }
}

/* A suspect worker (a request to it failed at the connection level) takes
 * nothing until a probe clears it: not a request and not a job. */
static void test_worker_suspect_skipped(void **state) {
  (void)state;
  fake_ep_t f;
  fake_init(&f, 2, 4);
  assert_ptr_equal(sg_balancer_pick_worker(&f.ep, NULL, NULL), &f.w[1]);
  f.w[1].suspect = true;
  assert_ptr_equal(sg_balancer_pick_worker(&f.ep, NULL, NULL), &f.w[0]);
  /* Even when it is the only one with nothing in flight. */
  f.w[0].in_flight = 3;
  assert_ptr_equal(sg_balancer_pick_worker(&f.ep, NULL, NULL), &f.w[0]);
  f.w[0].suspect = true;
  assert_null(sg_balancer_pick_worker(&f.ep, NULL, NULL));
  f.w[1].suspect = false;
  assert_ptr_equal(sg_balancer_pick_worker(&f.ep, NULL, NULL), &f.w[1]);
}

/* Only ready workers below max_concurrency; fewest in flight, then most
 * recently used, then the earliest in the list. */
static void test_worker_rule_as_slots(void **state) {
  (void)state;
  fake_ep_t f;
  fake_init(&f, 4, 2);
  f.w[3].state = SG_W_STARTING;
  f.w[2].state = SG_W_DRAINING;
  assert_ptr_equal(sg_balancer_pick_worker(&f.ep, NULL, NULL), &f.w[1]);
  f.w[1].in_flight = 1;
  assert_ptr_equal(sg_balancer_pick_worker(&f.ep, NULL, NULL), &f.w[0]);
  f.w[0].in_flight = 2; /* at max_concurrency */
  assert_ptr_equal(sg_balancer_pick_worker(&f.ep, NULL, NULL), &f.w[1]);
  f.w[1].in_flight = 2;
  assert_null(sg_balancer_pick_worker(&f.ep, NULL, NULL));
  /* Equal load and equal last use: the earlier one. */
  fake_init(&f, 3, 2);
  f.w[1].last_used_mono = f.w[2].last_used_mono;
  assert_ptr_equal(sg_balancer_pick_worker(&f.ep, NULL, NULL), &f.w[1]);
  /* The same choice as sg_balancer_pick over the same workers as slots. */
  fake_init(&f, 4, 3);
  int load[N_FAKE] = {2, 1, 1, 2};
  int64_t used[N_FAKE] = {9, 5, 7, 9};
  sg_balancer_slot_t s[N_FAKE];
  for (size_t i = 0; i < N_FAKE; i++) {
    f.w[i].in_flight = load[i];
    f.w[i].last_used_mono = used[i];
    s[i] = (sg_balancer_slot_t){true, load[i], used[i]};
  }
  assert_ptr_equal(sg_balancer_pick_worker(&f.ep, NULL, NULL), &f.w[sg_balancer_pick(s, N_FAKE, 3)]);
  assert_ptr_equal(sg_balancer_pick_worker(&f.ep, NULL, NULL), &f.w[2]);
}

static bool skip_listed(const sg_worker_t *w, const void *arg) {
  for (const sg_worker_t *const *p = arg; *p; p++)
    if (*p == w)
      return true;
  return false;
}

/* Workers a request already failed on are skipped on its retry. */
static void test_worker_skip(void **state) {
  (void)state;
  fake_ep_t f;
  fake_init(&f, 3, 1);
  const sg_worker_t *none[] = {NULL};
  assert_ptr_equal(sg_balancer_pick_worker(&f.ep, skip_listed, none), &f.w[2]);
  const sg_worker_t *one[] = {&f.w[2], NULL};
  assert_ptr_equal(sg_balancer_pick_worker(&f.ep, skip_listed, one), &f.w[1]);
  const sg_worker_t *all[] = {&f.w[2], &f.w[1], &f.w[0], NULL};
  assert_null(sg_balancer_pick_worker(&f.ep, skip_listed, all));
  f.w[1].suspect = true;
  const sg_worker_t *two[] = {&f.w[2], &f.w[0], NULL};
  assert_null(sg_balancer_pick_worker(&f.ep, skip_listed, two));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_empty),
      cmocka_unit_test(test_single),
      cmocka_unit_test(test_fewest_in_flight),
      cmocka_unit_test(test_never_at_or_above_max),
      cmocka_unit_test(test_not_ready_skipped),
      cmocka_unit_test(test_ties_most_recently_used),
      cmocka_unit_test(test_fills_every_slot),
      cmocka_unit_test(test_light_load_concentrates),
      cmocka_unit_test(test_worker_suspect_skipped),
      cmocka_unit_test(test_worker_rule_as_slots),
      cmocka_unit_test(test_worker_skip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
