/* The log store's live half: worker output and platform events are buffered
 * on the loop, written to the store in one transaction every flush interval,
 * and handed at once to every follower whose filter they match.
 *
 * Queries (GET .../logs) run on the query pool, never on the loop: the loop
 * flushes, and the pool thread waits for that batch's commit (the barrier)
 * and then reads the store on a read-only connection, so a query never
 * misses a line that was emitted before it arrived. The answer goes back on
 * the loop when the job completes; a client that left meanwhile is
 * forgotten through the request's close callback and the result is freed.
 * A follower is registered when its request arrives and buffers the lines
 * emitted while its backfill query runs; at completion it sends those its
 * snapshot does not hold, so the backfill and the live lines neither
 * overlap nor leave a gap. Followers are
 * connections kept open with a chunked answer; a follower that reads slower
 * than lines come is cut off once its unsent output passes a bound, rather
 * than holding memory without limit. */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdarg.h>

#include "daemon/fleet.h"
#include "logs/limit.h"
#include "logs/logs.h"
#include "logs/writer.h"
#include "sgpu/pool.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define FLUSH_MS 50
#define MAX_PENDING 20000  /* lines buffered before a forced flush */
#define MAX_BACKLOG 500000 /* lines waiting for the writer before new ones are dropped */
#define FOLLOWER_MAX_UNSENT (4u << 20)
#define KEEPALIVE_S 15
#define MAX_LINE_BYTES 16384
#define QUERY_DEFAULT_LIMIT 1000
#define QUERY_MAX_LIMIT 10000
#define RECENT_REQUEST_MS 1000
#define RECENT_REQUESTS_MAX 32

/* A line a follower got while its backfill query ran. */
struct pending_line {
  char *text; /* formatted */
  size_t len;
  size_t idx;   /* position in d->logs->logbuf until flushed */
  uint64_t ord; /* which line submitted to the writer it is; UINT64_MAX: never stored */
  bool tagged;  /* ord is known */
};

struct logs_job;
typedef struct sg_follower sg_follower_t;

/* A worker's output: its rate limit and its last lines (sg_logs_source_*). */
struct sg_log_source {
  TAILQ_ENTRY(sg_log_source) link;
  bool linked; /* in the log store's list (false once it shut down) */
  bool ended;  /* the worker exited: its drops are reported at once */
  sg_daemon_t *d;
  char *endpoint, *worker;
  sg_log_limit_t limit;          /* output lines per second */
  char *recent[SG_RECENT_LINES]; /* ring of its last output lines */
  int recent_next;
  /* Requests in flight on the worker, and those that ended on it within
   * RECENT_REQUEST_MS (at most RECENT_REQUESTS_MAX of them): a line the
   * worker wrote before its answer may be read after the answer. */
  struct traced_request {
    char *id;
    int64_t ended_ms; /* monotonic; 0: in flight */
  } * requests;
  size_t n_requests, cap_requests;
};

/* The log store's live state (d->logs), loop-thread only. */
struct sg_logs {
  /* log lines waiting to be written in one transaction */
  struct {
    sg_log_line_t *lines;
    size_t n, cap;
    uint64_t dropped;
  } logbuf;
  LIST_HEAD(, sg_follower) followers;
  TAILQ_HEAD(, sg_log_source) sources; /* oldest first, as workers are listed */
  struct sg_log_writer *writer;
  struct event *flush;
  uint64_t seq;       /* the newest batch handed to the writer */
  uint64_t submitted; /* lines handed to the writer since the start */
  struct {
    uint64_t lines;           /* lines emitted (worker output and events) */
    uint64_t rate_dropped;    /* worker lines over their rate limit */
    uint64_t backlog_dropped; /* lines dropped while the writer was behind */
  } stats;
};

struct sg_follower {
  LIST_ENTRY(sg_follower) link;
  /* While the backfill runs: its job, and the lines seen meanwhile. */
  struct logs_job *job;
  struct pending_line *pend;
  size_t npend, cap_pend, pend_bytes;
  size_t ntagged; /* pend[0..ntagged) know their ord (tagged in order) */
  bool overflow;  /* pending lines passed the bound: end after the backfill */
  bool deleted;   /* its endpoint was deleted: end after the backfill */
  sg_daemon_t *d;
  sg_http_req_t *req;
  char *endpoint;
  char *worker;     /* NULL: any */
  char *stream;     /* NULL: any */
  char *text;       /* NULL: any */
  char *request_id; /* NULL: any */
  int64_t until_ms; /* 0: no bound */
  bool sse;
  struct event *keepalive;
};

