/* Client connections (to workers): streams with an http-parser
 * response parser. See upstream.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "http/stream.h"
#include "http/upstream.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define MAX_HEADERS 128
#define MAX_HEAD_BYTES (64u << 10)

enum up_state { U_CONNECTING, U_IDLE, U_BUSY, U_DEAD };

struct sg_upstream {
  sg_stream_t *s;
  struct event_base *base;
  struct event *deadline; /* the exchange's deadline; NULL until one is set */
  http_parser parser;
  enum up_state state;
  bool connected;
  bool reused;
  bool head_request;
  bool answer_started;
  bool in_cb;
  bool free_pending;
  const sg_upstream_handler_t *h;
  void *arg;
  /* the answer's head while it is parsed */
  char *names[MAX_HEADERS];
  char *values[MAX_HEADERS];
  size_t n_headers;
  size_t head_bytes;
  bool in_value;
  bool head_done; /* header callbacks now carry trailers: counted and dropped */
  struct evbuffer *piece;
};

static const http_parser_settings settings;

static void clear_headers(sg_upstream_t *u) {
  for (size_t i = 0; i < u->n_headers; i++) {
    free(u->names[i]);
    free(u->values[i]);
    u->names[i] = u->values[i] = NULL;
  }
  u->n_headers = 0;
  u->head_bytes = 0;
  u->in_value = false;
  u->head_done = false;
}

static void stop_deadline(sg_upstream_t *u) {
  if (u->deadline)
    event_del(u->deadline);
}

static void really_free(sg_upstream_t *u) {
  clear_headers(u);
  if (u->deadline)
    event_free(u->deadline);
  sg_stream_free(u->s);
  evbuffer_free(u->piece);
  free(u);
}

void sg_upstream_free(sg_upstream_t *u) {
  if (!u)
    return;
  u->h = NULL;
  u->state = U_DEAD;
  stop_deadline(u);
  if (u->in_cb) {
    u->free_pending = true;
    return;
  }
  really_free(u);
}

/* Ends the exchange with an error and marks the connection dead. */
static void fail(sg_upstream_t *u, sg_upstream_error_t e) {
  const sg_upstream_handler_t *h = u->h;
  bool started = u->answer_started;
  u->state = U_DEAD;
  u->h = NULL;
  stop_deadline(u);
  sg_stream_read(u->s, false);
  if (h && h->on_error)
    h->on_error(u->arg, e, started);
}

static char *append(char *s, const char *at, size_t len) {
  size_t n = s ? strlen(s) : 0;
  s = xrealloc(s, n + len + 1);
  memcpy(s + n, at, len);
  s[n + len] = '\0';
  return s;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
  sg_upstream_t *u = p->data;
  if (u->head_bytes + len > MAX_HEAD_BYTES)
    return -1;
  if (u->head_done) { /* a trailer of a chunked answer */
    u->head_bytes += len;
    return 0;
  }
  if (u->in_value || u->n_headers == 0) {
    if (u->n_headers == MAX_HEADERS)
      return -1;
    u->n_headers++;
    u->in_value = false;
  }
  u->head_bytes += len;
  u->names[u->n_headers - 1] = append(u->names[u->n_headers - 1], at, len);
  return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  sg_upstream_t *u = p->data;
  if (u->head_bytes + len > MAX_HEAD_BYTES)
    return -1;
  u->head_bytes += len;
  if (u->head_done || u->n_headers == 0)
    return 0;
  u->in_value = true;
  u->values[u->n_headers - 1] = append(u->values[u->n_headers - 1], at, len);
  return 0;
}

static int on_headers_complete(http_parser *p) {
  sg_upstream_t *u = p->data;
  if (p->status_code >= 100 && p->status_code < 200)
    return 1; /* an interim answer has no body whatever it says; its headers are dropped with it */
  u->answer_started = true;
  sg_upstream_header_t hs[MAX_HEADERS];
  for (size_t i = 0; i < u->n_headers; i++) {
    hs[i].name = u->names[i];
    hs[i].value = u->values[i] ? u->values[i] : "";
  }
  if (u->h && u->h->on_head)
    u->h->on_head(u->arg, p->status_code, hs, u->n_headers);
  clear_headers(u);
  u->head_done = true; /* trailers, if any, are not forwarded */
  return u->head_request ? 1 : 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  sg_upstream_t *u = p->data;
  if (!u->h || !u->answer_started)
    return 0;
  evbuffer_add(u->piece, at, len);
  u->h->on_body(u->arg, u->piece);
  evbuffer_drain(u->piece, evbuffer_get_length(u->piece));
  return 0;
}

static int on_message_complete(http_parser *p) {
  sg_upstream_t *u = p->data;
  if (!u->answer_started) { /* the end of an interim answer */
    clear_headers(u);
    return 0;
  }
  const sg_upstream_handler_t *h = u->h;
  bool keep = http_should_keep_alive(p) && u->state == U_BUSY;
  u->state = keep ? U_IDLE : U_DEAD;
  u->h = NULL;
  stop_deadline(u);
  http_parser_pause(p, 1);
  if (h && h->on_done)
    h->on_done(u->arg);
  return 0;
}

