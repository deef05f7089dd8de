/* The HTTP/1.1 server: connections, request parsing, answer framing and the
 * timeouts that keep slow clients from holding resources. The contract is in
 * http.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <event2/listener.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "http/http.h"
#include "http/stream.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define READ_HIGH_WATER (256u << 10)
#define ACCEPT_PAUSE_MS 100
/* Memory given back by closed connections before the allocator is asked to
 * return free pages to the system, and how soon after. */
#define TRIM_AFTER_BYTES (4u << 20)
#define TRIM_DELAY_MS 500
/* Request head buffers at least this large count towards TRIM_AFTER_BYTES. */
#define TRIM_MIN_BUFFER 4096

typedef struct conn conn_t;

struct sg_http_server {
  struct event_base *base;
  struct evconnlistener *listener;
  sg_http_server_config_t cfg;
  LIST_HEAD(, conn) conns;
  size_t n_conns;
  struct event *accept_timer; /* ends a pause of accepting after EMFILE */
  unsigned accept_pauses;     /* pauses since accepting last succeeded */
  struct event *trim_timer;
  size_t released;  /* bytes of buffers freed since the last trim */
  uint64_t refused; /* connections refused past max_connections */
};

/* A header of the request: offsets of its NUL-terminated name and value in
 * the request's header arena. */
struct hdr {
  uint32_t name;
  uint32_t value; /* NO_VALUE when the header has none */
};

#define NO_VALUE UINT32_MAX

struct sg_http_req {
  conn_t *c;
  sg_http_server_t *srv;
  char method[24];
  bool head, idempotent;
  char *target, *path, *query;
  size_t target_len;
  struct hdr *in; /* at most cfg.max_headers */
  size_t n_in, in_cap;
  char *hbuf; /* header arena, always NUL-terminated at hlen */
  size_t hlen, hcap;
  bool in_value;        /* the parser is inside a header value */
  bool head_done;       /* later header callbacks are trailers: dropped */
  size_t trailer_bytes; /* bounded like the head */
  int64_t content_length;
  int major, minor;
  bool keep_alive;
  bool expect_continue;
  struct evbuffer *body;
  sg_http_head_action_t action;
  bool message_complete;
  bool has_body; /* the request announced a body (length > 0 or chunked) */
  void (*on_data)(sg_http_req_t *, struct evbuffer *, void *);
  void (*on_end)(sg_http_req_t *, void *);
  void *body_arg;
  struct evbuffer *chunk; /* scratch for streamed body pieces */
  void (*close_cb)(sg_http_req_t *, void *);
  void *close_arg;
  uint64_t principal; /* sg_http_set_principal; 0: none */
  /* answer */
  struct evbuffer *out_head; /* "Name: value\r\n" lines added by the handler */
  bool out_has_length;
  bool started, chunked, no_body, close_after;
  void (*drain_cb)(sg_http_req_t *, void *);
  void *drain_arg;
  size_t low_water;
};

struct conn {
  LIST_ENTRY(conn) link;
  sg_http_server_t *srv;
  sg_stream_t *s;
  http_parser parser;
  char peer[INET6_ADDRSTRLEN];
  sg_http_req_t *req;   /* being read or answered */
  struct event *timer;  /* header or idle timeout */
  struct event *resume; /* deferred processing of buffered input */
  bool in_process;
  bool body_paused;
  bool closing; /* closed when the output is flushed, then freed */
  bool dead;    /* freed when processing unwinds */
};

static const http_parser_settings settings;

const char *sg_http_reason(int status) {
  switch (status) {
  case 100:
    return "Continue";
  case 101:
    return "Switching Protocols";
  case 200:
    return "OK";
  case 201:
    return "Created";
  case 202:
    return "Accepted";
  case 204:
    return "No Content";
  case 206:
    return "Partial Content";
  case 301:
    return "Moved Permanently";
  case 302:
    return "Found";
  case 304:
    return "Not Modified";
  case 307:
    return "Temporary Redirect";
  case 308:
    return "Permanent Redirect";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 408:
    return "Request Timeout";
  case 409:
    return "Conflict";
  case 411:
    return "Length Required";
  case 413:
    return "Content Too Large";
  case 415:
    return "Unsupported Media Type";
  case 418:
    return "I'm a teapot";
  case 422:
    return "Unprocessable Content";
  case 429:
    return "Too Many Requests";
  case 431:
    return "Request Header Fields Too Large";
  case 500:
    return "Internal Server Error";
  case 501:
    return "Not Implemented";
  case 502:
    return "Bad Gateway";
  case 503:
    return "Service Unavailable";
  case 504:
    return "Gateway Timeout";
  case 505:
    return "HTTP Version Not Supported";
  default:
    return "Unknown";
  }
}