static void flush_cb(evutil_socket_t fd, short what, void *arg) { sg_logs_flush(arg); }

static bool line_matches(const sg_follower_t *f, const sg_log_line_t *l) {
  if (strcmp(f->endpoint, l->endpoint))
    return false;
  if (f->worker && (!l->worker || strcmp(f->worker, l->worker)))
    return false;
  if (f->stream && strcmp(f->stream, l->stream))
    return false;
  if (f->text && !strstr(l->line, f->text))
    return false;
  if (f->request_id && (!l->request_id || strcmp(f->request_id, l->request_id)))
    return false;
  if (f->until_ms && l->ts_ms > f->until_ms)
    return false;
  return true;
}

/* Appends one line as NDJSON or an SSE event to buf. */
static void format_line(struct evbuffer *buf, const sg_log_line_t *l, bool sse) {
  char t[32];
  json_t *j = json_pack("{s:I, s:s, s:s, s:o, s:s, s:s}", "ts", (json_int_t)l->ts_ms, "time",
                        sg_format_time(l->ts_ms, t, sizeof(t)), "endpoint", l->endpoint, "worker",
                        l->worker ? json_string(l->worker) : json_null(), "stream", l->stream, "line", l->line);
  if (!j) /* a line that is not valid UTF-8 */
    j = json_pack("{s:I, s:s, s:s, s:o, s:s, s:s}", "ts", (json_int_t)l->ts_ms, "time",
                  sg_format_time(l->ts_ms, t, sizeof(t)), "endpoint", l->endpoint, "worker",
                  l->worker ? json_string(l->worker) : json_null(), "stream", l->stream, "line",
                  "(line is not valid UTF-8)");
  if (l->request_id)
    json_object_set_new(j, "request_id", json_string(l->request_id));
  cleanup_free char *text = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  if (sse)
    evbuffer_add_printf(buf, "data: %s\n\n", text);
  else
    evbuffer_add_printf(buf, "%s\n", text);
}

static void pending_free(sg_follower_t *f) {
  for (size_t i = 0; i < f->npend; i++)
    free(f->pend[i].text);
  free(f->pend);
  f->pend = NULL;
  f->npend = f->cap_pend = f->pend_bytes = f->ntagged = 0;
}

static void follower_free(sg_follower_t *f) {
  LIST_REMOVE(f, link);
  pending_free(f);
  if (f->keepalive)
    event_free(f->keepalive);
  free(f->endpoint);
  free(f->worker);
  free(f->stream);
  free(f->text);
  free(f->request_id);
  free(f);
}

/* Ends a follower's answer and forgets it. */
static void follower_end(sg_follower_t *f) {
  sg_http_set_close_cb(f->req, NULL, NULL);
  sg_http_reply_end(f->req);
  follower_free(f);
}

/* The client went away; the server frees the request. */
static void follower_closed(sg_http_req_t *req, void *arg);

static void follower_send(sg_follower_t *f, struct evbuffer *buf) {
  if (sg_http_unsent(f->req) > FOLLOWER_MAX_UNSENT) {
    sg_warn("log follower of %s is too slow; closing its stream", f->endpoint);
    follower_end(f);
    return;
  }
  sg_http_reply_chunk(f->req, buf);
}

static void keepalive_cb(evutil_socket_t fd, short what, void *arg) {
  sg_follower_t *f = arg;
  if (f->until_ms && sg_wall_ms() > f->until_ms) {
    follower_end(f);
    return;
  }
  struct evbuffer *buf = evbuffer_new();
  evbuffer_add_printf(buf, f->sse ? ": keep-alive\n\n" : "\n");
  follower_send(f, buf);
  evbuffer_free(buf);
}

/* Keeps a line for a follower whose backfill is running. */
static void pend_line(sg_daemon_t *d, sg_follower_t *f, struct evbuffer *buf) {
  size_t len = evbuffer_get_length(buf);
  if (f->overflow || f->pend_bytes + len > FOLLOWER_MAX_UNSENT) {
    f->overflow = true;
    return;
  }
  if (f->npend == f->cap_pend) {
    f->cap_pend = f->cap_pend ? 2 * f->cap_pend : 64;
    f->pend = xrealloc(f->pend, f->cap_pend * sizeof(*f->pend));
  }
  struct pending_line *p = &f->pend[f->npend++];
  p->text = xmalloc(len);
  evbuffer_remove(buf, p->text, len);
  p->len = len;
  p->idx = d->logs->logbuf.n - 1;
  p->tagged = false;
  f->pend_bytes += len;
}

