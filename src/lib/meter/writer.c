/* The usage writer (see writer.h). Batches are written in the order they
 * were submitted; every record carries absolute values, so the newest write
 * of a record is what the store holds. */
#include "meter/writer.h"

#include <pthread.h>
#include <stdbool.h>

#include "sgpu/log.h"
#include "sgpu/util.h"

struct batch {
  struct batch *next;
  sg_usage_record_t *recs;
  size_t n;
  uint64_t seq;
};

struct sg_usage_writer {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t work, done;
  struct batch *head, *tail;
  uint64_t submitted, committed, failures;
  bool stop;
  sg_store_t *store;
};

void sg_usage_records_free(sg_usage_record_t *recs, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free((char *)recs[i].worker);
    free((char *)recs[i].endpoint);
    free((char *)recs[i].gpu_type);
  }
  free(recs);
}

static void *run(void *arg) {
  sg_usage_writer_t *w = arg;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (!w->head && !w->stop)
      pthread_cond_wait(&w->work, &w->mu);
    if (!w->head)
      break;
    struct batch *b = w->head;
    w->head = b->next;
    if (!w->head)
      w->tail = NULL;
    pthread_mutex_unlock(&w->mu);

    cleanup_error sg_error_t *err = NULL;
    int r = sg_store_usage_put(w->store, b->recs, b->n, &err);
    if (r < 0)
      sg_errlog("%zu usage records not written: %s", b->n, err->message);
    uint64_t seq = b->seq;
    sg_usage_records_free(b->recs, b->n);
    free(b);

    pthread_mutex_lock(&w->mu);
    if (r < 0)
      w->failures++;
    w->committed = seq;
    pthread_cond_broadcast(&w->done);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

sg_usage_writer_t *sg_usage_writer_start(const char *db_path, sg_error_t **err) {
  sg_store_t *store = sg_store_open(db_path, err);
  if (!store)
    return NULL;
  sg_usage_writer_t *w = xcalloc(1, sizeof(*w));
  w->store = store;
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->work, NULL);
  pthread_cond_init(&w->done, NULL);
  int r = pthread_create(&w->thread, NULL, run, w);
  if (r != 0) {
    sg_store_close(store);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->work);
    pthread_cond_destroy(&w->done);
    free(w);
    sg_make_error(err, r, "cannot start the usage writer thread: %s", strerror(r));
    return NULL;
  }
  return w;
}

uint64_t sg_usage_writer_submit(sg_usage_writer_t *w, sg_usage_record_t *recs, size_t n) {
  struct batch *b = xcalloc(1, sizeof(*b));
  b->recs = recs;
  b->n = n;
  pthread_mutex_lock(&w->mu);
  b->seq = ++w->submitted;
  if (w->tail)
    w->tail->next = b;
  else
    w->head = b;
  w->tail = b;
  pthread_cond_signal(&w->work);
  uint64_t seq = b->seq;
  pthread_mutex_unlock(&w->mu);
  return seq;
}

void sg_usage_writer_wait(sg_usage_writer_t *w, uint64_t seq) {
  pthread_mutex_lock(&w->mu);
  while (w->committed < seq)
    pthread_cond_wait(&w->done, &w->mu);
  pthread_mutex_unlock(&w->mu);
}

uint64_t sg_usage_writer_failures(sg_usage_writer_t *w) {
  pthread_mutex_lock(&w->mu);
  uint64_t n = w->failures;
  pthread_mutex_unlock(&w->mu);
  return n;
}

void sg_usage_writer_stop(sg_usage_writer_t *w) {
  if (!w)
    return;
  pthread_mutex_lock(&w->mu);
  w->stop = true;
  pthread_cond_signal(&w->work);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->thread, NULL);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->work);
  pthread_cond_destroy(&w->done);
  sg_store_close(w->store);
  free(w);
}
