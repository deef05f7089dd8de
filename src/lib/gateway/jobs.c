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
 * the store: a status request for one reads it there (a keyed lookup on the
 * loop's connection; SQLite's WAL lets it read while the writer commits).
 *
 * Dispatch (push). A queued job goes to the ready worker with the fewest
 * requests in flight below workers.max_concurrency (sync requests and jobs
 * share the slots): POST async_path {"id", "input"}, and the answer ends the
 * job (see sg_job_result_parse). An answer of Content-Type
 * application/x-ndjson is a stream of partial outputs, one JSON object per
 * line, readable at /stream/{id} while it runs. A dropped connection (the
 * worker died) puts the job back at the head of the queue, up to
 * async.max_retries times. executionTimeout ends a running job as TIMED_OUT
 * by closing its connection; the ttl bounds the whole life of a job.
 *
 * Restart. Jobs left IN_QUEUE are queued again in their order; jobs left
 * IN_PROGRESS lost their execution: it counts as an attempt, and they are
 * queued again or, past max_retries, FAILED. */
#include <event2/buffer.h>
#include <stdarg.h>
#include <strings.h>

#include "gateway/balancer-internal.h"
#include "gateway/gateway.h"
#include "gateway/job-writer.h"
#include "gateway/jobs.h"
#include "gateway/webhook.h"
#include "sgpu/log.h"
#include "sgpu/pool.h"
#include "sgpu/util.h"

#define ENVELOPE_MAX (64u << 10)      /* a submission's bytes besides its input */
#define OTHER_BODY_MAX (64u << 10)    /* bodies of the other routes (ignored) */
#define INPUT_MEMORY_MAX (1ull << 30) /* inputs of queued jobs held in memory, all endpoints */
#define RUNSYNC_WAIT_DEFAULT_MS 90000
#define RUNSYNC_WAIT_MAX_MS 300000
#define STREAM_WAIT_DEFAULT_MS 10000
#define STREAM_WAIT_MAX_MS 60000
#define STREAM_ITEMS_MAX 100000
#define UNREAD_KEEP_MS 60000 /* a final job with unread partial outputs stays this long */
#define UPSTREAM_CONNECT_TIMEOUT_S 5.0

typedef struct sg_job sg_job_t;
typedef struct jreq jreq_t;

struct sg_ep_jobs {
  TAILQ_HEAD(, sg_job) queue;
  LIST_HEAD(, sg_job) running;
  int queued, running_n, inserting;
  uint64_t completed, failed, retried;
  struct event *pump_ev;
};

typedef struct sg_jobs {
  sg_daemon_t *d;
  sg_job_writer_t *writer;
  sg_webhooks_t *webhooks;
  sg_job_t **buckets;
  size_t n_buckets, count;
  LIST_HEAD(, sg_job) all;
  LIST_HEAD(, jreq) reqs;
  size_t input_bytes;
} sg_jobs_t;

struct sg_job {
  TAILQ_ENTRY(sg_job) qlink; /* ep queue, while in_queue */
  LIST_ENTRY(sg_job) rlink;  /* ep running list, while w */
  LIST_ENTRY(sg_job) alink;  /* J->all */
  sg_job_t *hnext;
  sg_jobs_t *J;
  sg_endpoint_t *ep;
  char *id;
  sg_job_status_t status; /* as the API shows it */
  sg_job_status_t final_status;
  bool mapped, in_queue, committed, finishing;
  int pending; /* writes not yet committed */
  char *input;
  size_t input_len;
  char *webhook;
  int64_t exec_timeout_ms, ttl_ms;
  int attempts, retries;
  char *output, *error, *worker_id;
  int64_t created_wall, started_wall, finished_wall, delay_ms, execution_ms, expires_wall;
  int64_t queued_mono, started_mono;
  /* the execution in progress */
  sg_worker_t *w;
  sg_upstream_t *u;
  struct evbuffer *answer;
  int answer_status;
  bool answer_lines;
  json_t *items; /* partial outputs of a streamed answer */
  size_t items_read;
  char *item_error;
  struct event *exec_timer, *ttl_timer;
  struct event *keep_timer; /* a final job with unread partial outputs stays this long */
  bool keep_over;
  LIST_HEAD(, jreq) waiters;
};

enum jr_action { A_RUN, A_RUNSYNC, A_STATUS, A_CANCEL, A_RETRY, A_PURGE, A_HEALTH, A_STREAM };
enum jr_wait { W_NONE, W_COMMIT, W_FINAL, W_STREAM, W_BARRIER, W_STORE };

