/* The gateway's synchronous half (proxy.c: /e/), its counters (metrics.c:
 * /metrics) and its keep-alive connections to workers (conns.c), shared with
 * async jobs. Per-worker state: w->conns; per-endpoint: ep->proxy (the
 * request queue, private to proxy.c); it writes the shared ep->metrics.
 * Loop-thread only. */
#ifndef SGPU_GATEWAY_H
#define SGPU_GATEWAY_H

#include "daemon/fleet.h"
#include "http/router.h"
#include "http/upstream.h"

/* proxy.c */
/* Registers /e/ (invocations of an endpoint by name) with the router. */
void sg_gateway_routes(sg_router_t *r, sg_daemon_t *d);
/* Hands queued requests to free workers of ep. */
void sg_gateway_pump(sg_endpoint_t *ep);
/* Requests of ep waiting for a worker now. */
int sg_gateway_queued(const sg_endpoint_t *ep);
/* Fails every queued request of ep with status/code/message. */
void sg_gateway_fail_queue(sg_endpoint_t *ep, int status, const char *code, const char *message);
/* Subscribes to the fleet's events: a deleted endpoint's queue fails, a
 * worker that may take a request pumps the queue, queued requests count as
 * waiting demand and as the endpoint's status.queued; a freed endpoint's
 * queue state goes. */
void sg_gateway_init(sg_daemon_t *d);

/* metrics.c */
void sg_histogram_observe(sg_histogram_t *h, double value);
/* The same, for a histogram whose buckets end at bounds (sg_metric_long_bounds). */
void sg_histogram_observe_in(sg_histogram_t *h, const double *bounds, double value);
/* Subscribes the metrics to the fleet's events (cold-start durations). */
void sg_metrics_init(sg_daemon_t *d);
/* Counts an answer (status) given after `seconds`. */
void sg_metrics_response(sg_endpoint_t *ep, int status, double seconds);
/* Registers GET /metrics (Prometheus text format) with the router. */
void sg_metrics_routes(sg_router_t *r, sg_daemon_t *d);

/* conns.c */
/* An idle keep-alive connection to w, or a new one. */
sg_upstream_t *sg_gateway_get_conn(sg_worker_t *w);
/* Takes u back into w's pool when it may carry another request, else frees it. */
void sg_gateway_put_conn(sg_worker_t *w, sg_upstream_t *u);
/* Frees w's idle connections (w is being freed). */
void sg_gateway_conns_free(sg_worker_t *w);

#endif
