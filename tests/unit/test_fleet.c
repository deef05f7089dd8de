/* The fleet's events (daemon/fleet.c): every event reaches the subscribers
 * that set its callback, in the order they subscribed, and no others; an
 * unsubscribed module hears nothing more; the waiting demand of an endpoint
 * adds the subscribers' counts and keeps their oldest wait; an endpoint's
 * status keeps its keys and their order while modules set their values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/fleet.h"

/* What the subscribers heard, as "name:event" words in order. */
static char heard[1024];

static void note(void *ud, const char *event) {
  size_t n = strlen(heard);
  snprintf(heard + n, sizeof(heard) - n, "%s%s:%s", n ? " " : "", (const char *)ud, event);
}

static void ep_created(void *ud, sg_endpoint_t *ep) { note(ud, "created"); }
static void ep_deleted(void *ud, sg_endpoint_t *ep) { note(ud, "deleted"); }
static void w_ready(void *ud, sg_worker_t *w) { note(ud, "ready"); }
static void w_released(void *ud, sg_worker_t *w) { note(ud, "released"); }
static void demand(void *ud, sg_daemon_t *d) { note(ud, "demand"); }

static void w_load(void *ud, sg_worker_t *w, int delta) { note(ud, delta > 0 ? "load+" : "load-"); }

static void w_started(void *ud, sg_worker_t *w, sg_fleet_start_t how, int64_t start_wall) {
  char e[32];
  snprintf(e, sizeof(e), "started/%d/%lld", (int)how, (long long)start_wall);
  note(ud, e);
}

static void w_ended(void *ud, sg_worker_t *w, bool scheduled, int64_t end_wall) {
  char e[32];
  snprintf(e, sizeof(e), "ended/%d/%lld", scheduled, (long long)end_wall);
  note(ud, e);
}

static const sg_fleet_subscriber_t all = {
    .endpoint_created = ep_created,
    .endpoint_deleted = ep_deleted,
    .worker_started = w_started,
    .worker_ready = w_ready,
    .worker_load = w_load,
    .worker_released = w_released,
    .worker_ended = w_ended,
    .demand_changed = demand,
};

/* Only the worker events a slot user cares about. */
static const sg_fleet_subscriber_t some = {.worker_ready = w_ready, .worker_released = w_released};

typedef struct {
  sg_daemon_t d;
  sg_endpoint_t ep;
  sg_worker_t w;
} fixture_t;

static void setup_fixture(fixture_t *f) {
  memset(f, 0, sizeof(*f));
  f->ep.d = &f->d;
  f->w.d = &f->d;
  f->w.ep = &f->ep;
  heard[0] = '\0';
}

static void test_order_and_filter(void **state) {
  (void)state;
  fixture_t f;
  setup_fixture(&f);
  sg_fleet_subscribe(&f.d, &all, "meter");
  sg_fleet_subscribe(&f.d, &some, "gateway");
  sg_fleet_subscribe(&f.d, &all, "scaler");
  sg_fleet_endpoint_created(&f.ep);
  sg_fleet_worker_started(&f.w, SG_FLEET_START_PLACED, 42);
  sg_fleet_worker_ready(&f.w);
  sg_fleet_worker_load(&f.w, 1);
  sg_fleet_worker_released(&f.w);
  sg_fleet_worker_ended(&f.w, true, 7);
  sg_fleet_demand_changed(&f.d);
  sg_fleet_endpoint_freed(&f.ep); /* nobody listens */
  assert_string_equal(heard, "meter:created scaler:created "
                             "meter:started/1/42 scaler:started/1/42 "
                             "meter:ready gateway:ready scaler:ready "
                             "meter:load+ scaler:load+ "
                             "meter:released gateway:released scaler:released "
                             "meter:ended/1/7 scaler:ended/1/7 "
                             "meter:demand scaler:demand");
}

static void test_unsubscribe(void **state) {
  (void)state;
  fixture_t f;
  setup_fixture(&f);
  sg_fleet_subscribe(&f.d, &all, "a");
  sg_fleet_subscribe(&f.d, &all, "b");
  sg_fleet_subscribe(&f.d, &some, "c");
  sg_fleet_unsubscribe(&f.d, &all, "b");
  sg_fleet_unsubscribe(&f.d, &all, "x"); /* not subscribed: nothing changes */
  assert_int_equal(f.d.n_subs, 2);
  sg_fleet_worker_ready(&f.w);
  assert_string_equal(heard, "a:ready c:ready");
  heard[0] = '\0';
  sg_fleet_unsubscribe(&f.d, &all, "a");
  sg_fleet_unsubscribe(&f.d, &some, "c");
  sg_fleet_worker_ready(&f.w);
  sg_fleet_endpoint_deleted(&f.ep);
  assert_string_equal(heard, "");
  /* Subscribing again puts it last. */
  sg_fleet_subscribe(&f.d, &some, "c");
  sg_fleet_subscribe(&f.d, &all, "a");
  sg_fleet_worker_ready(&f.w);
  assert_string_equal(heard, "c:ready a:ready");
}

