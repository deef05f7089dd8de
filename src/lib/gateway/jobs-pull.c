/* Async jobs taken by pull workers: RunPod's worker protocol
 * ("async": {"protocol": "runpod"}). A worker long-polls its take route for
 * jobs, posts progress, partial outputs and its result, polls a stop route
 * for jobs it must drop and pings with the ids of the jobs it holds. The
 * routes live under /worker/{endpoint}/..., public in the router: each
 * request carries the worker's own token (sg_worker_token), checked here,
 * which grants nothing but that worker's routes while it lives.
 *
 * State: each pull worker has a struct sg_worker_pull (w->pull) with its
 * parked take and stop poll, the jobs it must drop, the slots it still
 * holds for ended jobs and its ping watchdog; parked takes wait in their
 * endpoint's FIFO (ep->jobs->takes), where sg_jobs_pull_pump() hands them
 * queued jobs. Loop thread only. */
#include <strings.h>

#include "gateway/jobs-internal.h"
#include "logs/logs.h"

#define PASS_MAX 64       /* queued jobs a take looks past for one it may run */
#define BATCH_MAX 256     /* jobs one batch take may get */
#define GET_BODY_MAX 4096 /* a body sent with a take, stop or ping is read and dropped */
#define STREAM_ITEMS_MAX 100000
#define PING_MISSES_LOST 2 /* pings in a row without a held job: it is lost */

typedef struct pull_req pull_req_t;

/* A take or stop poll held until there is something to answer. */
struct pull_req {
  TAILQ_ENTRY(pull_req) link; /* ep->jobs->takes, for a take */
  struct sg_worker_pull *p;
  sg_http_req_t *req;
  struct event *timer;
  int want;   /* jobs a take asks for */
  bool batch; /* a batch take: answered with a list */
  bool is_stop;
};

/* A job that ended while the worker held it: the worker is told to drop it
 * (stop poll) and its slot stays taken until the worker is free again. */
struct held {
  char *id;
  bool told;
};

struct sg_worker_pull {
  sg_worker_t *w;
  sg_jobs_t *J;
  pull_req_t *take, *stop;
  struct held *held;
  size_t n_held;
  struct event *ping_timer; /* the watchdog: armed from the first take, re-armed by each ping */
  bool pinged;
};

/* What one worker request does, from its path. */
enum pull_action { P_TAKE, P_TAKE_BATCH, P_STOP, P_DONE, P_STREAM, P_PING };

/* A worker request with a body, while the body arrives. */
typedef struct pull_post {
  sg_jobs_t *J;
  sg_http_req_t *req;
  enum pull_action action;
  char *ep_name, *worker_id, *job_id;
  bool is_stream;
  int want;
  struct evbuffer *body;
  size_t limit;
} pull_post_t;

static const struct {
  const char *name;
  enum pull_action action;
  bool with_job;
  bool post;
} actions[] = {
    {"job-take", P_TAKE, false, false},   {"job-take-batch", P_TAKE_BATCH, false, false},
    {"job-stop", P_STOP, false, false},   {"job-done", P_DONE, true, true},
    {"job-stream", P_STREAM, true, true}, {"ping", P_PING, false, false},
};

/* ---- per-worker state ---- */

static void ping_timeout_cb(evutil_socket_t fd, short what, void *arg);

static struct sg_worker_pull *pull_of(sg_jobs_t *J, sg_worker_t *w) {
  if (!w->pull) {
    struct sg_worker_pull *p = xcalloc(1, sizeof(*p));
    p->w = w;
    p->J = J;
    p->ping_timer = evtimer_new(J->d->base, ping_timeout_cb, p);
    w->pull = p;
  }
  return w->pull;
}

static void arm_watchdog(struct sg_worker_pull *p) {
  double s = p->w->ep->spec->async.ping_timeout_s;
  sg_jobs_arm(&p->ping_timer, p->J->d->base, ping_timeout_cb, p, (int64_t)(s * 1000));
}