/* The buffered lines go to the writer as lines base.. (or are dropped when
 * base is UINT64_MAX): pending followers learn which their lines are. */
static void tag_pending(sg_daemon_t *d, uint64_t base) {
  sg_follower_t *f;
  LIST_FOREACH(f, &d->logs->followers, link) {
    for (; f->ntagged < f->npend; f->ntagged++) {
      struct pending_line *p = &f->pend[f->ntagged];
      p->ord = base == UINT64_MAX ? UINT64_MAX : base + p->idx;
      p->tagged = true;
    }
  }
}

static void fan_out(sg_daemon_t *d, const sg_log_line_t *l) {
  sg_follower_t *f, *tmp;
  for (f = LIST_FIRST(&d->logs->followers); f; f = tmp) {
    tmp = LIST_NEXT(f, link);
    if (!line_matches(f, l))
      continue;
    struct evbuffer *buf = evbuffer_new();
    format_line(buf, l, f->sse);
    if (f->job) {
      pend_line(d, f, buf);
      evbuffer_free(buf);
      continue;
    }
    follower_send(f, buf);
    evbuffer_free(buf);
  }
}

bool sg_request_id_valid(const char *id) {
  size_t n = strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-");
  return n > 0 && n <= SG_REQUEST_ID_MAX && id[n] == '\0';
}

/* sg_logs_emit for a line written for the request request_id (NULL: none). */
static void emit(sg_daemon_t *d, const char *endpoint, const char *worker, const char *stream, const char *line,
                 size_t len, const char *request_id) {
  if (!d->logs) /* not started, or shut down */
    return;
  if (len > MAX_LINE_BYTES)
    len = MAX_LINE_BYTES;
  if (d->logs->logbuf.n >= MAX_PENDING)
    sg_logs_flush(d);
  if (d->logs->logbuf.n == d->logs->logbuf.cap) {
    d->logs->logbuf.cap = d->logs->logbuf.cap ? 2 * d->logs->logbuf.cap : 256;
    d->logs->logbuf.lines = xrealloc(d->logs->logbuf.lines, d->logs->logbuf.cap * sizeof(*d->logs->logbuf.lines));
  }
  sg_log_line_t *l = &d->logs->logbuf.lines[d->logs->logbuf.n++];
  l->ts_ms = sg_wall_ms();
  /* One block per line: endpoint, worker, stream, text and request id, each NUL-ended. */
  size_t le = strlen(endpoint) + 1, lw = worker ? strlen(worker) + 1 : 0, ls = strlen(stream) + 1;
  size_t lr = request_id ? strlen(request_id) + 1 : 0;
  char *block = xmalloc(le + lw + ls + len + 1 + lr);
  memcpy(block, endpoint, le);
  if (worker)
    memcpy(block + le, worker, lw);
  memcpy(block + le + lw, stream, ls);
  memcpy(block + le + lw + ls, line, len);
  block[le + lw + ls + len] = '\0';
  if (request_id)
    memcpy(block + le + lw + ls + len + 1, request_id, lr);
  l->endpoint = block;
  l->worker = worker ? block + le : NULL;
  l->stream = block + le + lw;
  l->line = block + le + lw + ls;
  l->request_id = request_id ? block + le + lw + ls + len + 1 : NULL;
  d->logs->stats.lines++;
  if (!LIST_EMPTY(&d->logs->followers))
    fan_out(d, l);
  if (!d->logs->flush)
    d->logs->flush = evtimer_new(d->base, flush_cb, d);
  if (!evtimer_pending(d->logs->flush, NULL)) {
    struct timeval tv = {0, FLUSH_MS * 1000};
    evtimer_add(d->logs->flush, &tv);
  }
}

void sg_logs_emit(sg_daemon_t *d, const char *endpoint, const char *worker, const char *stream, const char *line,
                  size_t len) {
  emit(d, endpoint, worker, stream, line, len, NULL);
}

void sg_logs_event(sg_daemon_t *d, const char *endpoint, const char *worker, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *msg = NULL;
  if (vasprintf(&msg, fmt, ap) < 0)
    abort();
  va_end(ap);
  sg_info("%s%s%s: %s", endpoint, worker ? "/" : "", worker ? worker : "", msg);
  sg_logs_emit(d, endpoint, worker, "event", msg, strlen(msg));
  free(msg);
}

