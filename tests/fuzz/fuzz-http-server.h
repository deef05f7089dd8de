/* The HTTP server as a whole under a fuzzer (h2o's fuzz/driver.cc style):
 * each input is written, a line at a time, into one end of a socketpair
 * whose other end the server adopted as an accepted connection, and the event
 * loop runs until the server closes the connection or a bound of iterations
 * passes.
 *
 * The handlers behave like the real owners of requests. By path:
 *   /stream...  streams the body and answers from a timer after it ended
 *   /early...   streams the body and starts its answer from a timer before
 *               the body ended (the proxy with a worker that answers early)
 *   /pause...   streams the body, pausing and resuming it (backpressure)
 *   /buffer...  buffered body, answered in on_request
 *   anything    answered at once from on_head
 * Owners are counted: once the connection is closed none may be left, so a
 * request that ended without its owner hearing of it is caught, and one used
 * after it ended is caught by ASan. Every header is read whole (strlen), and
 * the header count must not change after the head (trailers are not headers).
 *
 * Included by the fuzz targets that drive the server (fuzz_server.c,
 * fuzz_http_chunked.c). Loop-thread only; not thread-safe. */
#ifndef SGPU_FUZZ_HTTP_SERVER_H
#define SGPU_FUZZ_HTTP_SERVER_H

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http/http.h"
#include "sgpu/log.h"

#define FZ_LOOP_BOUND 400

static struct event_base *fz_base;
static sg_http_server_t *fz_srv;
static int fz_owners; /* owners alive */

typedef struct fz_owner {
  sg_http_req_t *req;
  struct event *ev;
  size_t body;
  size_t headers; /* count seen at the head */
  int step;
  bool early, pause, ended, started;
} fz_owner_t;

static void fz_touch_headers(const sg_http_req_t *req) {
  size_t n = sg_http_header_count(req);
  size_t sum = strlen(sg_http_method(req)) + strlen(sg_http_target(req)) + strlen(sg_http_path(req));
  for (size_t i = 0; i < n; i++) {
    const char *name, *value;
    sg_http_header_at(req, i, &name, &value);
    sum += strlen(name) + strlen(value);
  }
  if (sg_http_query(req))
    sum += strlen(sg_http_query(req));
  if (sum == SIZE_MAX)
    abort();
}

static void fz_owner_free(fz_owner_t *o) {
  event_free(o->ev);
  free(o);
  fz_owners--;
}

static void fz_closed(sg_http_req_t *req, void *arg) {
  fz_owner_t *o = arg;
  if (o->req != req)
    abort();
  fz_owner_free(o);
}

static void fz_arm(fz_owner_t *o) {
  struct timeval tv = {0, 0};
  evtimer_add(o->ev, &tv);
}

/* The owner's own end: it forgets the request before answering. */
static void fz_answer_end(fz_owner_t *o) {
  sg_http_req_t *req = o->req;
  sg_http_set_close_cb(req, NULL, NULL);
  sg_http_set_drain_cb(req, 0, NULL, NULL);
  if (sg_http_header_count(req) != o->headers)
    abort(); /* trailers became headers */
  fz_touch_headers(req);
  if (!o->started) {
    char body[64];
    int n = snprintf(body, sizeof(body), "{\"body\":%zu}\n", o->body);
    fz_owner_free(o);
    sg_http_reply(req, 200, "application/json", body, (size_t)n);
    return;
  }
  fz_owner_free(o);
  sg_http_reply_chunk_mem(req, "end\n", 4);
  sg_http_reply_end(req);
}

static void fz_timer(evutil_socket_t fd, short what, void *arg) {
  fz_owner_t *o = arg;
  if (o->ended) {
    fz_answer_end(o);
    return;
  }
  if (o->early && !o->started) {
    o->started = true;
    sg_http_add_header(o->req, "X-Early", "1");
    sg_http_reply_start(o->req, 200, NULL);
    sg_http_reply_chunk_mem(o->req, "early\n", 6);
  }
  if (o->pause)
    sg_http_pause_body(o->req, false);
}

static void fz_data(sg_http_req_t *req, struct evbuffer *data, void *arg) {
  fz_owner_t *o = arg;
  if (o->req != req)
    abort();
  o->body += evbuffer_get_length(data);
  evbuffer_drain(data, evbuffer_get_length(data));
  if (o->pause && (o->step++ & 1) == 0) {
    sg_http_pause_body(req, true);
    fz_arm(o);
  }
}

