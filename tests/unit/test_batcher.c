/* Batcher threads: order, waiting, counts, failures, the periodic tick,
 * draining at stop, group commit and completions on the loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <event2/event.h>
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

/* ---- groups and completions ---- */

/* A sink that writes groups: it records each group's size, fails the batches
 * whose first item is fail_value with -5, and can hold the thread in its
 * first write until released. */
struct gsink {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool hold, holding;
  int fail_value;
  int order[256];
  int n_order;
  int groups[256]; /* batches per group */
  int group_items[256];
  int n_groups;
};

static void write_group_ints(void *ctx, sg_batcher_batch_t *batches, size_t n) {
  struct gsink *s = ctx;
  pthread_mutex_lock(&s->mu);
  s->holding = true;
  pthread_cond_broadcast(&s->cv);
  while (s->hold)
    pthread_cond_wait(&s->cv, &s->mu);
  int items = 0;
  for (size_t i = 0; i < n; i++) {
    int *v = batches[i].items;
    for (size_t k = 0; k < batches[i].n && s->n_order < 256; k++)
      s->order[s->n_order++] = v[k];
    items += (int)batches[i].n;
    if (batches[i].n > 0 && v[0] == s->fail_value)
      batches[i].result = -5;
  }
  if (s->n_groups < 256) {
    s->groups[s->n_groups] = (int)n;
    s->group_items[s->n_groups++] = items;
  }
  pthread_mutex_unlock(&s->mu);
}

struct completions {
  struct event_base *base;
  int seen[256];
  int result[256];
  int n, want;
};

struct tag {
  struct completions *c;
  int id;
};

static void on_done(void *arg, int result) {
  struct tag *t = arg;
  struct completions *c = t->c;
  assert_true(c->n < 256);
  c->seen[c->n] = t->id;
  c->result[c->n++] = result;
  if (c->n == c->want)
    event_base_loopbreak(c->base);
}

static void give_up(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  event_base_loopbreak(arg);
}

/* Runs the loop until c->want completions ran, or 10 s passed. */
static void run_until_done(struct completions *c) {
  struct event *bound = evtimer_new(c->base, give_up, c->base);
  struct timeval tv = {10, 0};
  evtimer_add(bound, &tv);
  if (c->n < c->want)
    event_base_dispatch(c->base);
  event_free(bound);
  assert_int_equal(c->n, c->want);
}

static void hold(struct gsink *s) {
  pthread_mutex_lock(&s->mu);
  s->hold = true;
  pthread_mutex_unlock(&s->mu);
}

/* Waits until the thread is inside write_group, held. */
static void wait_holding(struct gsink *s) {
  pthread_mutex_lock(&s->mu);
  while (!s->holding)
    pthread_cond_wait(&s->cv, &s->mu);
  pthread_mutex_unlock(&s->mu);
}

static void release(struct gsink *s) {
  pthread_mutex_lock(&s->mu);
  s->hold = false;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

/* Batches queued while a group is written share the next group: 1 batch,
 * then the other 39 in one group, not 39 more. */
static void test_group_commit(void **state) {
  (void)state;
  struct gsink s = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .fail_value = -1};
  static const sg_batcher_ops_t ops = {.write_group = write_group_ints, .free_items = free_ints};
  struct completions c = {.base = event_base_new(), .want = 40};
  struct tag tags[40];
  sg_error_t *err = NULL;
  freed_total = 0;
  sg_batcher_t *b = sg_batcher_start_on(c.base, "test", &ops, &s, &err);
  assert_non_null(b);
  hold(&s);
  tags[0] = (struct tag){&c, 0};
  sg_batcher_submit_cb(b, ints(0, 1), 1, on_done, &tags[0]);
  wait_holding(&s);
  uint64_t last = 0;
  for (int i = 1; i < 40; i++) {
    tags[i] = (struct tag){&c, i};
    last = sg_batcher_submit_cb(b, ints(i, 1), 1, on_done, &tags[i]);
  }
  release(&s);
  sg_batcher_wait(b, last); /* the barrier, as the query pool uses it */
  assert_int_equal(sg_batcher_written(b), 40);
  assert_int_equal(sg_batcher_backlog(b), 0);
  pthread_mutex_lock(&s.mu);
  assert_int_equal(s.n_groups, 2);
  assert_int_equal(s.groups[0], 1);
  assert_int_equal(s.groups[1], 39);
  for (int i = 0; i < 40; i++)
    assert_int_equal(s.order[i], i);
  pthread_mutex_unlock(&s.mu);
  run_until_done(&c);
  for (int i = 0; i < 40; i++) {
    assert_int_equal(c.seen[i], i);
    assert_int_equal(c.result[i], 0);
  }
  sg_batcher_stop(b);
  assert_int_equal(freed_total, 40);
  event_base_free(c.base);
}

/* max_group bounds the items of a group; batches of no items (completion
 * only) always join and complete in their place. */
