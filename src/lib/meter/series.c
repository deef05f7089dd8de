/* Per-endpoint time series for the console's charts: the last hour with
 * one point every STEP_MS (the requests per second that arrived, the
 * longest queue seen, and the workers (live and ready) and requests in
 * flight at the end of the step, and the answers with a 4xx and a 5xx
 * status, and the p50/p95/p99 latency of those answers from the
 * gateway's histogram, the workers starting at its end, the cold starts in
 * it and their mean duration, and the mean queue delay of what was
 * dispatched in it), and the last seven days with one point
 * every COARSE_MS made of the same steps (requests per second over the
 * whole step, the longest queue, the rest as at its end). Sampled on the
 * daemon's tick; kept in fixed rings, so an endpoint costs the same memory
 * however long it lives. */
#include <math.h>
#include <string.h>

#include "gateway/gateway.h"
#include "meter/meter-internal.h"
#include "sgpu/util.h"

#define STEP_MS 5000
#define POINTS 720 /* one hour */
#define COARSE_MS 600000
#define COARSE_POINTS 1008 /* seven days */

struct point {
  int64_t t; /* wall-clock start of the step */
  double rps;
  int queue, workers, ready, in_flight;
  int starting;        /* workers starting at the end of the step */
  int err4, err5;      /* answers with a 4xx and a 5xx status in the step */
  float lat[3];        /* p50, p95, p99 latency (s) of the answers in the step; -1: none */
  int cold_starts;     /* workers that became ready in the step */
  float cold_start_s;  /* their mean start to ready (s); -1: none */
  float queue_delay_s; /* mean arrival to dispatch (s) of those dispatched in the step; -1: none */
};

/* Where a histogram's count and sum stood as a step began. */
struct mark {
  uint64_t count;
  double sum;
};

static struct mark mark_of(const sg_histogram_t *h) { return (struct mark){h->count, h->sum}; }

/* The mean of the observations since `m`; -1 without any. */
static float mean_since(const sg_histogram_t *h, struct mark m) {
  return h->count > m.count ? (float)((h->sum - m.sum) / (double)(h->count - m.count)) : -1;
}

struct sg_series {
  struct point ring[POINTS];
  size_t head, n; /* the oldest point, and how many there are */
  /* the step being gathered */
  int64_t cur_wall, cur_mono;
  uint64_t cur_requests, cur_err4, cur_err5;
  uint64_t cur_lat[SG_METRIC_BUCKETS + 1]; /* the latency histogram as the step began */
  int cur_queue_max;
  struct mark cur_cold, cur_wait;
  /* the coarse ring and its step being gathered */
  struct point coarse[COARSE_POINTS];
  size_t c_head, c_n;
  int64_t c_wall, c_mono;
  uint64_t c_requests;
  int c_queue_max, c_err4, c_err5; /* errors of the fine steps folded in */
  uint64_t c_lat[SG_METRIC_BUCKETS + 1];
  struct mark c_cold, c_wait;
};

static const double QUANTILES[3] = {0.5, 0.95, 0.99};

/* The latency quantiles of the answers since the histogram was `since`,
 * interpolated within their bucket as Prometheus' histogram_quantile does
 * (one in the +Inf bucket counts as the last bound); -1 without answers. */
static void latency_quantiles(const sg_endpoint_t *ep, const uint64_t *since, float out[3]) {
  uint64_t delta[SG_METRIC_BUCKETS + 1], total = 0;
  for (int i = 0; i <= SG_METRIC_BUCKETS; i++) {
    delta[i] = ep->metrics.latency.buckets[i] - since[i];
    total += delta[i];
  }
  for (int q = 0; q < 3; q++) {
    out[q] = -1;
    if (!total)
      continue;
    double rank = QUANTILES[q] * (double)total, seen = 0;
    for (int i = 0; i <= SG_METRIC_BUCKETS; i++) {
      if (!delta[i] || seen + (double)delta[i] < rank) {
        seen += (double)delta[i];
        continue;
      }
      if (i == SG_METRIC_BUCKETS) {
        out[q] = (float)sg_metric_bounds[SG_METRIC_BUCKETS - 1];
      } else {
        double lo = i ? sg_metric_bounds[i - 1] : 0, hi = sg_metric_bounds[i];
        out[q] = (float)(lo + (hi - lo) * (rank - seen) / (double)delta[i]);
      }
      break;
    }
  }
}