/* ---- timers ---- */

static void set_timer(conn_t *c, double secs) {
  if (secs <= 0) {
    evtimer_del(c->timer);
    return;
  }
  struct timeval tv = {(time_t)secs, (suseconds_t)((secs - (double)(time_t)secs) * 1e6)};
  evtimer_add(c->timer, &tv);
}

/* The inactivity timeout (io_timeout_s) runs only while the client is the one
 * expected to move bytes: while the body of its request is read and the
 * request's owner takes it (not paused), and while answer bytes wait for the
 * client to take them (the stream's write timeout, armed only while output is
 * unsent). Once the body is whole, or while the owner paused it, the request
 * waits on the server's side (a worker that loads or computes, a job, a store
 * write): no inactivity timeout runs then, and the owner bounds that wait
 * (the gateway: workers.request_timeout_s). Called at every change of that
 * state. */
static void update_io_timeouts(conn_t *c) {
  sg_http_req_t *r = c->req;
  bool client_sends = r && r->head_done && !r->message_complete && !c->body_paused;
  double io = c->srv->cfg.io_timeout_s;
  sg_stream_set_timeouts(c->s, client_sends ? io : 0, io);
}

/* ---- memory ---- */

static void trim_cb(evutil_socket_t fd, short what, void *arg) {
  sg_http_server_t *srv = arg;
  srv->released = 0;
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

/* Notes that n bytes of per-connection buffers were freed. Many closed
 * connections leave free holes all over the heap that the allocator keeps;
 * once enough were freed, a trim a moment later gives their pages back. */
static void note_released(sg_http_server_t *srv, size_t n) {
  srv->released += n;
  if (srv->released >= TRIM_AFTER_BYTES && !evtimer_pending(srv->trim_timer, NULL)) {
    struct timeval tv = {0, TRIM_DELAY_MS * 1000};
    evtimer_add(srv->trim_timer, &tv);
  }
}

/* ---- requests ---- */

static void req_free(sg_http_req_t *r) {
  if (!r)
    return;
  size_t held = r->hcap + r->in_cap * sizeof(*r->in) + r->target_len;
  if (held >= TRIM_MIN_BUFFER)
    note_released(r->srv, held + sizeof(*r));
  free(r->hbuf);
  free(r->in);
  if (r->out_head)
    evbuffer_free(r->out_head);
  free(r->target);
  free(r->path);
  free(r->query);
  if (r->body)
    evbuffer_free(r->body);
  if (r->chunk)
    evbuffer_free(r->chunk);
  free(r);
}

/* The one way a request's owner hears that the request ended before the
 * owner answered it: the client went away, or the rest of the request was
 * malformed, too large or too slow. The close callback runs at most once; from
 * then on the request belongs to the server alone and no handler callback
 * (body, drain, close) runs for it. */
static void end_for_owner(sg_http_req_t *r) {
  void (*cb)(sg_http_req_t *, void *) = r->close_cb;
  void *arg = r->close_arg;
  r->close_cb = NULL;
  r->close_arg = NULL;
  r->drain_cb = NULL;
  r->on_data = NULL;
  r->on_end = NULL;
  r->action = SG_HTTP_DONE;
  if (cb)
    cb(r, arg);
}

static void conn_free(conn_t *c) {
  sg_http_server_t *srv = c->srv;
  LIST_REMOVE(c, link);
  srv->n_conns--;
  if (c->req) {
    sg_http_req_t *r = c->req;
    c->req = NULL;
    r->c = NULL;
    end_for_owner(r);
    req_free(r);
  }
  event_free(c->timer);
  event_free(c->resume);
  sg_stream_free(c->s);
  free(c);
  note_released(srv, sizeof(*c));
}

/* Frees c now, or when the processing on the stack unwinds. */
static void conn_kill(conn_t *c) {
  if (c->in_process) {
    c->dead = true;
    return;
  }
  conn_free(c);
}

/* Closes c once what is queued for the client is written. */
static void conn_close_after_flush(conn_t *c) {
  c->closing = true;
  sg_stream_read(c->s, false);
  sg_stream_set_low_water(c->s, 0);
  evtimer_del(c->timer);
  if (evbuffer_get_length(sg_stream_output(c->s)) == 0)
    conn_kill(c);
}

static void process(conn_t *c);

static void schedule_process(conn_t *c) { event_active(c->resume, EV_TIMEOUT, 0); }

/* The answer ended: forget the request and go on with the next one. */
static void req_done(sg_http_req_t *r) {
  conn_t *c = r->c;
  r->c = NULL;
  bool close = r->close_after || !r->keep_alive || (!r->message_complete && r->has_body);
  req_free(r);
  if (!c)
    return;
  c->req = NULL;
  c->body_paused = false;
  if (close) {
    conn_close_after_flush(c);
    return;
  }
  http_parser_pause(&c->parser, 0);
  update_io_timeouts(c);
  sg_stream_read(c->s, true);
  set_timer(c, c->srv->cfg.idle_timeout_s);
  if (evbuffer_get_length(sg_stream_input(c->s)) > 0)
    schedule_process(c);
}

/* ---- parser callbacks ---- */

static int on_message_begin(http_parser *p) {
  conn_t *c = p->data;
  if (c->closing || c->dead)
    return -1;
  sg_http_req_t *r = xcalloc(1, sizeof(*r));
  r->c = c;
  r->srv = c->srv;
  r->content_length = -1;
  c->req = r;
  set_timer(c, c->srv->cfg.header_timeout_s);
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  conn_t *c = p->data;
  sg_http_req_t *r = c->req;
  if (r->target_len + r->hlen + len > c->srv->cfg.max_header_bytes)
    return -1;
  r->target = xrealloc(r->target, r->target_len + len + 1);
  memcpy(r->target + r->target_len, at, len);
  r->target_len += len;
  r->target[r->target_len] = '\0';
  return 0;
}

/* Appends len bytes (a NUL when at is NULL) to the header arena, which stays
 * NUL-terminated. False, with nothing added, when the head would go over
 * max_header_bytes; the arena grows in steps and never past that bound. */
static bool arena_add(sg_http_req_t *r, const char *at, size_t len) {
  size_t limit = r->srv->cfg.max_header_bytes;
  if (r->target_len + r->hlen + len > limit)
    return false;
  if (r->hlen + len + 1 > r->hcap) {
    size_t cap = r->hcap ? 2 * r->hcap : 512;
    while (cap < r->hlen + len + 1)
      cap *= 2;
    if (cap > limit + 1)
      cap = limit + 1;
    r->hbuf = xrealloc(r->hbuf, cap);
    r->hcap = cap;
  }
  if (at)
    memcpy(r->hbuf + r->hlen, at, len);
  else
    memset(r->hbuf + r->hlen, 0, len);
  r->hlen += len;
  r->hbuf[r->hlen] = '\0';
  return true;
}

/* Trailers of a chunked body come through the header callbacks after the head
 * was handed on: they are counted against the same bound and dropped, so that
 * nothing a client sends after the head can pass for a header. */
static int trailer(sg_http_req_t *r, size_t len) {
  r->trailer_bytes += len;
  return r->trailer_bytes > r->srv->cfg.max_header_bytes ? -1 : 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
  conn_t *c = p->data;
  sg_http_req_t *r = c->req;
  if (r->head_done)
    return trailer(r, len);
  if (r->in_value || r->n_in == 0) {
    if (r->n_in == c->srv->cfg.max_headers)
      return -1;
    if (r->n_in > 0 && !arena_add(r, NULL, 1)) /* ends the previous value */
      return -1;
    if (r->n_in == r->in_cap) {
      size_t cap = r->in_cap ? 2 * r->in_cap : 16;
      if (cap > c->srv->cfg.max_headers)
        cap = c->srv->cfg.max_headers;
      r->in = xrealloc(r->in, cap * sizeof(*r->in));
      r->in_cap = cap;
    }
    r->in[r->n_in].name = (uint32_t)r->hlen;
    r->in[r->n_in].value = NO_VALUE;
    r->n_in++;
    r->in_value = false;
  }
  return arena_add(r, at, len) ? 0 : -1;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  conn_t *c = p->data;
  sg_http_req_t *r = c->req;
  if (r->head_done)
    return trailer(r, len);
  if (!r->in_value) {
    if (!arena_add(r, NULL, 1)) /* ends the name */
      return -1;
    r->in[r->n_in - 1].value = (uint32_t)r->hlen;
    r->in_value = true;
  }
  return arena_add(r, at, len) ? 0 : -1;
}

static void split_target(sg_http_req_t *r) {
  const char *t = r->target ? r->target : "/";
  const char *q = strchr(t, '?');
  const char *frag = strchr(t, '#');
  size_t plen = q ? (size_t)(q - t) : frag ? (size_t)(frag - t) : strlen(t);
  r->path = xstrndup(t, plen);
  if (q) {
    size_t qlen = frag && frag > q ? (size_t)(frag - q - 1) : strlen(q + 1);
    r->query = xstrndup(q + 1, qlen);
  }
}

static void send_continue(conn_t *c) {
  static const char line[] = "HTTP/1.1 100 Continue\r\n\r\n";
  evbuffer_add(sg_stream_output(c->s), line, sizeof(line) - 1);
}

/* Ends a request on the server's side (malformed, too large, too slow): its
 * owner hears of it through its close callback first, then the client gets the
 * error, or a broken answer when one had started, and the connection closes. */
static void reject(sg_http_req_t *r, int status, const char *code, const char *msg) {
  end_for_owner(r);
  if (r->started) {
    sg_http_reply_abort(r);
    return;
  }
  char body[512];
  int n = snprintf(body, sizeof(body), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n", code, msg);
  r->close_after = true;
  r->keep_alive = false;
  if (r->out_head) /* headers a handler added for an answer it will not send */
    evbuffer_drain(r->out_head, evbuffer_get_length(r->out_head));
  r->out_has_length = false;
  sg_http_reply(r, status, "application/json", body, (size_t)n);
}

static int on_headers_complete(http_parser *p) {
  conn_t *c = p->data;
  sg_http_server_t *srv = c->srv;
  sg_http_req_t *r = c->req;
  evtimer_del(c->timer);
  r->head_done = true;
  if (r->n_in > 0 && !arena_add(r, NULL, 1)) /* ends the last name or value */
    return -1;
  snprintf(r->method, sizeof(r->method), "%s", http_method_str((enum http_method)p->method));
  r->head = p->method == HTTP_HEAD;
  r->idempotent = p->method == HTTP_GET || p->method == HTTP_HEAD || p->method == HTTP_PUT ||
                  p->method == HTTP_DELETE || p->method == HTTP_OPTIONS || p->method == HTTP_TRACE;
  r->major = p->http_major;
  r->minor = p->http_minor;
  r->keep_alive = http_should_keep_alive(p);
  if ((p->flags & F_CONTENTLENGTH) && p->content_length != ULLONG_MAX)
    r->content_length = (int64_t)p->content_length;
  r->has_body = (p->flags & F_CHUNKED) || r->content_length > 0;
  const char *expect = sg_http_header(r, "Expect");
  r->expect_continue = expect && !strcasecmp(expect, "100-continue") && r->minor >= 1;
  split_target(r);
  if (p->upgrade) {
    reject(r, 501, "not_implemented", "protocol upgrades are not supported");
    return 0;
  }
  sg_http_head_action_t action = srv->cfg.on_head(srv->cfg.ud, r);
  if (c->req != r) /* answered and done: r is gone */
    return 0;
  r->action = action;
  if (r->action == SG_HTTP_BUFFER) {
    if (r->content_length > (int64_t)srv->cfg.max_buffered_body) {
      reject(r, 413, "too_large", "request body is over the limit");
      return 0;
    }
    r->body = evbuffer_new();
  }
  if (r->action != SG_HTTP_DONE && r->expect_continue && !r->started)
    send_continue(c);
  update_io_timeouts(c);
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  conn_t *c = p->data;
  sg_http_req_t *r = c->req;
  if (!r || r->action == SG_HTTP_DONE || r->started)
    return 0; /* answered early: the rest of the body is read and dropped */
  if (r->action == SG_HTTP_BUFFER) {
    if (evbuffer_get_length(r->body) + len > c->srv->cfg.max_buffered_body) {
      reject(r, 413, "too_large", "request body is over the limit");
      return 0;
    }
    evbuffer_add(r->body, at, len);
    return 0;
  }
  if (!r->on_data)
    return 0;
  if (!r->chunk)
    r->chunk = evbuffer_new();
  evbuffer_add(r->chunk, at, len);
  r->on_data(r, r->chunk, r->body_arg);
  return 0;
}

static int on_message_complete(http_parser *p) {
  conn_t *c = p->data;
  sg_http_req_t *r = c->req;
  if (!r) /* answered before its (empty) body ended */
    return 0;
  http_parser_pause(p, 1);
  r->message_complete = true;
  update_io_timeouts(c);
  if (r->action == SG_HTTP_BUFFER && !r->started)
    c->srv->cfg.on_request(c->srv->cfg.ud, r);
  else if (r->action == SG_HTTP_STREAM && r->on_end)
    r->on_end(r, r->body_arg);
  return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Before the head is complete, takes the request's HTTP version from the
 * parser so that an error answer speaks the client's version when the request
 * line got that far (HTTP/1.1 otherwise). */
static void version_from_parser(conn_t *c, sg_http_req_t *r) {
  if (r->head_done)
    return;
  r->major = 1;
  r->minor = c->parser.http_major == 1 && c->parser.http_minor == 0 ? 0 : 1;
}

/* Parses what the input buffer holds, one request at a time. */
static void process(conn_t *c) {
  if (c->in_process)
    return;
  c->in_process = true;
  struct evbuffer *in = sg_stream_input(c->s);
  while (!c->dead && !c->closing) {
    if (c->req && (c->req->message_complete || c->body_paused))
      break;
    size_t avail = evbuffer_get_length(in);
    if (avail == 0)
      break;
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
      break;
    size_t n = http_parser_execute(&c->parser, &settings, v.iov_base, v.iov_len);
    evbuffer_drain(in, n);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (c->dead || c->closing)
      break;
    if (e == HPE_PAUSED)
      continue; /* a message ended; the loop head decides */
    if (e != HPE_OK || c->parser.upgrade) {
      sg_http_req_t *r = c->req;
      if (!r) {
        on_message_begin(&c->parser);
        r = c->req;
      }
      version_from_parser(c, r);
      bool too_big = e == HPE_HEADER_OVERFLOW || e == HPE_CB_url || e == HPE_CB_header_field ||
                     e == HPE_CB_header_value || e == HPE_CB_headers_complete;
      r->keep_alive = false;
      if (too_big)
        reject(r, 431, "too_large", "request head is over the limit");
      else
        reject(r, 400, "bad_request", http_errno_description(e));
      break;
    }
  }
  c->in_process = false;
  if (c->dead)
    conn_free(c);
}

/* ---- connection events ---- */

static void resume_cb(evutil_socket_t fd, short what, void *arg) { process(arg); }

static void read_cb(sg_stream_t *s, void *arg) { process(arg); }

static void drain_cb(sg_stream_t *s, void *arg) {
  conn_t *c = arg;
  if (c->closing) {
    if (evbuffer_get_length(sg_stream_output(s)) == 0)
      conn_kill(c);
    return;
  }
  sg_http_req_t *r = c->req;
  if (r && r->drain_cb && evbuffer_get_length(sg_stream_output(s)) <= r->low_water)
    r->drain_cb(r, r->drain_arg);
}

/* EOF while a request is read or answered means the client went away
 * (half-closed clients that still read are rare for this API and would hold
 * a request slot for nothing); errors and stalled reads or writes end the
 * connection too. */
static void event_cb(sg_stream_t *s, int what, void *arg) { conn_kill(arg); }

static const sg_stream_callbacks_t stream_cbs = {read_cb, drain_cb, event_cb};

static void timer_cb(evutil_socket_t fd, short what, void *arg) {
  conn_t *c = arg;
  sg_http_req_t *r = c->req;
  if (r && !r->started && !r->message_complete) {
    r->keep_alive = false;
    version_from_parser(c, r);
    reject(r, 408, "timeout", "the request head did not arrive in time");
    return;
  }
  conn_kill(c); /* idle keep-alive connection */
}

/* Serves fd (taken) as a new client connection. */
static void conn_new(sg_http_server_t *srv, evutil_socket_t fd, const struct sockaddr *sa) {
  conn_t *c = xcalloc(1, sizeof(*c));
  c->srv = srv;
  int one = 1;
  if (sa && (sa->sa_family == AF_INET || sa->sa_family == AF_INET6))
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (sa && sa->sa_family == AF_INET)
    inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, c->peer, sizeof(c->peer));
  else if (sa && sa->sa_family == AF_INET6)
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, c->peer, sizeof(c->peer));
  c->s = sg_stream_new(srv->base, fd, &stream_cbs, c);
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  c->timer = evtimer_new(srv->base, timer_cb, c);
  c->resume = event_new(srv->base, -1, 0, resume_cb, c);
  sg_stream_set_read_limit(c->s, READ_HIGH_WATER);
  update_io_timeouts(c);
  set_timer(c, srv->cfg.idle_timeout_s);
  LIST_INSERT_HEAD(&srv->conns, c, link);
  srv->n_conns++;
}

/* Past max_connections: a short answer, written only if the socket takes it at
 * once, and the connection closes. */
static void refuse(sg_http_server_t *srv, evutil_socket_t fd) {
  static const char answer[] = "HTTP/1.1 503 Service Unavailable\r\n"
                               "Content-Type: application/json\r\nContent-Length: 70\r\n"
                               "Connection: close\r\nRetry-After: 1\r\n\r\n"
                               "{\"error\":{\"code\":\"overloaded\",\"message\":\"too many open connections\"}}\n";
  ssize_t n;
  do
    n = send(fd, answer, sizeof(answer) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  shutdown(fd, SHUT_WR);
  close(fd);
  if (srv->refused++ % 1000 == 0)
    sg_warn("refusing connections: %zu are open (max_connections); %llu refused so far", srv->n_conns,
            (unsigned long long)srv->refused);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg) {
  sg_http_server_t *srv = arg;
  if (srv->accept_pauses > 0) {
    sg_info("accepting again after %u pause(s) for lack of file descriptors", srv->accept_pauses);
    srv->accept_pauses = 0;
  }
  if (srv->cfg.max_connections > 0 && srv->n_conns >= srv->cfg.max_connections) {
    refuse(srv, fd);
    return;
  }
  conn_new(srv, fd, sa);
}

void sg_http_server_adopt(sg_http_server_t *srv, int fd) {
  evutil_make_socket_nonblocking(fd);
  conn_new(srv, fd, NULL);
}

static void accept_resume_cb(evutil_socket_t fd, short what, void *arg) {
  sg_http_server_t *srv = arg;
  evconnlistener_enable(srv->listener);
}

static void accept_error_cb(struct evconnlistener *l, void *arg) {
  sg_http_server_t *srv = arg;
  int e = EVUTIL_SOCKET_ERROR();
  if (e != EMFILE && e != ENFILE && e != ENOBUFS && e != ENOMEM) {
    sg_warn("accept: %s", evutil_socket_error_to_string(e));
    return;
  }
  /* Out of descriptors or memory: pause accepting for a moment rather than
   * spin; the connections already queued wait in the backlog. */
  if (srv->accept_pauses++ == 0)
    sg_warn("accept: %s; pausing accepts for %d ms at a time until descriptors are free (%zu connections open)",
            evutil_socket_error_to_string(e), ACCEPT_PAUSE_MS, srv->n_conns);
  evconnlistener_disable(l);
  struct timeval tv = {0, ACCEPT_PAUSE_MS * 1000};
  evtimer_add(srv->accept_timer, &tv);
}

sg_http_server_t *sg_http_server_new(struct event_base *base, const sg_http_server_config_t *cfg, const char *host,
                                     int port, int *bound_port, sg_error_t **err) {
  struct sockaddr_storage ss = {0};
  int sslen;
  struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    sslen = sizeof(*sin);
  } else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons((uint16_t)port);
    sslen = sizeof(*sin6);
  } else if (!strcmp(host, "localhost")) {
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin->sin_port = htons((uint16_t)port);
    sslen = sizeof(*sin);
  } else {
    sg_make_error(err, EINVAL, "listen address \"%s\" is not an IP address", host);
    return NULL;
  }
  sg_http_server_t *srv = xcalloc(1, sizeof(*srv));
  srv->base = base;
  srv->cfg = *cfg;
  if (srv->cfg.max_header_bytes == 0)
    srv->cfg.max_header_bytes = 64 * 1024;
  if (srv->cfg.max_headers == 0)
    srv->cfg.max_headers = 100;
  LIST_INIT(&srv->conns);
  srv->listener =
      evconnlistener_new_bind(base, accept_cb, srv, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
                              1024, (struct sockaddr *)&ss, sslen);
  if (!srv->listener) {
    int e = errno ? errno : EADDRINUSE;
    sg_make_error(err, e, "cannot listen on %s:%d: %s", host, port, strerror(e));
    free(srv);
    return NULL;
  }
  evconnlistener_set_error_cb(srv->listener, accept_error_cb);
  srv->accept_timer = evtimer_new(base, accept_resume_cb, srv);
  srv->trim_timer = evtimer_new(base, trim_cb, srv);
  struct sockaddr_storage bound;
  socklen_t bl = sizeof(bound);
  getsockname(evconnlistener_get_fd(srv->listener), (struct sockaddr *)&bound, &bl);
  *bound_port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                  : ((struct sockaddr_in *)&bound)->sin_port);
  return srv;
}

