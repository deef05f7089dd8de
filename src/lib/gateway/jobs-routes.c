/* Async jobs: RunPod's job API on /v2 (run, runsync, status, cancel, retry,
 * purge-queue, health, stream) and reads of jobs no longer in memory on the
 * query pool. */
#include <errno.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "gateway/jobs-internal.h"
#include "logs/logs.h"
#include "sgpu/pool.h"

#define ENVELOPE_MAX (64u << 10)      /* a submission's bytes besides its input */
#define OTHER_BODY_MAX (64u << 10)    /* bodies of the other routes (ignored) */
#define INPUT_MEMORY_MAX (1ull << 30) /* inputs of queued jobs held in memory, all endpoints */
#define RUNSYNC_WAIT_DEFAULT_MS 90000
#define RUNSYNC_WAIT_MAX_MS 300000
#define STREAM_WAIT_DEFAULT_MS 10000
#define STREAM_WAIT_MAX_MS 60000

/* ---- submissions ---- */

static void inserted(void *arg, int result) {
  sg_job_t *j = arg;
  j->pending--;
  j->ep->jobs->inserting--;
  if (result < 0) {
    jreq_t *r, *tmp;
    for (r = LIST_FIRST(&j->waiters); r; r = tmp) {
      tmp = LIST_NEXT(r, wlink);
      LIST_REMOVE(r, wlink);
      r->job = NULL;
      sg_jreq_error(r, 500, "store_error", "the job could not be stored; it was not accepted");
    }
    sg_job_drop_input(j);
    sg_jobs_map_del(j->J, j);
    if (j->pending == 0)
      sg_job_free(j);
    return;
  }
  j->committed = true;
  if (j->ep->deleted) {
    sg_job_finish(j, SG_JOB_CANCELLED, NULL, sg_jobs_error_text("the endpoint was deleted"));
    return; /* its waiters are answered when that is committed */
  }
  sg_job_enqueue(j, false);
  sg_job_arm_ttl(j);
  sg_job_notify(j, W_COMMIT);
}

static int64_t resolve_ms(int64_t asked, double default_s) { return asked > 0 ? asked : (int64_t)(default_s * 1000); }

static void accept_job(jreq_t *r, sg_endpoint_t *ep, sg_job_submit_t *s);
static void check_webhook_name(jreq_t *r, sg_job_submit_t *s);

/* Answers r with err (a validation error) and frees it. */
static void reply_invalid(jreq_t *r, sg_error_t *err) {
  sg_http_req_t *req = r->req;
  r->req = NULL;
  if (req) {
    sg_http_set_close_cb(req, NULL, NULL);
    sg_http_send_sg_error(req, err);
  }
  sg_jreq_free(r);
}

static void submit(jreq_t *r, sg_endpoint_t *ep) {
  sg_jobs_t *J = r->J;
  const sg_spec_t *spec = ep->spec;
  size_t len = evbuffer_get_length(r->body);
  sg_job_submit_t s;
  cleanup_error sg_error_t *err = NULL;
  if (len == 0) {
    sg_jreq_error(r, 400, "invalid_json", "request body is empty; {\"input\": ...} is expected");
    return;
  }
  int parsed = sg_job_submit_parse((const char *)evbuffer_pullup(r->body, -1), len, (size_t)spec->async.max_input_bytes,
                                   &s, &err);
  /* A webhook the allow-list refuses is a 422 now, not a delivery dropped
   * when the job ends: an address is checked here, a name on the webhook
   * pool (it resolves). */
  int checked = parsed == 0 && s.webhook && J->webhooks ? sg_webhooks_check(J->webhooks, s.webhook, &err) : 0;
  if (checked < 0) {
    sg_job_submit_clear(&s);
    parsed = -1;
  }
  if (parsed < 0) {
    reply_invalid(r, err);
    return;
  }
  if (checked > 0)
    check_webhook_name(r, &s);
  else
    accept_job(r, ep, &s);
}