/* Answers so far with a 4xx and with a 5xx status. */
static void error_counts(const sg_endpoint_t *ep, uint64_t *c4, uint64_t *c5) {
  *c4 = *c5 = 0;
  for (int code = 400; code < 500; code++)
    *c4 += ep->metrics.by_status[code];
  for (int code = 500; code < 600; code++)
    *c5 += ep->metrics.by_status[code];
}

static void live_counts(sg_endpoint_t *ep, int *live, int *ready, int *starting) {
  *live = *ready = *starting = 0;
  sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) {
    *live += sg_worker_live(w);
    *ready += w->state == SG_W_READY;
    *starting += w->state == SG_W_STARTING;
  }
}

static void cold_and_wait(const sg_endpoint_t *ep, struct mark cold, struct mark wait, struct point *p) {
  p->cold_starts = (int)(ep->metrics.cold_start.count - cold.count);
  p->cold_start_s = mean_since(&ep->metrics.cold_start, cold);
  p->queue_delay_s = mean_since(&ep->metrics.queue_wait, wait);
}

/* The step being gathered as a point, as of now. */
static struct point current(sg_endpoint_t *ep, int64_t now_mono) {
  sg_series_t *s = ep->series;
  struct point p = {.t = s->cur_wall, .queue = s->cur_queue_max, .in_flight = ep->in_flight};
  int64_t elapsed = now_mono - s->cur_mono;
  p.rps = elapsed > 0 ? (double)(ep->metrics.requests - s->cur_requests) * 1000.0 / (double)elapsed : 0;
  live_counts(ep, &p.workers, &p.ready, &p.starting);
  cold_and_wait(ep, s->cur_cold, s->cur_wait, &p);
  uint64_t c4, c5;
  error_counts(ep, &c4, &c5);
  p.err4 = (int)(c4 - s->cur_err4);
  p.err5 = (int)(c5 - s->cur_err5);
  latency_quantiles(ep, s->cur_lat, p.lat);
  return p;
}

static void begin_step(sg_endpoint_t *ep, int64_t wall, int64_t mono) {
  sg_series_t *s = ep->series;
  s->cur_wall = wall;
  s->cur_mono = mono;
  s->cur_requests = ep->metrics.requests;
  s->cur_queue_max = sg_gateway_queued(ep);
  s->cur_cold = mark_of(&ep->metrics.cold_start);
  s->cur_wait = mark_of(&ep->metrics.queue_wait);
  error_counts(ep, &s->cur_err4, &s->cur_err5);
  memcpy(s->cur_lat, ep->metrics.latency.buckets, sizeof(s->cur_lat));
}

/* The coarse step being gathered as a point, as of now: `fine` is the
 * latest fine point (workers and in flight as at its end). */
static struct point coarse_current(sg_endpoint_t *ep, struct point fine, int64_t now_mono) {
  sg_series_t *s = ep->series;
  uint64_t requests = ep->metrics.requests;
  struct point p = fine;
  p.t = s->c_wall;
  p.queue = s->c_queue_max > fine.queue ? s->c_queue_max : fine.queue;
  int64_t elapsed = now_mono - s->c_mono;
  p.rps = elapsed > 0 ? (double)(requests - s->c_requests) * 1000.0 / (double)elapsed : 0;
  p.err4 += s->c_err4;
  p.err5 += s->c_err5;
  latency_quantiles(ep, s->c_lat, p.lat);
  cold_and_wait(ep, s->c_cold, s->c_wait, &p);
  return p;
}

static void begin_coarse(sg_endpoint_t *ep, int64_t wall, int64_t mono) {
  sg_series_t *s = ep->series;
  s->c_wall = wall;
  s->c_mono = mono;
  s->c_requests = ep->metrics.requests;
  s->c_queue_max = s->c_err4 = s->c_err5 = 0;
  memcpy(s->c_lat, ep->metrics.latency.buckets, sizeof(s->c_lat));
  s->c_cold = mark_of(&ep->metrics.cold_start);
  s->c_wait = mark_of(&ep->metrics.queue_wait);
}

/* A fine step ended with point p: fold it into the coarse step, which ends
 * in turn once COARSE_MS have passed. */