static const http_parser_settings settings = {
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void parse(sg_upstream_t *u, bool eof) {
  struct evbuffer *in = sg_stream_input(u->s);
  if (u->state != U_BUSY) {
    /* Bytes (or a close) on an idle connection: it cannot be reused. */
    if (evbuffer_get_length(in) > 0 || eof)
      u->state = U_DEAD;
    return;
  }
  while (u->state == U_BUSY && evbuffer_get_length(in) > 0) {
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
      break;
    size_t n = http_parser_execute(&u->parser, &settings, v.iov_base, v.iov_len);
    evbuffer_drain(in, n);
    enum http_errno e = HTTP_PARSER_ERRNO(&u->parser);
    if (e == HPE_PAUSED) {
      http_parser_pause(&u->parser, 0);
      if (u->state == U_IDLE && evbuffer_get_length(in) > 0)
        u->state = U_DEAD; /* more than one answer came */
      return;
    }
    if (e != HPE_OK) {
      fail(u, SG_UP_BAD_RESPONSE);
      return;
    }
    if (u->free_pending)
      return;
  }
  if (eof && u->state == U_BUSY) {
    /* A body delimited by the close ends here. */
    http_parser_execute(&u->parser, &settings, NULL, 0);
    if (u->state == U_BUSY)
      fail(u, SG_UP_BROKEN);
  }
}

static void read_cb(sg_stream_t *s, void *arg) {
  sg_upstream_t *u = arg;
  u->in_cb = true;
  parse(u, false);
  u->in_cb = false;
  if (u->free_pending)
    really_free(u);
}

static void drain_cb(sg_stream_t *s, void *arg) {
  sg_upstream_t *u = arg;
  if (u->state == U_BUSY && u->h && u->h->on_drain) {
    u->in_cb = true;
    u->h->on_drain(u->arg);
    u->in_cb = false;
    if (u->free_pending)
      really_free(u);
  }
}

static void event_cb(sg_stream_t *s, int what, void *arg) {
  sg_upstream_t *u = arg;
  u->in_cb = true;
  if (what & SG_STREAM_CONNECTED) {
    u->connected = true;
    sg_stream_set_timeouts(u->s, 0, 0);
    if (u->state == U_CONNECTING)
      u->state = U_IDLE;
  } else if (!u->connected) {
    u->state = U_DEAD;
    fail(u, SG_UP_CONNECT_FAILED);
  } else if (what & SG_STREAM_EOF) {
    parse(u, true);
    u->state = U_DEAD;
  } else {
    if (u->state == U_BUSY)
      fail(u, SG_UP_BROKEN);
    u->state = U_DEAD;
  }
  u->in_cb = false;
  if (u->free_pending)
    really_free(u);
}

static const sg_stream_callbacks_t stream_cbs = {read_cb, drain_cb, event_cb};

static void deadline_cb(evutil_socket_t fd, short what, void *arg) {
  sg_upstream_t *u = arg;
  if (u->state != U_BUSY)
    return;
  u->in_cb = true;
  fail(u, u->connected ? SG_UP_TIMEOUT : SG_UP_CONNECT_FAILED);
  u->in_cb = false;
  if (u->free_pending)
    really_free(u);
}

void sg_upstream_set_deadline(sg_upstream_t *u, double seconds) {
  if (seconds <= 0 || u->state != U_BUSY) {
    stop_deadline(u);
    return;
  }
  if (!u->deadline)
    u->deadline = evtimer_new(u->base, deadline_cb, u);
  struct timeval tv = {(time_t)seconds, (suseconds_t)((seconds - (double)(time_t)seconds) * 1e6)};
  evtimer_add(u->deadline, &tv);
}

sg_upstream_t *sg_upstream_new(struct event_base *base, const char *host, int port, double connect_timeout_s) {
  sg_upstream_t *u = xcalloc(1, sizeof(*u));
  u->base = base;
  u->piece = evbuffer_new();
  u->state = U_CONNECTING;
  http_parser_init(&u->parser, HTTP_RESPONSE);
  u->parser.data = u;
  u->s = sg_stream_connect(base, host, port, &stream_cbs, u);
  sg_stream_set_timeouts(u->s, 0, connect_timeout_s);
  return u;
}

sg_upstream_t *sg_upstream_adopt(struct event_base *base, int fd) {
  sg_upstream_t *u = xcalloc(1, sizeof(*u));
  u->base = base;
  u->piece = evbuffer_new();
  u->state = U_IDLE;
  u->connected = true;
  http_parser_init(&u->parser, HTTP_RESPONSE);
  u->parser.data = u;
  u->s = sg_stream_new(base, fd, &stream_cbs, u);
  sg_stream_read(u->s, false);
  return u;
}

bool sg_upstream_reused(const sg_upstream_t *u) { return u->reused; }

bool sg_upstream_usable(const sg_upstream_t *u) {
  return (u->state == U_IDLE || u->state == U_CONNECTING) && !u->free_pending;
}

void sg_upstream_begin(sg_upstream_t *u, const sg_upstream_handler_t *h, void *arg, bool head_request) {
  u->h = h;
  u->arg = arg;
  u->head_request = head_request;
  u->answer_started = false;
  clear_headers(u);
  if (u->state == U_IDLE && u->connected)
    u->reused = true;
  u->state = U_BUSY;
  http_parser_init(&u->parser, HTTP_RESPONSE);
  u->parser.data = u;
  sg_stream_read(u->s, true);
}

struct evbuffer *sg_upstream_output(sg_upstream_t *u) {
  return sg_stream_output(u->s);
}

size_t sg_upstream_unsent(const sg_upstream_t *u) { return evbuffer_get_length(sg_stream_output(u->s)); }

void sg_upstream_set_drain(sg_upstream_t *u, size_t low_water) { sg_stream_set_low_water(u->s, low_water); }

void sg_upstream_pause(sg_upstream_t *u, bool paused) {
  if (paused)
    sg_stream_read(u->s, false);
  else if (u->state != U_DEAD)
    sg_stream_read(u->s, true);
}

void sg_upstream_detach(sg_upstream_t *u) {
  u->h = NULL;
  stop_deadline(u);
  if (u->state == U_BUSY)
    u->state = U_DEAD;
}
