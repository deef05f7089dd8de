/* The meter's pure parts: prices, time by state, rounding, hour buckets,
 * overlaps; the log rate limiter; usage records in the store (idempotent
 * writes, closing after a crash). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <unistd.h>

#include "logs/limit.h"
#include "sgpu/meter.h"
#include "sgpu/store.h"
#include "sgpu/util.h"

static void test_price_parse(void **state) {
  sg_price_table_t t = {0};
  sg_error_t *err = NULL;
  assert_int_equal(sg_price_table_parse(&t, " a100=0.00040, h100 = 0.0012 ,default=0.0001", &err), 0);
  assert_int_equal(t.n, 2);
  assert_true(fabs(sg_price_lookup(&t, "a100") - 0.0004) < 1e-15);
  assert_true(fabs(sg_price_lookup(&t, "h100") - 0.0012) < 1e-15);
  assert_true(fabs(sg_price_lookup(&t, "l4") - 0.0001) < 1e-15);
  assert_true(sg_price_lookup(&t, NULL) == 0);
  char *text = sg_price_table_format(&t);
  sg_price_table_t u = {0};
  assert_int_equal(sg_price_table_parse(&u, text, &err), 0);
  assert_true(sg_price_table_equal(&t, &u));
  free(text);
  /* a later item for the same type wins */
  assert_int_equal(sg_price_table_parse(&u, "a100=1,a100=2", &err), 0);
  assert_int_equal(u.n, 1);
  assert_true(sg_price_lookup(&u, "a100") == 2);
  assert_false(sg_price_table_equal(&t, &u));
  /* empty */
  assert_int_equal(sg_price_table_parse(&u, "", &err), 0);
  assert_int_equal(u.n, 0);
  assert_true(sg_price_lookup(&u, "a100") == 0);
  sg_price_table_clear(&u);
  sg_price_table_clear(&t);
}

static void test_price_errors(void **state) {
  const char *bad[] = {"a100", "a100=", "=1", "a100=-1", "a100=x", "a100=1e999", "a100=nan", "a100=1,h100"};
  for (size_t i = 0; i < SG_ARRAY_SIZE(bad); i++) {
    sg_price_table_t t = {0};
    sg_error_t *err = NULL;
    assert_true(sg_price_table_parse(&t, bad[i], &err) < 0);
    assert_non_null(err);
    assert_string_equal(err->field, "prices");
    assert_int_equal(t.n, 0);
    sg_error_free(err);
  }
}

static void test_acc_states(void **state) {
  sg_meter_acc_t a;
  sg_meter_acc_init(&a, SG_METER_STARTING, 1000);
  sg_meter_acc_set(&a, SG_METER_IDLE, 1700); /* 700 ms starting */
  sg_meter_acc_set(&a, SG_METER_BUSY, 2000); /* 300 ms idle */
  sg_meter_acc_set(&a, SG_METER_BUSY, 2500); /* same state: keeps counting busy */
  sg_meter_acc_set(&a, SG_METER_IDLE, 3100); /* 1100 ms busy */
  sg_meter_acc_advance(&a, 3000);            /* the past counts nothing */
  sg_meter_acc_advance(&a, 4000);            /* 900 ms idle */
  assert_int_equal(a.ms[SG_METER_STARTING], 700);
  assert_int_equal(a.ms[SG_METER_BUSY], 1100);
  assert_int_equal(a.ms[SG_METER_IDLE], 1200);
  assert_int_equal(sg_meter_acc_total(&a), 3000);
  sg_meter_acc_reset(&a);
  assert_int_equal(sg_meter_acc_total(&a), 0);
  assert_int_equal(a.state, SG_METER_IDLE);
  sg_meter_acc_advance(&a, 4500);
  assert_int_equal(a.ms[SG_METER_IDLE], 500);
  assert_string_equal(sg_meter_state_name(SG_METER_BUSY), "busy");
}

static void test_rounding(void **state) {
  assert_int_equal(sg_meter_billable_s(0), 0);
  assert_int_equal(sg_meter_billable_s(1), 1);
  assert_int_equal(sg_meter_billable_s(999), 1);
  assert_int_equal(sg_meter_billable_s(1000), 1);
  assert_int_equal(sg_meter_billable_s(1001), 2);
  assert_int_equal(sg_meter_billable_s(-5), 0);
  assert_int_equal(sg_meter_round_ms(1001), 999);
  assert_int_equal(sg_meter_round_ms(2000), 0);
  assert_int_equal(sg_meter_round_ms(0), 0);
  /* 10 s on 2 GPUs at 0.0004 per GPU-second */
  assert_true(fabs(sg_meter_cost(10000, 2, 0.0004) - 0.008) < 1e-12);
  assert_true(sg_meter_cost(10000, 0, 0.0004) == 0);
}

static void test_buckets(void **state) {
  int64_t t = 1764270000123; /* 2025-11-27T19:00:00.123Z */
  assert_int_equal(sg_meter_hour_start(t), 1764270000000);
  assert_int_equal(sg_meter_day_start(t), 1764201600000);
  assert_int_equal(sg_meter_hour_start(1764270000000), 1764270000000);
  assert_int_equal(sg_meter_hour_start(-1), -3600000);
}

