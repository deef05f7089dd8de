/* The sync gateway: ANY /e/{name}/{path...} is proxied to a ready worker.
 *
 * A request (an sg_proxy) is dispatched at once to the ready worker with the
 * fewest outstanding requests below workers.max_concurrency, or waits in the
 * endpoint's bounded FIFO queue until one is free; an arrival that queues
 * kicks the scaler, so a request at zero workers starts one without waiting
 * for a tick. Bodies stream both ways: the client's body goes to the worker
 * as it arrives (held, bounded, while the request waits), and the worker's
 * answer goes to the client piece by piece, so server-sent events pass
 * through as they are produced. Each side pauses the other when its output
 * backs up.
 *
 * Connections to workers are kept alive in a per-worker pool. A request that
 * never reached a worker (the connection was refused), or that died on a
 * reused connection before any answer came and may be repeated (idempotent
 * method), is sent again to another worker, with its body replayed if it was
 * small enough to keep.
 *
 * Lifetime: an sg_proxy lives from the arrival of the request's head until
 * its answer ended or the client went away, whichever is first; then it
 * releases its worker and upstream connection at once. */
#include <strings.h>

#include "gateway/gateway.h"
#include "gateway/balancer-internal.h"
#include "logs/logs.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define BODY_HOLD_MAX (1u << 20)     /* client body held while waiting, before pausing the client */
#define REPLAY_MAX (1u << 20)        /* body kept for a retry */
#define CLIENT_UNSENT_MAX (1u << 20) /* answer bytes queued for the client before pausing the worker */
#define UPSTREAM_UNSENT_MAX (1u << 20)
#define MAX_ATTEMPTS 3

enum proxy_state { P_QUEUED, P_SENT, P_DONE };

typedef struct sg_proxy sg_proxy_t;

/* The gateway's state of an endpoint (ep->proxy): the requests waiting for
 * a worker, oldest first. Made by the first request, freed with the
 * endpoint (endpoint_freed). */
struct sg_ep_proxy {
  TAILQ_HEAD(, sg_proxy) queue;
  int queued;
};

struct sg_proxy {
  TAILQ_ENTRY(sg_proxy) link; /* in ep->proxy->queue while queued */
  sg_endpoint_t *ep;
  sg_http_req_t *req;
  enum proxy_state state;
  int64_t arrived_mono;
  int64_t sent_mono;               /* the last attempt went to its worker */
  char rid[SG_REQUEST_ID_MAX + 1]; /* X-Request-Id: the client's when valid, else made here */
  struct event *timer;             /* workers.request_timeout_s to the head, then workers.stream_timeout_s */
  sg_worker_t *w;
  sg_upstream_t *u;
  struct evbuffer *pending; /* body received and not yet given to the worker */
  struct evbuffer *replay;  /* every body byte so far, while small enough; NULL once not */
  size_t body_total;
  bool body_done;
  bool chunked_up; /* the body goes to the worker chunked (length unknown) */
  bool replying;
  bool sse;     /* the answer is text/event-stream */
  char tail[2]; /* the last two bytes of answer body passed on (0: none yet) */
  int status;   /* of the worker's answer */
  bool client_paused, upstream_paused;
  int attempts;
  char *tried[MAX_ATTEMPTS]; /* ids of workers an attempt failed on */
};

/* Takes a queued p out of its endpoint's queue. */
static void unqueue(sg_proxy_t *p) {
  TAILQ_REMOVE(&p->ep->proxy->queue, p, link);
  p->ep->proxy->queued--;
}

/* ep's queue state, made when the first request of ep waits. */
static struct sg_ep_proxy *ep_proxy(sg_endpoint_t *ep) {
  if (!ep->proxy) {
    ep->proxy = xcalloc(1, sizeof(*ep->proxy));
    TAILQ_INIT(&ep->proxy->queue);
  }
  return ep->proxy;
}

/* The first request waiting for a worker of ep, or NULL. */
static sg_proxy_t *first_queued(const sg_endpoint_t *ep) { return ep->proxy ? TAILQ_FIRST(&ep->proxy->queue) : NULL; }

int sg_gateway_queued(const sg_endpoint_t *ep) { return ep->proxy ? ep->proxy->queued : 0; }