/* Queues the parsed submission s (its strings taken) as a new job. */
static void accept_job(jreq_t *r, sg_endpoint_t *ep, sg_job_submit_t *sub) {
  sg_jobs_t *J = r->J;
  struct sg_ep_jobs *ej = sg_jobs_ep(ep);
  const sg_spec_t *spec = ep->spec;
  sg_job_submit_t s = *sub;
  *sub = (sg_job_submit_t){0};
  if (ej->queued + ej->inserting >= spec->async.max_queue || J->input_bytes + s.input_len > INPUT_MEMORY_MAX) {
    sg_job_submit_clear(&s);
    if (r->req)
      sg_http_add_header(r->req, "Retry-After", "1");
    cleanup_free char *msg = xasprintf("the job queue is full (async.max_queue=%d)", spec->async.max_queue);
    sg_jreq_error(r, 503, "queue_full", msg);
    return;
  }
  cleanup_free char *id = sg_job_new_id();
  sg_job_t *j = sg_job_new(J, ep, id);
  j->status = SG_JOB_IN_QUEUE;
  j->input = steal_pointer(&s.input);
  j->input_len = s.input_len;
  J->input_bytes += j->input_len;
  j->webhook = steal_pointer(&s.webhook);
  j->exec_timeout_ms = resolve_ms(s.exec_timeout_ms, spec->workers.request_timeout_s);
  j->ttl_ms = resolve_ms(s.ttl_ms, spec->async.ttl_s);
  j->created_wall = sg_wall_ms();
  sg_job_submit_clear(&s);
  ep->metrics.requests++;
  ej->inserting++;
  r->then_final = r->action == A_RUNSYNC;
  sg_jreq_attach(r, j, W_COMMIT);
  sg_job_put(j, true, SG_JOB_IN_QUEUE, inserted);
}

/* A submission whose webhook host is a name, while the name is resolved and
 * checked on the webhook pool (r waits as W_CHECK). */
struct name_check {
  jreq_t *r;
  sg_job_submit_t s;
};

static void webhook_name_checked(void *arg, bool cancelled, sg_error_t *err) {
  struct name_check *c = arg;
  jreq_t *r = c->r;
  r->wait = W_NONE;
  sg_endpoint_t *ep = r->req && !cancelled ? sg_daemon_find_endpoint(r->J->d, r->ep_name) : NULL;
  if (!r->req)
    sg_jreq_free(r); /* the client went away */
  else if (cancelled)
    sg_jreq_error(r, 503, "shutting_down", "sgpud is stopping");
  else if (err)
    reply_invalid(r, err);
  else if (!ep || !sg_spec_is_async(ep->spec))
    sg_jreq_error(r, 404, "not_found", "the endpoint is gone");
  else
    accept_job(r, ep, &c->s);
  sg_error_free(err);
  sg_job_submit_clear(&c->s);
  free(c);
}

static void check_webhook_name(jreq_t *r, sg_job_submit_t *s) {
  struct name_check *c = xcalloc(1, sizeof(*c));
  c->r = r;
  c->s = *s;
  *s = (sg_job_submit_t){0};
  r->wait = W_CHECK;
  sg_webhooks_check_name(r->J->webhooks, c->s.webhook, webhook_name_checked, c);
}

/* ---- the other routes ---- */

/* ---- jobs no longer in memory: read on the query pool ---- */

/* A read of one stored job on a query thread (never on the loop); r waits
 * (W_STORE) until done() runs on the loop, which answers through then(). */
typedef struct stored {
  jreq_t *r;
  sg_store_readers_t *readers;
  char *ep_name, *id;
  bool found;          /* a record within its retention */
  sg_job_record_t rec; /* its strings owned here */
  sg_error_t *err;
  bool with_stream;
  void (*then)(jreq_t *r, sg_endpoint_t *ep, struct stored *s);
} stored_t;

static char *dup_or_null(const char *s) { return s ? xstrdup(s) : NULL; }

/* Keeps a copy of the stored job unless it is past its retention (as good
 * as deleted). */
static void copy_record(void *ud, const sg_job_record_t *rec) {
  stored_t *s = ud;
  if (rec->expires_ms > 0 && rec->expires_ms <= sg_wall_ms())
    return;
  s->found = true;
  s->rec = *rec;
  s->rec.id = xstrdup(rec->id);
  s->rec.endpoint = xstrdup(rec->endpoint);
  s->rec.input = xstrdup(rec->input);
  s->rec.webhook = dup_or_null(rec->webhook);
  s->rec.output = dup_or_null(rec->output);
  s->rec.error = dup_or_null(rec->error);
  s->rec.worker = dup_or_null(rec->worker);
}

