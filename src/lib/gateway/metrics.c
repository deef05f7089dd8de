/* GET /metrics: the gateway's and scaler's counters in Prometheus text
 * format (version 0.0.4), one series per endpoint. */
#include <event2/buffer.h>

#include "auth/keys.h"
#include "gateway/gateway.h"
#include "logs/logs.h"
#include "scaler/scaler.h"
#include "sgpu/util.h"

const double sg_metric_bounds[SG_METRIC_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                    0.25,  0.5,    1,     2.5,  5,     10,   30};

const double sg_metric_long_bounds[SG_METRIC_BUCKETS] = {0.1, 0.25, 0.5, 1,   2.5, 5,    10,
                                                         30,  60,   120, 300, 600, 1800, 3600};

void sg_histogram_observe_in(sg_histogram_t *h, const double *bounds, double value) {
  int i = 0;
  while (i < SG_METRIC_BUCKETS && value > bounds[i])
    i++;
  h->buckets[i]++;
  h->count++;
  h->sum += value;
}

void sg_histogram_observe(sg_histogram_t *h, double value) { sg_histogram_observe_in(h, sg_metric_bounds, value); }

/* A worker sgpud started became ready: its cold start, start to ready.
 * Workers adopted after a restart are not counted, as in cold_starts. */
static void on_worker_ready(void *ud, sg_worker_t *w) {
  if (!w->adopted && w->ready_mono >= w->started_mono)
    sg_histogram_observe_in(&w->ep->metrics.cold_start, sg_metric_long_bounds,
                            (double)(w->ready_mono - w->started_mono) / 1000);
}

static const sg_fleet_subscriber_t subscriber = {.worker_ready = on_worker_ready};

void sg_metrics_init(sg_daemon_t *d) { sg_fleet_subscribe(d, &subscriber, NULL); }

void sg_metrics_response(sg_endpoint_t *ep, int status, double seconds) {
  if (status >= 100 && status < 600)
    ep->metrics.by_status[status]++;
  sg_histogram_observe(&ep->metrics.latency, seconds);
}

