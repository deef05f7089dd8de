/* Batcher threads; see sgpu/batcher.h. */
#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "sgpu/batcher.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

struct batch {
  struct batch *next;
  sg_batcher_batch_t b;
  uint64_t seq;
  sg_batcher_done_cb done;
  void *arg;
};

struct sg_batcher {
  const sg_batcher_ops_t *ops;
  void *ctx;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t work; /* timed on the monotonic clock */
  pthread_cond_t done;
  struct batch *head, *tail;           /* queued */
  struct batch *done_head, *done_tail; /* written, completions not yet run */
  size_t backlog;
  uint64_t submitted, committed, written, failures;
  bool stop;
  int efd; /* -1 without completions */
  struct event *ev;
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

/* Takes the next group off the queue (b->mu held, queue not empty): one
 * batch, or with write_group every queued batch up to max_group items.
 * Returns the first; the group ends at a batch whose next is NULL. */
static struct batch *take_group(sg_batcher_t *b, size_t *count) {
  struct batch *first = b->head, *last = first;
  size_t items = first->b.n, n = 1;
  if (b->ops->write_group)
    while (last->next &&
           (b->ops->max_group == 0 || last->next->b.n == 0 || items + last->next->b.n <= b->ops->max_group)) {
      last = last->next;
      items += last->b.n;
      n++;
    }
  b->head = last->next;
  if (!b->head)
    b->tail = NULL;
  last->next = NULL;
  *count = n;
  return first;
}

/* Writes a group (b->mu not held); leaves each batch's result set. */
static void write_group(sg_batcher_t *b, struct batch *first, size_t n, sg_batcher_batch_t **view, size_t *cap) {
  const sg_batcher_ops_t *ops = b->ops;
  if (!ops->write_group) {
    first->b.result = ops->write(b->ctx, first->b.items, first->b.n) < 0 ? -1 : 0;
  } else {
    if (n > *cap) {
      *cap = n > 2 * *cap ? n : 2 * *cap;
      *view = xrealloc(*view, *cap * sizeof(**view));
    }
    size_t i = 0;
    for (struct batch *x = first; x; x = x->next)
      (*view)[i++] = (sg_batcher_batch_t){x->b.items, x->b.n, 0};
    ops->write_group(b->ctx, *view, n);
    i = 0;
    for (struct batch *x = first; x; x = x->next)
      x->b.result = (*view)[i++].result;
  }
  for (struct batch *x = first; x; x = x->next) {
    if (x->b.n > 0 || x->b.items)
      ops->free_items(x->b.items, x->b.n);
    x->b.items = NULL;
  }
}

static void wake_loop(sg_batcher_t *b) {
  uint64_t one = 1;
  while (write(b->efd, &one, sizeof(one)) < 0 && errno == EINTR) {
  }
}

static void *run(void *arg) {
  sg_batcher_t *b = arg;
  const sg_batcher_ops_t *ops = b->ops;
  sg_batcher_batch_t *view = NULL;
  size_t cap = 0;
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
    size_t n = 0;
    struct batch *first = b->head ? take_group(b, &n) : NULL;
    pthread_mutex_unlock(&b->mu);
    if (first)
      write_group(b, first, n, &view, &cap);
    if (sg_now_ms() >= next_tick) {
      ops->tick(b->ctx);
      next_tick = sg_now_ms() + ops->period_ms;
    }
    pthread_mutex_lock(&b->mu);
    if (!first)
      continue;
    bool wake = false;
    for (struct batch *x = first; x;) {
      struct batch *next = x->next;
      b->backlog -= x->b.n;
      if (x->b.result < 0)
        b->failures++;
      else
        b->written += x->b.n;
      b->committed = x->seq;
      if (x->done) {
        x->next = NULL;
        if (b->done_tail)
          b->done_tail->next = x;
        else
          b->done_head = x;
        b->done_tail = x;
        wake = true;
      } else {
        free(x);
      }
      x = next;
    }
    if (wake)
      wake_loop(b);
    pthread_cond_broadcast(&b->done);
  }
  pthread_mutex_unlock(&b->mu);
  if (ops->tick)
    ops->tick(b->ctx);
  free(view);
  return NULL;
}

/* Runs the completions of written batches, in order, on the loop. */
static void done_cb(evutil_socket_t fd, short what, void *arg) {
  sg_batcher_t *b = arg;
  uint64_t v;
  while (read(fd, &v, sizeof(v)) < 0 && errno == EINTR) {
  }
  pthread_mutex_lock(&b->mu);
  struct batch *x = b->done_head;
  b->done_head = b->done_tail = NULL;
  pthread_mutex_unlock(&b->mu);
  while (x) {
    struct batch *next = x->next;
    x->done(x->arg, x->b.result);
    free(x);
    x = next;
  }
}

static void free_batcher(sg_batcher_t *b) {
  if (b->ev)
    event_free(b->ev);
  if (b->efd >= 0)
    close(b->efd);
  pthread_mutex_destroy(&b->mu);
  pthread_cond_destroy(&b->work);
  pthread_cond_destroy(&b->done);
  free(b);
}

sg_batcher_t *sg_batcher_start_on(struct event_base *base, const char *name, const sg_batcher_ops_t *ops, void *ctx,
                                  sg_error_t **err) {
  sg_batcher_t *b = xcalloc(1, sizeof(*b));
  b->ops = ops;
  b->ctx = ctx;
  b->efd = -1;
  pthread_mutex_init(&b->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&b->work, &ca);
  pthread_condattr_destroy(&ca);
  pthread_cond_init(&b->done, NULL);
  if (base) {
    b->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (b->efd < 0) {
      sg_make_error(err, errno, "cannot start the %s: eventfd: %s", name, strerror(errno));
      free_batcher(b);
      return NULL;
    }
    b->ev = event_new(base, b->efd, EV_READ | EV_PERSIST, done_cb, b);
    event_add(b->ev, NULL);
  }
  /* The thread never takes signals: the loop's signal events own them. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int r = pthread_create(&b->thread, NULL, run, b);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (r != 0) {
    free_batcher(b);
    sg_make_error(err, r, "cannot start the %s thread: %s", name, strerror(r));
    return NULL;
  }
  return b;
}

sg_batcher_t *sg_batcher_start(const char *name, const sg_batcher_ops_t *ops, void *ctx, sg_error_t **err) {
  return sg_batcher_start_on(NULL, name, ops, ctx, err);
}

uint64_t sg_batcher_submit_cb(sg_batcher_t *b, void *items, size_t n, sg_batcher_done_cb done, void *arg) {
  if (done && b->efd < 0) {
    sg_errlog("a completion was asked of a batcher started without an event base");
    abort();
  }
  struct batch *batch = xcalloc(1, sizeof(*batch));
  batch->b.items = items;
  batch->b.n = n;
  batch->done = done;
  batch->arg = arg;
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

uint64_t sg_batcher_submit(sg_batcher_t *b, void *items, size_t n) {
  return sg_batcher_submit_cb(b, items, n, NULL, NULL);
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
  for (struct batch *x = b->done_head; x;) {
    struct batch *next = x->next;
    free(x);
    x = next;
  }
  free_batcher(b);
}
