/* Async jobs: dispatch of queued jobs to workers (POST async.path over a
 * worker connection), their answers, retries and execution timeouts. */
#include <strings.h>

#include "gateway/balancer-internal.h"
#include "gateway/jobs-internal.h"
#include "logs/logs.h"

#define STREAM_ITEMS_MAX 100000
#define PASS_MAX 64 /* queued jobs a pump looks past for one a free worker may take */

/* One exchange with a worker: the upstream handler's argument. It belongs to
 * its job while the job runs on it; when the job ends first (cancel,
 * execution timeout, ttl, endpoint deleted) it becomes an orphan in
 * J->orphans that keeps the worker's slot (w->in_flight) until the worker's
 * answer ends or its connection closes: the worker is still computing, and
 * workers.max_concurrency is what it can compute at once. */
struct sg_job_exec {
  LIST_ENTRY(sg_job_exec) link; /* J->orphans, once orphaned */
  sg_jobs_t *J;
  sg_job_t *job; /* NULL once orphaned */
  sg_endpoint_t *ep;
  sg_worker_t *w;
  sg_upstream_t *u;
};

/* Takes j off its worker: the slot is given back (release_request: the job
 * ended there; release_attempt: it is tried again, so usage does not count
 * it yet); the connection goes back to the pool only after a complete
 * exchange. */
static void release(sg_job_t *j, bool completed, bool counted) {
  sg_worker_t *w = j->w;
  sg_upstream_t *u = j->u;
  if (!w)
    return;
  j->w = NULL;
  j->u = NULL;
  free(j->x);
  j->x = NULL;
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
  sg_logs_source_request(w->logs, j->id, false);
  /* kicks jobs and requests through the fleet's events */
  if (counted)
    sg_worker_release_request(w);
  else
    sg_worker_release_attempt(w);
}

void sg_job_release_worker(sg_job_t *j, bool completed) { release(j, completed, true); }

/* ---- executions that outlive their job ---- */

static void orphan_end(sg_job_exec_t *x, bool completed) {
  LIST_REMOVE(x, link);
  if (completed) {
    x->w->served++;
    sg_gateway_put_conn(x->w, x->u);
  } else {
    sg_upstream_detach(x->u);
    sg_upstream_free(x->u);
  }
  sg_worker_release_request(x->w);
  x->ep->proxies--;
  free(x);
}

void sg_job_take_off_worker(sg_job_t *j) {
  sg_logs_source_request(j->w->logs, j->id, false); /* ended, as far as its log lines go */
  j->x = NULL;
  j->w = NULL;
  j->u = NULL;
  LIST_REMOVE(j, rlink);
  j->ep->jobs->running_n--;
  if (j->exec_timer)
    evtimer_del(j->exec_timer);
  j->execution_ms = sg_now_ms() - j->started_mono;
}

void sg_job_abandon_worker(sg_job_t *j) {
  sg_job_exec_t *x = j->x;
  if (!j->w)
    return;
  if (j->pulled) {
    sg_jobs_pull_hold(j);
    return;
  }
  if (!x || !x->u) {
    sg_job_release_worker(j, false);
    return;
  }
  sg_job_take_off_worker(j);
  x->job = NULL;
  x->ep->proxies++;
  LIST_INSERT_HEAD(&x->J->orphans, x, link);
  /* A worker that computes on past the endpoint's request timeout is
   * replaced (up_error below), which frees the slot. */
  sg_upstream_set_deadline(x->u, x->ep->spec->workers.request_timeout_s);
}

void sg_jobs_orphans_free(sg_jobs_t *J) {
  sg_job_exec_t *x;
  while ((x = LIST_FIRST(&J->orphans))) {
    LIST_REMOVE(x, link);
    sg_upstream_detach(x->u);
    sg_upstream_free(x->u);
    x->ep->proxies--;
    free(x);
  }
}

/* ---- retries ---- */

/* Balancer skip: the worker j's last attempt was lost on. */
static bool avoided(const sg_worker_t *w, const void *arg) {
  const sg_job_t *j = arg;
  return j->avoid_worker && !strcmp(w->id, j->avoid_worker);
}