static void header(struct evbuffer *b, const char *name, const char *type, const char *help) {
  evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void histogram_in(struct evbuffer *b, const char *name, const char *ep, const sg_histogram_t *h,
                         const double *bounds) {
  uint64_t cum = 0;
  for (int i = 0; i < SG_METRIC_BUCKETS; i++) {
    cum += h->buckets[i];
    evbuffer_add_printf(b, "%s_bucket{endpoint=\"%s\",le=\"%g\"} %llu\n", name, ep, bounds[i], (unsigned long long)cum);
  }
  cum += h->buckets[SG_METRIC_BUCKETS];
  evbuffer_add_printf(b, "%s_bucket{endpoint=\"%s\",le=\"+Inf\"} %llu\n", name, ep, (unsigned long long)cum);
  evbuffer_add_printf(b, "%s_sum{endpoint=\"%s\"} %.6f\n", name, ep, h->sum);
  evbuffer_add_printf(b, "%s_count{endpoint=\"%s\"} %llu\n", name, ep, (unsigned long long)h->count);
}

static void histogram(struct evbuffer *b, const char *name, const char *ep, const sg_histogram_t *h) {
  histogram_in(b, name, ep, h, sg_metric_bounds);
}

/* One counter per endpoint, read through an offset into sg_ep_metrics_t. */
static void counter(struct evbuffer *b, sg_daemon_t *d, const char *name, const char *help, size_t offset) {
  header(b, name, "counter", help);
  sg_endpoint_t *ep;
  TAILQ_FOREACH(ep, &d->endpoints, link) {
    const uint64_t *v = (const uint64_t *)((const char *)&ep->metrics + offset);
    evbuffer_add_printf(b, "%s{endpoint=\"%s\"} %llu\n", name, ep->name, (unsigned long long)*v);
  }
}

static void handle(sg_daemon_t *d, sg_http_req_t *req) {
  struct evbuffer *b = evbuffer_new();
  sg_endpoint_t *ep;

  counter(b, d, "sgpu_requests_total", "Invocations that arrived at the gateway.", offsetof(sg_ep_metrics_t, requests));
  header(b, "sgpu_responses_total", "counter", "Answers to invocations by status code.");
  TAILQ_FOREACH(ep, &d->endpoints, link) {
    for (int code = 100; code < 600; code++)
      if (ep->metrics.by_status[code])
        evbuffer_add_printf(b, "sgpu_responses_total{endpoint=\"%s\",code=\"%d\"} %llu\n", ep->name, code,
                            (unsigned long long)ep->metrics.by_status[code]);
  }
  counter(b, d, "sgpu_requests_aborted_total", "Invocations whose client went away before the answer.",
          offsetof(sg_ep_metrics_t, aborted));
  counter(b, d, "sgpu_retries_total", "Invocations sent again to another worker after a failed attempt.",
          offsetof(sg_ep_metrics_t, retries));
  header(b, "sgpu_request_duration_seconds", "histogram", "Time from arrival to the end of the answer.");
  TAILQ_FOREACH(ep, &d->endpoints, link) histogram(b, "sgpu_request_duration_seconds", ep->name, &ep->metrics.latency);
  header(b, "sgpu_queue_wait_seconds", "histogram", "Time invocations waited for a free worker.");
  TAILQ_FOREACH(ep, &d->endpoints, link) histogram(b, "sgpu_queue_wait_seconds", ep->name, &ep->metrics.queue_wait);
  header(b, "sgpu_queue_length", "gauge", "Invocations waiting for a worker now.");
  TAILQ_FOREACH(ep, &d->endpoints, link)
  evbuffer_add_printf(b, "sgpu_queue_length{endpoint=\"%s\"} %d\n", ep->name, sg_gateway_queued(ep));
  header(b, "sgpu_in_flight", "gauge", "Invocations being served by workers now.");
  TAILQ_FOREACH(ep, &d->endpoints, link)
  evbuffer_add_printf(b, "sgpu_in_flight{endpoint=\"%s\"} %d\n", ep->name, ep->in_flight);
  header(b, "sgpu_workers", "gauge", "Workers by state.");
  TAILQ_FOREACH(ep, &d->endpoints, link) {
    int n[SG_W_FAILED + 1] = {0};
    sg_worker_t *w;
    TAILQ_FOREACH(w, &ep->workers, link) n[w->state]++;
    for (int s = SG_W_STARTING; s <= SG_W_DRAINING; s++)
      evbuffer_add_printf(b, "sgpu_workers{endpoint=\"%s\",state=\"%s\"} %d\n", ep->name, sg_worker_state_name(s),
                          n[s]);
  }
  header(b, "sgpu_desired_workers", "gauge", "Workers the scaler wants now.");
  TAILQ_FOREACH(ep, &d->endpoints, link)
  evbuffer_add_printf(b, "sgpu_desired_workers{endpoint=\"%s\"} %d\n", ep->name, sg_scaler_desired(ep));
  counter(b, d, "sgpu_cold_starts_total", "Workers started that became ready.", offsetof(sg_ep_metrics_t, cold_starts));
  header(b, "sgpu_scale_decisions_total", "counter", "Scaler decisions that started or stopped workers.");
  TAILQ_FOREACH(ep, &d->endpoints, link) {
    evbuffer_add_printf(b, "sgpu_scale_decisions_total{endpoint=\"%s\",direction=\"up\"} %llu\n", ep->name,
                        (unsigned long long)ep->metrics.scale_ups);
    evbuffer_add_printf(b, "sgpu_scale_decisions_total{endpoint=\"%s\",direction=\"down\"} %llu\n", ep->name,
                        (unsigned long long)ep->metrics.scale_downs);
  }
  header(b, "sgpu_cold_start_seconds", "histogram", "Time from a worker's start to its first healthy probe.");
  TAILQ_FOREACH(ep, &d->endpoints, link)
  histogram_in(b, "sgpu_cold_start_seconds", ep->name, &ep->metrics.cold_start, sg_metric_long_bounds);
  header(b, "sgpu_jobs_total", "counter", "Async jobs that ended, by final status.");
  TAILQ_FOREACH(ep, &d->endpoints, link) {
    const struct {
      const char *status;
      uint64_t n;
    } jobs[] = {{"COMPLETED", ep->metrics.jobs_completed},
                {"FAILED", ep->metrics.jobs_failed},
                {"CANCELLED", ep->metrics.jobs_cancelled},
                {"TIMED_OUT", ep->metrics.jobs_timed_out}};
    for (size_t i = 0; i < SG_ARRAY_SIZE(jobs); i++)
      evbuffer_add_printf(b, "sgpu_jobs_total{endpoint=\"%s\",status=\"%s\"} %llu\n", ep->name, jobs[i].status,
                          (unsigned long long)jobs[i].n);
  }
  header(b, "sgpu_job_duration_seconds", "histogram", "Execution time of async jobs that ended after running.");
  TAILQ_FOREACH(ep, &d->endpoints, link)
  histogram_in(b, "sgpu_job_duration_seconds", ep->name, &ep->metrics.job_duration, sg_metric_long_bounds);
  header(b, "sgpu_gpu_seconds_total", "counter", "GPU-seconds metered, by worker state.");
  TAILQ_FOREACH(ep, &d->endpoints, link) {
    static const char *const states[SG_METER_NSTATES] = {"starting", "busy", "idle"};
    for (int s = 0; s < SG_METER_NSTATES; s++)
      evbuffer_add_printf(b, "sgpu_gpu_seconds_total{endpoint=\"%s\",state=\"%s\"} %.3f\n", ep->name, states[s],
                          (double)ep->metrics.gpu_ms[s] / 1000);
  }
  header(b, "sgpu_gpus", "gauge", "GPUs of this node by type and whether a worker holds them.");
  for (size_t i = 0; i < d->gpus->n; i++) {
    const char *type = d->gpus->gpus[i].type;
    bool seen = false;
    for (size_t j = 0; j < i; j++)
      seen |= !strcmp(d->gpus->gpus[j].type, type);
    if (seen)
      continue;
    int total = sg_gpu_total_count(d->gpus, type), free_n = sg_gpu_free_count(d->gpus, type);
    evbuffer_add_printf(b, "sgpu_gpus{type=\"%s\",state=\"free\"} %d\n", type, free_n);
    evbuffer_add_printf(b, "sgpu_gpus{type=\"%s\",state=\"held\"} %d\n", type, total - free_n);
  }
  sg_logs_metrics(d, b);
  sg_keys_metrics(d, b);
  size_t len = evbuffer_get_length(b);
  sg_http_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", evbuffer_pullup(b, -1), len);
  evbuffer_free(b);
}

static sg_http_head_action_t on_head(void *d, sg_http_req_t *req, const char *rest) {
  (void)rest;
  handle(d, req);
  return SG_HTTP_DONE;
}

void sg_metrics_routes(sg_router_t *r, sg_daemon_t *d) {
  sg_router_add(
      r,
      &(sg_route_t){.path = "/metrics", .methods = SG_HTTP_GET, .scope = SG_SCOPE_READ, .on_head = on_head, .ctx = d});
}
