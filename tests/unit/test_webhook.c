/* Webhook delivery (gateway/webhook.c) against a local HTTP server: retries
 * timed on the loop, giving up, the allow-list, stop with a retry waiting,
 * the bound on waiting deliveries, a newer body of a job superseding an
 * older one and the allow-list check at submission. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gateway/webhook.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

/* ---- a local HTTP server: answers each request with the next status of
 * its script (the last one repeats) and records what it got ---- */

struct server {
  int fd, port;
  pthread_t thread;
  pthread_mutex_t mu;
  bool stop;
  int statuses[4], n_statuses;
  int hits;
  char path[64];
  char body[256];
  bool bodies_differ;
  bool hold_first; /* the first answer waits until released is set */
  bool released;
};

/* Reads one request: head and Content-Length body. Returns 0 or -1. */
static int read_request(int c, char *path, size_t plen, char *body, size_t blen) {
  char buf[8192] = "";
  size_t n = 0;
  char *end = NULL;
  while (!(end = strstr(buf, "\r\n\r\n"))) {
    if (n + 1 >= sizeof(buf))
      return -1;
    ssize_t r = read(c, buf + n, sizeof(buf) - 1 - n);
    if (r <= 0)
      return -1;
    n += (size_t)r;
    buf[n] = '\0';
  }
  size_t head = (size_t)(end + 4 - buf);
  const char *cl = strcasestr(buf, "Content-Length:");
  size_t want = cl ? strtoul(cl + 15, NULL, 10) : 0;
  while (n - head < want) {
    if (n + 1 >= sizeof(buf))
      return -1;
    ssize_t r = read(c, buf + n, sizeof(buf) - 1 - n);
    if (r <= 0)
      return -1;
    n += (size_t)r;
    buf[n] = '\0';
  }
  if (sscanf(buf, "POST %63s ", path) != 1)
    snprintf(path, plen, "?");
  snprintf(body, blen, "%.*s", (int)want, buf + head);
  return 0;
}