static void up_head(void *arg, int status, const sg_upstream_header_t *h, size_t n);
static void up_body(void *arg, struct evbuffer *data);
static void up_done(void *arg);
static void up_error(void *arg, sg_upstream_error_t e, bool answer_started);
static void up_drain(void *arg);

static const sg_upstream_handler_t handler = {up_head, up_body, up_done, up_error, up_drain};

static const char *const hop_by_hop[] = {
    "Connection",        "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade"};

/* True for headers that belong to one connection, not to the message. */
static bool is_hop_by_hop(const char *name, const char *connection_header) {
  for (size_t i = 0; i < SG_ARRAY_SIZE(hop_by_hop); i++)
    if (!strcasecmp(name, hop_by_hop[i]))
      return true;
  if (connection_header) {
    size_t n = strlen(name);
    for (const char *p = connection_header; *p;) {
      p += strspn(p, " \t,");
      size_t len = strcspn(p, " \t,");
      if (len == n && !strncasecmp(p, name, n))
        return true;
      p += len;
    }
  }
  return false;
}

static void proxy_free(sg_proxy_t *p) {
  if (p->timer)
    event_free(p->timer);
  if (p->pending)
    evbuffer_free(p->pending);
  if (p->replay)
    evbuffer_free(p->replay);
  for (int i = 0; i < MAX_ATTEMPTS; i++)
    free(p->tried[i]);
  p->ep->proxies--;
  free(p);
}

/* Gives the worker back after the request (or, not counted, an attempt that
 * is tried again) ended on it; the connection goes back to the pool only
 * when the exchange completed. */
static void release_attempt(sg_proxy_t *p, bool completed, bool counted) {
  sg_worker_t *w = p->w;
  sg_upstream_t *u = p->u;
  p->w = NULL;
  p->u = NULL;
  if (u) {
    if (completed)
      sg_gateway_put_conn(w, u);
    else {
      sg_upstream_detach(u);
      sg_upstream_free(u);
    }
  }
  if (!w)
    return;
  sg_logs_source_request(w->logs, p->rid, false);
  /* pumps the queue through the fleet's events */
  if (counted)
    sg_worker_release_request(w);
  else
    sg_worker_release_attempt(w); /* usage counts the request once, where it ends */
}

static void release_worker(sg_proxy_t *p, bool completed) { release_attempt(p, completed, true); }

/* (Re)arms p's timer to fire in secs. */
static void arm_timer(sg_proxy_t *p, double secs) {
  struct timeval tv = {(time_t)secs, (suseconds_t)((secs - (double)(time_t)secs) * 1e6)};
  evtimer_add(p->timer, &tv);
}

/* Answers an error, or breaks the answer if its head went out already. */
static void fail(sg_proxy_t *p, int status, const char *code, const char *message) {
  sg_http_set_close_cb(p->req, NULL, NULL);
  sg_http_set_drain_cb(p->req, 0, NULL, NULL);
  if (p->replying) {
    sg_http_reply_abort(p->req);
    status = p->status;
  } else {
    sg_http_send_error(p->req, status, code, message, NULL);
  }
  sg_metrics_response(p->ep, status, (double)(sg_now_ms() - p->arrived_mono) / 1000);
}

/* ---- the answer, worker to client ---- */

static void client_drained(sg_http_req_t *req, void *arg) {
  sg_proxy_t *p = arg;
  if (p->upstream_paused && p->u) {
    p->upstream_paused = false;
    sg_upstream_pause(p->u, false);
  }
}

