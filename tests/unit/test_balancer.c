/* Worker choice: fewest in flight, below max_concurrency, ready only,
 * ties to the most recently used, -1 when nothing can take the request. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

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
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