void sg_logs_endpoint_deleted(sg_daemon_t *d, const char *endpoint) {
  if (!d->logs)
    return;
  sg_follower_t *f, *tmp;
  for (f = LIST_FIRST(&d->logs->followers); f; f = tmp) {
    tmp = LIST_NEXT(f, link);
    if (strcmp(f->endpoint, endpoint) != 0)
      continue;
    if (f->job)
      f->deleted = true; /* its backfill is running: end when it is sent */
    else
      follower_end(f);
  }
}

int sg_logs_init(sg_daemon_t *d, const char *db_path, sg_error_t **err) {
  d->logs = xcalloc(1, sizeof(*d->logs));
  LIST_INIT(&d->logs->followers);
  TAILQ_INIT(&d->logs->sources);
  sg_log_retention_t def = {NULL, d->cfg.log_keep_lines, d->cfg.log_max_bytes, d->cfg.log_max_age_s};
  d->logs->writer =
      sg_log_writer_start(db_path, &def, d->cfg.log_retention, d->cfg.n_log_retention, d->cfg.log_trim_interval_s, err);
  return d->logs->writer ? 0 : -1;
}

/* Hands the buffered lines to the writer, or drops them (counted) while the
 * writer is too far behind. */
void sg_logs_flush(sg_daemon_t *d) {
  if (!d->logs || d->logs->logbuf.n == 0 || !d->logs->writer)
    return;
  if (sg_log_writer_backlog(d->logs->writer) > MAX_BACKLOG) {
    d->logs->logbuf.dropped += d->logs->logbuf.n;
    d->logs->stats.backlog_dropped += d->logs->logbuf.n;
    tag_pending(d, UINT64_MAX);
    sg_log_lines_free(d->logs->logbuf.lines, d->logs->logbuf.n);
  } else {
    tag_pending(d, d->logs->submitted);
    d->logs->submitted += d->logs->logbuf.n;
    d->logs->seq = sg_log_writer_submit(d->logs->writer, d->logs->logbuf.lines, d->logs->logbuf.n);
    if (d->logs->logbuf.dropped) {
      uint64_t dropped = d->logs->logbuf.dropped;
      d->logs->logbuf.dropped = 0;
      sg_warn("%llu log lines were dropped: the store could not keep up", (unsigned long long)dropped);
    }
  }
  d->logs->logbuf.lines = NULL;
  d->logs->logbuf.n = d->logs->logbuf.cap = 0;
}

/* Reads an epoch-ms value or a duration before now ("10m"); -1 if malformed. */
static int64_t parse_time(const char *s, int64_t now) {
  if (!*s)
    return -1;
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (!*end && errno == 0 && v >= 0)
    return v;
  int64_t dur = sg_parse_duration_ms(s);
  return dur < 0 ? -1 : now - dur;
}

/* A query on the pool. The strings of q are copies the job owns. */
struct logs_job {
  sg_daemon_t *d;
  sg_http_req_t *req; /* NULL once the client went away (not follow) */
  sg_follower_t *f;   /* follow: NULL once the client went away */
  sg_log_writer_t *writer;
  sg_store_readers_t *readers;
  uint64_t seq; /* the batch to wait for: the barrier */
  sg_log_query_t q;
  char *endpoint, *worker, *stream, *text, *request_id;
  bool sse, follow;
  /* results, filled on the pool thread */
  struct evbuffer *buf;
  uint64_t snapshot_lines;
  sg_error_t *err;
};

static void job_free(struct logs_job *j) {
  if (j->buf)
    evbuffer_free(j->buf);
  sg_error_free(j->err);
  free(j->endpoint);
  free(j->worker);
  free(j->stream);
  free(j->text);
  free(j->request_id);
  free(j);
}

static void follower_closed(sg_http_req_t *req, void *arg) {
  sg_follower_t *f = arg;
  if (f->job)
    f->job->f = NULL;
  follower_free(f);
}

static void job_req_closed(sg_http_req_t *req, void *arg) { ((struct logs_job *)arg)->req = NULL; }

struct query_ctx {
  struct evbuffer *buf;
  bool sse;
};

static void query_line(void *ud, const sg_log_line_t *l) {
  struct query_ctx *c = ud;
  format_line(c->buf, l, c->sse);
}

