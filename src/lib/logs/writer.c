/* The log writer: a thread with its own store connection that writes
 * batches of log lines, so that SQLite transactions never run on the event
 * loop. The loop submits batches and, before a query, waits until what it
 * submitted is committed. Lines beyond a bounded backlog are dropped and
 * counted rather than growing memory without limit. */
#include <pthread.h>
#include <time.h>

#include "logs/writer.h"
#include "sgpu/log.h"
#include "sgpu/util.h"


struct batch {
  struct batch *next;
  sg_log_line_t *lines;
  size_t n;
  uint64_t seq;
};

/* A set of endpoint names (writer thread only). */
struct names {
  char **v;
  size_t n, cap;
};

struct sg_log_writer {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t work, done; /* work waits on the monotonic clock */
  struct batch *head, *tail;
  size_t backlog;      /* lines queued */
  uint64_t submitted;  /* seq of the newest batch submitted */
  uint64_t committed;  /* seq of the newest batch written (or failed) */
  bool stop;
  uint64_t stored;     /* lines written */
  sg_store_t *store;
  sg_log_retention_t def; /* endpoint NULL */
  sg_log_retention_t *rules;
  size_t n_rules;
  int64_t trim_every_ms;
  /* writer thread only: endpoints that have lines, and those that got new
   * lines since the last trim */
  struct names known, fresh;
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

static void write_batch(sg_log_writer_t *w, struct batch *b) {
  cleanup_error sg_error_t *err = NULL;
  bool ok = sg_store_logs_append(w->store, b->lines, b->n, &err) == 0;
  if (!ok)
    sg_errlog("%zu log lines lost: %s", b->n, err->message);
  const char *prev = NULL;
  for (size_t i = 0; i < b->n; i++) {
    if (!prev || strcmp(prev, b->lines[i].endpoint)) {
      names_add(&w->fresh, b->lines[i].endpoint);
      names_add(&w->known, b->lines[i].endpoint);
    }
    prev = b->lines[i].endpoint;
  }
  uint64_t seq = b->seq;
  size_t n = b->n;
  sg_log_lines_free(b->lines, b->n);
  free(b);

  pthread_mutex_lock(&w->mu);
  w->backlog -= n;
  if (ok)
    w->stored += n;
  w->committed = seq;
  pthread_cond_broadcast(&w->done);
  pthread_mutex_unlock(&w->mu);
}

static void *run(void *arg) {
  sg_log_writer_t *w = arg;
  cleanup_error sg_error_t *err = NULL;
  if (sg_store_logs_endpoints(w->store, note_known, w, &err) < 0)
    sg_warn("log retention: %s", err->message);
  int64_t next_trim = sg_now_ms() + w->trim_every_ms;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (!w->head && !w->stop && sg_now_ms() < next_trim) {
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      int64_t wait_ms = next_trim - sg_now_ms();
      ts.tv_sec += wait_ms / 1000;
      ts.tv_nsec += (wait_ms % 1000) * 1000000;
      if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
      }
      pthread_cond_timedwait(&w->work, &w->mu, &ts);
    }
    if (!w->head && w->stop)
      break;
    struct batch *b = w->head;
    if (b) {
      w->head = b->next;
      if (!w->head)
        w->tail = NULL;
    }
    pthread_mutex_unlock(&w->mu);
    if (b)
      write_batch(w, b);
    if (sg_now_ms() >= next_trim) {
      trim(w);
      next_trim = sg_now_ms() + w->trim_every_ms;
    }
    pthread_mutex_lock(&w->mu);
  }
  pthread_mutex_unlock(&w->mu);
  trim(w);
  return NULL;
}

sg_log_writer_t *sg_log_writer_start(const char *db_path, const sg_log_retention_t *def,
                                     const sg_log_retention_t *rules, size_t n_rules, double trim_every_s,
                                     sg_error_t **err) {
  sg_store_t *store = sg_store_open(db_path, err);
  if (!store)
    return NULL;
  sg_store_set_cache(store, 64 << 20);
  sg_log_writer_t *w = xcalloc(1, sizeof(*w));
  w->store = store;
  w->def = *def;
  w->def.endpoint = NULL;
  w->rules = xcalloc(n_rules ? n_rules : 1, sizeof(*w->rules));
  for (size_t i = 0; i < n_rules; i++) {
    w->rules[i] = rules[i];
    w->rules[i].endpoint = xstrdup(rules[i].endpoint);
  }
  w->n_rules = n_rules;
  w->trim_every_ms = (int64_t)(trim_every_s * 1000);
  pthread_mutex_init(&w->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&w->work, &ca);
  pthread_condattr_destroy(&ca);
  pthread_cond_init(&w->done, NULL);
  int r = pthread_create(&w->thread, NULL, run, w);
  if (r != 0) {
    sg_store_close(store);
    for (size_t i = 0; i < w->n_rules; i++)
      free(w->rules[i].endpoint);
    free(w->rules);
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

uint64_t sg_log_writer_stored(sg_log_writer_t *w) {
  pthread_mutex_lock(&w->mu);
  uint64_t n = w->stored;
  pthread_mutex_unlock(&w->mu);
  return n;
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
  names_clear(&w->known);
  names_clear(&w->fresh);
  free(w->known.v);
  free(w->fresh.v);
  for (size_t i = 0; i < w->n_rules; i++)
    free(w->rules[i].endpoint);
  free(w->rules);
  free(w);
}
