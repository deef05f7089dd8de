/* Health checks: a worker gets traffic only after its health path answered
 * 200. While starting it is probed on a schedule that is tight at first
 * (0.5 ms, growing by a twentieth of the time already waited, at most
 * 100 ms: cold start is measured to its first 200), and at once when its
 * runtime says the process is about to run; once ready, every
 * health.period_s, and health.failure_threshold failures in a row take it
 * out of rotation.
 *
 * A probe is a GET of health.path through the HTTP module's upstream client
 * (http/upstream.h), on one kept-alive connection per worker. Its verdict is
 * the status of the answer's head, which must arrive within
 * health.timeout_s of the probe's start, connect included; no answer in
 * time, a refused connection or an answer that is not HTTP count as failed
 * probes. The body is read and dropped so that the connection can serve the
 * next probe; a body over HEALTH_BODY_MAX, or one still arriving at the next
 * probe, costs the connection, never memory: a worker cannot hold sgpud's
 * memory or loop with its health answers.
 *
 * A worker whose spec has no health.path (a runpod endpoint that names none)
 * is never probed: the gateway makes it ready at its first job take
 * (sg_worker_became_ready). Its timer still runs to fail it once
 * health.startup_timeout_s passes without that, and, the spec being read each
 * time, starts probing should a path be set later. */
#include <time.h>

#include "daemon/fleet.h"
#include "http/upstream.h"
#include "logs/logs.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define STARTUP_PROBE_MIN_US 500
#define STARTUP_PROBE_MAX_US 100000
/* The most body bytes of one health answer read (and dropped) to keep its
 * connection; a longer body closes it. */
#define HEALTH_BODY_MAX (64u << 10)

/* A worker's probing, from sg_health_start() to sg_health_stop(). */
struct sg_health_state {
  sg_worker_t *w;
  struct event *timer; /* the next probe */
  sg_upstream_t *conn; /* the probe connection; NULL until a probe needs one */
  bool probing;        /* a probe waits for its answer's head */
  size_t body_bytes;   /* of the answer whose body is being dropped */
  int64_t since_us;    /* the start-up probe schedule counts from here (monotonic us) */
  int failures;        /* failed probes in a row since the worker was ready */
  /* Events for failed probes: the first, then at most one per
   * PROBE_EVENT_EVERY_MS with the count of those not told. */
  int64_t event_mono; /* when the last one was told; 0: none yet */
  int untold;         /* failed probes since then */
};

/* How often a failed probe is told in the worker's log, at most. */
#define PROBE_EVENT_EVERY_MS 5000
/* A starting worker's refused connections are told only once it has been
 * running this long: every worker refuses a few probes before it listens. */
#define REFUSED_GRACE_MS 1000

/* What a failed probe saw, for the log. */
typedef enum { PROBE_HTTP, PROBE_REFUSED, PROBE_TIMEOUT, PROBE_BROKEN } probe_fail_t;

static void schedule_us(struct sg_health_state *h, int64_t delay_us) {
  struct timeval tv = {(time_t)(delay_us / 1000000), (suseconds_t)(delay_us % 1000000)};
  evtimer_add(h->timer, &tv);
}

static void schedule(struct sg_health_state *h, int64_t delay_ms) { schedule_us(h, delay_ms * 1000); }

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t startup_delay_us(const struct sg_health_state *h) {
  int64_t elapsed = now_us() - h->since_us;
  int64_t delay = STARTUP_PROBE_MIN_US + elapsed / 20;
  return delay > STARTUP_PROBE_MAX_US ? STARTUP_PROBE_MAX_US : delay;
}

static void drop_conn(struct sg_health_state *h) {
  sg_upstream_free(h->conn);
  h->conn = NULL;
}

/* Tells a failed probe in the worker's log: the first at once, then at most
 * one per PROBE_EVENT_EVERY_MS, with how many failed since the last told. */
