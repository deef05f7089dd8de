/* Async endpoints: the job queue, its dispatcher and RunPod's job API.
 *
 * Durability. Every change of a job is a write to the job writer
 * (job-writer.h), which commits writes in batches on its own thread: a
 * submission is answered only once its insert is committed, and a final
 * state (COMPLETED, FAILED, CANCELLED, TIMED_OUT) becomes visible through
 * the API, its waiters and its webhook only once it is committed. A state
 * the API showed as final is therefore never lost by a crash, so no job
 * finishes twice as far as the API shows. Starts and re-queues are written
 * behind (nothing waits for them): after a crash a job is at worst one
 * state behind and runs again (at-least-once execution).
 *
 * Memory. Every job that is not final (and every final job with an answer
 * still waiting for it) is held in memory, in a table by id and, while it
 * waits, in its endpoint's FIFO queue with its input. Final jobs live only in
 * the store: a status request for one reads it there (a keyed lookup on a
 * read-only connection on the query pool, jobs-routes.c; SQLite's WAL lets it
 * read while the writer commits).
 *
 * Dispatch (push). A queued job goes to the ready worker with the fewest
 * requests in flight below workers.max_concurrency (sync requests and jobs
 * share the slots): POST async_path {"id", "input"}, and the answer ends the
 * job (see sg_job_result_parse). An answer of Content-Type
 * application/x-ndjson is a stream of partial outputs, one JSON object per
 * line, readable at /stream/{id} while it runs. A dropped connection (the
 * worker died) puts the job back at the head of the queue, up to
 * async.max_retries times, for another worker (or the same one once it
 * passed a health check). executionTimeout ends a running job as TIMED_OUT
 * and cancel as CANCELLED at once, but the worker's slot stays taken until
 * its answer ends (jobs-dispatch.c); the ttl bounds the whole life of a job.
 *
 * Restart. Jobs left IN_QUEUE are queued again in their order; jobs left
 * IN_PROGRESS lost their execution: it counts as an attempt, and they are
 * queued again or, past max_retries, FAILED. */
/* This file: the table of jobs, per-endpoint queues, writes, the end of a
 * job, recovery and the fleet subscription (the files of the module:
 * jobs-internal.h). */
#include <stdarg.h>

#include "gateway/jobs-internal.h"

#define UNREAD_KEEP_MS 60000 /* a final job with unread partial outputs stays this long */

/* ---- the table of jobs by id ---- */