static void up_head(void *arg, int status, const sg_upstream_header_t *h, size_t n) {
  sg_proxy_t *p = arg;
  const char *conn = NULL;
  for (size_t i = 0; i < n; i++)
    if (!strcasecmp(h[i].name, "Connection"))
      conn = h[i].value;
  for (size_t i = 0; i < n; i++)
    if (!is_hop_by_hop(h[i].name, conn) && strcasecmp(h[i].name, "X-Request-Id") &&
        strncasecmp(h[i].name, "X-Sgpu-", 7))
      sg_http_add_header(p->req, h[i].name, h[i].value);
  char num[32];
  sg_http_add_header(p->req, "X-Sgpu-Worker", p->w->id);
  snprintf(num, sizeof(num), "%lld", (long long)(p->sent_mono - p->arrived_mono));
  sg_http_add_header(p->req, "X-Sgpu-Delay-Ms", num);
  snprintf(num, sizeof(num), "%lld", (long long)(sg_now_ms() - p->sent_mono));
  sg_http_add_header(p->req, "X-Sgpu-Exec-Ms", num);
  p->status = status;
  for (size_t i = 0; i < n; i++)
    if (!strcasecmp(h[i].name, "Content-Type"))
      p->sse = !strncasecmp(h[i].value, "text/event-stream", 17);
  sg_http_reply_start(p->req, status, NULL);
  p->replying = true;
  sg_http_set_drain_cb(p->req, CLIENT_UNSENT_MAX / 2, client_drained, p);
  /* request_timeout_s bounded the wait for this head; the body now has
   * stream_timeout_s. */
  arm_timer(p, p->ep->spec->workers.stream_timeout_s);
}

static void up_body(void *arg, struct evbuffer *data) {
  sg_proxy_t *p = arg;
  size_t len = evbuffer_get_length(data);
  if (len >= 2) {
    struct evbuffer_ptr at;
    evbuffer_ptr_set(data, &at, len - 2, EVBUFFER_PTR_SET);
    evbuffer_copyout_from(data, &at, p->tail, 2);
  } else if (len == 1) {
    p->tail[0] = p->tail[1];
    evbuffer_copyout(data, &p->tail[1], 1);
  }
  sg_http_reply_chunk(p->req, data);
  if (!p->upstream_paused && sg_http_unsent(p->req) > CLIENT_UNSENT_MAX) {
    p->upstream_paused = true;
    sg_upstream_pause(p->u, true);
  }
}

static void up_done(void *arg) {
  sg_proxy_t *p = arg;
  if (p->w) {
    p->w->served++;
    p->ep->served++;
  }
  sg_metrics_response(p->ep, p->status, (double)(sg_now_ms() - p->arrived_mono) / 1000);
  sg_http_set_close_cb(p->req, NULL, NULL);
  sg_http_set_drain_cb(p->req, 0, NULL, NULL);
  /* The client may still be sending a body the worker did not wait for: the
   * server closes that connection after the answer. */
  sg_http_reply_end(p->req);
  release_worker(p, p->body_done);
  p->state = P_DONE;
  proxy_free(p);
}

static bool tried(const sg_proxy_t *p, const sg_worker_t *w) {
  for (int i = 0; i < MAX_ATTEMPTS; i++)
    if (p->tried[i] && !strcmp(p->tried[i], w->id))
      return true;
  return false;
}

static void send_to(sg_proxy_t *p, sg_worker_t *w);
static sg_worker_t *pick(sg_endpoint_t *ep, const sg_proxy_t *p);

static void up_error(void *arg, sg_upstream_error_t e, bool answer_started) {
  sg_proxy_t *p = arg;
  sg_worker_t *w = p->w;
  bool reused = p->u && sg_upstream_reused(p->u);
  bool gone = w && (w->exited || w->stopping);
  bool replayable = p->replay != NULL;
  bool retry = !answer_started && replayable && p->attempts < MAX_ATTEMPTS &&
               (e == SG_UP_CONNECT_FAILED || (e == SG_UP_BROKEN && reused && sg_http_method_idempotent(p->req)));
  if (w && p->attempts <= MAX_ATTEMPTS)
    p->tried[p->attempts - 1] = xstrdup(w->id);
  if (w && e != SG_UP_BAD_RESPONSE)
    sg_health_suspect(w);
  release_attempt(p, false, !retry);
  if (retry) {
    p->ep->metrics.retries++;
    /* The body so far goes again, from the replay copy. */
    evbuffer_free(p->pending);
    p->pending = evbuffer_new();
    evbuffer_add_buffer_reference(p->pending, p->replay);
    sg_worker_t *next = pick(p->ep, p);
    if (next) {
      send_to(p, next);
      return;
    }
    p->state = P_QUEUED;
    TAILQ_INSERT_HEAD(&ep_proxy(p->ep)->queue, p, link);
    p->ep->proxy->queued++;
    sg_fleet_demand_changed(p->ep->d);
    return;
  }
  const char *msg = e == SG_UP_BAD_RESPONSE     ? "the worker sent an answer that is not valid HTTP"
                    : gone                      ? "the worker ended before it answered"
                    : e == SG_UP_CONNECT_FAILED ? "the worker refused the connection"
                                                : "the worker closed the connection before it answered";
  fail(p, 502, "no_worker", msg);
  p->state = P_DONE;
  proxy_free(p);
}