void sg_jobs_worker_trusted(sg_endpoint_t *ep, const sg_worker_t *w) {
  if (!ep->jobs)
    return;
  sg_job_t *j;
  TAILQ_FOREACH(j, &ep->jobs->queue, qlink) {
    if (j->avoid_worker && !strcmp(j->avoid_worker, w->id))
      sg_jobs_set_str(&j->avoid_worker, NULL);
  }
}

/* The worker was lost during an execution (taken: the request reached it):
 * back to the queue's head, to run on another worker (or on this one after
 * it passed a health check), or FAILED once the attempts are spent. An
 * attempt the worker never took (the connection was refused) does not
 * count. */
void sg_job_worker_lost(sg_job_t *j, const char *why, bool taken) {
  sg_worker_t *w = j->w;
  if ((!taken || j->J->d->shutting_down) && j->attempts > 0)
    j->attempts--; /* not the job's fault: never reached the worker, or sgpud stopped it */
  bool give_up = j->attempts > j->ep->spec->async.max_retries;
  if (w) {
    sg_jobs_set_str(&j->avoid_worker, xstrdup(w->id));
    sg_health_suspect(w); /* out of rotation for everyone until a probe passes */
  }
  release(j, false, give_up);
  if (give_up) {
    sg_job_finish(j, SG_JOB_FAILED, NULL,
                  sg_jobs_error_text("%s; given up after %d attempts (async.max_retries=%d)", why, j->attempts,
                                     j->ep->spec->async.max_retries));
    return;
  }
  j->retries++;
  j->ep->jobs->retried++;
  sg_job_put(j, false, SG_JOB_IN_QUEUE, sg_job_written);
  sg_job_enqueue(j, true);
}

/* ---- the exchange with the worker ---- */

static void up_head(void *arg, int status, const sg_upstream_header_t *h, size_t n) {
  sg_job_t *j = ((sg_job_exec_t *)arg)->job;
  if (!j)
    return;
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
        json_array_append_new(j->items, sg_jobs_json_value(res.output));
        added = true;
      }
      sg_job_result_clear(&res);
    }
    free(line);
  }
  if (added)
    sg_job_notify(j, W_STREAM);
}

static void up_body(void *arg, struct evbuffer *data) {
  sg_job_t *j = ((sg_job_exec_t *)arg)->job;
  if (!j) {
    evbuffer_drain(data, evbuffer_get_length(data)); /* an orphan's answer */
    return;
  }
  size_t max = j->J->d->cfg.max_body;
  if (evbuffer_get_length(j->answer) + evbuffer_get_length(data) > max) {
    evbuffer_drain(data, evbuffer_get_length(data));
    sg_job_finish(j, SG_JOB_FAILED, NULL,
                  sg_jobs_error_text("the worker's answer is over the limit of %zu bytes", max));
    return;
  }
  evbuffer_add_buffer(j->answer, data);
  if (j->answer_lines)
    take_lines(j);
}

static void up_done(void *arg) {
  sg_job_exec_t *x = arg;
  sg_job_t *j = x->job;
  if (!j) {
    orphan_end(x, true);
    return;
  }
  sg_job_release_worker(j, true);
  if (j->answer_lines) {
    evbuffer_add(j->answer, "\n", 1);
    take_lines(j);
    if (j->item_error) {
      sg_job_finish(j, SG_JOB_FAILED, NULL, steal_pointer(&j->item_error));
    } else {
      char *out = json_dumps(j->items, JSON_COMPACT);
      sg_job_finish(j, SG_JOB_COMPLETED, out, NULL);
    }
  } else {
    size_t len = evbuffer_get_length(j->answer);
    sg_job_result_t res;
    sg_job_result_parse(j->answer_status, (const char *)evbuffer_pullup(j->answer, -1), len, &res);
    sg_job_finish(j, res.status, steal_pointer(&res.output), steal_pointer(&res.error));
  }
  evbuffer_drain(j->answer, evbuffer_get_length(j->answer));
}