static void stored_free(stored_t *s) {
  if (s->found) {
    free((char *)s->rec.id);
    free((char *)s->rec.endpoint);
    free((char *)s->rec.input);
    free((char *)s->rec.webhook);
    free((char *)s->rec.output);
    free((char *)s->rec.error);
    free((char *)s->rec.worker);
  }
  sg_error_free(s->err);
  free(s->ep_name);
  free(s->id);
  free(s);
}

static void stored_work(void *data) {
  stored_t *s = data;
  sg_store_t *reader = sg_store_readers_take(s->readers, &s->err);
  if (!reader)
    return;
  if (sg_store_jobs_get(reader, s->ep_name, s->id, copy_record, s, &s->err) < 0 && s->err->status == SG_ENOTFOUND) {
    sg_error_free(s->err);
    s->err = NULL;
  }
  sg_store_readers_put(s->readers, reader);
}

static void stored_done(void *data, bool cancelled) {
  stored_t *s = data;
  jreq_t *r = s->r;
  r->wait = W_NONE;
  sg_endpoint_t *ep = r->req ? sg_daemon_find_endpoint(r->J->d, r->ep_name) : NULL;
  if (!r->req)
    sg_jreq_free(r); /* the client went away */
  else if (cancelled)
    sg_jreq_error(r, 503, "shutting_down", "sgpud is stopping");
  else if (!ep || !sg_spec_is_async(ep->spec))
    sg_jreq_error(r, 404, "not_found", "the endpoint is gone");
  else if (s->err)
    sg_jreq_error(r, 500, "store_error", s->err->message);
  else
    s->then(r, ep, s);
  stored_free(s);
}

static const sg_pool_job_ops_t stored_ops = {stored_work, stored_done};

/* Reads job r->id of ep from the store off the loop, then calls then(). */
static void read_stored(jreq_t *r, sg_endpoint_t *ep, bool with_stream,
                        void (*then)(jreq_t *r, sg_endpoint_t *ep, stored_t *s)) {
  sg_daemon_t *d = r->J->d;
  stored_t *s = xcalloc(1, sizeof(*s));
  s->r = r;
  s->readers = d->readers;
  s->ep_name = xstrdup(ep->name);
  s->id = xstrdup(r->id);
  s->with_stream = with_stream;
  s->then = then;
  r->wait = W_STORE;
  sg_pool_submit(d->query_pool, &stored_ops, s);
}

static void status_stored(jreq_t *r, sg_endpoint_t *ep, stored_t *s) {
  if (!s->found) {
    sg_jreq_error(r, 404, "not_found", "no such job");
    return;
  }
  json_t *body = sg_jobs_record_json(&s->rec, 0);
  if (s->with_stream)
    json_object_set_new(body, "stream", json_array());
  sg_jreq_reply(r, 200, body);
}

/* Answers the job's status from memory or the store; with_stream adds an
 * empty "stream" (a job no longer in memory has no unread partial outputs). */
static void status_of_job(jreq_t *r, sg_endpoint_t *ep, bool with_stream) {
  sg_job_t *j = sg_jobs_map_get(r->J, r->id);
  if (j && j->ep == ep && j->committed) {
    sg_jreq_reply(r, 200, sg_job_json(j));
    return;
  }
  read_stored(r, ep, with_stream, status_stored);
}

static void status_of(jreq_t *r, sg_endpoint_t *ep) { status_of_job(r, ep, false); }

static void cancel(jreq_t *r, sg_endpoint_t *ep) {
  sg_job_t *j = sg_jobs_map_get(r->J, r->id);
  if (!j || j->ep != ep || !j->committed) {
    status_of(r, ep); /* final (no change) or unknown */
    return;
  }
  if (sg_job_status_final(j->status)) {
    sg_jreq_reply(r, 200, sg_job_json(j));
    return;
  }
  sg_jreq_attach(r, j, W_FINAL);
  sg_job_finish(j, SG_JOB_CANCELLED, NULL, NULL);
}