static void *serve(void *arg) {
  struct server *s = arg;
  for (;;) {
    pthread_mutex_lock(&s->mu);
    bool stop = s->stop;
    pthread_mutex_unlock(&s->mu);
    if (stop)
      break;
    struct pollfd p = {s->fd, POLLIN, 0};
    if (poll(&p, 1, 20) <= 0)
      continue;
    int c = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
      continue;
    char path[64], body[256];
    if (read_request(c, path, sizeof(path), body, sizeof(body)) == 0) {
      pthread_mutex_lock(&s->mu);
      int i = s->hits < s->n_statuses ? s->hits : s->n_statuses - 1;
      int status = s->statuses[i];
      if (s->hits > 0 && strcmp(s->body, body))
        s->bodies_differ = true;
      snprintf(s->path, sizeof(s->path), "%s", path);
      snprintf(s->body, sizeof(s->body), "%s", body);
      s->hits++;
      bool hold = s->hold_first && s->hits == 1;
      pthread_mutex_unlock(&s->mu);
      while (hold) {
        pthread_mutex_lock(&s->mu);
        hold = !s->released && !s->stop;
        pthread_mutex_unlock(&s->mu);
        if (hold)
          poll(NULL, 0, 1);
      }
      char answer[128];
      int len =
          snprintf(answer, sizeof(answer), "HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status);
      sg_write_all(c, answer, (size_t)len);
    }
    close(c);
  }
  return NULL;
}

static struct server *server_start(const int *statuses, int n) {
  struct server *s = xcalloc(1, sizeof(*s));
  pthread_mutex_init(&s->mu, NULL);
  memcpy(s->statuses, statuses, (size_t)n * sizeof(int));
  s->n_statuses = n;
  s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(s->fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof(a);
  assert_int_equal(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
  assert_int_equal(listen(s->fd, 16), 0);
  assert_int_equal(getsockname(s->fd, (struct sockaddr *)&a, &al), 0);
  s->port = ntohs(a.sin_port);
  assert_int_equal(pthread_create(&s->thread, NULL, serve, s), 0);
  return s;
}

static int server_hits(struct server *s) {
  pthread_mutex_lock(&s->mu);
  int n = s->hits;
  pthread_mutex_unlock(&s->mu);
  return n;
}

static void server_stop(struct server *s) {
  pthread_mutex_lock(&s->mu);
  s->stop = true;
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->thread, NULL);
  close(s->fd);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

/* ---- running the loop until the stats say so ---- */

struct until {
  struct event_base *base;
  sg_webhooks_t *wh;
  bool (*cond)(const sg_webhook_stats_t *st);
  struct event *check;
  int64_t give_up_ms;
  bool met;
};

static void check_cb(evutil_socket_t fd, short what, void *arg) {
  struct until *u = arg;
  sg_webhook_stats_t st;
  sg_webhooks_get_stats(u->wh, &st);
  if (u->cond(&st)) {
    u->met = true;
    event_base_loopbreak(u->base);
  } else if (sg_now_ms() > u->give_up_ms) {
    event_base_loopbreak(u->base);
  }
}

/* Runs base until cond holds (checked every 5 ms), at most 20 s. */
static void run_until(struct event_base *base, sg_webhooks_t *wh, bool (*cond)(const sg_webhook_stats_t *st)) {
  struct until u = {base, wh, cond, NULL, sg_now_ms() + 20000, false};
  u.check = event_new(base, -1, EV_PERSIST, check_cb, &u);
  struct timeval tv = {0, 5000};
  event_add(u.check, &tv);
  event_base_dispatch(base);
  event_free(u.check);
  assert_true(u.met);
}

static bool delivered(const sg_webhook_stats_t *st) { return st->delivered == 1; }
static bool failed(const sg_webhook_stats_t *st) { return st->failed == 1; }
static bool refused(const sg_webhook_stats_t *st) { return st->refused == 1; }
static bool retrying(const sg_webhook_stats_t *st) { return st->retrying == 1; }

static sg_webhooks_t *start(struct event_base *base, const char *rule, double retry_s) {
  sg_addr_rule_t r;
  sg_error_t *err = NULL;
  assert_int_equal(sg_addr_rule_parse(rule, &r, &err), 0);
  sg_webhooks_t *wh = sg_webhooks_start(base, &r, 1, retry_s, &err);
  assert_non_null(wh);
  return wh;
}

static const char *body = "{\"id\":\"j1\",\"status\":\"COMPLETED\"}";

/* Two failures (a 500, a 503), each retried by the loop's timer, then a 200. */
static void test_retried_until_delivered(void **state) {
  (void)state;
  static const int script[] = {500, 503, 200};
  struct server *s = server_start(script, 3);
  struct event_base *base = event_base_new();
  sg_webhooks_t *wh = start(base, "127.0.0.1/32", 0.02);
  cleanup_free char *url = xasprintf("http://127.0.0.1:%d/hook", s->port);
  sg_webhooks_send(wh, "j1", url, body);
  run_until(base, wh, delivered);
  sg_webhook_stats_t st;
  sg_webhooks_get_stats(wh, &st);
  assert_int_equal(st.attempts, 3);
  assert_int_equal(st.failed, 0);
  assert_int_equal(st.retrying, 0);
  assert_int_equal(server_hits(s), 3);
  assert_string_equal(s->path, "/hook");
  assert_string_equal(s->body, body);
  assert_false(s->bodies_differ);
  sg_webhooks_stop(wh);
  event_base_free(base);
  server_stop(s);
}

/* Three attempts, then given up: no fourth. */
static void test_given_up_after_three_attempts(void **state) {
  (void)state;
  static const int script[] = {500};
  struct server *s = server_start(script, 1);
  struct event_base *base = event_base_new();
  sg_webhooks_t *wh = start(base, "127.0.0.1/32", 0.02);
  cleanup_free char *url = xasprintf("http://127.0.0.1:%d/x", s->port);
  sg_webhooks_send(wh, "j1", url, body);
  run_until(base, wh, failed);
  sg_webhook_stats_t st;
  sg_webhooks_get_stats(wh, &st);
  assert_int_equal(st.attempts, 3);
  assert_int_equal(st.delivered, 0);
  assert_int_equal(st.retrying, 0);
  assert_int_equal(server_hits(s), 3);
  sg_webhooks_stop(wh);
  event_base_free(base);
  server_stop(s);
}

/* An address off the allow-list is refused at once: no connection, no
 * retry. */
static void test_refused_off_the_allow_list(void **state) {
  (void)state;
  static const int script[] = {200};
  struct server *s = server_start(script, 1);
  struct event_base *base = event_base_new();
  sg_webhooks_t *wh = start(base, "10.0.0.0/8", 0.02);
  cleanup_free char *url = xasprintf("http://127.0.0.1:%d/x", s->port);
  sg_webhooks_send(wh, "j1", url, body);
  run_until(base, wh, refused);
  sg_webhook_stats_t st;
  sg_webhooks_get_stats(wh, &st);
  assert_int_equal(st.attempts, 1);
  assert_int_equal(st.retrying, 0);
  sg_webhooks_stop(wh);
  assert_int_equal(server_hits(s), 0);
  event_base_free(base);
  server_stop(s);
}

/* Stop while a retry waits an hour: it returns without waiting, the
 * delivery is dropped (and freed: ASan's leak check) and never retried. */
static void test_stop_with_a_retry_waiting(void **state) {
  (void)state;
  static const int script[] = {500};
  struct server *s = server_start(script, 1);
  struct event_base *base = event_base_new();
  sg_webhooks_t *wh = start(base, "127.0.0.1/32", 3600);
  cleanup_free char *url = xasprintf("http://127.0.0.1:%d/x", s->port);
  sg_webhooks_send(wh, "j1", url, body);
  run_until(base, wh, retrying);
  sg_webhooks_stop(wh);
  event_base_loop(base, EVLOOP_NONBLOCK);
  assert_int_equal(server_hits(s), 1);
  event_base_free(base);
  server_stop(s);
}

/* At most SG_WEBHOOK_MAX_QUEUED deliveries wait or run: the next is dropped
 * and counted as failed. The loop does not run, so none of them finishes. */
static void test_waiting_deliveries_are_bounded(void **state) {
  (void)state;
  sg_log_set_level(SG_LOG_ERROR); /* one warning per refused delivery */
  struct event_base *base = event_base_new();
  sg_webhooks_t *wh = start(base, "10.0.0.0/8", 0.02);
  char key[32];
  for (int i = 0; i < SG_WEBHOOK_MAX_QUEUED; i++) {
    snprintf(key, sizeof(key), "j%d", i);
    sg_webhooks_send(wh, key, "http://127.0.0.1:9/x", body);
  }
  sg_webhook_stats_t st;
  sg_webhooks_get_stats(wh, &st);
  assert_int_equal(st.failed, 0);
  sg_webhooks_send(wh, "one-more", "http://127.0.0.1:9/x", body);
  sg_webhooks_get_stats(wh, &st);
  assert_int_equal(st.failed, 1);
  sg_webhooks_stop(wh);
  event_base_free(base);
  sg_log_set_level(SG_LOG_INFO);
}

/* A newer body of the same job replaces one waiting for its retry: the older
 * body is never sent again, so it cannot arrive after the newer one. */
static void test_newer_body_supersedes_a_waiting_retry(void **state) {
  (void)state;
  static const int script[] = {500, 200};
  struct server *s = server_start(script, 2);
  struct event_base *base = event_base_new();
  sg_webhooks_t *wh = start(base, "127.0.0.1/32", 3600);
  cleanup_free char *url = xasprintf("http://127.0.0.1:%d/x", s->port);
  sg_webhooks_send(wh, "j1", url, body);
  run_until(base, wh, retrying);
  static const char *newer = "{\"id\":\"j1\",\"status\":\"FAILED\",\"retries\":1}";
  sg_webhooks_send(wh, "j1", url, newer);
  run_until(base, wh, delivered);
  sg_webhook_stats_t st;
  sg_webhooks_get_stats(wh, &st);
  assert_int_equal(st.superseded, 1);
  assert_int_equal(st.retrying, 0);
  assert_int_equal(st.attempts, 2);
  assert_int_equal(server_hits(s), 2);
  assert_string_equal(s->body, newer);
  sg_webhooks_stop(wh);
  event_base_free(base);
  server_stop(s);
}

/* A newer body of the same job while the older one's attempt is under way:
 * the newer waits for that attempt, which is then not retried (so the two
 * never race on the pool's two threads). */
static void test_newer_body_waits_for_the_attempt_under_way(void **state) {
  (void)state;
  static const int script[] = {500, 200};
  struct server *s = server_start(script, 2);
  pthread_mutex_lock(&s->mu);
  s->hold_first = true;
  pthread_mutex_unlock(&s->mu);
  struct event_base *base = event_base_new();
  sg_webhooks_t *wh = start(base, "127.0.0.1/32", 0.02);
  cleanup_free char *url = xasprintf("http://127.0.0.1:%d/x", s->port);
  sg_webhooks_send(wh, "j1", url, body);
  for (int64_t give_up = sg_now_ms() + 20000; server_hits(s) < 1 && sg_now_ms() < give_up;)
    poll(NULL, 0, 1);
  assert_int_equal(server_hits(s), 1); /* the first attempt is under way, its answer held */
  static const char *newer = "{\"id\":\"j1\",\"status\":\"COMPLETED\",\"retries\":1}";
  sg_webhooks_send(wh, "j1", url, newer);
  pthread_mutex_lock(&s->mu);
  s->released = true;
  pthread_mutex_unlock(&s->mu);
  run_until(base, wh, delivered);
  sg_webhook_stats_t st;
  sg_webhooks_get_stats(wh, &st);
  assert_int_equal(st.superseded, 1);
  assert_int_equal(st.attempts, 2);
  assert_int_equal(st.retrying, 0);
  assert_int_equal(server_hits(s), 2);
  assert_string_equal(s->body, newer);
  sg_webhooks_stop(wh);
  event_base_free(base);
  server_stop(s);
}

/* The allow-list is checked at submission for an address; a name is
 * resolved and checked at delivery (no DNS lookup on the loop). */
static void test_check_at_submission(void **state) {
  (void)state;
  struct event_base *base = event_base_new();
  sg_webhooks_t *wh = start(base, "10.0.0.0/8", 0.02);
  sg_error_t *err = NULL;
  assert_int_equal(sg_webhooks_check(wh, "http://127.0.0.1:8080/x", &err), -1);
  assert_non_null(err);
  assert_string_equal(err->field, "webhook");
  sg_error_free(err);
  err = NULL;
  assert_int_equal(sg_webhooks_check(wh, "http://[::1]/x", &err), -1);
  sg_error_free(err);
  err = NULL;
  assert_int_equal(sg_webhooks_check(wh, "https://10.1.2.3/hook", &err), 0);
  assert_int_equal(sg_webhooks_check(wh, "https://hooks.example.invalid/hook", &err), 1);
  assert_null(err);
  sg_webhooks_stop(wh);
  event_base_free(base);
}

struct checked {
  struct event_base *base;
  bool called, cancelled;
  sg_error_t *err;
};

static void on_checked(void *arg, bool cancelled, sg_error_t *err) {
  struct checked *c = arg;
  c->called = true;
  c->cancelled = cancelled;
  c->err = err;
  event_base_loopbreak(c->base);
}

/* A name is resolved on the pool and refused when none of its addresses is
 * on the list, admitted when one is. */
static void test_check_name_on_the_pool(void **state) {
  (void)state;
  struct event_base *base = event_base_new();
  sg_webhooks_t *wh = start(base, "10.0.0.0/8", 0.02);
  struct checked c = {base, false, false, NULL};
  sg_webhooks_check_name(wh, "http://localhost:8080/x", on_checked, &c);
  event_base_dispatch(base);
  assert_true(c.called);
  assert_false(c.cancelled);
  assert_non_null(c.err);
  assert_string_equal(c.err->field, "webhook");
  sg_error_free(c.err);
  sg_webhooks_stop(wh);
  wh = start(base, "127.0.0.1/32", 0.02);
  c = (struct checked){base, false, false, NULL};
  sg_webhooks_check_name(wh, "http://localhost:8080/x", on_checked, &c);
  event_base_dispatch(base);
  assert_true(c.called);
  assert_null(c.err);
  sg_webhooks_stop(wh);
  event_base_free(base);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_retried_until_delivered),
      cmocka_unit_test(test_given_up_after_three_attempts),
      cmocka_unit_test(test_refused_off_the_allow_list),
      cmocka_unit_test(test_stop_with_a_retry_waiting),
      cmocka_unit_test(test_waiting_deliveries_are_bounded),
      cmocka_unit_test(test_newer_body_supersedes_a_waiting_retry),
      cmocka_unit_test(test_newer_body_waits_for_the_attempt_under_way),
      cmocka_unit_test(test_check_at_submission),
      cmocka_unit_test(test_check_name_on_the_pool),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
