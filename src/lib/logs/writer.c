/* The log writer: a thread with its own store connection that writes
 * batches of log lines, so that SQLite transactions never run on the event
 * loop. The loop submits batches and, before a query, waits until what it
 * submitted is committed. Lines beyond a bounded backlog are dropped and
 * counted rather than growing memory without limit. */
#include "logs/writer.h"

#include <pthread.h>

#include "sgpu/batcher.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

/* A set of endpoint names (writer thread only). */
struct names {
  char **v;
  size_t n, cap;
};

struct sg_log_writer {
  sg_batcher_t *batcher;
  sg_batcher_ops_t ops;
  sg_store_t *store;
  sg_log_retention_t def; /* endpoint NULL */
  sg_log_retention_t *rules;
  size_t n_rules;
  /* writer thread only: endpoints that have lines, and those that got new
   * lines since the last trim */
  struct names known, fresh;
  /* Held across a batch's transaction and its count, and by readers taking
   * a snapshot, so that a snapshot holds exactly the first `done` lines. */
  pthread_mutex_t snap_mu;
  uint64_t done; /* lines whose batch was written or failed */
};

void sg_log_lines_free(sg_log_line_t *lines, size_t n) {
  for (size_t i = 0; i < n; i++)
    free((char *)lines[i].endpoint);
  free(lines);
}

static void names_add(struct names *s, const char *name) {
  for (size_t i = 0; i < s->n; i++)
    if (!strcmp(s->v[i], name))
      return;
  if (s->n == s->cap) {
    s->cap = s->cap ? 2 * s->cap : 16;
    s->v = xrealloc(s->v, s->cap * sizeof(*s->v));
  }
  s->v[s->n++] = xstrdup(name);
}

static void names_clear(struct names *s) {
  for (size_t i = 0; i < s->n; i++)
    free(s->v[i]);
  s->n = 0;
}

static void note_known(void *ud, const char *ep) { names_add(&((sg_log_writer_t *)ud)->known, ep); }

/* The retention of endpoint: its own rule, with the default for what the
 * rule leaves out. */
static sg_log_retention_t rule_of(const sg_log_writer_t *w, const char *endpoint) {
  sg_log_retention_t r = w->def;
  for (size_t i = 0; i < w->n_rules; i++) {
    const sg_log_retention_t *o = &w->rules[i];
    if (strcmp(o->endpoint, endpoint))
      continue;
    if (o->max_lines >= 0)
      r.max_lines = o->max_lines;
    if (o->max_bytes >= 0)
      r.max_bytes = o->max_bytes;
    if (o->max_age_s >= 0)
      r.max_age_s = o->max_age_s;
  }
  return r;
}

/* Applies retention, oldest lines first: age for every endpoint with lines;
 * line count and size for those that got lines since the last trim (only
 * new lines can push them over). */
static void trim(sg_log_writer_t *w) {
  int64_t now = sg_wall_ms();
  for (size_t i = 0; i < w->known.n; i++) {
    cleanup_error sg_error_t *err = NULL;
    const char *ep = w->known.v[i];
    sg_log_retention_t r = rule_of(w, ep);
    if (r.max_age_s > 0 && sg_store_logs_trim_age(w->store, ep, now - (int64_t)(r.max_age_s * 1000), &err) < 0)
      sg_warn("log trim of %s failed: %s", ep, err->message);
  }
  for (size_t i = 0; i < w->fresh.n; i++) {
    cleanup_error sg_error_t *err = NULL;
    const char *ep = w->fresh.v[i];
    sg_log_retention_t r = rule_of(w, ep);
    int rc = 0;
    if (r.max_lines > 0)
      rc = sg_store_logs_trim(w->store, ep, r.max_lines, &err);
    if (rc == 0 && r.max_bytes > 0)
      rc = sg_store_logs_trim_bytes(w->store, ep, r.max_bytes, &err);
    if (rc < 0)
      sg_warn("log trim of %s failed: %s", ep, err->message);
  }
  names_clear(&w->fresh);
}