static void req_free(pull_req_t *r) {
  struct sg_worker_pull *p = r->p;
  if (r->is_stop) {
    p->stop = NULL;
  } else {
    p->take = NULL;
    TAILQ_REMOVE(&p->w->ep->jobs->takes, r, link);
  }
  if (r->req)
    sg_http_set_close_cb(r->req, NULL, NULL);
  if (r->timer)
    event_free(r->timer);
  free(r);
}

/* Answers a parked request (204 when body is NULL) and frees it. */
static void req_answer(pull_req_t *r, int status, const char *body, size_t len) {
  sg_http_req_t *req = r->req;
  r->req = NULL;
  req_free(r);
  if (!req)
    return;
  sg_http_set_close_cb(req, NULL, NULL);
  if (body)
    sg_http_reply(req, status, "application/json", body, len);
  else
    sg_http_reply(req, 204, NULL, NULL, 0);
}

/* Gives back the slots of told jobs: the worker is asking for work, or
 * its pings no longer carry them (listed: the ids a ping carries). */
static void release_told(struct sg_worker_pull *p, char **listed, size_t n_listed) {
  size_t keep = 0;
  int released = 0;
  for (size_t i = 0; i < p->n_held; i++) {
    bool still = !p->held[i].told;
    for (size_t k = 0; !still && k < n_listed; k++)
      still = !strcmp(listed[k], p->held[i].id);
    if (still) {
      p->held[keep++] = p->held[i];
    } else {
      free(p->held[i].id);
      released++;
    }
  }
  p->n_held = keep;
  while (released-- > 0)
    sg_worker_release_request(p->w);
}

static void answer_stop(struct sg_worker_pull *p) {
  json_t *ids = json_array();
  for (size_t i = 0; i < p->n_held; i++)
    if (!p->held[i].told) {
      json_array_append_new(ids, json_string(p->held[i].id));
      p->held[i].told = true;
    }
  json_t *body = json_pack("{s:o}", "jobsToStop", ids);
  cleanup_free char *text = json_dumps(body, JSON_COMPACT);
  json_decref(body);
  req_answer(p->stop, 200, text, strlen(text));
  if (p->take)
    release_told(p, NULL, 0); /* a take is waiting: the worker is free for work */
}

static bool has_untold(const struct sg_worker_pull *p) {
  for (size_t i = 0; i < p->n_held; i++)
    if (!p->held[i].told)
      return true;
  return false;
}

void sg_jobs_pull_hold(sg_job_t *j) {
  sg_worker_t *w = j->w;
  struct sg_worker_pull *p = pull_of(j->J, w);
  sg_job_take_off_worker(j);
  p->held = xrealloc(p->held, (p->n_held + 1) * sizeof(*p->held));
  p->held[p->n_held++] = (struct held){xstrdup(j->id), false};
  sg_logs_event(j->J->d, w->ep->name, w->id, "job %s ended as %s while the worker held it: it is told to stop it",
                j->id, sg_job_status_name(j->final_status));
  if (p->stop)
    answer_stop(p);
}

/* The worker's jobs, its parked requests and held slots go with it. */
void sg_jobs_pull_worker_ended(sg_worker_t *w) {
  struct sg_worker_pull *p = w->pull;
  if (!p || !w->ep->jobs)
    return;
  sg_job_t *j, *tmp;
  for (j = LIST_FIRST(&sg_jobs_ep(w->ep)->running); j; j = tmp) {
    tmp = LIST_NEXT(j, rlink);
    if (j->w == w && j->pulled) {
      cleanup_free char *why = xasprintf("worker %s ended while it held the job", w->id);
      sg_logs_event(w->d, w->ep->name, w->id, "job %s lost: the worker ended while it held it", j->id);
      sg_job_worker_lost(j, why, true);
    }
  }
  if (p->take)
    req_answer(p->take, 204, NULL, 0);
  if (p->stop)
    req_answer(p->stop, 204, NULL, 0);
  for (size_t i = 0; i < p->n_held; i++)
    p->held[i].told = true;
  release_told(p, NULL, 0);
  evtimer_del(p->ping_timer);
}

