/* The stream's inactivity timeouts (http/stream.c) over a socketpair: a read
 * timeout fires when no byte comes in time, and one turned off never fires
 * again, not even after later reads (libevent re-arms the period a
 * persistent event was last added with). */
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

#include "http/stream.h"

#define TIMEOUT_S 0.05
/* Many times TIMEOUT_S: a timeout still armed would fire well within it. */
#define QUIET_S 0.5

static struct event_base *base;
static int peer;
static sg_stream_t *st;
static int reads, timeouts, others;

static void on_read(sg_stream_t *s, void *arg) {
  struct evbuffer *in = sg_stream_input(s);
  evbuffer_drain(in, evbuffer_get_length(in));
  reads++;
  event_base_loopbreak(base);
}

static void on_event(sg_stream_t *s, int what, void *arg) {
  if (what & SG_STREAM_TIMEOUT)
    timeouts++;
  else
    others++;
  event_base_loopbreak(base);
}

static const sg_stream_callbacks_t cbs = {on_read, NULL, on_event};

static int setup(void **state) {
  signal(SIGPIPE, SIG_IGN);
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  base = event_base_new();
  st = sg_stream_new(base, sv[0], &cbs, NULL);
  peer = sv[1];
  reads = timeouts = others = 0;
  return 0;
}

static int teardown(void **state) {
  sg_stream_free(st);
  close(peer);
  event_base_free(base);
  return 0;
}

static void send_peer(const char *s) { assert_int_equal(write(peer, s, strlen(s)), (ssize_t)strlen(s)); }

/* Runs the loop until a callback breaks it or seconds passed. */
static void run_for(double seconds) {
  struct timeval tv = {(time_t)seconds, (suseconds_t)((seconds - (double)(time_t)seconds) * 1e6)};
  event_base_loopexit(base, &tv);
  event_base_dispatch(base);
}

static void test_read_timeout_fires(void **state) {
  sg_stream_set_timeouts(st, TIMEOUT_S, 0);
  run_for(10);
  assert_int_equal(timeouts, 1);
}

static void test_read_timeout_turned_off_stays_off(void **state) {
  sg_stream_set_timeouts(st, TIMEOUT_S, 0);
  send_peer("a");
  run_for(10);
  assert_int_equal(reads, 1);
  sg_stream_set_timeouts(st, 0, 0);
  /* More bytes: the event fires again, and must not bring its old timeout back. */
  send_peer("b");
  run_for(10);
  assert_int_equal(reads, 2);
  run_for(QUIET_S);
  assert_int_equal(timeouts, 0);
  assert_int_equal(others, 0);
}

static void test_read_timeout_turned_off_from_a_read(void **state) {
  /* Turned off while the event is running (as the server does from a read). */
  sg_stream_set_timeouts(st, TIMEOUT_S, 0);
  send_peer("a");
  run_for(10);
  sg_stream_set_timeouts(st, 0, 0);
  sg_stream_set_timeouts(st, TIMEOUT_S, 0);
  sg_stream_set_timeouts(st, 0, 0);
  send_peer("b");
  run_for(10);
  run_for(QUIET_S);
  assert_int_equal(reads, 2);
  assert_int_equal(timeouts, 0);
}

static void test_read_timeout_back_on(void **state) {
  sg_stream_set_timeouts(st, 0, 0);
  send_peer("a");
  run_for(10);
  sg_stream_set_timeouts(st, TIMEOUT_S, 0);
  run_for(10);
  assert_int_equal(timeouts, 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_read_timeout_fires, setup, teardown),
      cmocka_unit_test_setup_teardown(test_read_timeout_turned_off_stays_off, setup, teardown),
      cmocka_unit_test_setup_teardown(test_read_timeout_turned_off_from_a_read, setup, teardown),
      cmocka_unit_test_setup_teardown(test_read_timeout_back_on, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