struct wait {
  int queued;
  int64_t oldest;
};

static void waiting(void *ud, const sg_endpoint_t *ep, int64_t now, int *queued, int64_t *oldest) {
  const struct wait *w = ud;
  *queued += w->queued;
  if (now - w->oldest > *oldest && w->queued)
    *oldest = now - w->oldest;
}

static const sg_fleet_subscriber_t waits = {.waiting = waiting};

static void test_waiting(void **state) {
  (void)state;
  fixture_t f;
  setup_fixture(&f);
  int queued = -1;
  int64_t oldest = -1;
  sg_fleet_waiting(&f.ep, 1000, &queued, &oldest);
  assert_int_equal(queued, 0);
  assert_int_equal(oldest, 0);
  struct wait requests = {3, 900}, jobs = {2, 400}, none = {0, 0};
  sg_fleet_subscribe(&f.d, &waits, &requests);
  sg_fleet_subscribe(&f.d, &all, "no waiting callback");
  sg_fleet_subscribe(&f.d, &waits, &jobs);
  sg_fleet_subscribe(&f.d, &waits, &none);
  sg_fleet_waiting(&f.ep, 1000, &queued, &oldest);
  assert_int_equal(queued, 5);
  assert_int_equal(oldest, 600); /* the jobs' oldest, waiting since 400 */
  assert_string_equal(heard, "");
}

/* Modules fill in their fields of an endpoint's status (the gateway's queue,
 * the scaler's decision): values change, the keys and their order do not. */
static void status_queue(void *ud, const sg_endpoint_t *ep, json_t *status) {
  json_object_set_new(status, "queued", json_integer(4));
}

static void status_scale(void *ud, const sg_endpoint_t *ep, json_t *status) {
  json_object_set_new(status, "desired", json_integer(2));
  json_object_set_new(status, "last_decision", json_string("start 2"));
}

static const sg_fleet_subscriber_t queue_status = {.endpoint_status = status_queue};
static const sg_fleet_subscriber_t scale_status = {.endpoint_status = status_scale};

static char *status_text(sg_endpoint_t *ep) {
  json_t *j = sg_endpoint_to_json(ep);
  char *text = json_dumps(json_object_get(j, "status"), JSON_COMPACT);
  json_decref(j);
  return text;
}

static void test_endpoint_status(void **state) {
  (void)state;
  fixture_t f;
  setup_fixture(&f);
  const char *spec = "{\"name\": \"s\", \"command\": [\"/w\"]}";
  sg_error_t *err = NULL;
  f.ep.spec = sg_spec_parse(spec, strlen(spec), &err);
  assert_non_null(f.ep.spec);
  f.ep.in_flight = 1;
  f.ep.served = 9;
  char *text = status_text(&f.ep);
  assert_string_equal(
      text, "{\"desired\":0,\"workers\":{\"starting\":0,\"ready\":0,\"draining\":0,\"outdated\":0},\"in_flight\":1,"
            "\"queued\":0,\"served\":9,\"crash_loop\":false,\"consecutive_failures\":0,"
            "\"last_error\":null,\"last_logs\":[],\"last_decision\":null,\"state\":\"scaled_to_zero\"}");
  free(text);
  sg_fleet_subscribe(&f.d, &queue_status, NULL);
  sg_fleet_subscribe(&f.d, &all, "no status callback");
  sg_fleet_subscribe(&f.d, &scale_status, NULL);
  text = status_text(&f.ep);
  assert_string_equal(
      text, "{\"desired\":2,\"workers\":{\"starting\":0,\"ready\":0,\"draining\":0,\"outdated\":0},\"in_flight\":1,"
            "\"queued\":4,\"served\":9,\"crash_loop\":false,\"consecutive_failures\":0,"
            "\"last_error\":null,\"last_logs\":[],\"last_decision\":\"start 2\",\"state\":\"scaled_to_zero\"}");
  free(text);
  assert_string_equal(heard, "");
  sg_spec_free(f.ep.spec);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_order_and_filter),
      cmocka_unit_test(test_unsubscribe),
      cmocka_unit_test(test_waiting),
      cmocka_unit_test(test_endpoint_status),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