/* ---- the request body, client to worker ---- */

static void write_body(sg_proxy_t *p, struct evbuffer *data) {
  size_t len = evbuffer_get_length(data);
  if (len == 0)
    return;
  struct evbuffer *out = sg_upstream_output(p->u);
  if (p->chunked_up)
    evbuffer_add_printf(out, "%zx\r\n", len);
  evbuffer_add_buffer(out, data);
  if (p->chunked_up)
    evbuffer_add(out, "\r\n", 2);
}

static void end_body(sg_proxy_t *p) {
  if (p->chunked_up)
    evbuffer_add(sg_upstream_output(p->u), "0\r\n\r\n", 5);
}

static void client_data(sg_http_req_t *req, struct evbuffer *data, void *arg) {
  sg_proxy_t *p = arg;
  size_t len = evbuffer_get_length(data);
  p->body_total += len;
  if (p->body_total > p->ep->d->cfg.max_body) {
    cleanup_free char *msg = xasprintf("request body is over the gateway's limit of %zu bytes", p->ep->d->cfg.max_body);
    enum proxy_state st = p->state;
    if (st == P_QUEUED) {
      unqueue(p);
    }
    release_worker(p, false);
    fail(p, 413, "too_large", msg);
    p->state = P_DONE;
    proxy_free(p);
    return;
  }
  if (p->replay) {
    if (evbuffer_get_length(p->replay) + len > REPLAY_MAX) {
      evbuffer_free(p->replay);
      p->replay = NULL;
    } else {
      evbuffer_add(p->replay, evbuffer_pullup(data, -1), len);
    }
  }
  if (p->state == P_SENT && p->u) {
    write_body(p, data);
    if (!p->client_paused && sg_upstream_unsent(p->u) > UPSTREAM_UNSENT_MAX) {
      p->client_paused = true;
      sg_http_pause_body(req, true);
    }
    return;
  }
  evbuffer_add_buffer(p->pending, data);
  if (!p->client_paused && evbuffer_get_length(p->pending) > BODY_HOLD_MAX) {
    p->client_paused = true;
    sg_http_pause_body(req, true);
  }
}

static void client_end(sg_http_req_t *req, void *arg) {
  sg_proxy_t *p = arg;
  p->body_done = true;
  if (p->state == P_SENT && p->u)
    end_body(p);
}

static void up_drain(void *arg) {
  sg_proxy_t *p = arg;
  if (p->client_paused) {
    p->client_paused = false;
    sg_http_pause_body(p->req, false);
  }
}

/* ---- dispatch ---- */

static void write_head(sg_proxy_t *p, sg_worker_t *w) {
  sg_http_req_t *req = p->req;
  struct evbuffer *out = sg_upstream_output(p->u);
  const char *target = sg_http_target(req) + 3 + strlen(p->ep->name); /* after "/e/name" */
  evbuffer_add_printf(out, "%s %s%s HTTP/1.1\r\nHost: %s:%d\r\n", sg_http_method(req), *target == '/' ? "" : "/",
                      target, w->host ? w->host : "127.0.0.1", w->port);
  const char *conn = sg_http_header(req, "Connection");
  const char *xff = NULL;
  size_t n = sg_http_header_count(req);
  for (size_t i = 0; i < n; i++) {
    const char *name, *value;
    sg_http_header_at(req, i, &name, &value);
    if (is_hop_by_hop(name, conn) || !strcasecmp(name, "Authorization") || !strcasecmp(name, "Host") ||
        !strcasecmp(name, "Content-Length") || !strcasecmp(name, "Expect"))
      continue;
    if (!strcasecmp(name, "X-Request-Id"))
      continue; /* p->rid goes instead */
    if (!strcasecmp(name, "X-Forwarded-For")) {
      xff = value;
      continue;
    }
    evbuffer_add(out, name, strlen(name));
    evbuffer_add(out, ": ", 2);
    evbuffer_add(out, value, strlen(value));
    evbuffer_add(out, "\r\n", 2);
  }
  if (xff)
    evbuffer_add_printf(out, "X-Forwarded-For: %s, %s\r\n", xff, sg_http_peer(req));
  else
    evbuffer_add_printf(out, "X-Forwarded-For: %s\r\n", sg_http_peer(req));
  evbuffer_add_printf(out, "X-Request-Id: %s\r\n", p->rid);
  int64_t cl = sg_http_content_length(req);
  p->chunked_up = false;
  if (cl >= 0)
    evbuffer_add_printf(out, "Content-Length: %lld\r\n", (long long)cl);
  else if (p->body_done)
    evbuffer_add_printf(out, "Content-Length: %zu\r\n", p->body_total);
  else {
    p->chunked_up = true;
    evbuffer_add(out, "Transfer-Encoding: chunked\r\n", 28);
  }
  evbuffer_add(out, "\r\n", 2);
}