void sg_jobs_pull_free(sg_worker_t *w) {
  struct sg_worker_pull *p = w->pull;
  if (!p)
    return;
  if (p->take)
    req_answer(p->take, 204, NULL, 0);
  if (p->stop)
    req_answer(p->stop, 204, NULL, 0);
  for (size_t i = 0; i < p->n_held; i++)
    free(p->held[i].id);
  free(p->held);
  event_free(p->ping_timer);
  free(p);
  w->pull = NULL;
}

/* ---- liveness ---- */

static void ping_timeout_cb(evutil_socket_t fd, short what, void *arg) {
  struct sg_worker_pull *p = arg;
  sg_worker_t *w = p->w;
  if (w->exited || w->stopping)
    return; /* it is on its way out: its end settles its jobs */
  double s = w->ep->spec->async.ping_timeout_s;
  sg_logs_event(w->d, w->ep->name, w->id, "no ping from the worker for %.0f s (async.ping_timeout_s): it is lost", s);
  sg_job_t *j, *tmp;
  for (j = LIST_FIRST(&sg_jobs_ep(w->ep)->running); j; j = tmp) {
    tmp = LIST_NEXT(j, rlink);
    if (j->w == w && j->pulled) {
      cleanup_free char *why = xasprintf("worker %s stopped pinging while it held the job", w->id);
      sg_job_worker_lost(j, why, true);
    }
  }
  cleanup_free char *why = xasprintf("its pings stopped for %.0f s (async.ping_timeout_s)", s);
  sg_worker_unhealthy(w, why);
}

static void ping(struct sg_worker_pull *p, const char *query) {
  sg_worker_t *w = p->w;
  p->pinged = true;
  if (w->state == SG_W_READY)
    arm_watchdog(p);
  cleanup_free char *list = sg_rp_query_param(query, "job_id");
  char **ids = NULL;
  size_t n = sg_rp_ids_parse(list, &ids);
  /* A job taken less than a ping interval ago may not be in this ping yet. */
  int64_t grace = (int64_t)(w->ep->spec->async.ping_timeout_s * 1000 / 3);
  int64_t now = sg_now_ms();
  sg_job_t *j, *tmp;
  for (j = LIST_FIRST(&sg_jobs_ep(w->ep)->running); j; j = tmp) {
    tmp = LIST_NEXT(j, rlink);
    if (j->w != w || !j->pulled)
      continue;
    bool listed = false;
    for (size_t i = 0; i < n && !listed; i++)
      listed = !strcmp(ids[i], j->id);
    if (listed || now - j->started_mono < grace) {
      j->ping_misses = 0;
      continue;
    }
    if (++j->ping_misses >= PING_MISSES_LOST) {
      sg_logs_event(w->d, w->ep->name, w->id, "job %s lost: the worker's pings no longer report it", j->id);
      cleanup_free char *why = xasprintf("worker %s no longer reported the job in its pings", w->id);
      sg_job_worker_lost(j, why, true);
    }
  }
  /* A stop told but still held (the worker may have missed it: the SDK
   * drops a stop for a job whose handler had not started yet) is told
   * again, at most once a ping. */
  bool again = false;
  for (size_t i = 0; i < p->n_held; i++)
    for (size_t k = 0; k < n && p->held[i].told; k++)
      if (!strcmp(ids[k], p->held[i].id)) {
        p->held[i].told = false;
        again = true;
      }
  release_told(p, ids, n);
  sg_rp_ids_free(ids, n);
  if (again && p->stop)
    answer_stop(p);
}

/* ---- takes ---- */

/* Whether w may be given jobs now. */
static bool takes_jobs(const sg_worker_t *w) {
  return w->state == SG_W_READY && !w->stopping && !w->exited && !w->suspect;
}

static void append_job(struct evbuffer *out, const sg_job_t *j) {
  evbuffer_add_printf(out, "{\"id\":\"%s\",\"input\":", j->id);
  evbuffer_add(out, j->input, j->input_len);
  evbuffer_add(out, "}", 1);
}