size_t sg_http_server_end_principal(sg_http_server_t *srv, uint64_t principal, const sg_http_req_t *keep) {
  if (!srv || !principal)
    return 0;
  size_t n = 0;
  /* A close callback may end other connections: look again after each. */
  for (;;) {
    conn_t *c;
    LIST_FOREACH(c, &srv->conns, link) {
      if (!c->dead && c->req && c->req != keep && c->req->principal == principal)
        break;
    }
    if (!c)
      return n;
    n++;
    conn_kill(c);
  }
}

void sg_http_server_free(sg_http_server_t *srv) {
  if (!srv)
    return;
  evconnlistener_free(srv->listener);
  conn_t *c;
  while ((c = LIST_FIRST(&srv->conns)))
    conn_free(c);
  event_free(srv->accept_timer);
  event_free(srv->trim_timer);
  free(srv);
}

/* ---- request accessors ---- */

const char *sg_http_method(const sg_http_req_t *req) { return req->method; }
bool sg_http_method_is(const sg_http_req_t *req, const char *name) { return !strcmp(req->method, name); }
bool sg_http_method_idempotent(const sg_http_req_t *req) { return req->idempotent; }
bool sg_http_is_head(const sg_http_req_t *req) { return req->head; }
const char *sg_http_target(const sg_http_req_t *req) { return req->target ? req->target : "/"; }
const char *sg_http_path(const sg_http_req_t *req) { return req->path; }
const char *sg_http_query(const sg_http_req_t *req) { return req->query; }
int64_t sg_http_content_length(const sg_http_req_t *req) { return req->content_length; }
const char *sg_http_peer(const sg_http_req_t *req) { return req->c ? req->c->peer : ""; }
struct evbuffer *sg_http_body(sg_http_req_t *req) {
  if (!req->body)
    req->body = evbuffer_new();
  return req->body;
}
int sg_http_version_minor(const sg_http_req_t *req) { return req->minor; }