static void test_overlap(void **state) {
  assert_true(sg_meter_overlap(0, 100, 0, 100) == 1.0);
  assert_true(sg_meter_overlap(0, 100, 50, 200) == 0.5);
  assert_true(sg_meter_overlap(0, 100, 25, 75) == 0.5);
  assert_true(sg_meter_overlap(0, 100, 100, 200) == 0.0);
  assert_true(sg_meter_overlap(0, 100, -50, 0) == 0.0);
  assert_true(sg_meter_overlap(50, 50, 0, 100) == 1.0);
  assert_true(sg_meter_overlap(100, 100, 0, 100) == 0.0);
}

static void test_log_limit(void **state) {
  sg_log_limit_t l = {0};
  int passed = 0;
  /* a fresh bucket lets the burst through, then nothing until it refills */
  for (int i = 0; i < 100; i++)
    passed += sg_log_limit_take(&l, 10, 20, 1000);
  assert_int_equal(passed, 20);
  assert_int_equal(l.dropped, 80);
  /* 10 lines/s: 500 ms later 5 more pass */
  passed = 0;
  for (int i = 0; i < 100; i++)
    passed += sg_log_limit_take(&l, 10, 20, 1500);
  assert_int_equal(passed, 5);
  assert_int_equal(l.dropped_total, 175);
  /* never more than the burst, however long the pause */
  passed = 0;
  for (int i = 0; i < 100; i++)
    passed += sg_log_limit_take(&l, 10, 20, 1000000);
  assert_int_equal(passed, 20);
  assert_true(sg_log_limit_report_due(&l, 1000000, 1000, false));
  l.dropped = 0;
  l.reported_ms = 1000000;
  assert_false(sg_log_limit_report_due(&l, 1000001, 1000, true));
  /* no limit */
  sg_log_limit_t u = {0};
  for (int i = 0; i < 1000; i++)
    assert_true(sg_log_limit_take(&u, 0, 1, 5));
}

static sg_usage_record_t rec(const char *worker, int seg, int64_t start, int64_t end, int64_t busy, bool closed) {
  return (sg_usage_record_t){.worker = worker,
                             .seg = seg,
                             .endpoint = "ep",
                             .gpu_type = "a100",
                             .gpu_count = 1,
                             .price = 0.001,
                             .start_ms = start,
                             .end_ms = end,
                             .busy_ms = busy,
                             .closed = closed};
}

struct seen {
  int n;
  int64_t busy, round;
  bool all_closed;
};

static void count(void *ud, const sg_usage_record_t *r) {
  struct seen *s = ud;
  s->n++;
  s->busy += r->busy_ms;
  s->round += r->round_ms;
  s->all_closed &= r->closed;
}

static void test_store_usage(void **state) {
  char path[] = "/tmp/sgpu-test-meter-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  sg_error_t *err = NULL;
  sg_store_t *s = sg_store_open(path, &err);
  assert_non_null(s);
  /* checkpoints of a running worker replace each other */
  sg_usage_record_t a = rec("w1", 0, 1000, 2000, 1000, false);
  assert_int_equal(sg_store_usage_put(s, &a, 1, &err), 0);
  a = rec("w1", 0, 1000, 3500, 2500, false);
  assert_int_equal(sg_store_usage_put(s, &a, 1, &err), 0);
  assert_int_equal(sg_store_usage_put(s, &a, 1, &err), 0);
  sg_usage_record_t b = rec("w2", 0, 1000, 1400, 400, true);
  b.round_ms = 600;
  assert_int_equal(sg_store_usage_put(s, &b, 1, &err), 0);
  /* a closed record never changes again */
  sg_usage_record_t b2 = rec("w2", 0, 1000, 9000, 8000, false);
  assert_int_equal(sg_store_usage_put(s, &b2, 1, &err), 0);
  struct seen seen = {0, 0, 0, true};
  assert_int_equal(sg_store_usage_each(s, NULL, 0, 100000, count, &seen, &err), 0);
  assert_int_equal(seen.n, 2);
  assert_int_equal(seen.busy, 2500 + 400);
  assert_int_equal(seen.round, 600);
  assert_false(seen.all_closed);
  /* a restart closes w1 at its last checkpoint, rounded up once */
  assert_int_equal(sg_store_usage_close_open(s, &err), 0);
  assert_int_equal(sg_store_usage_close_open(s, &err), 0);
  seen = (struct seen){0, 0, 0, true};
  assert_int_equal(sg_store_usage_each(s, NULL, 0, 100000, count, &seen, &err), 0);
  assert_int_equal(seen.busy, 2900);
  assert_int_equal(seen.round, 600 + 500);
  assert_true(seen.all_closed);
  /* filters: endpoint and range */
  seen = (struct seen){0, 0, 0, true};
  assert_int_equal(sg_store_usage_each(s, "other", 0, 100000, count, &seen, &err), 0);
  assert_int_equal(seen.n, 0);
  assert_int_equal(sg_store_usage_each(s, NULL, 5000, 6000, count, &seen, &err), 0);
  assert_int_equal(seen.n, 0);
  sg_store_close(s);
  unlink(path);
  char wal[64];
  snprintf(wal, sizeof(wal), "%s-wal", path);
  unlink(wal);
  snprintf(wal, sizeof(wal), "%s-shm", path);
  unlink(wal);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_price_parse), cmocka_unit_test(test_price_errors), cmocka_unit_test(test_acc_states),
      cmocka_unit_test(test_rounding),    cmocka_unit_test(test_buckets),      cmocka_unit_test(test_overlap),
      cmocka_unit_test(test_log_limit),   cmocka_unit_test(test_store_usage),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
