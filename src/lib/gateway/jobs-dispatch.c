/* Async jobs: dispatch of queued jobs to workers (POST async.path over a
 * worker connection), their answers, retries and execution timeouts. */
#include <strings.h>

#include "gateway/balancer-internal.h"
#include "gateway/jobs-internal.h"
#include "logs/logs.h"

#define STREAM_ITEMS_MAX 100000

/* Gives the worker slot back; the connection goes back to the pool only
 * after a complete exchange. */
void sg_job_release_worker(sg_job_t *j, bool completed) {
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
  sg_logs_source_request(w->logs, j->id, false);
  sg_worker_release_request(w); /* kicks jobs and requests through the fleet's events */
}

/* The worker was lost during an execution: back to the queue's head, or
 * FAILED once the attempts are spent. */
static void worker_lost(sg_job_t *j, const char *why) {
  sg_job_release_worker(j, false);
  if (j->J->d->shutting_down && j->attempts > 0)
    j->attempts--; /* sgpud stopped the worker: not the job's fault */
  if (j->attempts > j->ep->spec->async.max_retries) {
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
  sg_job_t *j = arg;
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
  sg_job_t *j = arg;
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
  sg_job_t *j = arg;
  if (e == SG_UP_BAD_RESPONSE) {
    sg_job_release_worker(j, false);
    sg_job_finish(j, SG_JOB_FAILED, NULL, sg_jobs_error_text("the worker sent an answer that is not valid HTTP"));
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
  sg_job_finish(j, SG_JOB_TIMED_OUT, NULL,
                sg_jobs_error_text("the execution took longer than its executionTimeout of %lld ms",
                                   (long long)j->exec_timeout_ms));
}

static void dispatch(sg_job_t *j, sg_worker_t *w) {
  sg_endpoint_t *ep = j->ep;
  sg_job_unqueue(j);
  j->status = SG_JOB_IN_PROGRESS;
  j->attempts++;
  j->w = w;
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
  j->u = sg_gateway_get_conn(w);
  sg_upstream_begin(j->u, &handler, j, false);
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
  sg_jobs_arm(&j->exec_timer, j->J->d->base, exec_timeout_cb, j, j->exec_timeout_ms);
}

void sg_jobs_pump(sg_endpoint_t *ep) {
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