static void retried(void *arg, int result) {
  sg_job_t *j = arg;
  j->pending--;
  if (result < 0) {
    jreq_t *r, *tmp;
    for (r = LIST_FIRST(&j->waiters); r; r = tmp) {
      tmp = LIST_NEXT(r, wlink);
      sg_jreq_error(r, result == -SG_ENOTFOUND ? 404 : 500, result == -SG_ENOTFOUND ? "not_found" : "store_error",
                    result == -SG_ENOTFOUND ? "no such job" : "the retry could not be stored");
    }
    j->status = SG_JOB_FAILED;
    sg_job_maybe_release(j);
    return;
  }
  if (!j->finishing && !sg_job_status_final(j->status)) {
    j->ep->jobs->retried++;
    sg_job_enqueue(j, false);
    sg_job_arm_ttl(j);
  }
  sg_job_notify(j, W_COMMIT);
  sg_job_maybe_release(j);
}

static void retry_job(jreq_t *r, sg_job_t *j);

static void retry_stored(jreq_t *r, sg_endpoint_t *ep, stored_t *s) {
  sg_job_t *j = sg_jobs_map_get(r->J, r->id);
  if (j && (j->ep != ep || !j->committed)) {
    sg_jreq_error(r, 404, "not_found", "no such job");
    return;
  }
  if (!j && s->found) {
    struct loaded l = {r->J, ep, NULL, false};
    sg_jobs_load_record(&l, &s->rec);
    j = l.job;
  }
  if (!j) {
    sg_jreq_error(r, 404, "not_found", "no such job");
    return;
  }
  retry_job(r, j);
}

static void retry(jreq_t *r, sg_endpoint_t *ep) {
  sg_job_t *j = sg_jobs_map_get(r->J, r->id);
  if (j && (j->ep != ep || !j->committed)) {
    sg_jreq_error(r, 404, "not_found", "no such job");
    return;
  }
  if (!j) {
    read_stored(r, ep, false, retry_stored);
    return;
  }
  retry_job(r, j);
}

static void retry_job(jreq_t *r, sg_job_t *j) {
  if ((j->status != SG_JOB_FAILED && j->status != SG_JOB_TIMED_OUT) || j->finishing) {
    cleanup_free char *msg =
        xasprintf("job %s is %s; only FAILED or TIMED_OUT jobs can be retried", j->id, sg_job_status_name(j->status));
    sg_jreq_error(r, 409, "conflict", msg);
    sg_job_maybe_release(j);
    return;
  }
  j->status = SG_JOB_IN_QUEUE;
  j->attempts = 0;
  j->retries++;
  sg_jobs_set_str(&j->output, NULL);
  sg_jobs_set_str(&j->error, NULL);
  /* delayTime still counts from the submission (created_wall); the ttl
   * starts again. */
  j->ttl_from_wall = sg_wall_ms();
  j->started_wall = j->finished_wall = j->delay_ms = j->execution_ms = j->expires_wall = 0;
  sg_jreq_attach(r, j, W_COMMIT);
  j->pending++;
  sg_job_record_t rec;
  sg_job_to_record(j, SG_JOB_IN_QUEUE, &rec);
  sg_job_writer_put(j->J->writer, false, &rec, retried, j);
}

static void purged(void *arg, int result) {
  jreq_t *r = arg;
  sg_jreq_reply(r, 200, json_pack("{s:i, s:s}", "removed", r->purged, "status", "completed"));
}

static void purge(jreq_t *r, sg_endpoint_t *ep) {
  struct sg_ep_jobs *ej = sg_jobs_ep(ep);
  int n = 0;
  sg_job_t *j;
  while ((j = TAILQ_FIRST(&ej->queue))) {
    sg_job_finish(j, SG_JOB_CANCELLED, NULL, sg_jobs_error_text("removed from the queue by purge-queue"));
    n++;
  }
  r->purged = n;
  r->wait = W_BARRIER;
  sg_job_writer_barrier(r->J->writer, purged, r);
}

static void health(jreq_t *r, sg_endpoint_t *ep) {
  struct sg_ep_jobs *ej = sg_jobs_ep(ep);
  int idle = 0, running = 0, initializing = 0, unhealthy = 0;
  sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) {
    if (w->state == SG_W_READY && !w->unhealthy && w->in_flight > 0)
      running++;
    else if (w->state == SG_W_READY && !w->unhealthy)
      idle++;
    else if (w->state == SG_W_STARTING)
      initializing++;
    else if (w->unhealthy && !w->exited)
      unhealthy++;
  }
  sg_jreq_reply(r, 200,
                json_pack("{s:{s:I, s:I, s:i, s:i, s:I}, s:{s:i, s:i, s:i, s:i}}", "jobs", "completed",
                          (json_int_t)ej->completed, "failed", (json_int_t)ej->failed, "inProgress", ej->running_n,
                          "inQueue", ej->queued, "retried", (json_int_t)ej->retried, "workers", "idle", idle, "running",
                          running, "initializing", initializing, "unhealthy", unhealthy));
}