static void send_to(sg_proxy_t *p, sg_worker_t *w) {
  if (p->attempts == 0)
    sg_histogram_observe(&p->ep->metrics.queue_wait, (double)(sg_now_ms() - p->arrived_mono) / 1000);
  p->state = P_SENT;
  p->w = w;
  p->sent_mono = sg_now_ms();
  p->attempts++;
  w->in_flight++;
  w->last_used_mono = sg_now_ms();
  p->ep->in_flight++;
  sg_fleet_worker_load(w, 1);
  sg_logs_source_request(w->logs, p->rid, true);
  p->u = sg_gateway_get_conn(w);
  sg_upstream_begin(p->u, &handler, p, sg_http_is_head(p->req));
  sg_upstream_set_drain(p->u, UPSTREAM_UNSENT_MAX / 2);
  write_head(p, w);
  write_body(p, p->pending);
  if (p->body_done)
    end_body(p);
  if (p->client_paused && sg_upstream_unsent(p->u) <= UPSTREAM_UNSENT_MAX) {
    p->client_paused = false;
    sg_http_pause_body(p->req, false);
  }
}

static bool skip_tried(const sg_worker_t *w, const void *arg) { return tried(arg, w); }

/* The worker that should take the next request, or NULL when all are busy.
 * Workers an attempt of p failed on are skipped (none when p is NULL). */
static sg_worker_t *pick(sg_endpoint_t *ep, const sg_proxy_t *p) {
  return sg_balancer_pick_worker(ep, p ? skip_tried : NULL, p);
}

void sg_gateway_pump(sg_endpoint_t *ep) {
  sg_proxy_t *p;
  while ((p = first_queued(ep))) {
    sg_worker_t *w = pick(ep, p);
    if (!w) {
      if (p->attempts == 0 || !pick(ep, NULL))
        return;
      /* Only workers this request failed on are free: let it use them. */
      for (int i = 0; i < MAX_ATTEMPTS; i++) {
        free(p->tried[i]);
        p->tried[i] = NULL;
      }
      w = pick(ep, p);
    }
    unqueue(p);
    send_to(p, w);
  }
}

/* The answer's body did not end within workers.stream_timeout_s of its head.
 * The cut is never silent: an event stream sent chunked ends with an error
 * event and the terminating chunk; any other answer ends without its end (the
 * connection closes), so the client sees it incomplete. Counted as a 504. */
static void stream_timeout(sg_proxy_t *p) {
  double limit = p->ep->spec->workers.stream_timeout_s;
  release_worker(p, false);
  sg_http_req_t *req = p->req;
  sg_http_set_close_cb(req, NULL, NULL);
  sg_http_set_drain_cb(req, 0, NULL, NULL);
  if (p->sse && sg_http_reply_chunked(req)) {
    /* End the event the worker may have been writing, then ours. */
    const char *sep = p->tail[1] != '\n' ? "\n\n" : p->tail[0] != '\n' ? "\n" : "";
    cleanup_free char *ev =
        xasprintf("%sevent: error\ndata: {\"error\":\"stream_timeout\",\"message\":\"the answer did "
                  "not end within workers.stream_timeout_s=%gs\"}\n\n",
                  sep, limit);
    sg_http_reply_chunk_mem(req, ev, strlen(ev));
    sg_http_reply_end(req);
  } else {
    sg_http_reply_abort(req);
  }
  sg_metrics_response(p->ep, 504, (double)(sg_now_ms() - p->arrived_mono) / 1000);
  p->state = P_DONE;
  proxy_free(p);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg) {
  sg_proxy_t *p = arg;
  if (p->replying) {
    stream_timeout(p);
    return;
  }
  cleanup_free char *msg =
      xasprintf("no answer within workers.request_timeout_s=%gs", p->ep->spec->workers.request_timeout_s);
  if (p->state == P_QUEUED) {
    unqueue(p);
  }
  release_worker(p, false);
  fail(p, 504, "timeout", msg);
  p->state = P_DONE;
  proxy_free(p);
}