const char *sg_http_header(const sg_http_req_t *req, const char *name) {
  for (size_t i = 0; i < req->n_in; i++)
    if (!strcasecmp(req->hbuf + req->in[i].name, name))
      return req->in[i].value == NO_VALUE ? "" : req->hbuf + req->in[i].value;
  return NULL;
}

size_t sg_http_header_count(const sg_http_req_t *req) { return req->n_in; }

void sg_http_header_at(const sg_http_req_t *req, size_t i, const char **name, const char **value) {
  *name = req->hbuf + req->in[i].name;
  *value = req->in[i].value == NO_VALUE ? "" : req->hbuf + req->in[i].value;
}

void sg_http_set_close_cb(sg_http_req_t *req, void (*cb)(sg_http_req_t *, void *), void *arg) {
  req->close_cb = cb;
  req->close_arg = arg;
}

void sg_http_set_principal(sg_http_req_t *req, uint64_t principal) { req->principal = principal; }

void sg_http_stream_body(sg_http_req_t *req, void (*on_data)(sg_http_req_t *, struct evbuffer *, void *),
                         void (*on_end)(sg_http_req_t *, void *), void *arg) {
  req->on_data = on_data;
  req->on_end = on_end;
  req->body_arg = arg;
}

void sg_http_pause_body(sg_http_req_t *req, bool paused) {
  conn_t *c = req->c;
  if (!c || c->body_paused == paused)
    return;
  c->body_paused = paused;
  update_io_timeouts(c);
  if (paused) {
    http_parser_pause(&c->parser, 1);
  } else {
    http_parser_pause(&c->parser, 0);
    schedule_process(c);
  }
}

