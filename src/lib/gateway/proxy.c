/* The sync gateway: ANY /e/{name}/{path...} is proxied to a ready worker.
 *
 * A request (an sg_proxy) is dispatched at once to the ready worker with the
 * fewest outstanding requests below workers.max_concurrency, or waits in the
 * endpoint's bounded FIFO queue until one is free; the queue's first arrival
 * kicks the scaler, so a request at zero workers starts one without waiting
 * for a tick. The answer is streamed: the worker's status and headers are
 * sent as soon as they arrive and every piece of body after them, so
 * server-sent events pass through as they are produced.
 *
 * Lifetime: an sg_proxy lives from arrival until both its answer is finished
 * and nothing (queue, timer, upstream request) refers to it. The client's
 * request object is released by libevent when the reply ends, also when the
 * client went away first (libevent detaches the request from the connection
 * and frees it on the reply's end). */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <strings.h>
#include <sys/socket.h>

#include "daemon/daemon-internal.h"
#include "sgpu/balancer.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

enum proxy_state { P_QUEUED, P_SENT, P_DONE };

struct sg_proxy {
  TAILQ_ENTRY(sg_proxy) link; /* in ep->queue while queued */
  sg_endpoint_t *ep;
  struct evhttp_request *req; /* the client's request */
  struct evhttp_connection *client;
  enum evhttp_cmd_type method;
  char *uri; /* path and query on the worker */
  enum proxy_state state;
  int64_t arrived_mono;
  struct event *timer; /* workers.request_timeout_s */
  sg_worker_t *w;
  struct evhttp_connection *conn; /* upstream */
  struct evhttp_request *up;      /* upstream request while in flight */
  bool replying;                  /* the answer's head was sent */
  bool cancelling;                /* inside evhttp_cancel_request() */
  bool client_gone;
};

static const char *const hop_by_hop[] = {"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
                                         "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade"};