static void fz_end(sg_http_req_t *req, void *arg) {
  fz_owner_t *o = arg;
  if (o->req != req)
    abort();
  o->ended = true;
  fz_arm(o); /* answered later, as a worker's answer would be */
}

static sg_http_head_action_t fz_on_head(void *ud, sg_http_req_t *req) {
  fz_touch_headers(req);
  sg_http_header(req, "Transfer-Encoding");
  const char *path = sg_http_path(req);
  bool early = !strncmp(path, "/early", 6), pause = !strncmp(path, "/pause", 6);
  if (!strncmp(path, "/stream", 7) || early || pause) {
    fz_owner_t *o = calloc(1, sizeof(*o));
    if (!o)
      abort();
    fz_owners++;
    o->req = req;
    o->early = early;
    o->pause = pause;
    o->headers = sg_http_header_count(req);
    o->ev = evtimer_new(fz_base, fz_timer, o);
    sg_http_set_close_cb(req, fz_closed, o);
    sg_http_stream_body(req, fz_data, fz_end, o);
    if (early)
      fz_arm(o);
    return SG_HTTP_STREAM;
  }
  if (!strncmp(path, "/buffer", 7))
    return SG_HTTP_BUFFER;
  sg_http_add_header(req, "X-Path", path);
  sg_http_reply(req, 200, "text/plain", "ok\n", 3);
  return SG_HTTP_DONE;
}

static void fz_on_request(void *ud, sg_http_req_t *req) {
  fz_touch_headers(req);
  char body[64];
  int n = snprintf(body, sizeof(body), "%zu\n", evbuffer_get_length(sg_http_body(req)));
  sg_http_reply(req, 200, "text/plain", body, (size_t)n);
}

static void fz_init(void) {
  if (fz_srv)
    return;
  signal(SIGPIPE, SIG_IGN);
  sg_log_set_level(SG_LOG_ERROR);
  fz_base = event_base_new();
  sg_http_server_config_t cfg = {
      .max_header_bytes = 8192,
      .max_headers = 16,
      .max_connections = 4,
      .max_buffered_body = 65536,
      .header_timeout_s = 10,
      .idle_timeout_s = 10,
      .io_timeout_s = 10,
      .on_head = fz_on_head,
      .on_request = fz_on_request,
  };
  sg_error_t *err = NULL;
  int port;
  fz_srv = sg_http_server_new(fz_base, &cfg, "127.0.0.1", 0, &port, &err);
  if (!fz_srv)
    abort();
}

/* Reads and drops what the server wrote; true once it closed its end. */
static bool fz_drain(int fd) {
  char buf[16384];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0)
      continue;
    if (n == 0)
      return true;
    if (errno == EINTR)
      continue;
    return errno != EAGAIN && errno != EWOULDBLOCK;
  }
}

static void fz_pump(int fd, int rounds, bool *closed) {
  for (int i = 0; i < rounds && !*closed; i++) {
    event_base_loop(fz_base, EVLOOP_NONBLOCK);
    *closed = fz_drain(fd);
  }
}

/* Runs one connection over prefix then data. */
static void fz_run(const char *prefix, size_t prefix_len, const uint8_t *data, size_t size) {
  fz_init();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
    abort();
  sg_http_server_adopt(fz_srv, sv[1]);
  bool closed = false;
  if (prefix_len > 0 && send(sv[0], prefix, prefix_len, MSG_NOSIGNAL) < 0 && errno != EPIPE && errno != ECONNRESET)
    abort();
  fz_pump(sv[0], 2, &closed);
  /* A line at a time, so that heads, chunk sizes and trailers arrive split. */
  size_t off = 0;
  while (off < size && !closed) {
    const uint8_t *nl = memchr(data + off, '\n', size - off);
    size_t len = nl ? (size_t)(nl - (data + off)) + 1 : size - off;
    size_t sent = 0;
    while (sent < len && !closed) {
      ssize_t n = send(sv[0], data + off + sent, len - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0)
        sent += (size_t)n;
      else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        closed = true;
      fz_pump(sv[0], 1, &closed);
    }
    off += len;
    fz_pump(sv[0], 2, &closed);
  }
  shutdown(sv[0], SHUT_WR);
  fz_pump(sv[0], FZ_LOOP_BOUND, &closed);
  close(sv[0]);
  /* The server notices the close and frees the connection. */
  for (int i = 0; i < FZ_LOOP_BOUND && fz_owners > 0; i++)
    event_base_loop(fz_base, EVLOOP_NONBLOCK);
  if (closed && fz_owners != 0)
    abort(); /* a request ended without its owner hearing of it */
}

#endif