/* Pool thread: the barrier, then the query on a read-only connection. */
static void job_work(void *data) {
  struct logs_job *j = data;
  sg_assert_not_loop_thread();
  if (j->writer && j->seq)
    sg_log_writer_wait(j->writer, j->seq);
  sg_store_t *reader = sg_store_readers_take(j->readers, &j->err);
  if (!reader)
    return;
  int r = 0;
  if (j->follow && j->writer)
    r = sg_log_writer_snapshot(j->writer, reader, &j->snapshot_lines, &j->err);
  struct query_ctx ctx = {j->buf, j->sse};
  if (r == 0)
    sg_store_logs_query(reader, &j->q, query_line, &ctx, &j->err);
  sg_store_read_end(reader);
  sg_store_readers_put(j->readers, reader);
}

/* Loop: the follower's backfill is in; the lines seen meanwhile that the
 * snapshot does not hold follow it, then live lines. */
static void follow_ready(struct logs_job *j, sg_follower_t *f) {
  sg_daemon_t *d = j->d;
  sg_http_req_t *req = f->req;
  f->job = NULL;
  sg_http_add_header(req, "Cache-Control", "no-cache");
  sg_http_add_header(req, "Content-Type", j->sse ? "text/event-stream" : "application/x-ndjson");
  sg_http_reply_start(req, 200, NULL);
  for (size_t i = 0; i < f->npend; i++) {
    const struct pending_line *p = &f->pend[i];
    if (!j->writer || !p->tagged || p->ord >= j->snapshot_lines)
      evbuffer_add(j->buf, p->text, p->len);
  }
  pending_free(f);
  sg_http_reply_chunk(req, j->buf);
  if (f->overflow || f->deleted) {
    if (f->overflow)
      sg_warn("log follower of %s is too slow; closing its stream", f->endpoint);
    follower_end(f);
    return;
  }
  f->keepalive = event_new(d->base, -1, EV_PERSIST, keepalive_cb, f);
  struct timeval tv = {KEEPALIVE_S, 0};
  event_add(f->keepalive, &tv);
}

/* Loop: answers the query, unless its client went away. cancelled: the
 * pool was freed first (shutdown). */
static void job_done(void *data, bool cancelled) {
  struct logs_job *j = data;
  sg_follower_t *f = j->f;
  sg_http_req_t *req = j->follow ? (f ? f->req : NULL) : j->req;
  if (!req) {
    job_free(j);
    return;
  }
  if (cancelled || j->err) {
    if (f) {
      f->job = NULL;
      follower_free(f);
    }
    sg_http_set_close_cb(req, NULL, NULL);
    if (cancelled)
      sg_http_send_error(req, 503, "shutting_down", "sgpud is stopping", NULL);
    else
      sg_http_send_sg_error(req, j->err);
    job_free(j);
    return;
  }
  if (f) {
    follow_ready(j, f);
    job_free(j);
    return;
  }
  sg_http_set_close_cb(req, NULL, NULL);
  sg_http_add_header(req, "Cache-Control", "no-cache");
  size_t len = evbuffer_get_length(j->buf);
  sg_http_reply(req, 200, j->sse ? "text/event-stream" : "application/x-ndjson", evbuffer_pullup(j->buf, -1), len);
  job_free(j);
}

static const sg_pool_job_ops_t query_ops = {job_work, job_done};

/* Flushes (the cut), then queues the query; a follower is registered now
 * so that it keeps the lines emitted from here on. */
static void query_start(sg_daemon_t *d, sg_http_req_t *req, const sg_log_query_t *q, bool follow, bool sse) {
  sg_logs_flush(d);
  struct logs_job *j = xcalloc(1, sizeof(*j));
  j->d = d;
  j->writer = d->logs->writer;
  j->readers = d->readers;
  j->seq = d->logs->seq;
  j->endpoint = xstrdup(q->endpoint);
  j->worker = q->worker ? xstrdup(q->worker) : NULL;
  j->stream = q->stream ? xstrdup(q->stream) : NULL;
  j->text = q->text ? xstrdup(q->text) : NULL;
  j->request_id = q->request_id ? xstrdup(q->request_id) : NULL;
  j->q = *q;
  j->q.endpoint = j->endpoint;
  j->q.worker = j->worker;
  j->q.stream = j->stream;
  j->q.text = j->text;
  j->q.request_id = j->request_id;
  j->sse = sse;
  j->follow = follow;
  j->buf = evbuffer_new();
  if (follow) {
    sg_follower_t *f = xcalloc(1, sizeof(*f));
    f->d = d;
    f->req = req;
    f->endpoint = xstrdup(q->endpoint);
    f->worker = q->worker ? xstrdup(q->worker) : NULL;
    f->stream = q->stream ? xstrdup(q->stream) : NULL;
    f->text = q->text ? xstrdup(q->text) : NULL;
    f->request_id = q->request_id ? xstrdup(q->request_id) : NULL;
    f->until_ms = q->until_ms;
    f->sse = sse;
    f->job = j;
    j->f = f;
    LIST_INSERT_HEAD(&d->logs->followers, f, link);
    sg_http_set_close_cb(req, follower_closed, f);
  } else {
    j->req = req;
    sg_http_set_close_cb(req, job_req_closed, j);
  }
  sg_pool_submit(d->query_pool, &query_ops, j);
}