static void test_group_bound_and_empty_batches(void **state) {
  (void)state;
  struct gsink s = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .fail_value = -1};
  static const sg_batcher_ops_t ops = {.write_group = write_group_ints, .free_items = free_ints, .max_group = 4};
  struct completions c = {.base = event_base_new(), .want = 11};
  struct tag tags[11];
  sg_error_t *err = NULL;
  freed_total = 0;
  sg_batcher_t *b = sg_batcher_start_on(c.base, "test", &ops, &s, &err);
  assert_non_null(b);
  hold(&s);
  tags[0] = (struct tag){&c, 0};
  sg_batcher_submit_cb(b, ints(0, 1), 1, on_done, &tags[0]);
  wait_holding(&s);
  /* 1..9: batches of 3 items, every third a batch of none. */
  int v = 1;
  for (int i = 1; i < 10; i++) {
    tags[i] = (struct tag){&c, i};
    if (i % 3 == 0) {
      sg_batcher_submit_cb(b, NULL, 0, on_done, &tags[i]);
    } else {
      sg_batcher_submit_cb(b, ints(v, 3), 3, on_done, &tags[i]);
      v += 3;
    }
  }
  tags[10] = (struct tag){&c, 10};
  sg_batcher_submit_cb(b, NULL, 0, on_done, &tags[10]);
  release(&s);
  run_until_done(&c);
  for (int i = 0; i < 11; i++)
    assert_int_equal(c.seen[i], i);
  pthread_mutex_lock(&s.mu);
  assert_int_equal(s.n_order, v);
  for (int i = 0; i < v; i++)
    assert_int_equal(s.order[i], i);
  for (int g = 0; g < s.n_groups; g++)
    assert_true(s.group_items[g] <= 4);
  /* {0} {1-3} {4-6,none} {7-9} {10-12,none} {13-15} {16-18,none,none} */
  assert_int_equal(s.n_groups, 7);
  pthread_mutex_unlock(&s.mu);
  sg_batcher_stop(b);
  assert_int_equal(freed_total, 7);
  event_base_free(c.base);
}

/* A completion gets its own batch's outcome: -1 from write, the result
 * write_group set; the others 0. */
static void test_completion_outcomes(void **state) {
  (void)state;
  sg_error_t *err = NULL;
  /* write: a failed batch completes with -1. */
  struct sink s = {.mu = PTHREAD_MUTEX_INITIALIZER, .fail_value = 100};
  static const sg_batcher_ops_t ops = {.write = write_ints, .free_items = free_ints};
  struct completions c = {.base = event_base_new(), .want = 3};
  struct tag tags[3] = {{&c, 0}, {&c, 1}, {&c, 2}};
  sg_batcher_t *b = sg_batcher_start_on(c.base, "test", &ops, &s, &err);
  assert_non_null(b);
  sg_batcher_submit_cb(b, ints(1, 2), 2, on_done, &tags[0]);
  sg_batcher_submit_cb(b, ints(100, 2), 2, on_done, &tags[1]);
  sg_batcher_submit_cb(b, ints(3, 1), 1, on_done, &tags[2]);
  run_until_done(&c);
  assert_int_equal(c.result[0], 0);
  assert_int_equal(c.result[1], -1);
  assert_int_equal(c.result[2], 0);
  assert_int_equal(sg_batcher_failures(b), 1);
  assert_int_equal(sg_batcher_written(b), 3);
  sg_batcher_stop(b);
  event_base_free(c.base);

  /* write_group: only the batch it failed. */
  struct gsink g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .fail_value = 7};
  static const sg_batcher_ops_t gops = {.write_group = write_group_ints, .free_items = free_ints};
  struct completions gc = {.base = event_base_new(), .want = 3};
  struct tag gtags[3] = {{&gc, 0}, {&gc, 1}, {&gc, 2}};
  b = sg_batcher_start_on(gc.base, "test", &gops, &g, &err);
  assert_non_null(b);
  hold(&g);
  sg_batcher_submit_cb(b, ints(5, 1), 1, on_done, &gtags[0]);
  wait_holding(&g);
  sg_batcher_submit_cb(b, ints(7, 1), 1, on_done, &gtags[1]);
  sg_batcher_submit_cb(b, ints(8, 1), 1, on_done, &gtags[2]);
  release(&g);
  run_until_done(&gc);
  assert_int_equal(gc.result[0], 0);
  assert_int_equal(gc.result[1], -5);
  assert_int_equal(gc.result[2], 0);
  assert_int_equal(sg_batcher_failures(b), 1);
  sg_batcher_stop(b);
  event_base_free(gc.base);
}

/* Stop with batches queued: every item is written and freed, and the
 * completions that did not run never run. */
static void test_stop_with_pending_completions(void **state) {
  (void)state;
  struct gsink s = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .fail_value = -1};
  static const sg_batcher_ops_t ops = {.write_group = write_group_ints, .free_items = free_ints};
  struct completions c = {.base = event_base_new(), .want = 1000};
  struct tag tags[30];
  sg_error_t *err = NULL;
  freed_total = 0;
  sg_batcher_t *b = sg_batcher_start_on(c.base, "test", &ops, &s, &err);
  assert_non_null(b);
  hold(&s);
  for (int i = 0; i < 30; i++) {
    tags[i] = (struct tag){&c, i};
    sg_batcher_submit_cb(b, ints(i, 1), 1, on_done, &tags[i]);
  }
  wait_holding(&s);
  release(&s);
  sg_batcher_stop(b);
  event_base_loop(c.base, EVLOOP_NONBLOCK);
  assert_int_equal(c.n, 0);
  assert_int_equal(s.n_order, 30);
  assert_int_equal(freed_total, 30);
  event_base_free(c.base);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_order_wait_and_counts),         cmocka_unit_test(test_failures_are_counted),
      cmocka_unit_test(test_stop_drains_and_ticks),         cmocka_unit_test(test_group_commit),
      cmocka_unit_test(test_group_bound_and_empty_batches), cmocka_unit_test(test_completion_outcomes),
      cmocka_unit_test(test_stop_with_pending_completions),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