/* Gives parked takes the queued jobs they may run, in the order they
 * parked (each worker at most its free slots). */
void sg_jobs_pull_pump(sg_endpoint_t *ep) {
  struct sg_ep_jobs *ej = ep->jobs;
  int max = ep->spec->workers.max_concurrency > 0 ? ep->spec->workers.max_concurrency : 1;
  pull_req_t *t, *next;
  for (t = TAILQ_FIRST(&ej->takes); t && ej->queued > 0; t = next) {
    next = TAILQ_NEXT(t, link);
    sg_worker_t *w = t->p->w;
    int free_slots = max - w->in_flight;
    if (!takes_jobs(w) || free_slots <= 0)
      continue;
    int want = t->want < free_slots ? t->want : free_slots;
    struct evbuffer *out = evbuffer_new();
    int got = 0, passed = 0;
    sg_job_t *j, *jn;
    for (j = TAILQ_FIRST(&ej->queue); j && got < want; j = jn) {
      jn = TAILQ_NEXT(j, qlink);
      if (j->avoid_worker && !strcmp(j->avoid_worker, w->id)) {
        if (++passed > PASS_MAX)
          break;
        continue; /* lost on this worker: another one runs it */
      }
      sg_job_start_on(j, w);
      j->pulled = true;
      if (t->batch)
        evbuffer_add(out, got ? "," : "[", 1);
      append_job(out, j);
      got++;
    }
    if (got) {
      if (t->batch)
        evbuffer_add(out, "]", 1);
      size_t len = evbuffer_get_length(out);
      req_answer(t, 200, (const char *)evbuffer_pullup(out, -1), len);
    }
    evbuffer_free(out);
  }
  if (ej->queued > 0)
    sg_fleet_demand_changed(ep->d);
}

static void park_timeout_cb(evutil_socket_t fd, short what, void *arg) { req_answer(arg, 204, NULL, 0); }

static void parked_closed(sg_http_req_t *req, void *arg) {
  pull_req_t *r = arg;
  r->req = NULL;
  req_free(r);
}

static void park(struct sg_worker_pull *p, sg_http_req_t *req, bool is_stop, bool batch, int want) {
  pull_req_t **slot = is_stop ? &p->stop : &p->take;
  if (*slot)
    req_answer(*slot, 204, NULL, 0); /* a newer poll replaces it */
  pull_req_t *r = xcalloc(1, sizeof(*r));
  r->p = p;
  r->req = req;
  r->is_stop = is_stop;
  r->want = want;
  r->batch = batch;
  *slot = r;
  if (!is_stop)
    TAILQ_INSERT_TAIL(&sg_jobs_ep(p->w->ep)->takes, r, link);
  sg_http_set_close_cb(req, parked_closed, r);
  double s = p->w->ep->spec->async.take_wait_s;
  sg_jobs_arm(&r->timer, p->J->d->base, park_timeout_cb, r, (int64_t)(s * 1000));
}

static void take(struct sg_worker_pull *p, sg_http_req_t *req, bool batch, int want) {
  sg_worker_t *w = p->w;
  if (w->state == SG_W_STARTING && !w->ep->spec->health.path) {
    sg_logs_event(w->d, w->ep->name, w->id, "first job take from the worker");
    sg_worker_became_ready(w);
  }
  if (w->state == SG_W_READY && !evtimer_pending(p->ping_timer, NULL))
    arm_watchdog(p);
  release_told(p, NULL, 0);
  park(p, req, false, batch, want);
  sg_jobs_pull_pump(w->ep);
}

/* ---- results, progress and partial outputs ---- */

static void post_free(pull_post_t *pp) {
  if (pp->req)
    sg_http_set_close_cb(pp->req, NULL, NULL);
  if (pp->body)
    evbuffer_free(pp->body);
  free(pp->ep_name);
  free(pp->worker_id);
  free(pp->job_id);
  free(pp);
}

