/* The upstream client's deadline (http/upstream.c) over a socketpair: an
 * exchange whose answer does not end in time fails with SG_UP_TIMEOUT,
 * whether no byte came, the head trickled or the body never ended; an answer
 * that ends in time cancels it; the handler may free the connection from the
 * error it gets. */
#include <event2/buffer.h>
#include <event2/event.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "http/upstream.h"

#define DEADLINE_S 0.05
#define GUARD_S 10

typedef struct exchange {
  int status;
  size_t body;
  int done;
  int errors;
  sg_upstream_error_t err;
  bool started;
  bool free_on_error;
  sg_upstream_t *u;
} exchange_t;

static struct event_base *base;
static int peer;
static sg_upstream_t *up;

static void on_head(void *arg, int status, const sg_upstream_header_t *headers, size_t n) {
  exchange_t *x = arg;
  x->status = status;
}

static void on_body(void *arg, struct evbuffer *data) {
  exchange_t *x = arg;
  x->body += evbuffer_get_length(data);
  evbuffer_drain(data, evbuffer_get_length(data));
}

static void on_done(void *arg) {
  exchange_t *x = arg;
  x->done++;
  event_base_loopbreak(base);
}

static void on_error(void *arg, sg_upstream_error_t err, bool started) {
  exchange_t *x = arg;
  x->errors++;
  x->err = err;
  x->started = started;
  if (x->free_on_error) {
    sg_upstream_free(x->u);
    up = NULL;
  }
  event_base_loopbreak(base);
}

static const sg_upstream_handler_t handler = {on_head, on_body, on_done, on_error, NULL};

static int setup(void **state) {
  signal(SIGPIPE, SIG_IGN);
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  base = event_base_new();
  up = sg_upstream_adopt(base, sv[0]);
  peer = sv[1];
  return 0;
}

static int teardown(void **state) {
  sg_upstream_free(up);
  up = NULL;
  close(peer);
  event_base_free(base);
  return 0;
}

static void begin(exchange_t *x) {
  x->u = up;
  sg_upstream_begin(up, &handler, x, false);
  evbuffer_add_printf(sg_upstream_output(up), "GET /health HTTP/1.1\r\nHost: w\r\n\r\n");
  sg_upstream_set_deadline(up, DEADLINE_S);
}

static void send_peer(const char *s) { assert_int_equal(write(peer, s, strlen(s)), (ssize_t)strlen(s)); }

/* Runs the loop until the exchange ends or, at the latest, GUARD_S. */
static void run(void) {
  struct timeval guard = {GUARD_S, 0};
  event_base_loopexit(base, &guard);
  event_base_dispatch(base);
}

/* Runs the loop for seconds, whatever happens. */
static void run_for(double seconds) {
  struct timeval tv = {(time_t)seconds, (suseconds_t)((seconds - (double)(time_t)seconds) * 1e6)};
  event_base_loopexit(base, &tv);
  while (!event_base_got_exit(base))
    event_base_loop(base, EVLOOP_ONCE);
}

static void test_no_answer_times_out(void **state) {
  exchange_t x = {0};
  begin(&x);
  run();
  assert_int_equal(x.errors, 1);
  assert_int_equal(x.err, SG_UP_TIMEOUT);
  assert_false(x.started);
  assert_int_equal(x.done, 0);
  assert_false(sg_upstream_usable(up));
}

static void test_trickling_head_times_out(void **state) {
  exchange_t x = {0};
  begin(&x);
  send_peer("HTTP/1.1 200 OK\r\nX-Slow: a");
  run();
  assert_int_equal(x.errors, 1);
  assert_int_equal(x.err, SG_UP_TIMEOUT);
  assert_false(x.started);
  assert_int_equal(x.status, 0);
}

static void test_endless_body_times_out_after_head(void **state) {
  exchange_t x = {0};
  begin(&x);
  send_peer("HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n");
  run();
  assert_int_equal(x.status, 503);
  assert_int_equal(x.body, 4);
  assert_int_equal(x.errors, 1);
  assert_int_equal(x.err, SG_UP_TIMEOUT);
  assert_true(x.started);
  assert_int_equal(x.done, 0);
}

static void test_answer_in_time_cancels_deadline(void **state) {
  exchange_t x = {0};
  begin(&x);
  send_peer("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
  run();
  assert_int_equal(x.done, 1);
  assert_int_equal(x.status, 200);
  /* Past the deadline: no error comes, and the connection serves another exchange. */
  run_for(4 * DEADLINE_S);
  assert_int_equal(x.errors, 0);
  assert_true(sg_upstream_usable(up));
  exchange_t y = {0};
  begin(&y);
  send_peer("HTTP/1.1 404 X\r\nContent-Length: 0\r\n\r\n");
  run();
  assert_int_equal(y.done, 1);
  assert_int_equal(y.status, 404);
  assert_int_equal(y.errors, 0);
}

static void test_handler_frees_connection_on_timeout(void **state) {
  exchange_t x = {.free_on_error = true};
  begin(&x);
  run();
  assert_int_equal(x.errors, 1);
  assert_int_equal(x.err, SG_UP_TIMEOUT);
  assert_null(up);
  /* Nothing of the freed connection runs later. */
  run_for(2 * DEADLINE_S);
  assert_int_equal(x.errors, 1);
}

static void test_deadline_zero_is_none(void **state) {
  exchange_t x = {0};
  x.u = up;
  sg_upstream_begin(up, &handler, &x, false);
  sg_upstream_set_deadline(up, DEADLINE_S);
  sg_upstream_set_deadline(up, 0);
  run_for(4 * DEADLINE_S);
  assert_int_equal(x.errors, 0);
  send_peer("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  run();
  assert_int_equal(x.done, 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_no_answer_times_out, setup, teardown),
      cmocka_unit_test_setup_teardown(test_trickling_head_times_out, setup, teardown),
      cmocka_unit_test_setup_teardown(test_endless_body_times_out_after_head, setup, teardown),
      cmocka_unit_test_setup_teardown(test_answer_in_time_cancels_deadline, setup, teardown),
      cmocka_unit_test_setup_teardown(test_handler_frees_connection_on_timeout, setup, teardown),
      cmocka_unit_test_setup_teardown(test_deadline_zero_is_none, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