void sg_logs_handle(sg_daemon_t *d, sg_http_req_t *req, const char *endpoint) {
  struct evkeyvalq params;
  TAILQ_INIT(&params);
  const char *query = sg_http_query(req);
  if (query && evhttp_parse_query_str(query, &params) < 0) {
    sg_http_send_error(req, 400, "invalid_query", "the query string is malformed", NULL);
    return;
  }
  int64_t now = sg_wall_ms();
  sg_log_query_t q = {.endpoint = endpoint, .limit = QUERY_DEFAULT_LIMIT};
  bool follow = false;
  struct evkeyval *kv;
  const char *bad = NULL, *why = NULL;
  TAILQ_FOREACH(kv, &params, next) {
    const char *k = kv->key, *v = kv->value;
    if (!strcmp(k, "worker"))
      q.worker = *v ? v : NULL;
    else if (!strcmp(k, "stream")) {
      if (*v && strcmp(v, "stdout") && strcmp(v, "stderr") && strcmp(v, "event"))
        bad = k, why = "must be stdout, stderr or event";
      q.stream = *v ? v : NULL;
    } else if (!strcmp(k, "request_id")) {
      if (*v && !sg_request_id_valid(v))
        bad = k, why = "must be 1 to 128 characters of A-Z a-z 0-9 . _ : -";
      q.request_id = *v ? v : NULL;
    } else if (!strcmp(k, "q"))
      q.text = *v ? v : NULL;
    else if (!strcmp(k, "since") || !strcmp(k, "until")) {
      int64_t t = parse_time(v, now);
      if (t < 0)
        bad = k, why = "must be epoch milliseconds or a duration such as 10m, 30s, 2h";
      else if (!strcmp(k, "since"))
        q.since_ms = t;
      else
        q.until_ms = t;
    } else if (!strcmp(k, "limit")) {
      char *end;
      long n = strtol(v, &end, 10);
      if (!*v || *end || n < 1 || n > QUERY_MAX_LIMIT)
        bad = k, why = "must be an integer between 1 and 10000";
      else
        q.limit = (int)n;
    } else if (!strcmp(k, "order")) {
      if (strcmp(v, "newest") && strcmp(v, "oldest"))
        bad = k, why = "must be newest (the newest lines, the default) or oldest (the first lines from since on)";
      q.oldest_first = !strcmp(v, "oldest");
    } else if (!strcmp(k, "follow")) {
      if (strcmp(v, "1") && strcmp(v, "0") && strcmp(v, "true") && strcmp(v, "false"))
        bad = k, why = "must be 1 or 0";
      follow = !strcmp(v, "1") || !strcmp(v, "true");
    } else {
      bad = k, why = "is not a known parameter (worker, stream, request_id, since, until, q, limit, order, follow)";
    }
    if (bad)
      break;
  }
  if (bad) {
    cleanup_free char *msg = xasprintf("%s: %s", bad, why);
    sg_http_send_error(req, 400, "invalid_query", msg, bad);
    evhttp_clear_headers(&params);
    return;
  }
  const char *accept = sg_http_header(req, "Accept");
  bool sse = accept && strstr(accept, "text/event-stream");
  if (sg_queries_busy(d, req)) {
    evhttp_clear_headers(&params);
    return;
  }

  query_start(d, req, &q, follow, sse);
  evhttp_clear_headers(&params);
}