static bool is_hop_by_hop(const char *name, const char *connection_header) {
  for (size_t i = 0; i < SG_ARRAY_SIZE(hop_by_hop); i++)
    if (!strcasecmp(name, hop_by_hop[i]))
      return true;
  /* Headers named in Connection are hop-by-hop too. */
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

static void copy_headers(struct evkeyvalq *from, struct evkeyvalq *to, bool request) {
  const char *conn = evhttp_find_header(from, "Connection");
  struct evkeyval *kv;
  TAILQ_FOREACH(kv, from, next) {
    if (is_hop_by_hop(kv->key, conn))
      continue;
    if (request && (!strcasecmp(kv->key, "Authorization") || !strcasecmp(kv->key, "Host") ||
                    !strcasecmp(kv->key, "Content-Length")))
      continue;
    evhttp_add_header(to, kv->key, kv->value);
  }
}

/* Releases the proxy once nothing refers to it any more. */
static void proxy_free(sg_proxy_t *p) {
  if (p->timer)
    event_free(p->timer);
  p->ep->proxies--;
  free(p->uri);
  free(p);
}

static void detach_client(sg_proxy_t *p) {
  if (p->client)
    evhttp_connection_set_closecb(p->client, NULL, NULL);
  p->client = NULL;
}

/* Sends a complete error answer, unless the head of an answer was sent. */
static void reply_error(sg_proxy_t *p, int status, const char *code, const char *message) {
  if (p->replying) {
    /* Mid-answer: the client must see a broken answer, not a short one that
     * looks complete. Shutting the socket down makes libevent drop the
     * connection on its own; the reply's end then releases the request. */
    struct evhttp_connection *evcon = evhttp_request_get_connection(p->req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    if (bev && bufferevent_getfd(bev) >= 0)
      shutdown(bufferevent_getfd(bev), SHUT_RDWR);
    detach_client(p);
    evhttp_send_reply_end(p->req);
    return;
  }
  detach_client(p);
  sg_api_send_error(p->req, status, code, message, NULL);
}

/* Ends the client side of p; p is freed unless an upstream request still runs. */
static void finish(sg_proxy_t *p) {
  p->state = P_DONE;
  detach_client(p);
  if (p->timer)
    evtimer_del(p->timer);
  if (!p->up)
    proxy_free(p);
}

/* Gives the worker back after the request ended on it. */
static void release_worker(sg_proxy_t *p, bool conn_reusable) {
  sg_worker_t *w = p->w;
  if (!w)
    return;
  if (p->conn)
    sg_worker_put_conn(w, p->conn, conn_reusable);
  p->conn = NULL;
  p->w = NULL;
  sg_worker_release_request(w);
  sg_endpoint_t *ep = p->ep;
  sg_gateway_pump(ep);
  sg_scaler_kick(ep->d);
}

static int up_header_cb(struct evhttp_request *up, void *arg) {
  sg_proxy_t *p = arg;
  if (p->state == P_DONE)
    return -1;
  int code = evhttp_request_get_response_code(up);
  const char *reason = evhttp_request_get_response_code_line(up);
  copy_headers(evhttp_request_get_input_headers(up), evhttp_request_get_output_headers(p->req), false);
  evhttp_send_reply_start(p->req, code, reason && *reason ? reason : NULL);
  p->replying = true;
  return 0;
}

static void up_chunk_cb(struct evhttp_request *up, void *arg) {
  sg_proxy_t *p = arg;
  if (p->state == P_DONE || !p->replying)
    return;
  evhttp_send_reply_chunk(p->req, evhttp_request_get_input_buffer(up));
}

static void up_done_cb(struct evhttp_request *up, void *arg) {
  sg_proxy_t *p = arg;
  if (p->cancelling)
    return;
  p->up = NULL;
  int code = up ? evhttp_request_get_response_code(up) : 0;
  sg_worker_t *w = p->w;
  if (p->state == P_DONE) {
    /* The client side ended first (timeout, client gone). */
    release_worker(p, false);
    proxy_free(p);
    return;
  }
  if (code == 0) {
    bool crashed = w && (w->exited || w->stopping);
    release_worker(p, false);
    reply_error(p, 502, "no_worker",
                crashed ? "the worker ended before it answered" : "the worker closed the connection before it answered");
    finish(p);
    return;
  }
  if (w) {
    w->served++;
    p->ep->served++;
  }
  if (!p->replying) /* an answer whose head never went through the header callback */
    evhttp_send_reply_start(p->req, code, NULL);
  if (evbuffer_get_length(evhttp_request_get_input_buffer(up)) > 0)
    evhttp_send_reply_chunk(p->req, evhttp_request_get_input_buffer(up));
  detach_client(p);
  evhttp_send_reply_end(p->req);
  release_worker(p, true);
  finish(p);
}

static void send_to(sg_proxy_t *p, sg_worker_t *w) {
  p->state = P_SENT;
  p->w = w;
  w->in_flight++;
  w->last_used_mono = sg_now_ms();
  p->ep->in_flight++;
  p->conn = sg_worker_get_conn(w);
  struct evhttp_request *up = evhttp_request_new(up_done_cb, p);
  evhttp_request_set_header_cb(up, up_header_cb);
  evhttp_request_set_chunked_cb(up, up_chunk_cb);
  struct evkeyvalq *in = evhttp_request_get_input_headers(p->req);
  struct evkeyvalq *out = evhttp_request_get_output_headers(up);
  copy_headers(in, out, true);
  char host[32];
  snprintf(host, sizeof(host), "127.0.0.1:%d", w->port);
  evhttp_add_header(out, "Host", host);
  struct evhttp_connection *evcon = evhttp_request_get_connection(p->req);
  if (evcon) {
    char *peer = NULL;
    ev_uint16_t port = 0;
    evhttp_connection_get_peer(evcon, &peer, &port);
    if (peer) {
      const char *xff = evhttp_find_header(in, "X-Forwarded-For");
      cleanup_free char *v = xff ? xasprintf("%s, %s", xff, peer) : xstrdup(peer);
      evhttp_remove_header(out, "X-Forwarded-For");
      evhttp_add_header(out, "X-Forwarded-For", v);
    }
  }
  struct evbuffer *body = evhttp_request_get_input_buffer(p->req);
  size_t len = evbuffer_get_length(body);
  if (len > 0 || p->method == EVHTTP_REQ_POST || p->method == EVHTTP_REQ_PUT || p->method == EVHTTP_REQ_PATCH) {
    char cl[32];
    snprintf(cl, sizeof(cl), "%zu", len);
    evhttp_add_header(out, "Content-Length", cl);
    evbuffer_add_buffer(evhttp_request_get_output_buffer(up), body);
  }
  p->up = up;
  if (evhttp_make_request(p->conn, up, p->method, p->uri) < 0) {
    /* libevent freed up */
    p->up = NULL;
    release_worker(p, false);
    reply_error(p, 502, "no_worker", "could not send the request to the worker");
    finish(p);
  }
}

/* The worker that should take the next request, or NULL when all are busy. */
static sg_worker_t *pick(sg_endpoint_t *ep) {
  sg_balancer_slot_t slots[64];
  sg_worker_t *ws[64];
  size_t n = 0;
  sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) {
    if (w->state != SG_W_READY)
      continue;
    if (n == SG_ARRAY_SIZE(slots)) {
      int i = sg_balancer_pick(slots, n, ep->spec->workers.max_concurrency);
      if (i >= 0 && slots[i].in_flight == 0)
        return ws[i];
      /* keep the best of this batch and go on */
      if (i >= 0) {
        slots[0] = slots[i];
        ws[0] = ws[i];
        n = 1;
      } else {
        n = 0;
      }
    }
    slots[n] = (sg_balancer_slot_t){true, w->in_flight, w->last_used_mono};
    ws[n++] = w;
  }
  int i = sg_balancer_pick(slots, n, ep->spec->workers.max_concurrency);
  return i >= 0 ? ws[i] : NULL;
}

void sg_gateway_pump(sg_endpoint_t *ep) {
  sg_proxy_t *p;
  while ((p = TAILQ_FIRST(&ep->queue))) {
    sg_worker_t *w = pick(ep);
    if (!w)
      return;
    TAILQ_REMOVE(&ep->queue, p, link);
    ep->queued--;
    send_to(p, w);
  }
}

/* Abandons an upstream request; its callbacks do not run for p afterwards. */
static void cancel_upstream(sg_proxy_t *p, struct evhttp_request *up) {
  p->up = NULL;
  p->cancelling = true;
  evhttp_cancel_request(up);
  p->cancelling = false;
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg) {
  sg_proxy_t *p = arg;
  cleanup_free char *msg = xasprintf("no answer within workers.request_timeout_s=%gs",
                                     p->ep->spec->workers.request_timeout_s);
  if (p->state == P_QUEUED) {
    TAILQ_REMOVE(&p->ep->queue, p, link);
    p->ep->queued--;
    reply_error(p, 504, "timeout", msg);
    finish(p);
    return;
  }
  if (p->state == P_SENT) {
    /* Abandon the upstream request: its connection cannot be reused. */
    struct evhttp_request *up = p->up;
    p->state = P_DONE;
    reply_error(p, 504, "timeout", msg);
    detach_client(p);
    if (up)
      cancel_upstream(p, up);
    release_worker(p, false);
    proxy_free(p);
  }
}

static void client_closed(struct evhttp_connection *evcon, void *arg) {
  sg_proxy_t *p = arg;
  p->client_gone = true;
  p->client = NULL;
  evhttp_connection_set_closecb(evcon, NULL, NULL);
  if (p->state == P_QUEUED) {
    TAILQ_REMOVE(&p->ep->queue, p, link);
    p->ep->queued--;
    evhttp_send_reply_end(p->req); /* releases the detached request */
    finish(p);
  } else if (p->state == P_SENT) {
    struct evhttp_request *up = p->up;
    p->state = P_DONE;
    evhttp_send_reply_end(p->req);
    if (up)
      cancel_upstream(p, up);
    release_worker(p, false);
    if (p->timer)
      evtimer_del(p->timer);
    proxy_free(p);
  }
}

/* The path and query on the worker: "/e/name/rest?q" -> "/rest?q". */
static char *worker_uri(const char *uri, const char *name) {
  const char *rest = uri + 3 + strlen(name); /* after "/e/name" */
  if (*rest == '/')
    return xstrdup(rest);
  return xasprintf("/%s", rest);
}

void sg_gateway_handle(sg_daemon_t *d, struct evhttp_request *req, const char *name, const char *rest) {
  sg_endpoint_t *ep = sg_daemon_find_endpoint(d, name);
  if (!ep) {
    cleanup_free char *msg = xasprintf("no endpoint named \"%s\"", name);
    sg_api_send_error(req, 404, "not_found", msg, NULL);
    return;
  }
  sg_proxy_t *p = xcalloc(1, sizeof(*p));
  p->ep = ep;
  ep->proxies++;
  p->req = req;
  p->method = evhttp_request_get_command(req);
  p->uri = worker_uri(evhttp_request_get_uri(req), name);
  p->arrived_mono = sg_now_ms();
  p->client = evhttp_request_get_connection(req);
  if (p->client)
    evhttp_connection_set_closecb(p->client, client_closed, p);
  p->timer = evtimer_new(d->base, timeout_cb, p);
  double t = ep->spec->workers.request_timeout_s;
  struct timeval tv = {(time_t)t, (suseconds_t)((t - (double)(time_t)t) * 1e6)};
  evtimer_add(p->timer, &tv);

  sg_worker_t *w = TAILQ_EMPTY(&ep->queue) ? pick(ep) : NULL;
  if (w) {
    send_to(p, w);
    return;
  }
  if (ep->queued >= ep->spec->workers.max_queue) {
    evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
    cleanup_free char *msg =
        xasprintf("no worker is free and the queue is full (workers.max_queue=%d)", ep->spec->workers.max_queue);
    reply_error(p, 503, "queue_full", msg);
    finish(p);
    return;
  }
  p->state = P_QUEUED;
  TAILQ_INSERT_TAIL(&ep->queue, p, link);
  ep->queued++;
  sg_scaler_kick(d);
}

void sg_gateway_fail_queue(sg_endpoint_t *ep, int status, const char *code, const char *message) {
  sg_proxy_t *p;
  while ((p = TAILQ_FIRST(&ep->queue))) {
    TAILQ_REMOVE(&ep->queue, p, link);
    ep->queued--;
    reply_error(p, status, code, message);
    finish(p);
  }
}

int64_t sg_gateway_oldest_wait(sg_endpoint_t *ep, int64_t now) {
  sg_proxy_t *p = TAILQ_FIRST(&ep->queue);
  return p ? now - p->arrived_mono : 0;
}
