/* The job writer thread. See job-writer.h. */
#include <errno.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "gateway/job-writer.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define EXPIRE_EVERY_MS 1000

struct op {
  struct op *next;
  sg_job_write_t w; /* strings owned */
  bool barrier;
  sg_job_write_cb cb;
  void *arg;
};

struct sg_job_writer {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t work;
  struct op *head, *tail;           /* queued */
  struct op *done_head, *done_tail; /* written, callbacks not yet run */
  size_t backlog;
  bool stop;
  size_t max_batch;
  sg_store_t *store;
  int efd;
  struct event *ev;
  sg_job_writer_stats_t stats;
};

static char *dup_or_null(const char *s) { return s ? xstrdup(s) : NULL; }

static void op_free(struct op *o) {
  sg_job_record_t *r = &o->w.rec;
  free((char *)r->id);
  free((char *)r->endpoint);
  free((char *)r->input);
  free((char *)r->webhook);
  free((char *)r->output);
  free((char *)r->error);
  free((char *)r->worker);
  free(o);
}

static void wake_loop(sg_job_writer_t *w) {
  uint64_t one = 1;
  while (write(w->efd, &one, sizeof(one)) < 0 && errno == EINTR) {
  }
}

static void *run(void *arg) {
  sg_job_writer_t *w = arg;
  int64_t last_expire = 0;
  size_t cap = 0;
  sg_job_write_t *batch = NULL;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (!w->head && !w->stop)
      pthread_cond_wait(&w->work, &w->mu);
    if (!w->head && w->stop)
      break;
    /* Take everything queued (up to max_batch): one transaction for all. */
    struct op *first = w->head, *last = first;
    size_t n = 1;
    while (last->next && (w->max_batch == 0 || n < w->max_batch)) {
      last = last->next;
      n++;
    }
    w->head = last->next;
    if (!w->head)
      w->tail = NULL;
    last->next = NULL;
    pthread_mutex_unlock(&w->mu);

    if (n > cap) {
      cap = n > 2 * cap ? n : 2 * cap;
      batch = xrealloc(batch, cap * sizeof(*batch));
    }
    size_t nw = 0;
    for (struct op *o = first; o; o = o->next)
      if (!o->barrier)
        batch[nw++] = o->w;
    cleanup_error sg_error_t *err = NULL;
    if (sg_store_jobs_apply(w->store, batch, nw, &err) < 0)
      sg_errlog("%zu job writes failed: %s", nw, err->message);
    nw = 0;
    uint64_t failed = 0;
    for (struct op *o = first; o; o = o->next)
      if (!o->barrier) {
        o->w.result = batch[nw++].result;
        failed += o->w.result < 0;
      }
    int64_t now = sg_wall_ms();
    if (now - last_expire >= EXPIRE_EVERY_MS) {
      cleanup_error sg_error_t *xerr = NULL;
      if (sg_store_jobs_expire(w->store, now, &xerr) < 0)
        sg_warn("deleting expired jobs failed: %s", xerr->message);
      last_expire = now;
    }

    pthread_mutex_lock(&w->mu);
    w->stats.writes += nw;
    w->stats.commits += nw > 0;
    w->stats.failed += failed;
    w->backlog -= n;
    if (w->done_tail)
      w->done_tail->next = first;
    else
      w->done_head = first;
    w->done_tail = last;
    wake_loop(w);
  }
  pthread_mutex_unlock(&w->mu);
  free(batch);
  return NULL;
}

/* Runs the callbacks of committed writes, on the loop. */
static void done_cb(evutil_socket_t fd, short what, void *arg) {
  sg_job_writer_t *w = arg;
  uint64_t v;
  while (read(w->efd, &v, sizeof(v)) < 0 && errno == EINTR) {
  }
  pthread_mutex_lock(&w->mu);
  struct op *o = w->done_head;
  w->done_head = w->done_tail = NULL;
  pthread_mutex_unlock(&w->mu);
  while (o) {
    struct op *next = o->next;
    if (o->cb)
      o->cb(o->arg, o->w.result);
    op_free(o);
    o = next;
  }
}

sg_job_writer_t *sg_job_writer_start(struct event_base *base, const char *db_path, size_t max_batch, sg_error_t **err) {
  sg_store_t *store = sg_store_open(db_path, err);
  if (!store)
    return NULL;
  if (sg_store_jobs_durable(store, err) < 0) {
    sg_store_close(store);
    return NULL;
  }
  int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) {
    sg_make_error(err, errno, "eventfd: %s", strerror(errno));
    sg_store_close(store);
    return NULL;
  }
  sg_job_writer_t *w = xcalloc(1, sizeof(*w));
  w->store = store;
  w->efd = efd;
  w->max_batch = max_batch;
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->work, NULL);
  w->ev = event_new(base, efd, EV_READ | EV_PERSIST, done_cb, w);
  event_add(w->ev, NULL);
  int r = pthread_create(&w->thread, NULL, run, w);
  if (r != 0) {
    event_free(w->ev);
    close(efd);
    sg_store_close(store);
    free(w);
    sg_make_error(err, r, "cannot start the job writer thread: %s", strerror(r));
    return NULL;
  }
  return w;
}

static void enqueue(sg_job_writer_t *w, struct op *o) {
  pthread_mutex_lock(&w->mu);
  if (w->tail)
    w->tail->next = o;
  else
    w->head = o;
  w->tail = o;
  w->backlog++;
  pthread_cond_signal(&w->work);
  pthread_mutex_unlock(&w->mu);
}

void sg_job_writer_put(sg_job_writer_t *w, bool insert, const sg_job_record_t *rec, sg_job_write_cb cb, void *arg) {
  struct op *o = xcalloc(1, sizeof(*o));
  o->w.insert = insert;
  o->w.rec = *rec;
  o->w.rec.id = dup_or_null(rec->id);
  o->w.rec.endpoint = dup_or_null(rec->endpoint);
  o->w.rec.input = insert ? dup_or_null(rec->input) : NULL;
  o->w.rec.webhook = insert ? dup_or_null(rec->webhook) : NULL;
  o->w.rec.output = dup_or_null(rec->output);
  o->w.rec.error = dup_or_null(rec->error);
  o->w.rec.worker = dup_or_null(rec->worker);
  o->cb = cb;
  o->arg = arg;
  enqueue(w, o);
}

void sg_job_writer_barrier(sg_job_writer_t *w, sg_job_write_cb cb, void *arg) {
  struct op *o = xcalloc(1, sizeof(*o));
  o->barrier = true;
  o->cb = cb;
  o->arg = arg;
  enqueue(w, o);
}

size_t sg_job_writer_backlog(sg_job_writer_t *w) {
  pthread_mutex_lock(&w->mu);
  size_t n = w->backlog;
  pthread_mutex_unlock(&w->mu);
  return n;
}

void sg_job_writer_get_stats(sg_job_writer_t *w, sg_job_writer_stats_t *out) {
  pthread_mutex_lock(&w->mu);
  *out = w->stats;
  pthread_mutex_unlock(&w->mu);
}

void sg_job_writer_stop(sg_job_writer_t *w) {
  if (!w)
    return;
  pthread_mutex_lock(&w->mu);
  w->stop = true;
  pthread_cond_signal(&w->work);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->thread, NULL);
  for (struct op *o = w->done_head; o;) {
    struct op *next = o->next;
    op_free(o);
    o = next;
  }
  event_free(w->ev);
  close(w->efd);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->work);
  sg_store_close(w->store);
  free(w);
}