struct jreq {
  LIST_ENTRY(jreq) link;  /* J->reqs */
  LIST_ENTRY(jreq) wlink; /* job->waiters, while job */
  sg_jobs_t *J;
  sg_http_req_t *req; /* NULL once the client went away */
  enum jr_action action;
  enum jr_wait wait;
  char *ep_name, *id;
  struct evbuffer *body;
  size_t limit;
  int64_t wait_ms;
  bool then_final; /* W_COMMIT of runsync: wait for the end next */
  sg_job_t *job;
  struct event *timer;
  int purged;
};

static void pump(sg_endpoint_t *ep);

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

static sg_job_t *map_get(sg_jobs_t *J, const char *id) {
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

static void map_del(sg_jobs_t *J, sg_job_t *j) {
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

static struct sg_ep_jobs *ep_jobs(sg_endpoint_t *ep);

static void pump_cb(evutil_socket_t fd, short what, void *arg) { pump(arg); }

static struct sg_ep_jobs *ep_jobs(sg_endpoint_t *ep) {
  if (!ep->jobs) {
    struct sg_ep_jobs *ej = xcalloc(1, sizeof(*ej));
    TAILQ_INIT(&ej->queue);
    LIST_INIT(&ej->running);
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

static sg_job_t *job_new(sg_jobs_t *J, sg_endpoint_t *ep, const char *id) {
  sg_job_t *j = xcalloc(1, sizeof(*j));
  j->J = J;
  j->ep = ep;
  ep->proxies++;
  ep_jobs(ep);
  j->id = xstrdup(id);
  LIST_INIT(&j->waiters);
  LIST_INSERT_HEAD(&J->all, j, alink);
  map_put(J, j);
  return j;
}

static void drop_input(sg_job_t *j) {
  if (!j->input)
    return;
  j->J->input_bytes -= j->input_len;
  free(j->input);
  j->input = NULL;
  j->input_len = 0;
}

static void job_free(sg_job_t *j) {
  map_del(j->J, j);
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
  drop_input(j);
  j->ep->proxies--;
  free(j->id);
  free(j->webhook);
  free(j->output);
  free(j->error);
  free(j->worker_id);
  free(j->item_error);
  free(j);
}

/* Forgets a job no one needs in memory any more: final and committed, no
 * answer waiting. Freed once its writes are committed. */
static void keep_over_cb(evutil_socket_t fd, short what, void *arg);

/* Forgets a final job nobody waits for; partial outputs not read yet keep it
 * (for /stream) up to UNREAD_KEEP_MS. */
static void maybe_release(sg_job_t *j) {
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
  map_del(j->J, j);
  if (j->pending == 0)
    job_free(j);
}

static void keep_over_cb(evutil_socket_t fd, short what, void *arg) {
  sg_job_t *j = arg;
  j->keep_over = true;
  maybe_release(j);
}

static void job_record(const sg_job_t *j, sg_job_status_t status, sg_job_record_t *r) {
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

static void set_str(char **slot, char *value) {
  free(*slot);
  *slot = value;
}

/* A JSON value from stored text (NULL text: null). */
static json_t *json_value(const char *text) {
  if (!text)
    return json_null();
  json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
  return v ? v : json_string(text);
}

/* The status answer: RunPod's fields, plus attempts, retries and, for a
 * queued job, its position (1: next to run). */
static json_t *record_json(const sg_job_record_t *r, int position) {
  int64_t now = sg_wall_ms();
  int64_t delay = r->started_ms ? r->delay_ms : (r->finished_ms ? r->finished_ms : now) - r->created_ms;
  int64_t exec = r->status == SG_JOB_IN_PROGRESS && r->started_ms ? now - r->started_ms : r->execution_ms;
  json_t *j = json_pack("{s:s, s:s, s:I, s:I, s:i, s:i}", "id", r->id, "status", sg_job_status_name(r->status),
                        "delayTime", (json_int_t)(delay > 0 ? delay : 0), "executionTime",
                        (json_int_t)(exec > 0 ? exec : 0), "attempts", r->attempts, "retries", r->retries);
  if (position > 0)
    json_object_set_new(j, "position", json_integer(position));
  if (r->worker)
    json_object_set_new(j, "workerId", json_string(r->worker));
  if (r->status == SG_JOB_COMPLETED)
    json_object_set_new(j, "output", json_value(r->output));
  else if (sg_job_status_final(r->status) && r->error)
    json_object_set_new(j, "error", json_value(r->error));
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

static json_t *job_json(const sg_job_t *j) {
  sg_job_record_t r;
  job_record(j, j->status, &r);
  return record_json(&r, position_of(j));
}

/* ---- answers to waiting requests ---- */

static void jreq_free(jreq_t *r) {
  LIST_REMOVE(r, link);
  if (r->job)
    LIST_REMOVE(r, wlink);
  if (r->req)
    sg_http_set_close_cb(r->req, NULL, NULL);
  if (r->timer)
    event_free(r->timer);
  if (r->body)
    evbuffer_free(r->body);
  free(r->ep_name);
  free(r->id);
  free(r);
}

/* Answers r (when its client is still there) and frees it. The caller
 * releases the job r waited on (maybe_release) when it is done with it. */
static void jreq_reply(jreq_t *r, int status, json_t *body) {
  if (r->req) {
    sg_http_req_t *req = r->req;
    sg_http_set_close_cb(req, NULL, NULL);
    r->req = NULL;
    sg_http_send_json(req, status, body);
  } else {
    json_decref(body);
  }
  jreq_free(r);
}

static void jreq_error(jreq_t *r, int status, const char *code, const char *msg) {
  if (r->req) {
    sg_http_req_t *req = r->req;
    sg_http_set_close_cb(req, NULL, NULL);
    r->req = NULL;
    sg_http_send_error(req, status, code, msg, NULL);
  }
  jreq_free(r);
}

static void stream_reply(jreq_t *r) {
  sg_job_t *j = r->job;
  json_t *items = json_array();
  size_t n = j->items ? json_array_size(j->items) : 0;
  for (size_t i = j->items_read; i < n; i++)
    json_array_append_new(items, json_pack("{s:O}", "output", json_array_get(j->items, i)));
  j->items_read = n;
  json_t *body = json_pack("{s:s, s:s, s:o}", "id", j->id, "status", sg_job_status_name(j->status), "stream", items);
  if (sg_job_status_final(j->status) && j->error)
    json_object_set_new(body, "error", json_value(j->error));
  jreq_reply(r, 200, body);
}

static void wait_timer_cb(evutil_socket_t fd, short what, void *arg) {
  jreq_t *r = arg;
  sg_job_t *j = r->job;
  if (r->wait == W_STREAM)
    stream_reply(r);
  else
    jreq_reply(r, 200, job_json(j));
  maybe_release(j);
}

static void arm(struct event **ev, struct event_base *base, event_callback_fn cb, void *arg, int64_t ms) {
  if (!*ev)
    *ev = evtimer_new(base, cb, arg);
  if (ms < 0)
    ms = 0;
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
  evtimer_add(*ev, &tv);
}

static void attach(jreq_t *r, sg_job_t *j, enum jr_wait wait) {
  r->job = j;
  r->wait = wait;
  LIST_INSERT_HEAD(&j->waiters, r, wlink);
}

/* Waits for the job's end (or new partial outputs) at most r->wait_ms. */
static void wait_for_job(jreq_t *r, enum jr_wait wait) {
  r->wait = wait;
  if (r->wait_ms <= 0) {
    wait_timer_cb(-1, 0, r);
    return;
  }
  arm(&r->timer, r->J->d->base, wait_timer_cb, r, r->wait_ms);
}

/* Answers the waiters of j that wait for what happened (commit, final, items). */
static void notify(sg_job_t *j, enum jr_wait what) {
  jreq_t *r, *tmp;
  for (r = LIST_FIRST(&j->waiters); r; r = tmp) {
    tmp = LIST_NEXT(r, wlink);
    if (what == W_COMMIT && r->wait == W_COMMIT) {
      if (r->then_final && !sg_job_status_final(j->status)) {
        wait_for_job(r, W_FINAL);
        continue;
      }
      if (r->then_final)
        jreq_reply(r, 200, job_json(j));
      else
        jreq_reply(r, 200, json_pack("{s:s, s:s}", "id", j->id, "status", sg_job_status_name(j->status)));
    } else if (what == W_FINAL && r->wait == W_FINAL) {
      jreq_reply(r, 200, job_json(j));
    } else if ((what == W_STREAM || what == W_FINAL) && r->wait == W_STREAM) {
      stream_reply(r);
    }
  }
}

/* ---- writes ---- */

static void put(sg_job_t *j, bool insert, sg_job_status_t status, sg_job_write_cb cb) {
  sg_job_record_t rec;
  job_record(j, status, &rec);
  j->pending++;
  sg_job_writer_put(j->J->writer, insert, &rec, cb, j);
}

static void written(void *arg, int result) {
  sg_job_t *j = arg;
  j->pending--;
  if (result < 0)
    sg_warn("job %s: a state change was not stored (error %d)", j->id, result);
  if (!j->mapped && j->pending == 0)
    job_free(j);
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
    json_t *body = job_json(j);
    cleanup_free char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    sg_webhooks_send(j->J->webhooks, j->webhook, text);
  }
  notify(j, W_FINAL);
  notify(j, W_COMMIT); /* a retry or submission answered after the end */
  maybe_release(j);
}

/* ---- the end of a job ---- */

static void stop_timers(sg_job_t *j) {
  if (j->exec_timer)
    evtimer_del(j->exec_timer);
  if (j->ttl_timer)
    evtimer_del(j->ttl_timer);
}

static void unqueue(sg_job_t *j) {
  if (!j->in_queue)
    return;
  TAILQ_REMOVE(&j->ep->jobs->queue, j, qlink);
  j->ep->jobs->queued--;
  j->in_queue = false;
}

/* Gives the worker slot back; the connection goes back to the pool only
 * after a complete exchange. */
static void release_worker(sg_job_t *j, bool completed) {
  sg_worker_t *w = j->w;
  sg_upstream_t *u = j->u;
  if (!w)
    return;
  j->w = NULL;
  j->u = NULL;
  LIST_REMOVE(j, rlink);
  j->ep->jobs->running_n--;
  if (j->exec_timer)
    evtimer_del(j->exec_timer);
  if (u) {
    if (completed) {
      sg_gateway_put_conn(w, u);
    } else {
      sg_upstream_detach(u);
      sg_upstream_free(u);
    }
  }
  if (completed) {
    w->served++;
    j->ep->served++;
  }
  j->execution_ms = sg_now_ms() - j->started_mono;
  sg_worker_release_request(w); /* kicks jobs and requests through the fleet's events */
}

/* Ends j as status (output and error are JSON text, taken). The state is
 * shown once it is committed. */
static void finish(sg_job_t *j, sg_job_status_t status, char *output, char *error) {
  if (j->finishing || sg_job_status_final(j->status)) {
    free(output);
    free(error);
    return;
  }
  j->finishing = true;
  j->final_status = status;
  stop_timers(j);
  unqueue(j);
  release_worker(j, false);
  drop_input(j);
  set_str(&j->output, output);
  set_str(&j->error, error);
  j->finished_wall = sg_wall_ms();
  j->expires_wall = j->finished_wall + (int64_t)(j->ep->spec->async.retention_s * 1000);
  put(j, false, status, final_written);
}

static char *error_text(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *error_text(const char *fmt, ...) {
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

static void enqueue(sg_job_t *j, bool head) {
  struct sg_ep_jobs *ej = ep_jobs(j->ep);
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
  finish(j, SG_JOB_TIMED_OUT, NULL,
         error_text("the job's ttl of %lld ms passed before it finished", (long long)j->ttl_ms));
}

static void arm_ttl(sg_job_t *j) {
  arm(&j->ttl_timer, j->J->d->base, ttl_cb, j, j->created_wall + j->ttl_ms - sg_wall_ms());
}

/* The worker was lost during an execution: back to the queue's head, or
 * FAILED once the attempts are spent. */
static void worker_lost(sg_job_t *j, const char *why) {
  release_worker(j, false);
  if (j->J->d->shutting_down && j->attempts > 0)
    j->attempts--; /* sgpud stopped the worker: not the job's fault */
  if (j->attempts > j->ep->spec->async.max_retries) {
    finish(j, SG_JOB_FAILED, NULL,
           error_text("%s; given up after %d attempts (async.max_retries=%d)", why, j->attempts,
                      j->ep->spec->async.max_retries));
    return;
  }
  j->retries++;
  j->ep->jobs->retried++;
  put(j, false, SG_JOB_IN_QUEUE, written);
  enqueue(j, true);
}

/* ---- the exchange with the worker ---- */

static void up_head(void *arg, int status, const sg_upstream_header_t *h, size_t n) {
  sg_job_t *j = arg;
  j->answer_status = status;
  for (size_t i = 0; i < n; i++)
    if (!strcasecmp(h[i].name, "Content-Type") && (strcasestr(h[i].value, "ndjson") || strcasestr(h[i].value, "jsonl")))
      j->answer_lines = status >= 200 && status <= 299;
}

/* Takes the complete lines of a streamed answer as partial outputs. */
static void take_lines(sg_job_t *j) {
  size_t len;
  char *line;
  bool added = false;
  while ((line = evbuffer_readln(j->answer, &len, EVBUFFER_EOL_LF))) {
    if (len > 0 && line[len - 1] == '\r')
      line[--len] = '\0';
    if (len > 0) {
      sg_job_result_t res;
      sg_job_result_parse(200, line, len, &res);
      if (res.status == SG_JOB_FAILED && !j->item_error)
        j->item_error = steal_pointer(&res.error);
      else if (res.output && json_array_size(j->items) < STREAM_ITEMS_MAX) {
        json_array_append_new(j->items, json_value(res.output));
        added = true;
      }
      sg_job_result_clear(&res);
    }
    free(line);
  }
  if (added)
    notify(j, W_STREAM);
}

static void up_body(void *arg, struct evbuffer *data) {
  sg_job_t *j = arg;
  size_t max = j->J->d->cfg.max_body;
  if (evbuffer_get_length(j->answer) + evbuffer_get_length(data) > max) {
    evbuffer_drain(data, evbuffer_get_length(data));
    finish(j, SG_JOB_FAILED, NULL, error_text("the worker's answer is over the limit of %zu bytes", max));
    return;
  }
  evbuffer_add_buffer(j->answer, data);
  if (j->answer_lines)
    take_lines(j);
}

static void up_done(void *arg) {
  sg_job_t *j = arg;
  release_worker(j, true);
  if (j->answer_lines) {
    evbuffer_add(j->answer, "\n", 1);
    take_lines(j);
    if (j->item_error) {
      finish(j, SG_JOB_FAILED, NULL, steal_pointer(&j->item_error));
    } else {
      char *out = json_dumps(j->items, JSON_COMPACT);
      finish(j, SG_JOB_COMPLETED, out, NULL);
    }
  } else {
    size_t len = evbuffer_get_length(j->answer);
    sg_job_result_t res;
    sg_job_result_parse(j->answer_status, (const char *)evbuffer_pullup(j->answer, -1), len, &res);
    finish(j, res.status, steal_pointer(&res.output), steal_pointer(&res.error));
  }
  evbuffer_drain(j->answer, evbuffer_get_length(j->answer));
}

static void up_error(void *arg, sg_upstream_error_t e, bool answer_started) {
  sg_job_t *j = arg;
  if (e == SG_UP_BAD_RESPONSE) {
    release_worker(j, false);
    finish(j, SG_JOB_FAILED, NULL, error_text("the worker sent an answer that is not valid HTTP"));
    return;
  }
  const char *wid = j->worker_id ? j->worker_id : "?";
  cleanup_free char *why = xasprintf(e == SG_UP_CONNECT_FAILED ? "worker %s refused the connection"
                                                               : "worker %s closed the connection before it answered",
                                     wid);
  worker_lost(j, why);
}

static const sg_upstream_handler_t handler = {up_head, up_body, up_done, up_error, NULL};

static void exec_timeout_cb(evutil_socket_t fd, short what, void *arg) {
  sg_job_t *j = arg;
  finish(j, SG_JOB_TIMED_OUT, NULL,
         error_text("the execution took longer than its executionTimeout of %lld ms", (long long)j->exec_timeout_ms));
}

static void dispatch(sg_job_t *j, sg_worker_t *w) {
  sg_endpoint_t *ep = j->ep;
  unqueue(j);
  j->status = SG_JOB_IN_PROGRESS;
  j->attempts++;
  j->w = w;
  LIST_INSERT_HEAD(&ep->jobs->running, j, rlink);
  ep->jobs->running_n++;
  set_str(&j->worker_id, xstrdup(w->id));
  j->started_mono = sg_now_ms();
  j->started_wall = sg_wall_ms();
  j->delay_ms = j->started_wall - j->created_wall;
  j->answer_status = 0;
  j->answer_lines = false;
  if (!j->answer)
    j->answer = evbuffer_new();
  json_decref(j->items);
  j->items = json_array();
  j->items_read = 0;
  free(j->item_error);
  j->item_error = NULL;
  sg_histogram_observe(&ep->metrics.queue_wait, (double)(j->started_mono - j->queued_mono) / 1000);
  w->in_flight++;
  w->last_used_mono = j->started_mono;
  ep->in_flight++;
  sg_fleet_worker_load(w, 1); /* the meter bills the job's time as busy, as a request's */
  put(j, false, SG_JOB_IN_PROGRESS, written);

  j->u = sg_gateway_get_conn(w);
  sg_upstream_begin(j->u, &handler, j, false);
  struct evbuffer *out = sg_upstream_output(j->u);
  size_t body_len = strlen("{\"id\":\"\",\"input\":}") + strlen(j->id) + j->input_len;
  evbuffer_add_printf(out,
                      "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nX-Sgpu-Job-Id: %s\r\nX-Sgpu-Job-Attempt: %d\r\n\r\n",
                      ep->spec->async.path, w->host ? w->host : "127.0.0.1", w->port, body_len, j->id, j->attempts);
  evbuffer_add_printf(out, "{\"id\":\"%s\",\"input\":", j->id);
  evbuffer_add(out, j->input, j->input_len);
  evbuffer_add(out, "}", 1);
  arm(&j->exec_timer, j->J->d->base, exec_timeout_cb, j, j->exec_timeout_ms);
}

static void pump(sg_endpoint_t *ep) {
  struct sg_ep_jobs *ej = ep->jobs;
  if (!ej || ep->deleted || ep->d->shutting_down)
    return;
  sg_job_t *j;
  while ((j = TAILQ_FIRST(&ej->queue))) {
    sg_worker_t *w = sg_balancer_pick_worker(ep, NULL, NULL);
    if (!w)
      break;
    dispatch(j, w);
  }
  if (ej->queued > 0)
    sg_fleet_demand_changed(ep->d);
}

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
      jreq_error(r, 500, "store_error", "the job could not be stored; it was not accepted");
    }
    drop_input(j);
    map_del(j->J, j);
    if (j->pending == 0)
      job_free(j);
    return;
  }
  j->committed = true;
  if (j->ep->deleted) {
    finish(j, SG_JOB_CANCELLED, NULL, error_text("the endpoint was deleted"));
    return; /* its waiters are answered when that is committed */
  }
  enqueue(j, false);
  arm_ttl(j);
  notify(j, W_COMMIT);
}

static int64_t resolve_ms(int64_t asked, double default_s) { return asked > 0 ? asked : (int64_t)(default_s * 1000); }

static void submit(jreq_t *r, sg_endpoint_t *ep) {
  sg_jobs_t *J = r->J;
  struct sg_ep_jobs *ej = ep_jobs(ep);
  const sg_spec_t *spec = ep->spec;
  size_t len = evbuffer_get_length(r->body);
  sg_job_submit_t s;
  cleanup_error sg_error_t *err = NULL;
  if (len == 0) {
    jreq_error(r, 400, "invalid_json", "request body is empty; {\"input\": ...} is expected");
    return;
  }
  if (sg_job_submit_parse((const char *)evbuffer_pullup(r->body, -1), len, (size_t)spec->async.max_input_bytes, &s,
                          &err) < 0) {
    sg_http_req_t *req = r->req;
    r->req = NULL;
    if (req) {
      sg_http_set_close_cb(req, NULL, NULL);
      sg_http_send_sg_error(req, err);
    }
    jreq_free(r);
    return;
  }
  if (ej->queued + ej->inserting >= spec->async.max_queue || J->input_bytes + s.input_len > INPUT_MEMORY_MAX) {
    sg_job_submit_clear(&s);
    if (r->req)
      sg_http_add_header(r->req, "Retry-After", "1");
    cleanup_free char *msg = xasprintf("the job queue is full (async.max_queue=%d)", spec->async.max_queue);
    jreq_error(r, 503, "queue_full", msg);
    return;
  }
  cleanup_free char *id = sg_job_new_id();
  sg_job_t *j = job_new(J, ep, id);
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
  attach(r, j, W_COMMIT);
  put(j, true, SG_JOB_IN_QUEUE, inserted);
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
    jreq_free(r); /* the client went away */
  else if (cancelled)
    jreq_error(r, 503, "shutting_down", "sgpud is stopping");
  else if (!ep || !sg_spec_is_async(ep->spec))
    jreq_error(r, 404, "not_found", "the endpoint is gone");
  else if (s->err)
    jreq_error(r, 500, "store_error", s->err->message);
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
    jreq_error(r, 404, "not_found", "no such job");
    return;
  }
  json_t *body = record_json(&s->rec, 0);
  if (s->with_stream)
    json_object_set_new(body, "stream", json_array());
  jreq_reply(r, 200, body);
}

/* Answers the job's status from memory or the store; with_stream adds an
 * empty "stream" (a job no longer in memory has no unread partial outputs). */
static void status_of_job(jreq_t *r, sg_endpoint_t *ep, bool with_stream) {
  sg_job_t *j = map_get(r->J, r->id);
  if (j && j->ep == ep && j->committed) {
    jreq_reply(r, 200, job_json(j));
    return;
  }
  read_stored(r, ep, with_stream, status_stored);
}

static void status_of(jreq_t *r, sg_endpoint_t *ep) { status_of_job(r, ep, false); }

static void cancel(jreq_t *r, sg_endpoint_t *ep) {
  sg_job_t *j = map_get(r->J, r->id);
  if (!j || j->ep != ep || !j->committed) {
    status_of(r, ep); /* final (no change) or unknown */
    return;
  }
  if (sg_job_status_final(j->status)) {
    jreq_reply(r, 200, job_json(j));
    return;
  }
  attach(r, j, W_FINAL);
  finish(j, SG_JOB_CANCELLED, NULL, NULL);
}

struct loaded {
  sg_jobs_t *J;
  sg_endpoint_t *ep;
  sg_job_t *job;
  bool expired;
};

static void load_record(void *ud, const sg_job_record_t *rec) {
  struct loaded *l = ud;
  if (rec->expires_ms > 0 && rec->expires_ms <= sg_wall_ms()) {
    l->expired = true;
    return;
  }
  sg_job_t *j = job_new(l->J, l->ep, rec->id);
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

static void retried(void *arg, int result) {
  sg_job_t *j = arg;
  j->pending--;
  if (result < 0) {
    jreq_t *r, *tmp;
    for (r = LIST_FIRST(&j->waiters); r; r = tmp) {
      tmp = LIST_NEXT(r, wlink);
      jreq_error(r, result == -SG_ENOTFOUND ? 404 : 500, result == -SG_ENOTFOUND ? "not_found" : "store_error",
                 result == -SG_ENOTFOUND ? "no such job" : "the retry could not be stored");
    }
    j->status = SG_JOB_FAILED;
    maybe_release(j);
    return;
  }
  if (!j->finishing && !sg_job_status_final(j->status)) {
    j->ep->jobs->retried++;
    enqueue(j, false);
    arm_ttl(j);
  }
  notify(j, W_COMMIT);
  maybe_release(j);
}

static void retry_job(jreq_t *r, sg_job_t *j);

static void retry_stored(jreq_t *r, sg_endpoint_t *ep, stored_t *s) {
  sg_job_t *j = map_get(r->J, r->id);
  if (j && (j->ep != ep || !j->committed)) {
    jreq_error(r, 404, "not_found", "no such job");
    return;
  }
  if (!j && s->found) {
    struct loaded l = {r->J, ep, NULL, false};
    load_record(&l, &s->rec);
    j = l.job;
  }
  if (!j) {
    jreq_error(r, 404, "not_found", "no such job");
    return;
  }
  retry_job(r, j);
}

static void retry(jreq_t *r, sg_endpoint_t *ep) {
  sg_job_t *j = map_get(r->J, r->id);
  if (j && (j->ep != ep || !j->committed)) {
    jreq_error(r, 404, "not_found", "no such job");
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
    jreq_error(r, 409, "conflict", msg);
    maybe_release(j);
    return;
  }
  j->status = SG_JOB_IN_QUEUE;
  j->attempts = 0;
  j->retries++;
  set_str(&j->output, NULL);
  set_str(&j->error, NULL);
  j->created_wall = sg_wall_ms();
  j->started_wall = j->finished_wall = j->delay_ms = j->execution_ms = j->expires_wall = 0;
  attach(r, j, W_COMMIT);
  j->pending++;
  sg_job_record_t rec;
  job_record(j, SG_JOB_IN_QUEUE, &rec);
  sg_job_writer_put(j->J->writer, false, &rec, retried, j);
}

static void purged(void *arg, int result) {
  jreq_t *r = arg;
  jreq_reply(r, 200, json_pack("{s:i, s:s}", "removed", r->purged, "status", "completed"));
}

static void purge(jreq_t *r, sg_endpoint_t *ep) {
  struct sg_ep_jobs *ej = ep_jobs(ep);
  int n = 0;
  sg_job_t *j;
  while ((j = TAILQ_FIRST(&ej->queue))) {
    finish(j, SG_JOB_CANCELLED, NULL, error_text("removed from the queue by purge-queue"));
    n++;
  }
  r->purged = n;
  r->wait = W_BARRIER;
  sg_job_writer_barrier(r->J->writer, purged, r);
}

static void health(jreq_t *r, sg_endpoint_t *ep) {
  struct sg_ep_jobs *ej = ep_jobs(ep);
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
  jreq_reply(r, 200,
             json_pack("{s:{s:I, s:I, s:i, s:i, s:I}, s:{s:i, s:i, s:i, s:i}}", "jobs", "completed",
                       (json_int_t)ej->completed, "failed", (json_int_t)ej->failed, "inProgress", ej->running_n,
                       "inQueue", ej->queued, "retried", (json_int_t)ej->retried, "workers", "idle", idle, "running",
                       running, "initializing", initializing, "unhealthy", unhealthy));
}

static void stream(jreq_t *r, sg_endpoint_t *ep) {
  sg_job_t *j = map_get(r->J, r->id);
  if (!j || j->ep != ep || !j->committed) {
    status_of_job(r, ep, true); /* a final job: no partial outputs are kept */
    return;
  }
  attach(r, j, W_STREAM);
  size_t n = j->items ? json_array_size(j->items) : 0;
  if (n > j->items_read || sg_job_status_final(j->status)) {
    stream_reply(r);
    maybe_release(j);
  } else
    wait_for_job(r, W_STREAM);
}

/* ---- routing ---- */

static void client_closed(sg_http_req_t *req, void *arg) {
  jreq_t *r = arg;
  r->req = NULL;
  if (r->wait == W_BARRIER || r->wait == W_STORE)
    return; /* freed when the write or read it waits for is done */
  sg_job_t *j = r->job;
  jreq_free(r);
  if (j)
    maybe_release(j);
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
    jreq_error(r, 413, "too_large", msg);
    return;
  }
  evbuffer_add_buffer(r->body, data);
}

static void body_end(sg_http_req_t *req, void *arg) {
  jreq_t *r = arg;
  sg_endpoint_t *ep = sg_daemon_find_endpoint(r->J->d, r->ep_name);
  if (!ep || !sg_spec_is_async(ep->spec)) {
    jreq_error(r, 404, "not_found", "the endpoint is gone");
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
    jreq_free(r);
    return SG_HTTP_DONE;
  }
  sg_http_set_close_cb(req, client_closed, r);
  sg_http_stream_body(req, body_data, body_end, r);
  return SG_HTTP_STREAM;
}

/* ---- endpoints deleted ---- */

/* ep was deleted: its queued and running jobs end as CANCELLED. */
static void sg_jobs_endpoint_deleted(sg_endpoint_t *ep) {
  struct sg_ep_jobs *ej = ep->jobs;
  if (!ej)
    return;
  sg_job_t *j;
  while ((j = TAILQ_FIRST(&ej->queue)))
    finish(j, SG_JOB_CANCELLED, NULL, error_text("the endpoint was deleted"));
  while ((j = LIST_FIRST(&ej->running)))
    finish(j, SG_JOB_CANCELLED, NULL, error_text("the endpoint was deleted"));
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
    cleanup_free char *err = error_text("the endpoint no longer exists");
    r.error = err;
    sg_job_writer_put(J->writer, false, &r, NULL, NULL);
    rc->orphaned++;
    return;
  }
  struct loaded l = {J, ep, NULL, false};
  load_record(&l, rec);
  sg_job_t *j = l.job;
  if (!j)
    return;
  if (rec->status == SG_JOB_IN_PROGRESS) {
    /* The execution was lost with the earlier sgpud: it counted. */
    if (j->attempts > ep->spec->async.max_retries) {
      j->status = SG_JOB_IN_QUEUE;
      finish(j, SG_JOB_FAILED, NULL,
             error_text("its worker was lost when sgpud stopped; given up after %d attempts (async.max_retries=%d)",
                        j->attempts, ep->spec->async.max_retries));
      rc->failed++;
      return;
    }
    j->retries++;
    ep_jobs(ep)->retried++;
    put(j, false, SG_JOB_IN_QUEUE, written);
    rc->requeued++;
  }
  enqueue(j, false);
  arm_ttl(j);
}

/* ---- fleet events ---- */

static void on_endpoint_deleted(void *ud, sg_endpoint_t *ep) { sg_jobs_endpoint_deleted(ep); }
static void on_endpoint_freed(void *ud, sg_endpoint_t *ep) { sg_jobs_endpoint_free(ep); }
static void on_worker_free(void *ud, sg_worker_t *w) { sg_jobs_kick(w->ep); }

/* Queued jobs count as demand like queued requests. */
static void waiting(void *ud, const sg_endpoint_t *ep, int64_t now, int *queued, int64_t *oldest) {
  *queued += jobs_queued(ep);
  int64_t wait = jobs_oldest_wait(ep, now);
  if (wait > *oldest)
    *oldest = wait;
}

static const sg_fleet_subscriber_t subscriber = {
    .endpoint_deleted = on_endpoint_deleted,
    .endpoint_freed = on_endpoint_freed,
    .worker_ready = on_worker_free,
    .worker_released = on_worker_free,
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
  jreq_t *r;
  while ((r = LIST_FIRST(&J->reqs))) {
    if (r->job) {
      LIST_REMOVE(r, wlink);
      r->job = NULL;
    }
    jreq_free(r);
  }
  sg_job_t *j;
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
    job_free(j);
  }
  free(J->buckets);
  free(J);
  d->jobs = NULL;
}

void sg_jobs_routes(sg_router_t *r, sg_daemon_t *d) {
  sg_router_add(r, &(sg_route_t){.path = "/v2/", .prefix = true, .on_head = handle, .ctx = d});
}
