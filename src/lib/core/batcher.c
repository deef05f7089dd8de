/* Batcher threads; see sgpu/batcher.h. */
#include <pthread.h>
#include <stdbool.h>
#include <time.h>

#include "sgpu/batcher.h"
#include "sgpu/util.h"

struct batch {
  struct batch *next;
  void *items;
  size_t n;
  uint64_t seq;
};

struct sg_batcher {
  const sg_batcher_ops_t *ops;
  void *ctx;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t work; /* timed on the monotonic clock */
  pthread_cond_t done;
  struct batch *head, *tail;
  size_t backlog;
  uint64_t submitted, committed, written, failures;
  bool stop;
};

static void deadline(struct timespec *ts, int64_t ms_from_now) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += ms_from_now / 1000;
  ts->tv_nsec += (ms_from_now % 1000) * 1000000;
  if (ts->tv_nsec >= 1000000000) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000;
  }
}

static void *run(void *arg) {
  sg_batcher_t *b = arg;
  const sg_batcher_ops_t *ops = b->ops;
  int64_t next_tick = ops->tick ? sg_now_ms() + ops->period_ms : INT64_MAX;
  pthread_mutex_lock(&b->mu);
  for (;;) {
    while (!b->head && !b->stop && sg_now_ms() < next_tick) {
      if (next_tick == INT64_MAX) {
        pthread_cond_wait(&b->work, &b->mu);
      } else {
        struct timespec ts;
        deadline(&ts, next_tick - sg_now_ms());
        pthread_cond_timedwait(&b->work, &b->mu, &ts);
      }
    }
    if (!b->head && b->stop)
      break;
    struct batch *batch = b->head;
    if (batch) {
      b->head = batch->next;
      if (!b->head)
        b->tail = NULL;
    }
    pthread_mutex_unlock(&b->mu);
    int r = 0;
    if (batch) {
      r = ops->write(b->ctx, batch->items, batch->n);
      ops->free_items(batch->items, batch->n);
    }
    if (sg_now_ms() >= next_tick) {
      ops->tick(b->ctx);
      next_tick = sg_now_ms() + ops->period_ms;
    }
    pthread_mutex_lock(&b->mu);
    if (batch) {
      b->backlog -= batch->n;
      if (r < 0)
        b->failures++;
      else
        b->written += batch->n;
      b->committed = batch->seq;
      free(batch);
      pthread_cond_broadcast(&b->done);
    }
  }
  pthread_mutex_unlock(&b->mu);
  if (ops->tick)
    ops->tick(b->ctx);
  return NULL;
}

sg_batcher_t *sg_batcher_start(const char *name, const sg_batcher_ops_t *ops, void *ctx, sg_error_t **err) {
  sg_batcher_t *b = xcalloc(1, sizeof(*b));
  b->ops = ops;
  b->ctx = ctx;
  pthread_mutex_init(&b->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&b->work, &ca);
  pthread_condattr_destroy(&ca);
  pthread_cond_init(&b->done, NULL);
  int r = pthread_create(&b->thread, NULL, run, b);
  if (r != 0) {
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->work);
    pthread_cond_destroy(&b->done);
    free(b);
    sg_make_error(err, r, "cannot start the %s thread: %s", name, strerror(r));
    return NULL;
  }
  return b;
}

uint64_t sg_batcher_submit(sg_batcher_t *b, void *items, size_t n) {
  struct batch *batch = xcalloc(1, sizeof(*batch));
  batch->items = items;
  batch->n = n;
  pthread_mutex_lock(&b->mu);
  batch->seq = ++b->submitted;
  if (b->tail)
    b->tail->next = batch;
  else
    b->head = batch;
  b->tail = batch;
  b->backlog += n;
  uint64_t seq = batch->seq;
  pthread_cond_signal(&b->work);
  pthread_mutex_unlock(&b->mu);
  return seq;
}

void sg_batcher_wait(sg_batcher_t *b, uint64_t seq) {
  pthread_mutex_lock(&b->mu);
  while (b->committed < seq)
    pthread_cond_wait(&b->done, &b->mu);
  pthread_mutex_unlock(&b->mu);
}

static uint64_t read_locked(sg_batcher_t *b, const uint64_t *field) {
  pthread_mutex_lock(&b->mu);
  uint64_t v = *field;
  pthread_mutex_unlock(&b->mu);
  return v;
}

size_t sg_batcher_backlog(sg_batcher_t *b) {
  pthread_mutex_lock(&b->mu);
  size_t n = b->backlog;
  pthread_mutex_unlock(&b->mu);
  return n;
}

uint64_t sg_batcher_written(sg_batcher_t *b) { return read_locked(b, &b->written); }

uint64_t sg_batcher_failures(sg_batcher_t *b) { return read_locked(b, &b->failures); }

void sg_batcher_stop(sg_batcher_t *b) {
  if (!b)
    return;
  pthread_mutex_lock(&b->mu);
  b->stop = true;
  pthread_cond_signal(&b->work);
  pthread_mutex_unlock(&b->mu);
  pthread_join(b->thread, NULL);
  pthread_mutex_destroy(&b->mu);
  pthread_cond_destroy(&b->work);
  pthread_cond_destroy(&b->done);
  free(b);
}