/* ---- answers ---- */

void sg_http_add_header(sg_http_req_t *req, const char *name, const char *value) {
  if (!req->out_head)
    req->out_head = evbuffer_new();
  if (!strcasecmp(name, "Content-Length"))
    req->out_has_length = true;
  evbuffer_add(req->out_head, name, strlen(name));
  evbuffer_add(req->out_head, ": ", 2);
  evbuffer_add(req->out_head, value, strlen(value));
  evbuffer_add(req->out_head, "\r\n", 2);
}

bool sg_http_reply_started(const sg_http_req_t *req) { return req->started; }
bool sg_http_reply_chunked(const sg_http_req_t *req) { return req->chunked; }

void sg_http_reply_start(sg_http_req_t *req, int status, const char *reason) {
  conn_t *c = req->c;
  req->started = true;
  if (!c)
    return;
  struct evbuffer *out = sg_stream_output(c->s);
  evbuffer_add_printf(out, "HTTP/1.%d %d %s\r\n", req->minor >= 1 ? 1 : 0, status,
                      reason && *reason ? reason : sg_http_reason(status));
  if (req->out_head)
    evbuffer_add_buffer(out, req->out_head);
  req->no_body = req->head || status == 204 || status == 304 || (status >= 100 && status < 200);
  if (!req->no_body && !req->out_has_length) {
    if (req->minor >= 1) {
      req->chunked = true;
      evbuffer_add(out, "Transfer-Encoding: chunked\r\n", 28);
    } else {
      req->close_after = true;
    }
  }
  /* A request whose body is still unread cannot be followed by another. */
  if (!req->message_complete && req->has_body)
    req->close_after = true;
  if (req->close_after || !req->keep_alive)
    evbuffer_add(out, "Connection: close\r\n", 19);
  else if (req->minor == 0)
    evbuffer_add(out, "Connection: keep-alive\r\n", 24);
  evbuffer_add(out, "\r\n", 2);
}