static int write_batch(void *ctx, void *items, size_t n) {
  sg_log_writer_t *w = ctx;
  sg_log_line_t *lines = items;
  cleanup_error sg_error_t *err = NULL;
  pthread_mutex_lock(&w->snap_mu);
  int r = sg_store_logs_append(w->store, lines, n, &err);
  w->done += n;
  pthread_mutex_unlock(&w->snap_mu);
  if (r < 0)
    sg_errlog("%zu log lines lost: %s", n, err->message);
  const char *prev = NULL;
  for (size_t i = 0; i < n; i++) {
    if (!prev || strcmp(prev, lines[i].endpoint)) {
      names_add(&w->fresh, lines[i].endpoint);
      names_add(&w->known, lines[i].endpoint);
    }
    prev = lines[i].endpoint;
  }
  return r < 0 ? -1 : 0;
}

static void trim_cb(void *ctx) { trim(ctx); }

static void free_lines(void *items, size_t n) { sg_log_lines_free(items, n); }

static void free_writer(sg_log_writer_t *w) {
  sg_store_close(w->store);
  names_clear(&w->known);
  names_clear(&w->fresh);
  free(w->known.v);
  free(w->fresh.v);
  for (size_t i = 0; i < w->n_rules; i++)
    free(w->rules[i].endpoint);
  free(w->rules);
  pthread_mutex_destroy(&w->snap_mu);
  free(w);
}

sg_log_writer_t *sg_log_writer_start(const char *db_path, const sg_log_retention_t *def,
                                     const sg_log_retention_t *rules, size_t n_rules, double trim_every_s,
                                     sg_error_t **err) {
  sg_store_t *store = sg_store_open(db_path, err);
  if (!store)
    return NULL;
  sg_store_set_cache(store, 64 << 20);
  sg_log_writer_t *w = xcalloc(1, sizeof(*w));
  pthread_mutex_init(&w->snap_mu, NULL);
  w->store = store;
  w->def = *def;
  w->def.endpoint = NULL;
  w->rules = xcalloc(n_rules ? n_rules : 1, sizeof(*w->rules));
  for (size_t i = 0; i < n_rules; i++) {
    w->rules[i] = rules[i];
    w->rules[i].endpoint = xstrdup(rules[i].endpoint);
  }
  w->n_rules = n_rules;
  w->ops = (sg_batcher_ops_t){
      .write = write_batch, .free_items = free_lines, .tick = trim_cb, .period_ms = (int64_t)(trim_every_s * 1000)};
  /* What is in the store already is subject to retention too. */
  cleanup_error sg_error_t *lerr = NULL;
  if (sg_store_logs_endpoints(store, note_known, w, &lerr) < 0)
    sg_warn("log retention: %s", lerr->message);
  w->batcher = sg_batcher_start("log writer", &w->ops, w, err);
  if (!w->batcher) {
    free_writer(w);
    return NULL;
  }
  return w;
}

uint64_t sg_log_writer_submit(sg_log_writer_t *w, sg_log_line_t *lines, size_t n) {
  return sg_batcher_submit(w->batcher, lines, n);
}

void sg_log_writer_wait(sg_log_writer_t *w, uint64_t seq) { sg_batcher_wait(w->batcher, seq); }

int sg_log_writer_snapshot(sg_log_writer_t *w, sg_store_t *reader, uint64_t *lines, sg_error_t **err) {
  pthread_mutex_lock(&w->snap_mu);
  int r = sg_store_read_begin(reader, err);
  *lines = w->done;
  pthread_mutex_unlock(&w->snap_mu);
  return r;
}

uint64_t sg_log_writer_stored(sg_log_writer_t *w) { return sg_batcher_written(w->batcher); }

size_t sg_log_writer_backlog(sg_log_writer_t *w) { return sg_batcher_backlog(w->batcher); }

void sg_log_writer_stop(sg_log_writer_t *w) {
  if (!w)
    return;
  sg_batcher_stop(w->batcher);
  free_writer(w);
}