static void post_error(pull_post_t *pp, int status, const char *code, const char *msg) {
  sg_http_req_t *req = pp->req;
  pp->req = NULL;
  if (req) {
    sg_http_set_close_cb(req, NULL, NULL);
    sg_http_send_error(req, status, code, msg, NULL);
  }
  post_free(pp);
}

static void post_ok(pull_post_t *pp) {
  sg_http_req_t *req = pp->req;
  pp->req = NULL;
  if (req) {
    sg_http_set_close_cb(req, NULL, NULL);
    static const char ok[] = "{\"ok\":true}";
    sg_http_reply(req, 200, "application/json", ok, sizeof(ok) - 1);
  }
  post_free(pp);
}

/* The live worker of ep with that id, or NULL. */
static sg_worker_t *find_worker(sg_endpoint_t *ep, const char *id) {
  sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) {
    if (!w->exited && !strcmp(w->id, id))
      return w;
  }
  return NULL;
}

/* The job jid when w holds it, else NULL after answering 409. */
static sg_job_t *held_job(pull_post_t *pp, sg_endpoint_t *ep, sg_worker_t *w) {
  sg_job_t *j = sg_jobs_map_get(pp->J, pp->job_id);
  if (!j || j->ep != ep) {
    /* Unknown, or final and no longer in memory: not the worker's either. */
    cleanup_free char *msg = xasprintf("worker %s does not hold job %s", w->id, pp->job_id);
    post_error(pp, 409, "not_held", msg);
    return NULL;
  }
  if (j->w != w || !j->pulled || j->finishing || j->status != SG_JOB_IN_PROGRESS) {
    cleanup_free char *msg =
        xasprintf("worker %s does not hold job %s (it is %s%s%s)", w->id, j->id, sg_job_status_name(j->status),
                  j->w && j->w != w ? " on worker " : "", j->w && j->w != w ? j->w->id : "");
    post_error(pp, 409, "not_held", msg);
    return NULL;
  }
  return j;
}

/* A result or a partial output over the bound fails its job. */
static void too_large(pull_post_t *pp, sg_job_t *j, size_t limit) {
  cleanup_free char *msg = xasprintf("the worker's %s is over the limit of %zu bytes",
                                     pp->action == P_DONE ? "result" : "partial output", limit);
  if (j) {
    sg_job_release_worker(j, true);
    sg_job_finish(j, SG_JOB_FAILED, NULL, sg_jobs_error_text("%s", msg));
  }
  post_error(pp, 413, "too_large", msg);
}

static void done(pull_post_t *pp, sg_endpoint_t *ep, sg_worker_t *w, sg_job_t *j) {
  size_t len = evbuffer_get_length(pp->body);
  sg_rp_result_t res;
  sg_error_t *err = NULL;
  if (sg_rp_result_parse((const char *)evbuffer_pullup(pp->body, -1), len, &res, &err) < 0) {
    post_error(pp, 400, "bad_request", err ? err->message : "malformed result");
    sg_error_free(err);
    return;
  }
  if (res.progress) {
    sg_jobs_set_str(&j->progress, steal_pointer(&res.output));
    sg_rp_result_clear(&res);
    post_ok(pp);
    return;
  }
  char *output = steal_pointer(&res.output);
  if (pp->is_stream && !output && j->items)
    output = json_dumps(j->items, JSON_COMPACT); /* no aggregate: what was streamed */
  if (res.status == SG_JOB_COMPLETED && !output)
    output = xstrdup("null");
  bool stop_pod = res.stop_pod;
  sg_job_status_t status = res.status;
  char *error = steal_pointer(&res.error);
  sg_rp_result_clear(&res);
  sg_job_release_worker(j, true);
  /* Answered at once, as a push worker's answer ends its exchange at once:
   * the end shows when it is stored, and a crash of sgpud before that runs
   * the job again (it never completes twice). Waiting for the commit here
   * would cost every pull worker an fsync per job before its next take. */
  post_ok(pp);
  sg_job_finish(j, status, output, error);
  if (stop_pod && !w->stopping)
    sg_worker_drain(w, "the handler asked for a fresh worker (stopPod)");
}