static void client_closed(sg_http_req_t *req, void *arg) {
  sg_proxy_t *p = arg;
  if (p->state == P_QUEUED) {
    unqueue(p);
  }
  release_worker(p, false);
  p->ep->metrics.aborted++;
  p->state = P_DONE;
  proxy_free(p);
}

/* The message of the 503 for an endpoint that cannot start workers (code is its state). */
static char *failing_message(const sg_endpoint_t *ep, const char *code) {
  return xasprintf("endpoint \"%s\" cannot start workers (%s): %s", ep->name, code,
                   ep->last_error ? ep->last_error : "no error recorded");
}

/* Fills rid with req's X-Request-Id when it is valid, else with a new id
 * ("req_" and 32 hex digits), and adds it to every answer of req. */
static void request_id(sg_http_req_t *req, char rid[static SG_REQUEST_ID_MAX + 1]) {
  const char *in = sg_http_header(req, "X-Request-Id");
  if (in && sg_request_id_valid(in)) {
    snprintf(rid, SG_REQUEST_ID_MAX + 1, "%s", in);
  } else {
    unsigned char raw[16];
    if (sg_random_bytes(raw, sizeof(raw)) < 0)
      abort();
    char *o = rid + snprintf(rid, SG_REQUEST_ID_MAX + 1, "req_");
    for (size_t i = 0; i < sizeof(raw); i++)
      o += snprintf(o, 3, "%02x", raw[i]);
  }
  sg_http_add_header(req, "X-Request-Id", rid);
}

static sg_http_head_action_t handle(sg_daemon_t *d, sg_http_req_t *req, const char *name, const char *rid) {
  sg_endpoint_t *ep = sg_daemon_find_endpoint(d, name);
  if (!ep) {
    cleanup_free char *msg = xasprintf("no endpoint named \"%s\"", name);
    sg_http_send_error(req, 404, "not_found", msg, NULL);
    return SG_HTTP_DONE;
  }
  ep->metrics.requests++;
  const char *code;
  if (sg_endpoint_failing(ep, &code)) {
    cleanup_free char *msg = failing_message(ep, code);
    sg_http_send_error(req, 503, code, msg, NULL);
    sg_metrics_response(ep, 503, 0);
    return SG_HTTP_DONE;
  }
  int64_t cl = sg_http_content_length(req);
  if (cl > (int64_t)d->cfg.max_body) {
    cleanup_free char *msg = xasprintf("request body is over the gateway's limit of %zu bytes", d->cfg.max_body);
    sg_http_send_error(req, 413, "too_large", msg, NULL);
    sg_metrics_response(ep, 413, 0);
    return SG_HTTP_DONE;
  }
  sg_proxy_t *p = xcalloc(1, sizeof(*p));
  p->ep = ep;
  ep->proxies++;
  p->req = req;
  snprintf(p->rid, sizeof(p->rid), "%s", rid);
  p->pending = evbuffer_new();
  p->replay = evbuffer_new();
  p->body_done = cl == 0 || (cl < 0 && !sg_http_header(req, "Transfer-Encoding"));
  p->arrived_mono = sg_now_ms();
  sg_http_stream_body(req, client_data, client_end, p);
  sg_http_set_close_cb(req, client_closed, p);
  p->timer = evtimer_new(d->base, timeout_cb, p);
  arm_timer(p, ep->spec->workers.request_timeout_s);

  sg_worker_t *w = !first_queued(ep) ? pick(ep, NULL) : NULL;
  if (w) {
    send_to(p, w);
    return SG_HTTP_STREAM;
  }
  if (sg_gateway_queued(ep) >= ep->spec->workers.max_queue) {
    sg_http_add_header(req, "Retry-After", "1");
    cleanup_free char *msg =
        xasprintf("no worker is free and the queue is full (workers.max_queue=%d)", ep->spec->workers.max_queue);
    fail(p, 503, "queue_full", msg);
    p->state = P_DONE;
    proxy_free(p);
    return SG_HTTP_DONE;
  }
  p->state = P_QUEUED;
  TAILQ_INSERT_TAIL(&ep_proxy(ep)->queue, p, link);
  ep->proxy->queued++;
  sg_fleet_demand_changed(d);
  return SG_HTTP_STREAM;
}

