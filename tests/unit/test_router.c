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
#include "sgpu/util.h"

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

static char last_params[256];

static void buffered(void *ctx, sg_http_req_t *req, const sg_route_args_t *a) {
  calls++;
  snprintf(last_rest, sizeof(last_rest), "%s", a->rest);
  last_params[0] = '\0';
  for (size_t i = 0; i < a->n_params; i++)
    snprintf(last_params + strlen(last_params), sizeof(last_params) - strlen(last_params), "[%s]", a->param[i]);
  if (a->endpoint)
    snprintf(last_params + strlen(last_params), sizeof(last_params) - strlen(last_params), "ep=%s", a->endpoint);
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
static sg_router_auth_fn hook;

static char *exchange(const char *request) {
  signal(SIGPIPE, SIG_IGN);
  sg_log_set_level(SG_LOG_ERROR);
  struct event_base *base = event_base_new();
  sg_router_t *r = sg_router_new(KEY);
  sg_router_add(r, &(sg_route_t){.path = "/open", .public_route = true, .on_head = answer, .ctx = "open"});
  sg_router_add(
      r, &(sg_route_t){.path = "/m", .methods = SG_HTTP_GET, .scope = SG_SCOPE_READ, .on_head = answer, .ctx = "m"});
  sg_router_add(r,
                &(sg_route_t){.path = "/p/", .prefix = true, .scope = SG_SCOPE_ADMIN, .on_head = answer, .ctx = "p"});
  sg_router_add(
      r, &(sg_route_t){.path = "/b/", .prefix = true, .scope = SG_SCOPE_ADMIN, .on_request = buffered, .ctx = "b"});
  /* Patterns: parameters, the rest of the path, and one pattern with two rows. */
  sg_router_add(r, &(sg_route_t){.path = "/t/{endpoint}/w/{id}",
                                 .methods = SG_HTTP_GET,
                                 .scope = SG_SCOPE_READ,
                                 .on_request = buffered,
                                 .ctx = "t-get"});
  sg_router_add(r, &(sg_route_t){.path = "/t/{endpoint}/w/{id}",
                                 .methods = SG_HTTP_DELETE | SG_HTTP_PUT,
                                 .scope = SG_SCOPE_DEPLOY,
                                 .on_request = buffered,
                                 .ctx = "t-del"});
  sg_router_add(
      r, &(sg_route_t){
             .path = "/i/{ref*}", .methods = SG_HTTP_GET, .scope = SG_SCOPE_READ, .on_request = buffered, .ctx = "i"});
  sg_router_add(r, &(sg_route_t){.path = "/e/{endpoint}/*", .scope = SG_SCOPE_INVOKE, .on_head = answer, .ctx = "e"});
  if (hook)
    sg_router_set_auth(r, hook, NULL);
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

#define GET_WITH_KEY(path)                                                                                             \
  "GET " path " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " KEY "\r\nConnection: close\r\n\r\n"

static void test_pattern_parameters_reach_handler(void **state) {
  (void)state;
  calls = 0;
  char *a = exchange(GET_WITH_KEY("/t/echo/w/w-1"));
  assert_string_equal(body_of(a), "t-get");
  assert_string_equal(last_params, "[echo][w-1]ep=echo");
  assert_string_equal(last_rest, "echo/w/w-1");
  free(a);
  /* the second row of the same pattern, chosen by method */
  a = exchange("DELETE /t/echo/w/w-2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " KEY
               "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  assert_string_equal(body_of(a), "t-del");
  assert_string_equal(last_params, "[echo][w-2]ep=echo");
  free(a);
  a = exchange(GET_WITH_KEY("/i/registry:5000/a/b:tag"));
  assert_string_equal(body_of(a), "i");
  assert_string_equal(last_params, "[registry:5000/a/b:tag]");
  free(a);
  assert_int_equal(calls, 3);
}

static void test_pattern_mismatch_is_404_and_methods_of_all_rows_are_allowed(void **state) {
  (void)state;
  const char *missing[] = {GET_WITH_KEY("/t/echo/w"), GET_WITH_KEY("/t//w/x"), GET_WITH_KEY("/t/echo/w/x/y"),
                           GET_WITH_KEY("/i/"),       GET_WITH_KEY("/i/a//b"), GET_WITH_KEY("/e/"),
                           GET_WITH_KEY("/e/x-y")};
  calls = 0;
  for (size_t i = 0; i < sizeof(missing) / sizeof(missing[0]); i++) {
    char *a = exchange(missing[i]);
    if (i == SG_ARRAY_SIZE(missing) - 1) { /* /e/{endpoint} with nothing after is a match */
      assert_string_equal(body_of(a), "e");
    } else {
      assert_true(!strncmp(a, "HTTP/1.1 404 ", 13));
    }
    free(a);
  }
  assert_int_equal(calls, 1);
  char *a = exchange("POST /t/echo/w/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " KEY
                     "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  assert_true(!strncmp(a, "HTTP/1.1 405 ", 13));
  assert_non_null(strstr(a, "\r\nAllow: GET, PUT, DELETE\r\n"));
  free(a);
}

static bool seen_route; /* the hook was asked about a route (the router is freed after each exchange) */
static unsigned seen_scope;
static char seen_endpoint[64];
static int hook_calls;

/* Grants only routes of scope invoke, and records what it was asked. */
static bool invoke_only(void *ud, sg_http_req_t *req, const sg_route_t *rt, const char *endpoint) {
  hook_calls++;
  seen_route = rt != NULL;
  seen_scope = rt ? rt->scope : 0;
  snprintf(seen_endpoint, sizeof(seen_endpoint), "%s", endpoint ? endpoint : "(none)");
  if (!rt || sg_scope_grants(SG_SCOPE_INVOKE, rt->scope))
    return true;
  sg_http_send_error(req, 403, "forbidden", "no", NULL);
  return false;
}

static void test_auth_hook_decides_once_with_route_and_endpoint(void **state) {
  (void)state;
  hook = invoke_only;
  calls = hook_calls = 0;
  char *a = exchange("GET /e/my-ep/x/y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  assert_string_equal(body_of(a), "e");
  assert_string_equal(last_rest, "my-ep/x/y");
  assert_true(seen_route);
  assert_int_equal(seen_scope, SG_SCOPE_INVOKE);
  assert_string_equal(seen_endpoint, "my-ep");
  free(a);
  a = exchange("GET /t/my-ep/w/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  assert_true(!strncmp(a, "HTTP/1.1 403 ", 13));
  free(a);
  /* public routes never ask */
  a = exchange("GET /open HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  assert_string_equal(body_of(a), "open");
  free(a);
  /* no route: asked without one */
  a = exchange("GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  assert_true(!strncmp(a, "HTTP/1.1 404 ", 13));
  assert_false(seen_route);
  free(a);
  assert_int_equal(hook_calls, 3);
  assert_int_equal(calls, 2); /* /e/ and /open */
  hook = NULL;
}

static void test_scope_names_and_grants(void **state) {
  (void)state;
  char buf[64];
  assert_string_equal(sg_scope_str(SG_SCOPE_READ | SG_SCOPE_DEPLOY, buf, sizeof(buf)), "deploy|read");
  assert_string_equal(sg_route_methods_str(SG_HTTP_GET | SG_HTTP_DELETE, buf, sizeof(buf)), "GET|DELETE");
  assert_string_equal(sg_route_methods_str(SG_HTTP_ANY, buf, sizeof(buf)), "ANY");
  assert_int_equal(sg_scope_parse("invoke"), SG_SCOPE_INVOKE);
  assert_int_equal(sg_scope_parse("public"), 0);
  assert_int_equal(sg_scope_parse("root"), 0);
  assert_true(sg_scope_grants(SG_SCOPE_ADMIN, SG_SCOPE_READ));
  assert_true(sg_scope_grants(SG_SCOPE_READ, SG_SCOPE_READ | SG_SCOPE_DEPLOY));
  assert_false(sg_scope_grants(SG_SCOPE_INVOKE, SG_SCOPE_READ | SG_SCOPE_DEPLOY));
  assert_false(sg_scope_grants(SG_SCOPE_DEPLOY | SG_SCOPE_READ | SG_SCOPE_INVOKE, SG_SCOPE_ADMIN));
  assert_true(sg_scope_grants(0, SG_SCOPE_PUBLIC));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_public_route_needs_no_key),
      cmocka_unit_test(test_private_route_without_key_is_401_before_handler),
      cmocka_unit_test(test_key_reaches_prefix_handler_with_rest),
      cmocka_unit_test(test_unmatched_path_with_key_is_404),
      cmocka_unit_test(test_method_outside_set_is_405),
      cmocka_unit_test(test_route_without_on_head_gets_body_buffered),
      cmocka_unit_test(test_pattern_parameters_reach_handler),
      cmocka_unit_test(test_pattern_mismatch_is_404_and_methods_of_all_rows_are_allowed),
      cmocka_unit_test(test_auth_hook_decides_once_with_route_and_endpoint),
      cmocka_unit_test(test_scope_names_and_grants),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