static void stream_item(pull_post_t *pp, sg_job_t *j) {
  size_t len = evbuffer_get_length(pp->body);
  char *output = NULL;
  sg_error_t *err = NULL;
  if (sg_rp_stream_parse((const char *)evbuffer_pullup(pp->body, -1), len, &output, &err) < 0) {
    post_error(pp, 400, "bad_request", err ? err->message : "malformed partial output");
    sg_error_free(err);
    return;
  }
  size_t limit = pp->J->d->cfg.max_body;
  if (j->stream_bytes + strlen(output) > limit || (j->items && json_array_size(j->items) >= STREAM_ITEMS_MAX)) {
    free(output);
    too_large(pp, j, limit);
    return;
  }
  j->stream_bytes += strlen(output);
  if (!j->items)
    j->items = json_array();
  json_array_append_new(j->items, sg_jobs_json_value(output));
  free(output);
  sg_job_notify(j, W_STREAM);
  post_ok(pp);
}

static void post_data(sg_http_req_t *req, struct evbuffer *data, void *arg) {
  pull_post_t *pp = arg;
  if (evbuffer_get_length(pp->body) + evbuffer_get_length(data) > pp->limit) {
    evbuffer_drain(data, evbuffer_get_length(data));
    pp->limit = 0; /* over: answered at the end of the body */
    return;
  }
  if (pp->limit)
    evbuffer_add_buffer(pp->body, data);
  else
    evbuffer_drain(data, evbuffer_get_length(data));
}

static void post_closed(sg_http_req_t *req, void *arg) {
  pull_post_t *pp = arg;
  pp->req = NULL;
  post_free(pp);
}

static void post_end(sg_http_req_t *req, void *arg) {
  pull_post_t *pp = arg;
  sg_daemon_t *d = pp->J->d;
  sg_endpoint_t *ep = sg_daemon_find_endpoint(d, pp->ep_name);
  sg_worker_t *w = ep && sg_spec_is_runpod(ep->spec) ? find_worker(ep, pp->worker_id) : NULL;
  if (!w) {
    post_error(pp, 401, "unauthorized", "the worker is no longer running");
    return;
  }
  struct sg_worker_pull *p = pull_of(pp->J, w);
  switch (pp->action) {
  case P_TAKE:
  case P_TAKE_BATCH: {
    sg_http_req_t *r = steal_pointer(&pp->req);
    bool batch = pp->action == P_TAKE_BATCH;
    int want = pp->want;
    post_free(pp);
    take(p, r, batch, want);
    return;
  }
  case P_STOP: {
    sg_http_req_t *r = steal_pointer(&pp->req);
    post_free(pp);
    park(p, r, true, false, 0);
    if (has_untold(p))
      answer_stop(p);
    return;
  }
  case P_PING: {
    ping(p, sg_http_query(req));
    post_ok(pp);
    return;
  }
  case P_DONE:
  case P_STREAM:
    break;
  }
  sg_job_t *j = held_job(pp, ep, w);
  if (!j)
    return;
  if (!pp->limit) {
    too_large(pp, j, d->cfg.max_body);
    return;
  }
  if (pp->action == P_DONE)
    done(pp, ep, w, j);
  else
    stream_item(pp, j);
}

/* ---- routing ---- */

/* Whether the request carries w's token: verbatim (as RunPod's SDK sends
 * it) or as a bearer token. */
static bool token_ok(sg_daemon_t *d, sg_http_req_t *req, const sg_worker_t *w) {
  const char *h = sg_http_header(req, "Authorization");
  if (!h)
    return false;
  if (!strncasecmp(h, "Bearer ", 7))
    h += 7;
  while (*h == ' ')
    h++;
  size_t len = strlen(h);
  while (len > 0 && h[len - 1] == ' ')
    len--;
  return sg_worker_token_valid(d, w->id, h, len);
}

static sg_http_head_action_t unauthorized(sg_http_req_t *req) {
  sg_http_send_error(req, 401, "unauthorized", "missing or wrong worker token (Authorization: <RUNPOD_AI_API_KEY>)",
                     NULL);
  return SG_HTTP_DONE;
}

