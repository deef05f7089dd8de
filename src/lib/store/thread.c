/* The store thread (see store.h): a one-thread pool, so jobs run one at a
 * time in submission order and their done() run on the loop in that order. */
#include "sgpu/images-store.h"
#include "sgpu/log.h"
#include "sgpu/pool.h"
#include "sgpu/store.h"
#include "sgpu/util.h"

struct sg_store_thread {
  sg_pool_t *pool;
  sg_store_t *store;
};

typedef struct job {
  sg_store_thread_t *t;
  void (*work)(sg_store_t *store, void *data);
  void (*done)(void *data);
  void *data;
} job_t;

static void job_work(void *arg) {
  job_t *j = arg;
  j->work(j->t->store, j->data);
}

/* Never cancelled: the pool is drained before it is freed. */
static void job_done(void *arg, bool cancelled) {
  job_t *j = arg;
  (void)cancelled;
  if (j->done)
    j->done(j->data);
  free(j);
}

static const sg_pool_job_ops_t job_ops = {job_work, job_done};

sg_store_thread_t *sg_store_thread_new(struct event_base *base, sg_store_t *store, sg_error_t **err) {
  sg_pool_t *pool = sg_pool_new(base, 1, err);
  if (!pool)
    return NULL;
  sg_store_thread_t *t = xcalloc(1, sizeof(*t));
  t->pool = pool;
  t->store = store;
  return t;
}

void sg_store_thread_submit(sg_store_thread_t *t, void (*work)(sg_store_t *store, void *data), void (*done)(void *data),
                            void *data) {
  job_t *j = xcalloc(1, sizeof(*j));
  j->t = t;
  j->work = work;
  j->done = done;
  j->data = data;
  sg_pool_submit(t->pool, &job_ops, j);
}

void sg_store_thread_drain(sg_store_thread_t *t) { sg_pool_drain(t->pool); }

void sg_store_thread_free(sg_store_thread_t *t) {
  if (!t)
    return;
  sg_pool_drain(t->pool);
  sg_pool_free(t->pool);
  free(t);
}

/* ---- writes that nobody waits for: failures are logged ---- */

typedef struct rec_job {
  char *s[5];
  int pid;
  int64_t t[5];
} rec_job_t;

static void rec_free(void *data) {
  rec_job_t *j = data;
  for (size_t i = 0; i < SG_ARRAY_SIZE(j->s); i++)
    free(j->s[i]);
  free(j);
}

static char *dup_or_null(const char *s) { return s ? xstrdup(s) : NULL; }

static void worker_add_work(sg_store_t *store, void *data) {
  rec_job_t *j = data;
  sg_worker_record_t rec = {j->s[0], j->s[1], j->s[2], j->pid, j->t[0]};
  cleanup_error sg_error_t *err = NULL;
  if (sg_store_worker_add(store, &rec, &err) < 0)
    sg_warn("worker %s not recorded: %s", rec.id, err->message);
}

void sg_store_thread_worker_add(sg_store_thread_t *t, const sg_worker_record_t *rec) {
  rec_job_t *j = xcalloc(1, sizeof(*j));
  j->s[0] = dup_or_null(rec->id);
  j->s[1] = dup_or_null(rec->endpoint);
  j->s[2] = dup_or_null(rec->runtime);
  j->pid = rec->pid;
  j->t[0] = rec->started_ms;
  sg_store_thread_submit(t, worker_add_work, rec_free, j);
}

static void worker_remove_work(sg_store_t *store, void *data) {
  rec_job_t *j = data;
  sg_store_worker_remove(store, j->s[0], NULL);
}

void sg_store_thread_worker_remove(sg_store_thread_t *t, const char *id) {
  rec_job_t *j = xcalloc(1, sizeof(*j));
  j->s[0] = xstrdup(id);
  sg_store_thread_submit(t, worker_remove_work, rec_free, j);
}

static void image_put_work(sg_store_t *store, void *data) {
  rec_job_t *j = data;
  sg_image_record_t rec = {j->s[0], j->s[1], j->s[2], j->s[3], j->t[0], j->t[1], j->t[2], j->t[3], j->t[4]};
  cleanup_error sg_error_t *err = NULL;
  if (sg_store_image_put(store, &rec, &err) < 0)
    sg_warn("image %s not recorded: %s", rec.ref, err->message);
}

void sg_store_thread_image_put(sg_store_thread_t *t, const sg_image_record_t *rec) {
  rec_job_t *j = xcalloc(1, sizeof(*j));
  j->s[0] = dup_or_null(rec->ref);
  j->s[1] = dup_or_null(rec->digest);
  j->s[2] = dup_or_null(rec->config_json);
  j->s[3] = dup_or_null(rec->layers_json);
  int64_t t5[5] = {rec->size_bytes, rec->compressed_bytes, rec->pulled_ms, rec->pull_ms, rec->last_used_ms};
  memcpy(j->t, t5, sizeof(t5));
  sg_store_thread_submit(t, image_put_work, rec_free, j);
}

static void image_touch_work(sg_store_t *store, void *data) {
  rec_job_t *j = data;
  sg_store_image_touch(store, j->s[0], j->t[0], NULL);
}

void sg_store_thread_image_touch(sg_store_thread_t *t, const char *ref, int64_t last_used_ms) {
  rec_job_t *j = xcalloc(1, sizeof(*j));
  j->s[0] = xstrdup(ref);
  j->t[0] = last_used_ms;
  sg_store_thread_submit(t, image_touch_work, rec_free, j);
}

static void image_delete_work(sg_store_t *store, void *data) {
  rec_job_t *j = data;
  sg_store_image_delete(store, j->s[0], NULL);
}

void sg_store_thread_image_delete(sg_store_thread_t *t, const char *ref) {
  rec_job_t *j = xcalloc(1, sizeof(*j));
  j->s[0] = xstrdup(ref);
  sg_store_thread_submit(t, image_delete_work, rec_free, j);
}
