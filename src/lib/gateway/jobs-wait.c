/* Async jobs: requests that wait for a job (runsync, stream, and answers
 * held for a commit) and their answers. */
#include "gateway/jobs-internal.h"

/* ---- answers to waiting requests ---- */

void sg_jreq_free(jreq_t *r) {
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
 * releases the job r waited on (sg_job_maybe_release) when it is done with it. */
void sg_jreq_reply(jreq_t *r, int status, json_t *body) {
  if (r->req) {
    sg_http_req_t *req = r->req;
    sg_http_set_close_cb(req, NULL, NULL);
    r->req = NULL;
    sg_http_send_json(req, status, body);
  } else {
    json_decref(body);
  }
  sg_jreq_free(r);
}

void sg_jreq_error(jreq_t *r, int status, const char *code, const char *msg) {
  if (r->req) {
    sg_http_req_t *req = r->req;
    sg_http_set_close_cb(req, NULL, NULL);
    r->req = NULL;
    sg_http_send_error(req, status, code, msg, NULL);
  }
  sg_jreq_free(r);
}

void sg_jreq_stream_reply(jreq_t *r) {
  sg_job_t *j = r->job;
  json_t *items = json_array();
  size_t n = j->items ? json_array_size(j->items) : 0;
  for (size_t i = j->items_read; i < n; i++)
    json_array_append_new(items, json_pack("{s:O}", "output", json_array_get(j->items, i)));
  j->items_read = n;
  json_t *body = json_pack("{s:s, s:s, s:o}", "id", j->id, "status", sg_job_status_name(j->status), "stream", items);
  if (sg_job_status_final(j->status) && j->error)
    json_object_set_new(body, "error", sg_jobs_json_value(j->error));
  sg_jreq_reply(r, 200, body);
}

static void wait_timer_cb(evutil_socket_t fd, short what, void *arg) {
  jreq_t *r = arg;
  sg_job_t *j = r->job;
  if (r->wait == W_STREAM)
    sg_jreq_stream_reply(r);
  else
    sg_jreq_reply(r, 200, sg_job_json(j));
  sg_job_maybe_release(j);
}

void sg_jreq_attach(jreq_t *r, sg_job_t *j, enum jr_wait wait) {
  r->job = j;
  r->wait = wait;
  LIST_INSERT_HEAD(&j->waiters, r, wlink);
}

/* Waits for the job's end (or new partial outputs) at most r->wait_ms. */
void sg_jreq_wait(jreq_t *r, enum jr_wait wait) {
  r->wait = wait;
  if (r->wait_ms <= 0) {
    wait_timer_cb(-1, 0, r);
    return;
  }
  sg_jobs_arm(&r->timer, r->J->d->base, wait_timer_cb, r, r->wait_ms);
}

/* Answers the waiters of j that wait for what happened (commit, final, items). */
void sg_job_notify(sg_job_t *j, enum jr_wait what) {
  jreq_t *r, *tmp;
  for (r = LIST_FIRST(&j->waiters); r; r = tmp) {
    tmp = LIST_NEXT(r, wlink);
    if (what == W_COMMIT && r->wait == W_COMMIT) {
      if (r->then_final && !sg_job_status_final(j->status)) {
        sg_jreq_wait(r, W_FINAL);
        continue;
      }
      if (r->then_final)
        sg_jreq_reply(r, 200, sg_job_json(j));
      else
        sg_jreq_reply(r, 200, json_pack("{s:s, s:s}", "id", j->id, "status", sg_job_status_name(j->status)));
    } else if (what == W_FINAL && r->wait == W_FINAL) {
      sg_jreq_reply(r, 200, sg_job_json(j));
    } else if ((what == W_STREAM || what == W_FINAL) && r->wait == W_STREAM) {
      sg_jreq_stream_reply(r);
    }
  }
}
