/* The router (http/router.c) behind a real server over a socketpair: the
 * key is checked once before any private handler, unmatched paths need the
 * key before they get 404, methods outside a route's set get 405, and the
 * error bodies are the HTTP module's, byte for byte. */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "http/http.h"
#include "http/router.h"
#include "sgpu/log.h"

#define KEY "sg_test_key"

static int calls;
static char last_rest[256];
static char last_body[256];

static sg_http_head_action_t answer(void *ctx, sg_http_req_t *req, const char *rest) {
  calls++;
  snprintf(last_rest, sizeof(last_rest), "%s", rest);
  sg_http_reply(req, 200, "text/plain", ctx, strlen(ctx));
  return SG_HTTP_DONE;
}

static void buffered(void *ctx, sg_http_req_t *req, const char *rest) {
  calls++;
  snprintf(last_rest, sizeof(last_rest), "%s", rest);
  struct evbuffer *b = sg_http_body(req);
  size_t n = evbuffer_get_length(b);
  if (n >= sizeof(last_body))
    n = sizeof(last_body) - 1;
  evbuffer_copyout(b, last_body, n);
  last_body[n] = '\0';
  sg_http_reply(req, 200, "text/plain", ctx, strlen(ctx));
}

/* Sends one request on a fresh connection; returns the whole answer (the
 * request says Connection: close, so the server ends it). */
static char *exchange(const char *request) {
  signal(SIGPIPE, SIG_IGN);
  sg_log_set_level(SG_LOG_ERROR);
  struct event_base *base = event_base_new();
  sg_router_t *r = sg_router_new(KEY);
  sg_router_add(r, &(sg_route_t){.path = "/open", .public_route = true, .on_head = answer, .ctx = "open"});
  sg_router_add(r, &(sg_route_t){.path = "/m", .methods = SG_HTTP_GET, .on_head = answer, .ctx = "m"});
  sg_router_add(r, &(sg_route_t){.path = "/p/", .prefix = true, .on_head = answer, .ctx = "p"});
  sg_router_add(r, &(sg_route_t){.path = "/b/", .prefix = true, .on_request = buffered, .ctx = "b"});
  sg_http_server_config_t cfg = {
      .max_buffered_body = 4096,
      .header_timeout_s = 10,
      .idle_timeout_s = 10,
      .io_timeout_s = 10,
      .on_head = sg_router_on_head,
      .on_request = sg_router_on_request,
      .ud = r,
  };
  sg_error_t *err = NULL;
  int port = 0;
  sg_http_server_t *srv = sg_http_server_new(base, &cfg, "127.0.0.1", 0, &port, &err);
  assert_non_null(srv);
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  sg_http_server_adopt(srv, sv[1]);
  assert_int_equal(send(sv[0], request, strlen(request), MSG_NOSIGNAL), (ssize_t)strlen(request));
  char *out = calloc(1, 65536);
  size_t len = 0;
  for (int i = 0; i < 10000; i++) {
    event_base_loop(base, EVLOOP_NONBLOCK);
    ssize_t n = recv(sv[0], out + len, 65535 - len, MSG_DONTWAIT);
    if (n == 0)
      break;
    if (n > 0)
      len += (size_t)n;
    else
      assert_true(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
  }
  close(sv[0]);
  sg_http_server_free(srv);
  sg_router_free(r);
  event_base_free(base);
  return out;
}

static const char *body_of(const char *answer) {
  const char *b = strstr(answer, "\r\n\r\n");
  assert_non_null(b);
  return b + 4;
}

static void test_public_route_needs_no_key(void **state) {
  (void)state;
  calls = 0;
  char *a = exchange("GET /open HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  assert_true(!strncmp(a, "HTTP/1.1 200 ", 13));
  assert_string_equal(body_of(a), "open");
  assert_int_equal(calls, 1);
  free(a);
}

static void test_private_route_without_key_is_401_before_handler(void **state) {
  (void)state;
  const char *reqs[] = {
      "GET /p/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
      "GET /p/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nConnection: close\r\n\r\n",
      "GET /p/x HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " KEY "\r\nConnection: close\r\n\r\n",
      "GET /p/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " KEY "x\r\nConnection: close\r\n\r\n",
      "GET /p/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \r\nConnection: close\r\n\r\n",
      /* an unmatched path needs the key before it gets 404 */
      "GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
    calls = 0;
    char *a = exchange(reqs[i]);
    assert_true(!strncmp(a, "HTTP/1.1 401 ", 13));
    assert_non_null(strstr(a, "\r\nWWW-Authenticate: Bearer realm=\"sgpu\"\r\n"));
    assert_string_equal(body_of(a), "{\"error\":{\"code\":\"unauthorized\",\"message\":\"missing or wrong API key "
                                    "(Authorization: Bearer <key>)\"}}\n");
    assert_int_equal(calls, 0);
    free(a);
  }
}

static void test_key_reaches_prefix_handler_with_rest(void **state) {
  (void)state;
  calls = 0;
  char *a = exchange("POST /p/a/b?q=1 HTTP/1.1\r\nHost: x\r\nAuthorization: bearer  " KEY
                     " \r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  assert_true(!strncmp(a, "HTTP/1.1 200 ", 13));
  assert_string_equal(body_of(a), "p");
  assert_string_equal(last_rest, "a/b");
  assert_int_equal(calls, 1);
  free(a);
}

static void test_unmatched_path_with_key_is_404(void **state) {
  (void)state;
  char *a = exchange("GET /p HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " KEY "\r\nConnection: close\r\n\r\n");
  assert_true(!strncmp(a, "HTTP/1.1 404 ", 13));
  assert_string_equal(body_of(a), "{\"error\":{\"code\":\"not_found\",\"message\":\"no such route\"}}\n");
  free(a);
}

static void test_method_outside_set_is_405(void **state) {
  (void)state;
  calls = 0;
  char *a = exchange("HEAD /m HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " KEY "\r\nConnection: close\r\n\r\n");
  assert_true(!strncmp(a, "HTTP/1.1 405 ", 13));
  assert_non_null(strstr(a, "\r\nAllow: GET\r\n"));
  assert_int_equal(calls, 0);
  free(a);
  a = exchange("POST /m HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " KEY
               "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  assert_string_equal(body_of(a), "{\"error\":{\"code\":\"method_not_allowed\",\"message\":\"method not allowed "
                                  "here; allowed: GET\"}}\n");
  assert_int_equal(calls, 0);
  free(a);
  a = exchange("GET /m HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " KEY "\r\nConnection: close\r\n\r\n");
  assert_string_equal(body_of(a), "m");
  assert_int_equal(calls, 1);
  free(a);
}

static void test_route_without_on_head_gets_body_buffered(void **state) {
  (void)state;
  calls = 0;
  last_body[0] = '\0';
  char *a = exchange("PUT /b/thing HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " KEY
                     "\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
  assert_true(!strncmp(a, "HTTP/1.1 200 ", 13));
  assert_string_equal(body_of(a), "b");
  assert_string_equal(last_rest, "thing");
  assert_string_equal(last_body, "hello");
  assert_int_equal(calls, 1);
  free(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_public_route_needs_no_key),
      cmocka_unit_test(test_private_route_without_key_is_401_before_handler),
      cmocka_unit_test(test_key_reaches_prefix_handler_with_rest),
      cmocka_unit_test(test_unmatched_path_with_key_is_404),
      cmocka_unit_test(test_method_outside_set_is_405),
      cmocka_unit_test(test_route_without_on_head_gets_body_buffered),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
