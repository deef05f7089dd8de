/* Fuzz target for the upstream response parser (libFuzzer entry point): the
 * input is what a worker answers on a kept-alive connection, one exchange
 * then, if the connection may be reused, a second one. Every header handed to
 * the gateway is read whole; trailers of the first answer must not show up as
 * headers of the second; an exchange ends exactly once (done or error). */
#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http/upstream.h"
#include "sgpu/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define LOOP_BOUND 400

static struct event_base *base;

typedef struct exchange {
  int ends;
  bool head;
  bool trailer_only; /* X-Trailer-Only cannot be a header of this answer */
} exchange_t;

static void on_head(void *arg, int status, const sg_upstream_header_t *h, size_t n) {
  exchange_t *x = arg;
  if (x->head || x->ends || status > 999)
    abort();
  x->head = true;
  for (size_t i = 0; i < n; i++) {
    if (strlen(h[i].name) + strlen(h[i].value) == SIZE_MAX)
      abort();
    if (x->trailer_only && !strcasecmp(h[i].name, "X-Trailer-Only"))
      abort(); /* a trailer of the first answer passed for a header of the second */
  }
}

static void on_body(void *arg, struct evbuffer *d) {
  exchange_t *x = arg;
  if (!x->head || x->ends)
    abort();
  evbuffer_drain(d, evbuffer_get_length(d));
}

static void on_done(void *arg) {
  exchange_t *x = arg;
  if (!x->head)
    abort();
  x->ends++;
}

static void on_error(void *arg, sg_upstream_error_t e, bool started) {
  exchange_t *x = arg;
  if (started != x->head)
    abort();
  x->ends++;
}

static const sg_upstream_handler_t handler = {on_head, on_body, on_done, on_error, NULL};

/* Whether X-Trailer-Only, in any case, occurs in d[0..n). */
static bool mentions_trailer(const uint8_t *d, size_t n) {
  for (size_t i = 0; i + 14 <= n; i++)
    if (!strncasecmp((const char *)d + i, "X-Trailer-Only", 14))
      return true;
  return false;
}

static void drain(int fd) {
  char buf[4096];
  while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
    ;
}

static void pump(int fd, const exchange_t *x, int rounds) {
  for (int i = 0; i < rounds && !x->ends; i++) {
    event_base_loop(base, EVLOOP_NONBLOCK);
    drain(fd);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!base) {
    signal(SIGPIPE, SIG_IGN);
    sg_log_set_level(SG_LOG_ERROR);
    base = event_base_new();
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
    abort();
  sg_upstream_t *u = sg_upstream_adopt(base, sv[1]);
  exchange_t first = {0}, second = {0};
  sg_upstream_begin(u, &handler, &first, false);
  evbuffer_add(sg_upstream_output(u), "GET / HTTP/1.1\r\nHost: w\r\n\r\n", 27);
  /* A line at a time, so that heads, chunks and trailers arrive split. */
  size_t off = 0;
  bool second_begun = false;
  while (off < size) {
    const uint8_t *nl = memchr(data + off, '\n', size - off);
    size_t len = nl ? (size_t)(nl - (data + off)) + 1 : size - off;
    if (send(sv[0], data + off, len, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
      break;
    off += len;
    event_base_loop(base, EVLOOP_NONBLOCK);
    drain(sv[0]);
    if (first.ends && !second.head && !second.ends && sg_upstream_usable(u) && !second_begun) {
      /* The first answer ended within the line just sent (a line is read
       * whole: inputs are shorter than one read), so the second one is
       * parsed from no earlier than that line. Where it starts cannot be
       * told by spelling: the parser takes "Hxxxx1.1 200" as a status line. */
      sg_upstream_begin(u, &handler, &second, false);
      second_begun = true;
      second.trailer_only = !mentions_trailer(data + off - len, size - (off - len));
    }
  }
  shutdown(sv[0], SHUT_WR);
  pump(sv[0], &first, LOOP_BOUND);
  if (first.ends && second.head)
    pump(sv[0], &second, LOOP_BOUND);
  if (first.ends > 1 || second.ends > 1)
    abort();
  close(sv[0]);
  sg_upstream_detach(u);
  sg_upstream_free(u);
  for (int i = 0; i < 4; i++)
    event_base_loop(base, EVLOOP_NONBLOCK);
  return 0;
}