static void tell_failure(struct sg_health_state *h, int code, probe_fail_t how) {
  sg_worker_t *w = h->w;
  const sg_spec_t *spec = w->ep->spec;
  int64_t now = sg_now_ms();
  if (w->rt->remote && !w->running_mono)
    return; /* still waiting for its node */
  if (how == PROBE_REFUSED && w->state == SG_W_STARTING) {
    int64_t since = w->running_mono ? w->running_mono : w->started_mono;
    if (now - since < REFUSED_GRACE_MS)
      return;
  }
  h->untold++;
  if (h->event_mono && now - h->event_mono < PROBE_EVENT_EVERY_MS)
    return;
  char more[64] = "";
  if (h->untold > 1)
    snprintf(more, sizeof(more), " (%d failed probes since the last report)", h->untold);
  const char *host = w->host ? w->host : "127.0.0.1";
  const char *path = spec->health.path ? spec->health.path : "(no health.path)";
  if (how == PROBE_HTTP)
    sg_logs_event(w->d, w->ep->name, w->id, "health probe: GET %s -> %d%s", path, code, more);
  else if (how == PROBE_REFUSED)
    sg_logs_event(w->d, w->ep->name, w->id,
                  "health probe: connection refused on %s port %d: does the worker listen on $PORT?%s", host, w->port,
                  more);
  else if (how == PROBE_TIMEOUT)
    sg_logs_event(w->d, w->ep->name, w->id, "health probe: GET %s: no answer within health.timeout_s=%gs%s", path,
                  spec->health.timeout_s, more);
  else
    sg_logs_event(w->d, w->ep->name, w->id, "health probe: GET %s: the connection broke or the answer was not HTTP%s",
                  path, more);
  h->event_mono = now;
  h->untold = 0;
}

/* When a starting worker's health.startup_timeout_s counts from (monotonic
 * ms): a remote worker's time waiting for its node does not count. */
static int64_t startup_since(const sg_worker_t *w) {
  return w->rt->remote && w->running_mono ? w->running_mono : w->started_mono;
}

/* Acts on a probe's result: code is the answer's status, 0 when none came
 * (how says why). May stop the worker, which frees h: h is not used after this. */
static void verdict(struct sg_health_state *h, int code, probe_fail_t how) {
  sg_worker_t *w = h->w;
  if (w->exited || w->stopping)
    return;
  const sg_spec_t *spec = w->ep->spec;
  if (code != 200)
    tell_failure(h, code, how);
  if (w->state == SG_W_STARTING) {
    if (code == 200) {
      schedule(h, (int64_t)(spec->health.period_s * 1000));
      sg_worker_became_ready(w);
      return;
    }
    if (sg_now_ms() - startup_since(w) > (int64_t)(spec->health.startup_timeout_s * 1000)) {
      cleanup_free char *why =
          code ? xasprintf("did not become healthy within health.startup_timeout_s=%gs (last probe: HTTP %d)",
                           spec->health.startup_timeout_s, code)
               : xasprintf("did not become healthy within health.startup_timeout_s=%gs (last probe: no answer)",
                           spec->health.startup_timeout_s);
      sg_logs_event(w->d, w->ep->name, w->id, "%s", why);
      sg_worker_unhealthy(w, why);
      return;
    }
    schedule_us(h, startup_delay_us(h));
    return;
  }
  if (code == 200) {
    h->failures = 0;
    schedule(h, (int64_t)(spec->health.period_s * 1000));
    if (w->suspect) {
      w->suspect = false;
      sg_fleet_worker_in_rotation(w);
    }
    return;
  }
  if (++h->failures >= spec->health.failure_threshold) {
    cleanup_free char *why = code ? xasprintf("failed %d health checks in a row (HTTP %d)", h->failures, code)
                                  : xasprintf("failed %d health checks in a row (no answer)", h->failures);
    sg_logs_event(w->d, w->ep->name, w->id, "unhealthy: %s", why);
    sg_worker_unhealthy(w, why);
    return;
  }
  sg_logs_event(w->d, w->ep->name, w->id, "health check failed (%d of %d)", h->failures,
                spec->health.failure_threshold);
  schedule(h, (int64_t)(spec->health.period_s * 1000));
}

static void on_head(void *arg, int status, const sg_upstream_header_t *headers, size_t n) {
  struct sg_health_state *h = arg;
  h->probing = false;
  h->body_bytes = 0;
  verdict(h, status, PROBE_HTTP);
}

static void on_body(void *arg, struct evbuffer *data) {
  struct sg_health_state *h = arg;
  h->body_bytes += evbuffer_get_length(data);
  evbuffer_drain(data, evbuffer_get_length(data));
  if (h->body_bytes > HEALTH_BODY_MAX)
    drop_conn(h);
}

static void on_done(void *arg) {}