static void up_error(void *arg, sg_upstream_error_t e, bool answer_started) {
  sg_job_exec_t *x = arg;
  sg_job_t *j = x->job;
  if (!j) {
    if (e == SG_UP_TIMEOUT)
      sg_worker_stop(x->w, "it still computed a cancelled or timed-out job after workers.request_timeout_s");
    orphan_end(x, false);
    return;
  }
  if (e == SG_UP_BAD_RESPONSE) {
    sg_job_release_worker(j, false);
    sg_job_finish(j, SG_JOB_FAILED, NULL, sg_jobs_error_text("the worker sent an answer that is not valid HTTP"));
    return;
  }
  const char *wid = j->worker_id ? j->worker_id : "?";
  cleanup_free char *why = xasprintf(e == SG_UP_CONNECT_FAILED ? "worker %s refused the connection"
                                                               : "worker %s closed the connection before it answered",
                                     wid);
  sg_job_worker_lost(j, why, e != SG_UP_CONNECT_FAILED);
}

static const sg_upstream_handler_t handler = {up_head, up_body, up_done, up_error, NULL};

static void exec_timeout_cb(evutil_socket_t fd, short what, void *arg) {
  sg_job_t *j = arg;
  sg_job_finish(j, SG_JOB_TIMED_OUT, NULL,
                sg_jobs_error_text("the execution took longer than its executionTimeout of %lld ms",
                                   (long long)j->exec_timeout_ms));
}

void sg_job_start_on(sg_job_t *j, sg_worker_t *w) {
  sg_endpoint_t *ep = j->ep;
  sg_job_unqueue(j);
  j->status = SG_JOB_IN_PROGRESS;
  j->attempts++;
  j->w = w;
  j->pulled = false;
  j->ping_misses = 0;
  sg_jobs_set_str(&j->progress, NULL);
  j->stream_bytes = 0;
  LIST_INSERT_HEAD(&ep->jobs->running, j, rlink);
  ep->jobs->running_n++;
  sg_jobs_set_str(&j->worker_id, xstrdup(w->id));
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
  sg_job_put(j, false, SG_JOB_IN_PROGRESS, sg_job_written);
  sg_logs_source_request(w->logs, j->id, true);
  sg_jobs_arm(&j->exec_timer, j->J->d->base, exec_timeout_cb, j, j->exec_timeout_ms);
}

static void dispatch(sg_job_t *j, sg_worker_t *w) {
  sg_endpoint_t *ep = j->ep;
  sg_job_start_on(j, w);
  j->u = sg_gateway_get_conn(w);
  j->x = xcalloc(1, sizeof(*j->x));
  *j->x = (sg_job_exec_t){.J = j->J, .job = j, .ep = ep, .w = w, .u = j->u};
  sg_upstream_begin(j->u, &handler, j->x, false);
  struct evbuffer *out = sg_upstream_output(j->u);
  size_t body_len = strlen("{\"id\":\"\",\"input\":}") + strlen(j->id) + j->input_len;
  evbuffer_add_printf(out,
                      "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nX-Request-Id: %s\r\nX-Sgpu-Job-Id: %s\r\nX-Sgpu-Job-Attempt: %d\r\n\r\n",
                      ep->spec->async.path, w->host ? w->host : "127.0.0.1", w->port, body_len, j->id, j->id,
                      j->attempts);
  evbuffer_add_printf(out, "{\"id\":\"%s\",\"input\":", j->id);
  evbuffer_add(out, j->input, j->input_len);
  evbuffer_add(out, "}", 1);
}

void sg_jobs_pump(sg_endpoint_t *ep) {
  struct sg_ep_jobs *ej = ep->jobs;
  if (!ej || ep->deleted || ep->d->shutting_down)
    return;
  if (sg_spec_is_runpod(ep->spec)) {
    sg_jobs_pull_pump(ep); /* its workers take jobs */
    return;
  }
  /* In queue order; a job that may not go to the one free worker (it was
   * lost there) lets the next ones pass, up to PASS_MAX of them. */
  sg_job_t *j, *next;
  int passed = 0;
  for (j = TAILQ_FIRST(&ej->queue); j; j = next) {
    next = TAILQ_NEXT(j, qlink);
    sg_worker_t *w = sg_balancer_pick_worker(ep, j->avoid_worker ? avoided : NULL, j);
    if (!w) {
      if (!j->avoid_worker || ++passed > PASS_MAX || !sg_balancer_pick_worker(ep, NULL, NULL))
        break;
      continue;
    }
    dispatch(j, w);
  }
  if (ej->queued > 0)
    sg_fleet_demand_changed(ep->d);
}