void sg_http_reply_chunk(sg_http_req_t *req, struct evbuffer *data) {
  size_t len = evbuffer_get_length(data);
  conn_t *c = req->c;
  if (!c || req->no_body || len == 0) {
    evbuffer_drain(data, len);
    return;
  }
  struct evbuffer *out = sg_stream_output(c->s);
  if (req->chunked)
    evbuffer_add_printf(out, "%zx\r\n", len);
  evbuffer_add_buffer(out, data);
  if (req->chunked)
    evbuffer_add(out, "\r\n", 2);
}

void sg_http_reply_chunk_mem(sg_http_req_t *req, const void *data, size_t len) {
  conn_t *c = req->c;
  if (!c || req->no_body || len == 0)
    return;
  struct evbuffer *out = sg_stream_output(c->s);
  if (req->chunked)
    evbuffer_add_printf(out, "%zx\r\n", len);
  evbuffer_add(out, data, len);
  if (req->chunked)
    evbuffer_add(out, "\r\n", 2);
}

void sg_http_reply_end(sg_http_req_t *req) {
  conn_t *c = req->c;
  if (c && req->chunked)
    evbuffer_add(sg_stream_output(c->s), "0\r\n\r\n", 5);
  req_done(req);
}

void sg_http_reply(sg_http_req_t *req, int status, const char *content_type, const void *body, size_t len) {
  if (content_type)
    sg_http_add_header(req, "Content-Type", content_type);
  char cl[24];
  snprintf(cl, sizeof(cl), "%zu", len);
  sg_http_add_header(req, "Content-Length", cl);
  sg_http_reply_start(req, status, NULL);
  sg_http_reply_chunk_mem(req, body, len);
  sg_http_reply_end(req);
}

void sg_http_reply_abort(sg_http_req_t *req) {
  conn_t *c = req->c;
  req->c = NULL;
  req_free(req);
  if (!c)
    return;
  c->req = NULL;
  /* Drop what is queued: a truncated answer must not look complete. */
  struct evbuffer *out = sg_stream_output(c->s);
  evbuffer_drain(out, evbuffer_get_length(out));
  conn_kill(c);
}

size_t sg_http_unsent(const sg_http_req_t *req) {
  return req->c ? evbuffer_get_length(sg_stream_output(req->c->s)) : 0;
}

void sg_http_set_drain_cb(sg_http_req_t *req, size_t low_water, void (*cb)(sg_http_req_t *, void *), void *arg) {
  req->drain_cb = cb;
  req->drain_arg = arg;
  req->low_water = low_water;
  if (req->c)
    sg_stream_set_low_water(req->c->s, cb ? low_water : 0);
}