static void stream(jreq_t *r, sg_endpoint_t *ep) {
  sg_job_t *j = sg_jobs_map_get(r->J, r->id);
  if (!j || j->ep != ep || !j->committed) {
    status_of_job(r, ep, true); /* a final job: no partial outputs are kept */
    return;
  }
  sg_jreq_attach(r, j, W_STREAM);
  size_t n = j->items ? json_array_size(j->items) : 0;
  if (n > j->items_read || sg_job_status_final(j->status)) {
    sg_jreq_stream_reply(r);
    sg_job_maybe_release(j);
  } else
    sg_jreq_wait(r, W_STREAM);
}

/* ---- routing ---- */

void sg_jreq_client_closed(sg_http_req_t *req, void *arg) {
  jreq_t *r = arg;
  r->req = NULL;
  if (r->wait == W_BARRIER || r->wait == W_STORE || r->wait == W_CHECK)
    return; /* freed when the write, read or check it waits for is done */
  sg_job_t *j = r->job;
  sg_jreq_free(r);
  if (j)
    sg_job_maybe_release(j);
}

/* Reads ?wait=MS into *out (bounded); false after answering 422. */
static bool parse_wait(jreq_t *r, int64_t def, int64_t max) {
  r->wait_ms = def;
  const char *q = sg_http_query(r->req);
  for (const char *p = q; p && *p;) {
    size_t n = strcspn(p, "&");
    if (n > 5 && !strncmp(p, "wait=", 5)) {
      char buf[24];
      size_t vl = n - 5 < sizeof(buf) - 1 ? n - 5 : sizeof(buf) - 1;
      memcpy(buf, p + 5, vl);
      buf[vl] = '\0';
      char *end;
      long long v = strtoll(buf, &end, 10);
      if (*end || v < 0 || v > max) {
        cleanup_free char *msg =
            xasprintf("wait must be an integer number of milliseconds between 0 and %lld", (long long)max);
        sg_http_send_error(r->req, 422, "invalid_field", msg, "wait");
        return false;
      }
      r->wait_ms = v;
    }
    p += n;
    if (*p)
      p++;
  }
  return true;
}

static void body_data(sg_http_req_t *req, struct evbuffer *data, void *arg) {
  jreq_t *r = arg;
  if (evbuffer_get_length(r->body) + evbuffer_get_length(data) > r->limit) {
    evbuffer_drain(data, evbuffer_get_length(data));
    cleanup_free char *msg = xasprintf("request body is over the limit of %zu bytes", r->limit);
    sg_jreq_error(r, 413, "too_large", msg);
    return;
  }
  evbuffer_add_buffer(r->body, data);
}

static void body_end(sg_http_req_t *req, void *arg) {
  jreq_t *r = arg;
  sg_endpoint_t *ep = sg_daemon_find_endpoint(r->J->d, r->ep_name);
  if (!ep || !sg_spec_is_async(ep->spec)) {
    sg_jreq_error(r, 404, "not_found", "the endpoint is gone");
    return;
  }
  switch (r->action) {
  case A_RUN:
  case A_RUNSYNC:
    return submit(r, ep);
  case A_STATUS:
    return status_of(r, ep);
  case A_CANCEL:
    return cancel(r, ep);
  case A_RETRY:
    return retry(r, ep);
  case A_PURGE:
    return purge(r, ep);
  case A_HEALTH:
    return health(r, ep);
  case A_STREAM:
    return stream(r, ep);
  }
}

static const struct route {
  const char *name;
  enum jr_action action;
  bool with_id;
  const char *methods; /* allowed, comma-separated */
} routes[] = {
    {"run", A_RUN, false, "POST"},           {"runsync", A_RUNSYNC, false, "POST"},
    {"status", A_STATUS, true, "GET, POST"}, {"cancel", A_CANCEL, true, "POST"},
    {"retry", A_RETRY, true, "POST"},        {"purge-queue", A_PURGE, false, "POST"},
    {"health", A_HEALTH, false, "GET"},      {"stream", A_STREAM, true, "GET, POST"},
};