static void fold_coarse(sg_endpoint_t *ep, struct point p, int64_t wall, int64_t mono) {
  sg_series_t *s = ep->series;
  if (p.queue > s->c_queue_max)
    s->c_queue_max = p.queue;
  s->c_err4 += p.err4;
  s->c_err5 += p.err5;
  if (mono - s->c_mono < COARSE_MS)
    return;
  struct point none = p;
  none.err4 = none.err5 = 0; /* p is folded in already */
  s->coarse[(s->c_head + s->c_n) % COARSE_POINTS] = coarse_current(ep, none, mono);
  if (s->c_n < COARSE_POINTS)
    s->c_n++;
  else
    s->c_head = (s->c_head + 1) % COARSE_POINTS;
  begin_coarse(ep, wall, mono);
}

static void sample(sg_endpoint_t *ep, int64_t wall, int64_t mono) {
  if (!ep->series) {
    ep->series = xcalloc(1, sizeof(*ep->series));
    begin_step(ep, wall, mono);
    begin_coarse(ep, wall, mono);
    return;
  }
  sg_series_t *s = ep->series;
  int queued = sg_gateway_queued(ep);
  if (queued > s->cur_queue_max)
    s->cur_queue_max = queued;
  if (mono - s->cur_mono < STEP_MS)
    return;
  struct point p = current(ep, mono);
  s->ring[(s->head + s->n) % POINTS] = p;
  if (s->n < POINTS)
    s->n++;
  else
    s->head = (s->head + 1) % POINTS;
  begin_step(ep, wall, mono);
  fold_coarse(ep, p, wall, mono);
}

void sg_series_tick(sg_daemon_t *d) {
  int64_t wall = sg_wall_ms(), mono = sg_now_ms();
  sg_endpoint_t *ep;
  TAILQ_FOREACH(ep, &d->endpoints, link) sample(ep, wall, mono);
}

void sg_series_free(sg_series_t *s) { free(s); }

json_t *sg_series_to_json(sg_endpoint_t *ep, int64_t since_wall_ms, bool coarse) {
  json_t *t = json_array(), *rps = json_array(), *queue = json_array(), *workers = json_array(), *ready = json_array(),
         *in_flight = json_array(), *err4 = json_array(), *err5 = json_array(),
         *lat[3] = {json_array(), json_array(), json_array()}, *starting = json_array(), *cold = json_array(),
         *cold_ms = json_array(), *wait_ms = json_array();
  sg_series_t *s = ep->series;
  size_t n = s ? (coarse ? s->c_n : s->n) : 0;
  int64_t now = sg_now_ms();
  for (size_t i = 0; i <= n && s; i++) {
    struct point p;
    if (i < n)
      p = coarse ? s->coarse[(s->c_head + i) % COARSE_POINTS] : s->ring[(s->head + i) % POINTS];
    else if (coarse)
      p = coarse_current(ep, current(ep, now), now);
    else
      p = current(ep, now);
    if (p.t < since_wall_ms)
      continue;
    json_array_append_new(t, json_integer(p.t));
    json_array_append_new(rps, json_real(round(p.rps * 1000) / 1000));
    json_array_append_new(queue, json_integer(p.queue));
    json_array_append_new(workers, json_integer(p.workers));
    json_array_append_new(ready, json_integer(p.ready));
    json_array_append_new(in_flight, json_integer(p.in_flight));
    json_array_append_new(err4, json_integer(p.err4));
    json_array_append_new(err5, json_integer(p.err5));
    for (int q = 0; q < 3; q++)
      json_array_append_new(lat[q], p.lat[q] < 0 ? json_null() : json_real(round((double)p.lat[q] * 1e6) / 1e3));
    json_array_append_new(starting, json_integer(p.starting));
    json_array_append_new(cold, json_integer(p.cold_starts));
    json_array_append_new(cold_ms,
                          p.cold_start_s < 0 ? json_null() : json_real(round((double)p.cold_start_s * 1e6) / 1e3));
    json_array_append_new(wait_ms,
                          p.queue_delay_s < 0 ? json_null() : json_real(round((double)p.queue_delay_s * 1e6) / 1e3));
  }
  return json_pack("{s:s, s:i, s:i, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
                   "endpoint", ep->name, "step_s", (coarse ? COARSE_MS : STEP_MS) / 1000, "points",
                   (int)json_array_size(t), "t", t, "requests_per_s", rps, "queue", queue, "workers", workers, "ready",
                   ready, "in_flight", in_flight, "errors_4xx", err4, "errors_5xx", err5, "latency_p50_ms", lat[0],
                   "latency_p95_ms", lat[1], "latency_p99_ms", lat[2], "starting", starting, "cold_starts", cold,
                   "cold_start_ms", cold_ms, "queue_delay_ms", wait_ms);
}
