/* Batcher threads: order, waiting, counts, failures, the periodic tick and
 * draining at stop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <pthread.h>

#include "sgpu/batcher.h"
#include "sgpu/util.h"

struct sink {
  pthread_mutex_t mu;
  int order[64];
  int n_order;
  int ticks;
  int freed;
  int fail_value; /* a batch whose first item is this fails */
};

static int write_ints(void *ctx, void *items, size_t n) {
  struct sink *s = ctx;
  int *v = items;
  pthread_mutex_lock(&s->mu);
  for (size_t i = 0; i < n && s->n_order < 64; i++)
    s->order[s->n_order++] = v[i];
  pthread_mutex_unlock(&s->mu);
  return n > 0 && v[0] == s->fail_value ? -1 : 0;
}

static int freed_total;

static void free_ints(void *items, size_t n) {
  (void)n;
  __atomic_add_fetch(&freed_total, 1, __ATOMIC_SEQ_CST);
  free(items);
}

static void tick(void *ctx) {
  struct sink *s = ctx;
  pthread_mutex_lock(&s->mu);
  s->ticks++;
  pthread_mutex_unlock(&s->mu);
}

static int *ints(int first, int n) {
  int *v = xcalloc((size_t)n, sizeof(int));
  for (int i = 0; i < n; i++)
    v[i] = first + i;
  return v;
}

static void test_order_wait_and_counts(void **state) {
  (void)state;
  struct sink s = {.mu = PTHREAD_MUTEX_INITIALIZER, .fail_value = -1};
  static const sg_batcher_ops_t ops = {write_ints, free_ints, NULL, 0};
  sg_error_t *err = NULL;
  freed_total = 0;
  sg_batcher_t *b = sg_batcher_start("test", &ops, &s, &err);
  assert_non_null(b);
  uint64_t s1 = sg_batcher_submit(b, ints(0, 3), 3);
  uint64_t s2 = sg_batcher_submit(b, ints(3, 2), 2);
  uint64_t s3 = sg_batcher_submit(b, ints(5, 5), 5);
  assert_true(s1 < s2 && s2 < s3);
  sg_batcher_wait(b, s3);
  assert_int_equal(sg_batcher_backlog(b), 0);
  assert_int_equal(sg_batcher_written(b), 10);
  assert_int_equal(sg_batcher_failures(b), 0);
  pthread_mutex_lock(&s.mu);
  assert_int_equal(s.n_order, 10);
  for (int i = 0; i < 10; i++)
    assert_int_equal(s.order[i], i);
  pthread_mutex_unlock(&s.mu);
  sg_batcher_stop(b);
  assert_int_equal(freed_total, 3);
}

static void test_failures_are_counted(void **state) {
  (void)state;
  struct sink s = {.mu = PTHREAD_MUTEX_INITIALIZER, .fail_value = 100};
  static const sg_batcher_ops_t ops = {write_ints, free_ints, NULL, 0};
  sg_error_t *err = NULL;
  freed_total = 0;
  sg_batcher_t *b = sg_batcher_start("test", &ops, &s, &err);
  sg_batcher_submit(b, ints(100, 4), 4);
  uint64_t last = sg_batcher_submit(b, ints(1, 2), 2);
  sg_batcher_wait(b, last);
  assert_int_equal(sg_batcher_failures(b), 1);
  assert_int_equal(sg_batcher_written(b), 2);
  sg_batcher_stop(b);
  assert_int_equal(freed_total, 2); /* failed batches are freed too */
}

static void test_stop_drains_and_ticks(void **state) {
  (void)state;
  struct sink s = {.mu = PTHREAD_MUTEX_INITIALIZER, .fail_value = -1};
  static const sg_batcher_ops_t ops = {write_ints, free_ints, tick, 20};
  sg_error_t *err = NULL;
  freed_total = 0;
  sg_batcher_t *b = sg_batcher_start("test", &ops, &s, &err);
  /* Ticks come every 20 ms while idle: wait (bounded) for two. */
  int ticks = 0;
  for (int i = 0; i < 500 && ticks < 2; i++) {
    struct timespec ts = {0, 10 * 1000000};
    nanosleep(&ts, NULL);
    pthread_mutex_lock(&s.mu);
    ticks = s.ticks;
    pthread_mutex_unlock(&s.mu);
  }
  assert_true(ticks >= 2);
  for (int i = 0; i < 20; i++)
    sg_batcher_submit(b, ints(i, 1), 1);
  sg_batcher_stop(b); /* writes all 20 before it returns */
  assert_int_equal(s.n_order, 20);
  assert_int_equal(freed_total, 20);
  assert_true(s.ticks > ticks); /* a last tick at stop */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_order_wait_and_counts),
      cmocka_unit_test(test_failures_are_counted),
      cmocka_unit_test(test_stop_drains_and_ticks),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