static bool method_allowed(sg_http_req_t *req, const char *methods) {
  const char *m = sg_http_method(req);
  size_t n = strlen(m);
  for (const char *p = methods; *p;) {
    p += strspn(p, ", ");
    size_t len = strcspn(p, ", ");
    if (len == n && !strncmp(p, m, n))
      return true;
    p += len;
  }
  return false;
}

static sg_http_head_action_t handle(void *ctx, sg_http_req_t *req, const char *rest) {
  sg_daemon_t *d = ctx;
  char buf[256];
  char *seg[4];
  int n = 0;
  if (strlen(rest) >= sizeof(buf) || !d->jobs) {
    sg_http_send_error(req, 404, "not_found", "no such route", NULL);
    return SG_HTTP_DONE;
  }
  snprintf(buf, sizeof(buf), "%s", rest);
  size_t bl = strlen(buf);
  if (bl > 0 && buf[bl - 1] == '/')
    buf[bl - 1] = '\0';
  char *save = NULL;
  for (char *s = strtok_r(buf, "/", &save); s; s = strtok_r(NULL, "/", &save)) {
    if (n == 4)
      break;
    seg[n++] = s;
  }
  const struct route *rt = NULL;
  for (size_t i = 0; n >= 2 && i < SG_ARRAY_SIZE(routes); i++)
    if (!strcmp(seg[1], routes[i].name) && n == (routes[i].with_id ? 3 : 2))
      rt = &routes[i];
  if (!rt || strstr(rest, "//")) {
    sg_http_send_error(req, 404, "not_found", "no such route", NULL);
    return SG_HTTP_DONE;
  }
  if (!method_allowed(req, rt->methods)) {
    sg_http_method_not_allowed(req, rt->methods);
    return SG_HTTP_DONE;
  }
  sg_endpoint_t *ep = sg_name_valid(seg[0]) ? sg_daemon_find_endpoint(d, seg[0]) : NULL;
  if (!ep) {
    cleanup_free char *msg = xasprintf("no endpoint named \"%s\"", seg[0]);
    sg_http_send_error(req, 404, "not_found", msg, NULL);
    return SG_HTTP_DONE;
  }
  if (!sg_spec_is_async(ep->spec)) {
    cleanup_free char *msg =
        xasprintf("endpoint \"%s\" is not an async endpoint (its type is \"%s\")", ep->name, ep->spec->type);
    sg_http_send_error(req, 409, "not_async", msg, NULL);
    return SG_HTTP_DONE;
  }
  const char *failing;
  if (rt->action == A_RUNSYNC && sg_endpoint_failing(ep, &failing)) {
    /* A run still queues (jobs are durable and wait for the endpoint to
     * recover); a runsync caller learns at once that no worker will come. */
    cleanup_free char *msg = xasprintf("endpoint \"%s\" cannot start workers (%s): %s", ep->name, failing,
                                       ep->last_error ? ep->last_error : "no error recorded");
    sg_http_send_error(req, 503, failing, msg, NULL);
    return SG_HTTP_DONE;
  }
  if (rt->with_id && !sg_job_id_valid(seg[2])) {
    sg_http_send_error(req, 404, "not_found", "no such job", NULL);
    return SG_HTTP_DONE;
  }
  size_t limit = OTHER_BODY_MAX;
  if (rt->action == A_RUN || rt->action == A_RUNSYNC)
    limit = (size_t)ep->spec->async.max_input_bytes + ENVELOPE_MAX;
  int64_t cl = sg_http_content_length(req);
  if (cl > (int64_t)limit) {
    cleanup_free char *msg = xasprintf("request body is over the limit of %zu bytes", limit);
    sg_http_send_error(req, 413, "too_large", msg, NULL);
    return SG_HTTP_DONE;
  }
  jreq_t *r = xcalloc(1, sizeof(*r));
  r->J = d->jobs;
  r->req = req;
  r->action = rt->action;
  r->ep_name = xstrdup(ep->name);
  r->id = rt->with_id ? xstrdup(seg[2]) : NULL;
  r->body = evbuffer_new();
  r->limit = limit;
  LIST_INSERT_HEAD(&d->jobs->reqs, r, link);
  if ((rt->action == A_RUNSYNC && !parse_wait(r, RUNSYNC_WAIT_DEFAULT_MS, RUNSYNC_WAIT_MAX_MS)) ||
      (rt->action == A_STREAM && !parse_wait(r, STREAM_WAIT_DEFAULT_MS, STREAM_WAIT_MAX_MS))) {
    r->req = NULL;
    sg_jreq_free(r);
    return SG_HTTP_DONE;
  }
  sg_http_set_close_cb(req, sg_jreq_client_closed, r);
  sg_http_stream_body(req, body_data, body_end, r);
  return SG_HTTP_STREAM;
}

