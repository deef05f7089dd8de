/* Health checks: a worker gets traffic only after its health path answered
 * 200. While starting it is probed on a schedule that is tight at first
 * (0.5 ms, growing by a twentieth of the time already waited, at most
 * 100 ms: cold start is measured to its first 200), and at once when its
 * runtime says the process is about to run; once ready, every
 * health.period_s, and health.failure_threshold failures in a row take it
 * out of rotation. */
#include <event2/http.h>
#include <time.h>

#include "daemon/fleet.h"
#include "logs/logs.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define STARTUP_PROBE_MIN_US 500
#define STARTUP_PROBE_MAX_US 100000

static void schedule_us(sg_worker_t *w, int64_t delay_us) {
  struct timeval tv = {(time_t)(delay_us / 1000000), (suseconds_t)(delay_us % 1000000)};
  evtimer_add(w->probe_timer, &tv);
}

static void schedule(sg_worker_t *w, int64_t delay_ms) { schedule_us(w, delay_ms * 1000); }

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t startup_delay_us(const sg_worker_t *w) {
  int64_t elapsed = now_us() - w->probe_since_us;
  int64_t delay = STARTUP_PROBE_MIN_US + elapsed / 20;
  return delay > STARTUP_PROBE_MAX_US ? STARTUP_PROBE_MAX_US : delay;
}

static void probe_done(struct evhttp_request *req, void *arg) {
  sg_worker_t *w = arg;
  w->probe_req = NULL;
  int code = req ? evhttp_request_get_response_code(req) : 0;
  if (w->exited || w->stopping)
    return;
  const sg_spec_t *spec = w->ep->spec;
  if (w->state == SG_W_STARTING) {
    if (code == 200) {
      sg_worker_became_ready(w);
      schedule(w, (int64_t)(spec->health.period_s * 1000));
      return;
    }
    /* A remote worker's time waiting for its node does not count. */
    int64_t since = w->rt->remote && w->running_mono ? w->running_mono : w->started_mono;
    if (sg_now_ms() - since > (int64_t)(spec->health.startup_timeout_s * 1000)) {
      cleanup_free char *why = xasprintf("did not become healthy within health.startup_timeout_s=%gs (last probe: %s)",
                                         spec->health.startup_timeout_s, code ? "" : "no answer");
      if (code) {
        free(why);
        why = xasprintf("did not become healthy within health.startup_timeout_s=%gs (last probe: HTTP %d)",
                        spec->health.startup_timeout_s, code);
      }
      sg_logs_event(w->d, w->ep->name, w->id, "%s", why);
      sg_worker_unhealthy(w, why);
      return;
    }
    schedule_us(w, startup_delay_us(w));
    return;
  }
  if (code == 200) {
    w->probe_failures = 0;
    if (w->suspect) {
      w->suspect = false;
      sg_fleet_worker_in_rotation(w);
    }
  } else if (++w->probe_failures >= spec->health.failure_threshold) {
    cleanup_free char *why = code ? xasprintf("failed %d health checks in a row (HTTP %d)", w->probe_failures, code)
                                  : xasprintf("failed %d health checks in a row (no answer)", w->probe_failures);
    sg_logs_event(w->d, w->ep->name, w->id, "unhealthy: %s", why);
    sg_worker_unhealthy(w, why);
    return;
  } else {
    sg_logs_event(w->d, w->ep->name, w->id, "health check failed (%d of %d)", w->probe_failures,
                  spec->health.failure_threshold);
  }
  schedule(w, (int64_t)(spec->health.period_s * 1000));
}

static void probe_cb(evutil_socket_t fd, short what, void *arg) {
  sg_worker_t *w = arg;
  if (w->exited || w->stopping || w->probe_req)
    return;
  const sg_spec_t *spec = w->ep->spec;
  if (!w->probe_conn) {
    w->probe_conn = evhttp_connection_base_new(w->d->base, NULL, w->host ? w->host : "127.0.0.1", (ev_uint16_t)w->port);
    evhttp_connection_set_retries(w->probe_conn, 0);
  }
  struct timeval tv = {(time_t)spec->health.timeout_s,
                       (suseconds_t)((spec->health.timeout_s - (double)(time_t)spec->health.timeout_s) * 1e6)};
  evhttp_connection_set_timeout_tv(w->probe_conn, &tv);
  struct evhttp_request *req = evhttp_request_new(probe_done, w);
  struct evkeyvalq *h = evhttp_request_get_output_headers(req);
  char host[80];
  snprintf(host, sizeof(host), "%s:%d", w->host ? w->host : "127.0.0.1", w->port);
  evhttp_add_header(h, "Host", host);
  evhttp_add_header(h, "User-Agent", "sgpu-health");
  if (evhttp_make_request(w->probe_conn, req, EVHTTP_REQ_GET, spec->health.path) < 0) {
    schedule(w, 100);
    return;
  }
  w->probe_req = req;
}

void sg_health_start(sg_worker_t *w) {
  w->probe_timer = evtimer_new(w->d->base, probe_cb, w);
  w->probe_since_us = now_us();
  schedule_us(w, STARTUP_PROBE_MIN_US);
}

void sg_health_process_started(sg_worker_t *w) {
  if (w->state != SG_W_STARTING || !w->probe_timer || w->exited || w->stopping)
    return;
  /* The schedule starts over from the moment the process runs. */
  w->probe_since_us = now_us();
  if (!w->probe_req)
    schedule_us(w, 0);
}

void sg_health_suspect(sg_worker_t *w) {
  if (w->state != SG_W_READY || w->suspect || !w->probe_timer)
    return;
  w->suspect = true;
  sg_logs_event(w->d, w->ep->name, w->id,
                "a request failed at the connection level: out of rotation until a health check passes");
  if (!w->probe_req)
    schedule(w, 0);
}

void sg_health_stop(sg_worker_t *w) {
  if (w->probe_timer) {
    event_free(w->probe_timer);
    w->probe_timer = NULL;
  }
  /* The connection may be inside its own callback here: it is freed with the
   * worker, after any pending probe has ended. */
}