void sg_logs_shutdown(sg_daemon_t *d) {
  if (!d->logs)
    return;
  sg_follower_t *f;
  while ((f = LIST_FIRST(&d->logs->followers))) {
    if (!f->job) {
      follower_end(f);
      continue;
    }
    /* Its backfill is still queued: the job finds no follower. */
    f->job->f = NULL;
    f->job = NULL;
    sg_http_set_close_cb(f->req, NULL, NULL);
    sg_http_send_error(f->req, 503, "shutting_down", "sgpud is stopping", NULL);
    follower_free(f);
  }
  sg_logs_flush(d);
  sg_log_lines_free(d->logs->logbuf.lines, d->logs->logbuf.n); /* left when there was no writer */
  d->logs->logbuf.lines = NULL;
  d->logs->logbuf.n = d->logs->logbuf.cap = 0;
  sg_log_writer_stop(d->logs->writer);
  d->logs->writer = NULL;
  if (d->logs->flush) {
    event_free(d->logs->flush);
    d->logs->flush = NULL;
  }
  /* Sources still held by workers stay theirs to free. */
  sg_log_source_t *src;
  while ((src = TAILQ_FIRST(&d->logs->sources))) {
    TAILQ_REMOVE(&d->logs->sources, src, link);
    src->linked = false;
  }
  free(d->logs);
  d->logs = NULL;
}

/* The query pool is shared by log and usage queries; the bound is kept here. */
bool sg_queries_busy(sg_daemon_t *d, sg_http_req_t *req) {
  if (sg_pool_pending(d->query_pool) < SG_QUERY_QUEUE_MAX)
    return false;
  sg_http_add_header(req, "Retry-After", "1");
  sg_http_send_error(req, 503, "busy", "too many log and usage queries are in progress; retry later", NULL);
  return true;
}

#define DROP_REPORT_MS 1000

void sg_logs_report_drops(sg_daemon_t *d, bool force) {
  if (!d->logs)
    return;
  int64_t now = sg_now_ms();
  sg_log_source_t *src;
  TAILQ_FOREACH(src, &d->logs->sources, link) {
    sg_log_limit_t *l = &src->limit;
    if (!sg_log_limit_report_due(l, now, DROP_REPORT_MS, force || src->ended))
      continue;
    d->logs->stats.rate_dropped += l->dropped;
    sg_logs_event(d, src->endpoint, src->worker,
                  "lines dropped: %llu (worker over its log rate limit of %g lines/s, burst %g; "
                  "%llu since it started)",
                  (unsigned long long)l->dropped, d->cfg.log_rate_lines_s, d->cfg.log_burst_lines,
                  (unsigned long long)l->dropped_total);
    l->dropped = 0;
    l->reported_ms = now;
  }
}

/* ---- per-worker sources ---- */

sg_log_source_t *sg_logs_source_new(sg_daemon_t *d, const char *endpoint, const char *worker) {
  sg_log_source_t *src = xcalloc(1, sizeof(*src));
  src->d = d;
  src->endpoint = xstrdup(endpoint);
  src->worker = xstrdup(worker);
  if (d->logs) {
    TAILQ_INSERT_TAIL(&d->logs->sources, src, link);
    src->linked = true;
  }
  return src;
}

static void remember_line(sg_log_source_t *src, const char *stream, const char *line, size_t len) {
  free(src->recent[src->recent_next]);
  src->recent[src->recent_next] = xasprintf("%s: %.*s", stream, (int)(len > 1024 ? 1024 : len), line);
  src->recent_next = (src->recent_next + 1) % SG_RECENT_LINES;
}

static bool id_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
         c == ':' || c == '-';
}

/* True when line (len bytes, maybe not NUL-ended) holds id as a whole word:
 * not inside a longer run of request-id characters. */
static bool holds_id(const char *line, size_t len, const char *id) {
  size_t n = strlen(id);
  for (const char *p = line; n <= len - (size_t)(p - line);) {
    const char *hit = memmem(p, len - (size_t)(p - line), id, n);
    if (!hit)
      return false;
    if ((hit == line || !id_char(hit[-1])) && ((size_t)(hit - line) + n == len || !id_char(hit[n])))
      return true;
    p = hit + 1;
  }
  return false;
}

/* Forgets the requests that ended before now - RECENT_REQUEST_MS, and the
 * oldest ended ones past keep_ended of them (0: no such bound). */