void sg_gateway_fail_queue(sg_endpoint_t *ep, int status, const char *code, const char *message) {
  sg_proxy_t *p;
  while ((p = first_queued(ep))) {
    unqueue(p);
    fail(p, status, code, message);
    p->state = P_DONE;
    proxy_free(p);
  }
}

static int64_t oldest_wait(const sg_endpoint_t *ep, int64_t now) {
  const sg_proxy_t *p = first_queued(ep);
  return p ? now - p->arrived_mono : 0;
}

static void on_endpoint_deleted(void *ud, sg_endpoint_t *ep) {
  sg_gateway_fail_queue(ep, 404, "not_found", "endpoint was deleted");
}

/* An endpoint that can no longer start workers fails what waits for one. */
static void on_demand_changed(void *ud, sg_daemon_t *d) {
  sg_endpoint_t *ep;
  const char *code;
  TAILQ_FOREACH(ep, &d->endpoints, link) {
    if (sg_gateway_queued(ep) > 0 && sg_endpoint_failing(ep, &code)) {
      cleanup_free char *msg = failing_message(ep, code);
      sg_gateway_fail_queue(ep, 503, code, msg);
    }
  }
}

/* A worker may take a request: ready, back in rotation, or one ended on it. */
static void on_worker_free(void *ud, sg_worker_t *w) { sg_gateway_pump(w->ep); }

static void on_worker_freed(void *ud, sg_worker_t *w) { sg_gateway_conns_free(w); }

/* Nothing refers to ep any more (no request is queued). */
static void on_endpoint_freed(void *ud, sg_endpoint_t *ep) {
  free(ep->proxy);
  ep->proxy = NULL;
}

static void waiting(void *ud, const sg_endpoint_t *ep, int64_t now, int *queued, int64_t *oldest) {
  *queued += sg_gateway_queued(ep);
  int64_t wait = oldest_wait(ep, now);
  if (wait > *oldest)
    *oldest = wait;
}

static void endpoint_status(void *ud, const sg_endpoint_t *ep, json_t *status) {
  json_object_set_new(status, "queued", json_integer(sg_gateway_queued(ep)));
}

static const sg_fleet_subscriber_t subscriber = {
    .endpoint_deleted = on_endpoint_deleted,
    .endpoint_freed = on_endpoint_freed,
    .worker_ready = on_worker_free,
    .worker_in_rotation = on_worker_free,
    .worker_released = on_worker_free,
    .worker_freed = on_worker_freed,
    .demand_changed = on_demand_changed,
    .waiting = waiting,
    .endpoint_status = endpoint_status,
};

void sg_gateway_init(sg_daemon_t *d) {
  sg_fleet_subscribe(d, &subscriber, NULL);
  sg_metrics_init(d);
}

/* /e/{name}/...: rest is the path after "/e/". */
static sg_http_head_action_t on_head(void *d, sg_http_req_t *req, const char *rest) {
  char rid[SG_REQUEST_ID_MAX + 1];
  request_id(req, rid);
  cleanup_free char *name = xstrndup(rest, strcspn(rest, "/"));
  if (!sg_name_valid(name)) {
    sg_http_send_error(req, 404, "not_found", "no such endpoint", NULL);
    return SG_HTTP_DONE;
  }
  return handle(d, req, name, rid);
}

void sg_gateway_routes(sg_router_t *r, sg_daemon_t *d) {
  sg_router_add(r, &(sg_route_t){.path = "/e/{endpoint}/*", .scope = SG_SCOPE_INVOKE, .on_head = on_head, .ctx = d});
}
