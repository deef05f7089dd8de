/* The job writer over a batcher. See job-writer.h. */
#include <pthread.h>

#include "gateway/job-writer.h"
#include "sgpu/batcher.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define EXPIRE_EVERY_MS 1000

struct sg_job_writer {
  sg_batcher_t *batcher;
  sg_batcher_ops_t ops;
  sg_store_t *store;
  /* batcher thread only */
  sg_job_write_t *scratch;
  size_t cap;
  int64_t last_expire;
  pthread_mutex_t mu; /* guards stats */
  sg_job_writer_stats_t stats;
};

static char *dup_or_null(const char *s) { return s ? xstrdup(s) : NULL; }

/* A write is a batch of one sg_job_write_t (its strings owned); a barrier
 * is a batch of none. */
static void free_write(void *items, size_t n) {
  (void)n;
  sg_job_write_t *o = items;
  sg_job_record_t *r = &o->rec;
  free((char *)r->id);
  free((char *)r->endpoint);
  free((char *)r->input);
  free((char *)r->webhook);
  free((char *)r->output);
  free((char *)r->error);
  free((char *)r->worker);
  free(o);
}

/* Writes a group in one transaction: one commit, one sync of the log. */
static void write_group(void *ctx, sg_batcher_batch_t *batches, size_t n) {
  sg_job_writer_t *w = ctx;
  if (n > w->cap) {
    w->cap = n > 2 * w->cap ? n : 2 * w->cap;
    w->scratch = xrealloc(w->scratch, w->cap * sizeof(*w->scratch));
  }
  size_t nw = 0;
  for (size_t i = 0; i < n; i++)
    if (batches[i].n > 0)
      w->scratch[nw++] = *(sg_job_write_t *)batches[i].items;
  cleanup_error sg_error_t *err = NULL;
  if (sg_store_jobs_apply(w->store, w->scratch, nw, &err) < 0)
    sg_errlog("%zu job writes failed: %s", nw, err->message);
  nw = 0;
  uint64_t failed = 0;
  for (size_t i = 0; i < n; i++)
    if (batches[i].n > 0) {
      batches[i].result = w->scratch[nw++].result;
      failed += batches[i].result < 0;
    }
  int64_t now = sg_wall_ms();
  if (now - w->last_expire >= EXPIRE_EVERY_MS) {
    cleanup_error sg_error_t *xerr = NULL;
    if (sg_store_jobs_expire(w->store, now, &xerr) < 0)
      sg_warn("deleting expired jobs failed: %s", xerr->message);
    w->last_expire = now;
  }
  pthread_mutex_lock(&w->mu);
  w->stats.writes += nw;
  w->stats.commits += nw > 0;
  w->stats.failed += failed;
  pthread_mutex_unlock(&w->mu);
}

static void free_writer(sg_job_writer_t *w) {
  sg_store_close(w->store);
  pthread_mutex_destroy(&w->mu);
  free(w->scratch);
  free(w);
}

sg_job_writer_t *sg_job_writer_start(struct event_base *base, const char *db_path, size_t max_batch, sg_error_t **err) {
  sg_store_t *store = sg_store_open(db_path, err);
  if (!store)
    return NULL;
  if (sg_store_jobs_durable(store, err) < 0) {
    sg_store_close(store);
    return NULL;
  }
  sg_job_writer_t *w = xcalloc(1, sizeof(*w));
  w->store = store;
  pthread_mutex_init(&w->mu, NULL);
  w->ops = (sg_batcher_ops_t){.write_group = write_group, .free_items = free_write, .max_group = max_batch};
  w->batcher = sg_batcher_start_on(base, "job writer", &w->ops, w, err);
  if (!w->batcher) {
    free_writer(w);
    return NULL;
  }
  return w;
}

void sg_job_writer_put(sg_job_writer_t *w, bool insert, const sg_job_record_t *rec, sg_job_write_cb cb, void *arg) {
  sg_job_write_t *o = xcalloc(1, sizeof(*o));
  o->insert = insert;
  o->rec = *rec;
  o->rec.id = dup_or_null(rec->id);
  o->rec.endpoint = dup_or_null(rec->endpoint);
  o->rec.input = insert ? dup_or_null(rec->input) : NULL;
  o->rec.webhook = insert ? dup_or_null(rec->webhook) : NULL;
  o->rec.output = dup_or_null(rec->output);
  o->rec.error = dup_or_null(rec->error);
  o->rec.worker = dup_or_null(rec->worker);
  sg_batcher_submit_cb(w->batcher, o, 1, cb, arg);
}

void sg_job_writer_barrier(sg_job_writer_t *w, sg_job_write_cb cb, void *arg) {
  sg_batcher_submit_cb(w->batcher, NULL, 0, cb, arg);
}

size_t sg_job_writer_backlog(sg_job_writer_t *w) { return sg_batcher_backlog(w->batcher); }

void sg_job_writer_get_stats(sg_job_writer_t *w, sg_job_writer_stats_t *out) {
  pthread_mutex_lock(&w->mu);
  *out = w->stats;
  pthread_mutex_unlock(&w->mu);
}

void sg_job_writer_stop(sg_job_writer_t *w) {
  if (!w)
    return;
  sg_batcher_stop(w->batcher);
  free_writer(w);
}
