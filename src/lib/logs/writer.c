/* The log writer: a thread with its own store connection that writes
 * batches of log lines, so that SQLite transactions never run on the event
 * loop. The loop submits batches and, before a query, waits until what it
 * submitted is committed. Lines beyond a bounded backlog are dropped and
 * counted rather than growing memory without limit. */
#include <pthread.h>

#include "logs/writer.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define TRIM_EVERY_MS 30000

struct batch {
  struct batch *next;
  sg_log_line_t *lines;
  size_t n;
  uint64_t seq;
};

struct sg_log_writer {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t work, done;
  struct batch *head, *tail;
  size_t backlog;      /* lines queued */
  uint64_t submitted;  /* seq of the newest batch submitted */
  uint64_t committed;  /* seq of the newest batch written (or failed) */
  bool stop;
  sg_store_t *store;
  int64_t keep_lines;
  /* endpoints seen since the last trim (writer thread only) */
  char **seen;
  size_t n_seen, cap_seen;
};

void sg_log_lines_free(sg_log_line_t *lines, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free((char *)lines[i].endpoint);
    free((char *)lines[i].worker);
    free((char *)lines[i].stream);
    free((char *)lines[i].line);
  }
  free(lines);
}

static void note_endpoint(sg_log_writer_t *w, const char *ep) {
  for (size_t i = 0; i < w->n_seen; i++)
    if (!strcmp(w->seen[i], ep))
      return;
  if (w->n_seen == w->cap_seen) {
    w->cap_seen = w->cap_seen ? 2 * w->cap_seen : 16;
    w->seen = xrealloc(w->seen, w->cap_seen * sizeof(*w->seen));
  }
  w->seen[w->n_seen++] = xstrdup(ep);
}

/* Keeps each endpoint's newest keep_lines lines. */
static void trim(sg_log_writer_t *w) {
  for (size_t i = 0; i < w->n_seen; i++) {
    cleanup_error sg_error_t *err = NULL;
    if (sg_store_logs_trim(w->store, w->seen[i], w->keep_lines, &err) < 0)
      sg_warn("log trim of %s failed: %s", w->seen[i], err->message);
    free(w->seen[i]);
  }
  w->n_seen = 0;
}

static void *run(void *arg) {
  sg_log_writer_t *w = arg;
  int64_t last_trim = sg_now_ms();
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (!w->head && !w->stop)
      pthread_cond_wait(&w->work, &w->mu);
    if (!w->head && w->stop)
      break;
    struct batch *b = w->head;
    w->head = b->next;
    if (!w->head)
      w->tail = NULL;
    pthread_mutex_unlock(&w->mu);

    cleanup_error sg_error_t *err = NULL;
    if (sg_store_logs_append(w->store, b->lines, b->n, &err) < 0)
      sg_errlog("%zu log lines lost: %s", b->n, err->message);
    for (size_t i = 0; i < b->n; i++)
      note_endpoint(w, b->lines[i].endpoint);
    if (sg_now_ms() - last_trim > TRIM_EVERY_MS) {
      trim(w);
      last_trim = sg_now_ms();
    }
    uint64_t seq = b->seq;
    size_t n = b->n;
    sg_log_lines_free(b->lines, b->n);
    free(b);

    pthread_mutex_lock(&w->mu);
    w->backlog -= n;
    w->committed = seq;
    pthread_cond_broadcast(&w->done);
  }
  pthread_mutex_unlock(&w->mu);
  trim(w);
  return NULL;
}

sg_log_writer_t *sg_log_writer_start(const char *db_path, int64_t keep_lines, sg_error_t **err) {
  sg_store_t *store = sg_store_open(db_path, err);
  if (!store)
    return NULL;
  sg_log_writer_t *w = xcalloc(1, sizeof(*w));
  w->store = store;
  w->keep_lines = keep_lines;
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->work, NULL);
  pthread_cond_init(&w->done, NULL);
  int r = pthread_create(&w->thread, NULL, run, w);
  if (r != 0) {
    sg_store_close(store);
    free(w);
    sg_make_error(err, r, "cannot start the log writer thread: %s", strerror(r));
    return NULL;
  }
  return w;
}

uint64_t sg_log_writer_submit(sg_log_writer_t *w, sg_log_line_t *lines, size_t n) {
  struct batch *b = xcalloc(1, sizeof(*b));
  b->lines = lines;
  b->n = n;
  pthread_mutex_lock(&w->mu);
  b->seq = ++w->submitted;
  if (w->tail)
    w->tail->next = b;
  else
    w->head = b;
  w->tail = b;
  w->backlog += n;
  pthread_cond_signal(&w->work);
  uint64_t seq = b->seq;
  pthread_mutex_unlock(&w->mu);
  return seq;
}

void sg_log_writer_wait(sg_log_writer_t *w, uint64_t seq) {
  pthread_mutex_lock(&w->mu);
  while (w->committed < seq)
    pthread_cond_wait(&w->done, &w->mu);
  pthread_mutex_unlock(&w->mu);
}

size_t sg_log_writer_backlog(sg_log_writer_t *w) {
  pthread_mutex_lock(&w->mu);
  size_t n = w->backlog;
  pthread_mutex_unlock(&w->mu);
  return n;
}

void sg_log_writer_stop(sg_log_writer_t *w) {
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
  free(w->seen);
  free(w);
}