/* ---- GET /v1/endpoints/{endpoint}/jobs ---- */

#define LIST_LIMIT_DEFAULT 100
#define LIST_LIMIT_MAX 1000

/* A listing: the stored part is read on a query thread into stored (status
 * answers with createdAt), then merged on the loop with the jobs in memory. */
typedef struct listing {
  sg_http_req_t *req; /* NULL once the client went away */
  sg_daemon_t *d;
  sg_store_readers_t *readers;
  char *ep_name;
  int status; /* -1: any */
  int64_t before_ms;
  int limit, fetch;
  json_t *stored;
  sg_error_t *err;
} listing_t;

static void listing_free(listing_t *l) {
  json_decref(l->stored);
  sg_error_free(l->err);
  free(l->ep_name);
  free(l);
}

static void listing_closed(sg_http_req_t *req, void *arg) {
  (void)req;
  ((listing_t *)arg)->req = NULL;
}

static json_t *with_created(json_t *j, int64_t created_ms) {
  json_object_set_new(j, "createdAt", json_integer(created_ms));
  return j;
}

/* Query thread. */
static void listed_record(void *ud, const sg_job_record_t *rec) {
  listing_t *l = ud;
  if (rec->expires_ms > 0 && rec->expires_ms <= sg_wall_ms())
    return; /* past its retention: as good as deleted */
  json_array_append_new(l->stored, with_created(sg_jobs_record_json(rec, 0), rec->created_ms));
}

static void listing_work(void *data) {
  listing_t *l = data;
  sg_store_t *reader = sg_store_readers_take(l->readers, &l->err);
  if (!reader)
    return;
  sg_store_jobs_list(reader, l->ep_name, l->status, l->before_ms, l->fetch, listed_record, l, &l->err);
  sg_store_readers_put(l->readers, reader);
}

static int newest_first(const void *a, const void *b) {
  json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
  json_int_t cx = json_integer_value(json_object_get(x, "createdAt"));
  json_int_t cy = json_integer_value(json_object_get(y, "createdAt"));
  if (cx != cy)
    return cx < cy ? 1 : -1;
  return -strcmp(json_string_value(json_object_get(x, "id")), json_string_value(json_object_get(y, "id")));
}

static bool listed_job(const listing_t *l, const sg_job_t *j, const sg_endpoint_t *ep) {
  return j->ep == ep && j->mapped && j->committed && (l->status < 0 || (int)j->status == l->status) &&
         (l->before_ms <= 0 || j->created_wall < l->before_ms);
}

/* Loop: the jobs in memory (their state is the newer one) plus the stored
 * jobs that are not in memory, newest first, at most l->limit. */
static void listing_done(void *data, bool cancelled) {
  listing_t *l = data;
  sg_http_req_t *req = l->req;
  if (!req) {
    listing_free(l);
    return;
  }
  sg_http_set_close_cb(req, NULL, NULL);
  sg_endpoint_t *ep = sg_daemon_find_endpoint(l->d, l->ep_name);
  sg_jobs_t *J = l->d->jobs;
  if (cancelled || !J)
    sg_http_send_error(req, 503, "shutting_down", "sgpud is stopping", NULL);
  else if (!ep)
    sg_http_send_error(req, 404, "not_found", "the endpoint is gone", NULL);
  else if (l->err)
    sg_http_send_error(req, 500, "store_error", l->err->message, NULL);
  else {
    size_t n = 0, cap = json_array_size(l->stored) + 16;
    json_t **items = xmalloc(cap * sizeof(*items));
    sg_job_t *j;
    LIST_FOREACH(j, &J->all, alink) {
      if (!listed_job(l, j, ep))
        continue;
      if (n == cap)
        items = xrealloc(items, (cap *= 2) * sizeof(*items));
      items[n++] = with_created(sg_job_json(j), j->created_wall);
    }
    size_t i;
    json_t *rec;
    json_array_foreach(l->stored, i, rec) {
      sg_job_t *mem = sg_jobs_map_get(J, json_string_value(json_object_get(rec, "id")));
      if (mem && mem->ep == ep && mem->committed)
        continue; /* listed from memory (or left out by its newer state) */
      if (n == cap)
        items = xrealloc(items, (cap *= 2) * sizeof(*items));
      items[n++] = json_incref(rec);
    }
    qsort(items, n, sizeof(*items), newest_first);
    json_t *jobs = json_array();
    for (i = 0; i < n; i++) {
      if (i < (size_t)l->limit)
        json_array_append(jobs, items[i]);
      json_decref(items[i]);
    }
    free(items);
    sg_http_send_json(req, 200, json_pack("{s:o}", "jobs", jobs));
  }
  listing_free(l);
}