static size_t hash(const char *s) {
  size_t h = 1469598103934665603ull;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static void map_grow(sg_jobs_t *J) {
  size_t n = J->n_buckets ? 2 * J->n_buckets : 1024;
  sg_job_t **b = xcalloc(n, sizeof(*b));
  for (size_t i = 0; i < J->n_buckets; i++) {
    sg_job_t *j = J->buckets[i];
    while (j) {
      sg_job_t *next = j->hnext;
      size_t k = hash(j->id) & (n - 1);
      j->hnext = b[k];
      b[k] = j;
      j = next;
    }
  }
  free(J->buckets);
  J->buckets = b;
  J->n_buckets = n;
}

sg_job_t *sg_jobs_map_get(sg_jobs_t *J, const char *id) {
  if (!J->n_buckets)
    return NULL;
  for (sg_job_t *j = J->buckets[hash(id) & (J->n_buckets - 1)]; j; j = j->hnext)
    if (!strcmp(j->id, id))
      return j;
  return NULL;
}

static void map_put(sg_jobs_t *J, sg_job_t *j) {
  if (J->count >= J->n_buckets)
    map_grow(J);
  size_t k = hash(j->id) & (J->n_buckets - 1);
  j->hnext = J->buckets[k];
  J->buckets[k] = j;
  J->count++;
  j->mapped = true;
}

void sg_jobs_map_del(sg_jobs_t *J, sg_job_t *j) {
  if (!j->mapped)
    return;
  for (sg_job_t **pp = &J->buckets[hash(j->id) & (J->n_buckets - 1)]; *pp; pp = &(*pp)->hnext)
    if (*pp == j) {
      *pp = j->hnext;
      J->count--;
      break;
    }
  j->mapped = false;
}

/* ---- endpoints ---- */

static void pump_cb(evutil_socket_t fd, short what, void *arg) { sg_jobs_pump(arg); }

struct sg_ep_jobs *sg_jobs_ep(sg_endpoint_t *ep) {
  if (!ep->jobs) {
    struct sg_ep_jobs *ej = xcalloc(1, sizeof(*ej));
    TAILQ_INIT(&ej->queue);
    LIST_INIT(&ej->running);
    TAILQ_INIT(&ej->takes);
    ej->pump_ev = event_new(ep->d->base, -1, 0, pump_cb, ep);
    ep->jobs = ej;
  }
  return ep->jobs;
}

/* A worker slot of ep may have freed, or a worker became ready: queued jobs
 * are dispatched from a fresh stack frame. */
static void sg_jobs_kick(sg_endpoint_t *ep) {
  if (ep->jobs && ep->jobs->queued > 0 && !ep->d->shutting_down)
    event_active(ep->jobs->pump_ev, EV_TIMEOUT, 0);
}

static int jobs_queued(const sg_endpoint_t *ep) { return ep->jobs ? ep->jobs->queued : 0; }

static int64_t jobs_oldest_wait(const sg_endpoint_t *ep, int64_t now) {
  if (!ep->jobs || TAILQ_EMPTY(&ep->jobs->queue))
    return 0;
  /* Re-queued jobs go to the head with a fresh time: the oldest wait is
   * among the first few. */
  int64_t oldest = now;
  int seen = 0;
  const sg_job_t *j;
  TAILQ_FOREACH(j, &ep->jobs->queue, qlink) {
    if (j->queued_mono < oldest)
      oldest = j->queued_mono;
    if (++seen == 64)
      break;
  }
  return now - oldest;
}

/* Frees ep's job state (ep is being freed). */
static void sg_jobs_endpoint_free(sg_endpoint_t *ep) {
  if (!ep->jobs)
    return;
  event_free(ep->jobs->pump_ev);
  free(ep->jobs);
  ep->jobs = NULL;
}

/* ---- jobs ---- */

sg_job_t *sg_job_new(sg_jobs_t *J, sg_endpoint_t *ep, const char *id) {
  sg_job_t *j = xcalloc(1, sizeof(*j));
  j->J = J;
  j->ep = ep;
  ep->proxies++;
  sg_jobs_ep(ep);
  j->id = xstrdup(id);
  LIST_INIT(&j->waiters);
  LIST_INSERT_HEAD(&J->all, j, alink);
  map_put(J, j);
  return j;
}

void sg_job_drop_input(sg_job_t *j) {
  if (!j->input)
    return;
  j->J->input_bytes -= j->input_len;
  free(j->input);
  j->input = NULL;
  j->input_len = 0;
}

void sg_job_free(sg_job_t *j) {
  sg_jobs_map_del(j->J, j);
  LIST_REMOVE(j, alink);
  if (j->exec_timer)
    event_free(j->exec_timer);
  if (j->ttl_timer)
    event_free(j->ttl_timer);
  if (j->keep_timer)
    event_free(j->keep_timer);
  if (j->answer)
    evbuffer_free(j->answer);
  json_decref(j->items);
  sg_job_drop_input(j);
  j->ep->proxies--;
  free(j->id);
  free(j->webhook);
  free(j->output);
  free(j->error);
  free(j->worker_id);
  free(j->item_error);
  free(j->avoid_worker);
  free(j->progress);
  free(j->x);
  free(j);
}

/* Forgets a job no one needs in memory any more: final and committed, no
 * answer waiting. Freed once its writes are committed. */
static void keep_over_cb(evutil_socket_t fd, short what, void *arg);

/* Forgets a final job nobody waits for; partial outputs not read yet keep it
 * (for /stream) up to UNREAD_KEEP_MS. */
void sg_job_maybe_release(sg_job_t *j) {
  if (j->finishing || !sg_job_status_final(j->status) || !LIST_EMPTY(&j->waiters))
    return;
  if (!j->keep_over && j->items && j->items_read < json_array_size(j->items)) {
    if (!j->keep_timer) {
      j->keep_timer = evtimer_new(j->J->d->base, keep_over_cb, j);
      struct timeval tv = {UNREAD_KEEP_MS / 1000, (UNREAD_KEEP_MS % 1000) * 1000};
      evtimer_add(j->keep_timer, &tv);
    }
    return;
  }
  sg_jobs_map_del(j->J, j);
  if (j->pending == 0)
    sg_job_free(j);
}

static void keep_over_cb(evutil_socket_t fd, short what, void *arg) {
  sg_job_t *j = arg;
  j->keep_over = true;
  sg_job_maybe_release(j);
}

void sg_job_to_record(const sg_job_t *j, sg_job_status_t status, sg_job_record_t *r) {
  *r = (sg_job_record_t){
      .id = j->id,
      .endpoint = j->ep->name,
      .status = status,
      .input = j->input,
      .webhook = j->webhook,
      .exec_timeout_ms = j->exec_timeout_ms,
      .ttl_ms = j->ttl_ms,
      .attempts = j->attempts,
      .retries = j->retries,
      .output = j->output,
      .error = j->error,
      .worker = j->worker_id,
      .created_ms = j->created_wall,
      .started_ms = j->started_wall,
      .finished_ms = j->finished_wall,
      .delay_ms = j->delay_ms,
      .execution_ms = j->execution_ms,
      .expires_ms = j->expires_wall,
  };
}

void sg_jobs_set_str(char **slot, char *value) {
  free(*slot);
  *slot = value;
}

/* A JSON value from stored text (NULL text: null). */
json_t *sg_jobs_json_value(const char *text) {
  if (!text)
    return json_null();
  json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
  return v ? v : json_string(text);
}

/* The status answer: RunPod's fields, plus attempts, retries and, for a
 * queued job, its position (1: next to run). */
json_t *sg_jobs_record_json(const sg_job_record_t *r, int position) {
  int64_t now = sg_wall_ms();
  /* From the submission to the start of the last execution; a job queued
   * again after a lost attempt waits on from its submission. */
  int64_t delay = r->started_ms && r->status != SG_JOB_IN_QUEUE
                      ? r->delay_ms
                      : (r->finished_ms ? r->finished_ms : now) - r->created_ms;
  int64_t exec = r->status == SG_JOB_IN_PROGRESS && r->started_ms ? now - r->started_ms : r->execution_ms;
  json_t *j = json_pack("{s:s, s:s, s:I, s:I, s:i, s:i}", "id", r->id, "status", sg_job_status_name(r->status),
                        "delayTime", (json_int_t)(delay > 0 ? delay : 0), "executionTime",
                        (json_int_t)(exec > 0 ? exec : 0), "attempts", r->attempts, "retries", r->retries);
  if (position > 0)
    json_object_set_new(j, "position", json_integer(position));
  if (r->worker)
    json_object_set_new(j, "workerId", json_string(r->worker));
  if (r->status == SG_JOB_COMPLETED)
    json_object_set_new(j, "output", sg_jobs_json_value(r->output));
  else if (sg_job_status_final(r->status) && r->error)
    json_object_set_new(j, "error", sg_jobs_json_value(r->error));
  return j;
}

static int position_of(const sg_job_t *j) {
  if (!j->in_queue)
    return 0;
  int pos = 0;
  const sg_job_t *k;
  TAILQ_FOREACH(k, &j->ep->jobs->queue, qlink) {
    pos++;
    if (k == j)
      break;
  }
  return pos;
}

json_t *sg_job_json(const sg_job_t *j) {
  sg_job_record_t r;
  sg_job_to_record(j, j->status, &r);
  json_t *out = sg_jobs_record_json(&r, position_of(j));
  if (j->status == SG_JOB_IN_PROGRESS && j->progress) /* a pull worker's progress update */
    json_object_set_new(out, "output", sg_jobs_json_value(j->progress));
  return out;
}

void sg_jobs_arm(struct event **ev, struct event_base *base, event_callback_fn cb, void *arg, int64_t ms) {
  if (!*ev)
    *ev = evtimer_new(base, cb, arg);
  if (ms < 0)
    ms = 0;
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
  evtimer_add(*ev, &tv);
}

/* ---- writes ---- */

void sg_job_put(sg_job_t *j, bool insert, sg_job_status_t status, sg_job_write_cb cb) {
  sg_job_record_t rec;
  sg_job_to_record(j, status, &rec);
  j->pending++;
  sg_job_writer_put(j->J->writer, insert, &rec, cb, j);
}

void sg_job_written(void *arg, int result) {
  sg_job_t *j = arg;
  j->pending--;
  if (result < 0)
    sg_warn("job %s: a state change was not stored (error %d)", j->id, result);
  if (!j->mapped && j->pending == 0)
    sg_job_free(j);
}

static void final_written(void *arg, int result) {
  sg_job_t *j = arg;
  j->pending--;
  if (result < 0)
    sg_errlog("job %s: its final state %s was not stored (error %d)", j->id, sg_job_status_name(j->final_status),
              result);
  struct sg_ep_jobs *ej = j->ep->jobs;
  j->finishing = false;
  j->status = j->final_status;
  if (j->status == SG_JOB_COMPLETED)
    ej->completed++;
  else if (j->status == SG_JOB_FAILED || j->status == SG_JOB_TIMED_OUT)
    ej->failed++;
  if (j->webhook && j->J->webhooks) {
    json_t *body = sg_job_json(j);
    cleanup_free char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    sg_webhooks_send(j->J->webhooks, j->id, j->webhook, text);
  }
  sg_job_notify(j, W_FINAL);
  sg_job_notify(j, W_COMMIT); /* a retry or submission answered after the end */
  sg_job_maybe_release(j);
}

/* ---- the end of a job ---- */

static void stop_timers(sg_job_t *j) {
  if (j->exec_timer)
    evtimer_del(j->exec_timer);
  if (j->ttl_timer)
    evtimer_del(j->ttl_timer);
}

void sg_job_unqueue(sg_job_t *j) {
  if (!j->in_queue)
    return;
  TAILQ_REMOVE(&j->ep->jobs->queue, j, qlink);
  j->ep->jobs->queued--;
  j->in_queue = false;
}

/* Counts j's end at /metrics: its final status and, when it ran, its
 * execution time. */
static void count_outcome(sg_job_t *j, sg_job_status_t status, bool ran) {
  sg_ep_metrics_t *m = &j->ep->metrics;
  switch (status) {
  case SG_JOB_COMPLETED:
    m->jobs_completed++;
    break;
  case SG_JOB_FAILED:
    m->jobs_failed++;
    break;
  case SG_JOB_CANCELLED:
    m->jobs_cancelled++;
    break;
  case SG_JOB_TIMED_OUT:
    m->jobs_timed_out++;
    break;
  default:
    break;
  }
  if (ran)
    sg_histogram_observe_in(&m->job_duration, sg_metric_long_bounds, (double)j->execution_ms / 1000);
}

/* Ends j as status (output and error are JSON text, taken). The state is
 * shown once it is committed. */
void sg_job_finish(sg_job_t *j, sg_job_status_t status, char *output, char *error) {
  if (j->finishing || sg_job_status_final(j->status)) {
    free(output);
    free(error);
    return;
  }
  j->finishing = true;
  j->final_status = status;
  bool ran = !j->in_queue && j->started_mono > 0; /* its last dispatch ended, or ends here */
  stop_timers(j);
  sg_job_unqueue(j);
  sg_job_abandon_worker(j); /* its slot stays taken until the worker's answer ends */
  count_outcome(j, status, ran);
  sg_job_drop_input(j);
  sg_jobs_set_str(&j->output, output);
  sg_jobs_set_str(&j->error, error);
  j->finished_wall = sg_wall_ms();
  j->expires_wall = j->finished_wall + (int64_t)(j->ep->spec->async.retention_s * 1000);
  sg_job_put(j, false, status, final_written);
}

char *sg_jobs_error_text(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *msg = NULL;
  if (vasprintf(&msg, fmt, ap) < 0)
    abort();
  va_end(ap);
  json_t *s = json_string(msg);
  free(msg);
  char *text = json_dumps(s, JSON_ENCODE_ANY);
  json_decref(s);
  return text;
}

void sg_job_enqueue(sg_job_t *j, bool head) {
  struct sg_ep_jobs *ej = sg_jobs_ep(j->ep);
  j->status = SG_JOB_IN_QUEUE;
  j->in_queue = true;
  j->queued_mono = sg_now_ms();
  if (head)
    TAILQ_INSERT_HEAD(&ej->queue, j, qlink);
  else
    TAILQ_INSERT_TAIL(&ej->queue, j, qlink);
  ej->queued++;
  sg_jobs_kick(j->ep);
  sg_fleet_demand_changed(j->ep->d);
}

static void ttl_cb(evutil_socket_t fd, short what, void *arg) {
  sg_job_t *j = arg;
  sg_job_finish(j, SG_JOB_TIMED_OUT, NULL,
                sg_jobs_error_text("the job's ttl of %lld ms passed before it finished", (long long)j->ttl_ms));
}

void sg_job_arm_ttl(sg_job_t *j) {
  int64_t from = j->ttl_from_wall ? j->ttl_from_wall : j->created_wall;
  sg_jobs_arm(&j->ttl_timer, j->J->d->base, ttl_cb, j, from + j->ttl_ms - sg_wall_ms());
}

/* ---- jobs from the store ---- */

void sg_jobs_load_record(void *ud, const sg_job_record_t *rec) {
  struct loaded *l = ud;
  if (rec->expires_ms > 0 && rec->expires_ms <= sg_wall_ms()) {
    l->expired = true;
    return;
  }
  sg_job_t *j = sg_job_new(l->J, l->ep, rec->id);
  j->committed = true;
  j->status = rec->status;
  j->input = xstrdup(rec->input);
  j->input_len = strlen(j->input);
  l->J->input_bytes += j->input_len;
  j->webhook = rec->webhook ? xstrdup(rec->webhook) : NULL;
  j->exec_timeout_ms = rec->exec_timeout_ms;
  j->ttl_ms = rec->ttl_ms;
  j->attempts = rec->attempts;
  j->retries = rec->retries;
  j->output = rec->output ? xstrdup(rec->output) : NULL;
  j->error = rec->error ? xstrdup(rec->error) : NULL;
  j->worker_id = rec->worker ? xstrdup(rec->worker) : NULL;
  j->created_wall = rec->created_ms;
  j->started_wall = rec->started_ms;
  j->finished_wall = rec->finished_ms;
  j->delay_ms = rec->delay_ms;
  j->execution_ms = rec->execution_ms;
  j->expires_wall = rec->expires_ms;
  l->job = j;
}

/* ---- endpoints deleted ---- */

/* ep was deleted: its queued and running jobs end as CANCELLED. */
static void sg_jobs_endpoint_deleted(sg_endpoint_t *ep) {
  struct sg_ep_jobs *ej = ep->jobs;
  if (!ej)
    return;
  sg_job_t *j;
  while ((j = TAILQ_FIRST(&ej->queue)))
    sg_job_finish(j, SG_JOB_CANCELLED, NULL, sg_jobs_error_text("the endpoint was deleted"));
  while ((j = LIST_FIRST(&ej->running)))
    sg_job_finish(j, SG_JOB_CANCELLED, NULL, sg_jobs_error_text("the endpoint was deleted"));
}

/* ---- start and stop ---- */

struct recovery {
  sg_jobs_t *J;
  size_t requeued, failed, orphaned;
};

static void recover_one(void *ud, const sg_job_record_t *rec) {
  struct recovery *rc = ud;
  sg_jobs_t *J = rc->J;
  sg_endpoint_t *ep = sg_daemon_find_endpoint(J->d, rec->endpoint);
  if (!ep || !sg_spec_is_async(ep->spec)) {
    sg_job_record_t r = *rec;
    r.status = SG_JOB_CANCELLED;
    r.finished_ms = sg_wall_ms();
    r.expires_ms = r.finished_ms + 1800 * 1000;
    cleanup_free char *err = sg_jobs_error_text("the endpoint no longer exists");
    r.error = err;
    sg_job_writer_put(J->writer, false, &r, NULL, NULL);
    rc->orphaned++;
    return;
  }
  struct loaded l = {J, ep, NULL, false};
  sg_jobs_load_record(&l, rec);
  sg_job_t *j = l.job;
  if (!j)
    return;
  if (rec->status == SG_JOB_IN_PROGRESS) {
    /* The execution was lost with the earlier sgpud: it counted. */
    if (j->attempts > ep->spec->async.max_retries) {
      j->status = SG_JOB_IN_QUEUE;
      sg_job_finish(j, SG_JOB_FAILED, NULL,
                    sg_jobs_error_text(
                        "its worker was lost when sgpud stopped; given up after %d attempts (async.max_retries=%d)",
                        j->attempts, ep->spec->async.max_retries));
      rc->failed++;
      return;
    }
    j->retries++;
    sg_jobs_ep(ep)->retried++;
    sg_job_put(j, false, SG_JOB_IN_QUEUE, sg_job_written);
    rc->requeued++;
  }
  sg_job_enqueue(j, false);
  sg_job_arm_ttl(j);
}

/* ---- fleet events ---- */

static void on_endpoint_deleted(void *ud, sg_endpoint_t *ep) { sg_jobs_endpoint_deleted(ep); }
static void on_endpoint_freed(void *ud, sg_endpoint_t *ep) { sg_jobs_endpoint_free(ep); }
static void on_worker_free(void *ud, sg_worker_t *w) { sg_jobs_kick(w->ep); }
static void on_worker_ended(void *ud, sg_worker_t *w, bool scheduled, int64_t end_wall) {
  sg_jobs_pull_worker_ended(w);
}
static void on_worker_freed(void *ud, sg_worker_t *w) { sg_jobs_pull_free(w); }

/* A suspect worker passed a probe: jobs lost on it may go there again. */
static void on_worker_in_rotation(void *ud, sg_worker_t *w) {
  sg_jobs_worker_trusted(w->ep, w);
  sg_jobs_kick(w->ep);
}

/* Queued jobs count as demand like queued requests. */
static void waiting(void *ud, const sg_endpoint_t *ep, int64_t now, int *queued, int64_t *oldest) {
  *queued += jobs_queued(ep);
  int64_t wait = jobs_oldest_wait(ep, now);
  if (wait > *oldest)
    *oldest = wait;
}

/* Whether a runsync call waits for j's end. */
static bool runsync_waits(const sg_job_t *j) {
  const jreq_t *r;
  LIST_FOREACH(r, &j->waiters, wlink) {
    if (r->action == A_RUNSYNC && r->wait == W_FINAL)
      return true;
  }
  return false;
}

/* An endpoint that can no longer start workers answers the runsync calls
 * waiting for its queued jobs at once, as it answers a new one: 503 with
 * the reason. Their jobs fail with that reason (the callers were never told
 * their ids, so none would come back for them); jobs submitted with run stay
 * queued for the endpoint's recovery. */
static void fail_runsync_waits(sg_endpoint_t *ep, const char *code) {
  struct sg_ep_jobs *ej = ep->jobs;
  if (!ej)
    return;
  size_t n = 0, cap = 0;
  sg_job_t **failing = NULL;
  sg_job_t *j;
  TAILQ_FOREACH(j, &ej->queue, qlink) {
    if (!j->committed || j->finishing || !runsync_waits(j))
      continue;
    if (n == cap) {
      cap = cap ? 2 * cap : 8;
      failing = xrealloc(failing, cap * sizeof(*failing));
    }
    failing[n++] = j;
  }
  if (!n)
    return;
  cleanup_free char *msg = xasprintf("endpoint \"%s\" cannot start workers (%s): %s", ep->name, code,
                                     ep->last_error ? ep->last_error : "no error recorded");
  for (size_t i = 0; i < n; i++) {
    j = failing[i];
    jreq_t *r, *tmp;
    for (r = LIST_FIRST(&j->waiters); r; r = tmp) {
      tmp = LIST_NEXT(r, wlink);
      if (r->action == A_RUNSYNC && r->wait == W_FINAL)
        sg_jreq_error(r, 503, code, msg);
    }
    sg_job_finish(j, SG_JOB_FAILED, NULL, sg_jobs_error_text("%s", msg));
  }
  free(failing);
}

static void on_demand_changed(void *ud, sg_daemon_t *d) {
  sg_endpoint_t *ep;
  const char *code;
  TAILQ_FOREACH(ep, &d->endpoints, link) {
    if (ep->jobs && ep->jobs->queued > 0 && sg_endpoint_failing(ep, &code))
      fail_runsync_waits(ep, code);
  }
}

static const sg_fleet_subscriber_t subscriber = {
    .endpoint_deleted = on_endpoint_deleted,
    .demand_changed = on_demand_changed,
    .endpoint_freed = on_endpoint_freed,
    .worker_ready = on_worker_free,
    .worker_released = on_worker_free,
    .worker_in_rotation = on_worker_in_rotation,
    .worker_ended = on_worker_ended,
    .worker_freed = on_worker_freed,
    .waiting = waiting,
};

int sg_jobs_init(sg_daemon_t *d, const char *db_path, sg_error_t **err) {
  /* Subscribed for good: endpoints freed after sg_jobs_shutdown still drop
   * their job state. */
  sg_fleet_subscribe(d, &subscriber, NULL);
  sg_jobs_t *J = xcalloc(1, sizeof(*J));
  J->d = d;
  LIST_INIT(&J->all);
  LIST_INIT(&J->reqs);
  LIST_INIT(&J->orphans);
  J->writer = sg_job_writer_start(d->base, db_path, (size_t)d->cfg.jobs_max_batch, err);
  if (!J->writer) {
    free(J);
    return -1;
  }
  size_t n = d->cfg.n_webhook_allow;
  sg_addr_rule_t *rules = xcalloc(n ? n : 1, sizeof(*rules));
  for (size_t i = 0; i < n; i++)
    if (sg_addr_rule_parse(d->cfg.webhook_allow[i], &rules[i], err) < 0) {
      free(rules);
      sg_job_writer_stop(J->writer);
      free(J);
      return -1;
    }
  J->webhooks = sg_webhooks_start(d->base, rules, n, d->cfg.webhook_retry_s > 0 ? d->cfg.webhook_retry_s : 10, err);
  free(rules);
  if (!J->webhooks) {
    sg_job_writer_stop(J->writer);
    free(J);
    return -1;
  }
  d->jobs = J;
  struct recovery rc = {J, 0, 0, 0};
  if (sg_store_jobs_each_open(d->store, recover_one, &rc, err) < 0)
    return -1;
  if (J->count > 0 || rc.orphaned > 0)
    sg_info("jobs: %zu recovered (%zu lost their execution and were queued again, %zu failed, %zu of deleted "
            "endpoints cancelled)",
            J->count, rc.requeued, rc.failed, rc.orphaned);
  return 0;
}

void sg_jobs_shutdown(sg_daemon_t *d) {
  sg_jobs_t *J = d->jobs;
  if (!J)
    return;
  sg_job_writer_stop(J->writer);
  sg_webhooks_stop(J->webhooks);
  sg_endpoint_t *ep;
  sg_worker_t *w;
  TAILQ_FOREACH(ep, &d->endpoints, link) { TAILQ_FOREACH(w, &ep->workers, link) sg_jobs_pull_free(w); }
  jreq_t *r;
  while ((r = LIST_FIRST(&J->reqs))) {
    if (r->job) {
      LIST_REMOVE(r, wlink);
      r->job = NULL;
    }
    sg_jreq_free(r);
  }
  sg_job_t *j;
  sg_jobs_orphans_free(J);
  while ((j = LIST_FIRST(&J->all))) {
    if (j->u) {
      sg_upstream_detach(j->u);
      sg_upstream_free(j->u);
      j->u = NULL;
    }
    if (j->w)
      LIST_REMOVE(j, rlink);
    if (j->in_queue)
      TAILQ_REMOVE(&j->ep->jobs->queue, j, qlink);
    sg_job_free(j);
  }
  free(J->buckets);
  free(J);
  d->jobs = NULL;
}