static void on_error(void *arg, sg_upstream_error_t err, bool answer_started) {
  struct sg_health_state *h = arg;
  drop_conn(h);
  if (answer_started)
    return; /* its head gave the verdict; the body broke off */
  h->probing = false;
  verdict(h, 0, err == SG_UP_CONNECT_FAILED ? PROBE_REFUSED : err == SG_UP_TIMEOUT ? PROBE_TIMEOUT : PROBE_BROKEN);
}

static const sg_upstream_handler_t probe_handler = {on_head, on_body, on_done, on_error, NULL};

/* Appends path to the request line with the bytes that cannot appear there
 * (controls, space, non-ASCII) percent-encoded. */
static void add_path(struct evbuffer *out, const char *path) {
  for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
    if (*p <= ' ' || *p >= 0x7f)
      evbuffer_add_printf(out, "%%%02X", *p);
    else
      evbuffer_add(out, p, 1);
  }
}

/* The timer of a worker without health.path: a starting one fails once
 * health.startup_timeout_s has passed; the spec is looked at again at least
 * every health.period_s. May stop the worker, which frees h. */
static void unprobed(struct sg_health_state *h) {
  sg_worker_t *w = h->w;
  const sg_spec_t *spec = w->ep->spec;
  int64_t next = (int64_t)(spec->health.period_s * 1000);
  if (w->state == SG_W_STARTING) {
    int64_t left = startup_since(w) + (int64_t)(spec->health.startup_timeout_s * 1000) - sg_now_ms();
    if (left < 0) {
      cleanup_free char *why = xasprintf("took no job within health.startup_timeout_s=%gs (without health.path a "
                                         "runpod worker is ready at its first job take)",
                                         spec->health.startup_timeout_s);
      sg_logs_event(w->d, w->ep->name, w->id, "%s", why);
      sg_worker_unhealthy(w, why);
      return;
    }
    if (left + 1 < next)
      next = left + 1;
  }
  schedule(h, next);
}

static void probe_cb(evutil_socket_t fd, short what, void *arg) {
  struct sg_health_state *h = arg;
  sg_worker_t *w = h->w;
  if (w->exited || w->stopping || h->probing)
    return;
  const sg_spec_t *spec = w->ep->spec;
  if (!spec->health.path) {
    unprobed(h);
    return;
  }
  /* A connection still dropping an earlier body, or closed by the worker,
   * gives way to a new one. */
  if (h->conn && !sg_upstream_usable(h->conn))
    drop_conn(h);
  if (!h->conn)
    h->conn = sg_upstream_new(w->d->base, w->host, w->port, spec->health.timeout_s);
  sg_upstream_begin(h->conn, &probe_handler, h, false);
  struct evbuffer *out = sg_upstream_output(h->conn);
  evbuffer_add_printf(out, "GET ");
  add_path(out, spec->health.path);
  evbuffer_add_printf(out, " HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: sgpu-health\r\n\r\n",
                      w->host ? w->host : "127.0.0.1", w->port);
  sg_upstream_set_deadline(h->conn, spec->health.timeout_s);
  h->probing = true;
}

void sg_health_start(sg_worker_t *w) {
  if (!w->health) {
    w->health = xcalloc(1, sizeof(*w->health));
    w->health->w = w;
    w->health->timer = evtimer_new(w->d->base, probe_cb, w->health);
  }
  w->health->since_us = now_us();
  schedule_us(w->health, STARTUP_PROBE_MIN_US);
}

void sg_health_process_started(sg_worker_t *w) {
  struct sg_health_state *h = w->health;
  if (w->state != SG_W_STARTING || !h || w->exited || w->stopping)
    return;
  /* The schedule starts over from the moment the process runs. */
  h->since_us = now_us();
  if (!h->probing)
    schedule_us(h, 0);
}

void sg_health_suspect(sg_worker_t *w) {
  /* Without a health path no probe could put it back. */
  if (w->state != SG_W_READY || w->suspect || !w->health || !w->ep->spec->health.path)
    return;
  w->suspect = true;
  sg_logs_event(w->d, w->ep->name, w->id,
                "a request failed at the connection level: out of rotation until a health check passes");
  if (!w->health->probing)
    schedule(w->health, 0);
}

void sg_health_stop(sg_worker_t *w) {
  struct sg_health_state *h = w->health;
  if (!h)
    return;
  /* May run inside a callback of the probe connection (a verdict that stops
   * the worker): sg_upstream_free() defers the free, and no callback of this
   * probe runs after it. */
  event_free(h->timer);
  sg_upstream_free(h->conn);
  free(h);
  w->health = NULL;
}