static const sg_pool_job_ops_t listing_ops = {listing_work, listing_done};

/* Reads an integer query value in [min, max]; false when it is not one. */
static bool query_int(const char *v, long long min, long long max, long long *out) {
  char *end;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (!*v || *end || errno || x < min || x > max)
    return false;
  *out = x;
  return true;
}

void sg_jobs_list(sg_daemon_t *d, sg_http_req_t *req, sg_endpoint_t *ep) {
  if (!d->jobs) {
    sg_http_send_error(req, 404, "not_found", "no such route", NULL);
    return;
  }
  if (!sg_spec_is_async(ep->spec)) {
    cleanup_free char *msg =
        xasprintf("endpoint \"%s\" is not an async endpoint (its type is \"%s\")", ep->name, ep->spec->type);
    sg_http_send_error(req, 409, "not_async", msg, NULL);
    return;
  }
  struct evkeyvalq params;
  TAILQ_INIT(&params);
  const char *q = sg_http_query(req);
  const char *bad = NULL, *why = NULL;
  int status = -1;
  long long limit = LIST_LIMIT_DEFAULT, before = 0;
  if (q && evhttp_parse_query_str(q, &params) != 0)
    bad = "query", why = "is not a valid query string";
  struct evkeyval *kv;
  TAILQ_FOREACH(kv, &params, next) {
    if (bad)
      break;
    if (!strcmp(kv->key, "status")) {
      status = sg_job_status_parse(kv->value);
      if (status < 0)
        bad = "status", why = "must be IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, CANCELLED or TIMED_OUT";
    } else if (!strcmp(kv->key, "limit")) {
      if (!query_int(kv->value, 1, LIST_LIMIT_MAX, &limit))
        bad = "limit", why = "must be a whole number from 1 to 1000";
    } else if (!strcmp(kv->key, "before")) {
      if (!query_int(kv->value, 1, INT64_MAX, &before))
        bad = "before", why = "must be a time in epoch milliseconds";
    } else {
      bad = kv->key, why = "is not a known parameter (status, limit, before)";
    }
  }
  if (bad) {
    cleanup_free char *msg = xasprintf("%s: %s", bad, why);
    cleanup_free char *field = xstrdup(bad);
    evhttp_clear_headers(&params);
    sg_http_send_error(req, 400, "invalid_query", msg, field);
    return;
  }
  evhttp_clear_headers(&params);
  if (sg_queries_busy(d, req))
    return;
  listing_t *l = xcalloc(1, sizeof(*l));
  l->req = req;
  l->d = d;
  l->readers = d->readers;
  l->ep_name = xstrdup(ep->name);
  l->status = status;
  l->before_ms = before;
  l->limit = (int)limit;
  /* Stored rows of jobs in memory are dropped at the merge (memory has
   * their state): read enough more that the page stays full. */
  size_t in_memory = ep->jobs ? (size_t)ep->jobs->queued + (size_t)ep->jobs->running_n : 0;
  l->fetch = (int)(limit + (long long)(in_memory < LIST_LIMIT_MAX * 10 ? in_memory : LIST_LIMIT_MAX * 10));
  l->stored = json_array();
  sg_http_set_close_cb(req, listing_closed, l);
  sg_pool_submit(d->query_pool, &listing_ops, l);
}

void sg_jobs_routes(sg_router_t *r, sg_daemon_t *d) {
  sg_router_add(r, &(sg_route_t){.path = "/v2/{endpoint}/*", .scope = SG_SCOPE_INVOKE, .on_head = handle, .ctx = d});
}