static void forget_requests(sg_log_source_t *src, int64_t now, size_t keep_ended) {
  size_t ended = 0;
  for (size_t i = src->n_requests; i-- > 0;) {
    struct traced_request *r = &src->requests[i];
    if (!r->ended_ms)
      continue;
    if (now - r->ended_ms <= RECENT_REQUEST_MS && (!keep_ended || ended < keep_ended)) {
      ended++;
      continue;
    }
    free(r->id);
    memmove(r, r + 1, (src->n_requests - i - 1) * sizeof(*r));
    src->n_requests--;
  }
}

void sg_logs_source_line(sg_log_source_t *src, const char *stream, const char *line, size_t len) {
  sg_daemon_t *d = src->d;
  if (!sg_log_limit_take(&src->limit, d->cfg.log_rate_lines_s, d->cfg.log_burst_lines, sg_now_ms()))
    return;
  remember_line(src, stream, line, len);
  size_t scan = len > MAX_LINE_BYTES ? MAX_LINE_BYTES : len; /* what is stored */
  const char *rid = NULL;
  forget_requests(src, sg_now_ms(), 0);
  for (size_t i = 0; i < src->n_requests && !rid; i++)
    if (holds_id(line, scan, src->requests[i].id))
      rid = src->requests[i].id;
  emit(d, src->endpoint, src->worker, stream, line, len, rid);
}

void sg_logs_source_request(sg_log_source_t *src, const char *request_id, bool in_flight) {
  if (!src)
    return;
  int64_t now = sg_now_ms();
  if (in_flight) {
    if (src->n_requests == src->cap_requests) {
      src->cap_requests = src->cap_requests ? 2 * src->cap_requests : 4;
      src->requests = xrealloc(src->requests, src->cap_requests * sizeof(*src->requests));
    }
    src->requests[src->n_requests++] = (struct traced_request){xstrdup(request_id), 0};
    return;
  }
  for (size_t i = 0; i < src->n_requests; i++) {
    if (!src->requests[i].ended_ms && !strcmp(src->requests[i].id, request_id)) {
      src->requests[i].ended_ms = now > 0 ? now : 1;
      break;
    }
  }
  forget_requests(src, now, RECENT_REQUESTS_MAX);
}

size_t sg_logs_source_recent(const sg_log_source_t *src, char **out, size_t max) {
  size_t n = 0;
  for (int i = 0; src && i < SG_RECENT_LINES && n < max; i++) {
    char *l = src->recent[(src->recent_next + i) % SG_RECENT_LINES];
    if (l)
      out[n++] = xstrdup(l);
  }
  return n;
}

void sg_logs_source_ended(sg_log_source_t *src) {
  if (src)
    src->ended = true;
}

void sg_logs_source_free(sg_log_source_t *src) {
  if (!src)
    return;
  if (src->linked)
    TAILQ_REMOVE(&src->d->logs->sources, src, link);
  for (int i = 0; i < SG_RECENT_LINES; i++)
    free(src->recent[i]);
  for (size_t i = 0; i < src->n_requests; i++)
    free(src->requests[i].id);
  free(src->requests);
  free(src->endpoint);
  free(src->worker);
  free(src);
}

void sg_logs_metrics(sg_daemon_t *d, struct evbuffer *b) {
  evbuffer_add_printf(b,
                      "# HELP sgpu_log_lines_total Log lines emitted (worker output and events).\n"
                      "# TYPE sgpu_log_lines_total counter\nsgpu_log_lines_total %llu\n"
                      "# HELP sgpu_log_lines_stored_total Log lines written to the store.\n"
                      "# TYPE sgpu_log_lines_stored_total counter\nsgpu_log_lines_stored_total %llu\n"
                      "# HELP sgpu_log_lines_dropped_total Log lines dropped, by reason.\n"
                      "# TYPE sgpu_log_lines_dropped_total counter\n"
                      "sgpu_log_lines_dropped_total{reason=\"rate_limit\"} %llu\n"
                      "sgpu_log_lines_dropped_total{reason=\"backlog\"} %llu\n"
                      "# HELP sgpu_log_followers Log streams open now.\n# TYPE sgpu_log_followers gauge\n",
                      (unsigned long long)d->logs->stats.lines,
                      (unsigned long long)(d->logs->writer ? sg_log_writer_stored(d->logs->writer) : 0),
                      (unsigned long long)d->logs->stats.rate_dropped,
                      (unsigned long long)d->logs->stats.backlog_dropped);
  int n = 0;
  sg_follower_t *f;
  LIST_FOREACH(f, &d->logs->followers, link) n++;
  evbuffer_add_printf(b, "sgpu_log_followers %d\n", n);
}