static sg_http_head_action_t handle(void *ctx, sg_http_req_t *req, const char *rest) {
  sg_daemon_t *d = ctx;
  char buf[256];
  char *seg[5];
  int n = 0;
  if (strlen(rest) >= sizeof(buf) || !d->jobs || strstr(rest, "//")) {
    sg_http_send_error(req, 404, "not_found", "no such route", NULL);
    return SG_HTTP_DONE;
  }
  snprintf(buf, sizeof(buf), "%s", rest);
  char *save = NULL;
  for (char *s = strtok_r(buf, "/", &save); s; s = strtok_r(NULL, "/", &save)) {
    if (n == 5)
      break;
    seg[n++] = s;
  }
  int a = -1;
  for (size_t i = 0; n >= 3 && i < SG_ARRAY_SIZE(actions); i++)
    if (!strcmp(seg[1], actions[i].name) && n == (actions[i].with_job ? 4 : 3))
      a = (int)i;
  if (a < 0) {
    sg_http_send_error(req, 404, "not_found", "no such route", NULL);
    return SG_HTTP_DONE;
  }
  /* Who asks comes first: nothing about endpoints, workers or jobs is told
   * to a request without the token of a live worker of that endpoint. */
  sg_endpoint_t *ep = sg_name_valid(seg[0]) ? sg_daemon_find_endpoint(d, seg[0]) : NULL;
  sg_worker_t *w = ep && !ep->deleted && sg_spec_is_runpod(ep->spec) ? find_worker(ep, seg[2]) : NULL;
  if (!w || !token_ok(d, req, w))
    return unauthorized(req);
  const char *method = actions[a].post ? "POST" : "GET";
  if (!sg_http_method_is(req, method)) {
    sg_http_method_not_allowed(req, method);
    return SG_HTTP_DONE;
  }
  if (actions[a].with_job && !sg_job_id_valid(seg[3])) {
    sg_http_send_error(req, 404, "not_found", "no such job", NULL);
    return SG_HTTP_DONE;
  }
  pull_post_t *pp = xcalloc(1, sizeof(*pp));
  pp->J = d->jobs;
  pp->req = req;
  pp->action = actions[a].action;
  pp->ep_name = xstrdup(ep->name);
  pp->worker_id = xstrdup(w->id);
  pp->job_id = actions[a].with_job ? xstrdup(seg[3]) : NULL;
  pp->body = evbuffer_new();
  pp->limit = actions[a].post ? d->cfg.max_body : GET_BODY_MAX;
  const char *q = sg_http_query(req);
  cleanup_free char *is_stream = sg_rp_query_param(q, "isStream");
  pp->is_stream = is_stream && !strcasecmp(is_stream, "true");
  pp->want = 1;
  if (pp->action == P_TAKE_BATCH) {
    cleanup_free char *bs = sg_rp_query_param(q, "batch_size");
    char *end = NULL;
    long v = bs ? strtol(bs, &end, 10) : 1;
    pp->want = bs && (*end || v < 1) ? 1 : (int)(v > BATCH_MAX ? BATCH_MAX : v);
  }
  int64_t cl = sg_http_content_length(req);
  if (cl > (int64_t)pp->limit) {
    if (pp->action == P_DONE || pp->action == P_STREAM) {
      sg_job_t *j = held_job(pp, ep, w);
      if (j)
        too_large(pp, j, d->cfg.max_body);
    } else {
      post_error(pp, 413, "too_large", "request body is over the limit");
    }
    return SG_HTTP_DONE;
  }
  sg_http_set_close_cb(req, post_closed, pp);
  sg_http_stream_body(req, post_data, post_end, pp);
  return SG_HTTP_STREAM;
}

void sg_jobs_pull_routes(sg_router_t *r, sg_daemon_t *d) {
  sg_router_add(r,
                &(sg_route_t){.path = "/worker/", .prefix = true, .public_route = true, .on_head = handle, .ctx = d});
}
