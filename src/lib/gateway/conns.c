/* Keep-alive connections to workers: the gateway's per-worker state
 * (w->conns), shared by the proxy and job dispatch; freed with the worker
 * (sg_gateway_conns_free from the gateway's worker_freed event). */
#include "daemon/fleet.h"
#include "gateway/gateway.h"
#include "sgpu/util.h"

/* A worker's upstream connections not in use. */
struct sg_worker_conns {
  sg_upstream_t **idle;
  size_t n_idle, cap_idle;
};

#define UPSTREAM_CONNECT_TIMEOUT_S 5.0

sg_upstream_t *sg_gateway_get_conn(sg_worker_t *w) {
  struct sg_worker_conns *c = w->conns;
  while (c && c->n_idle > 0) {
    sg_upstream_t *u = c->idle[--c->n_idle];
    if (sg_upstream_usable(u))
      return u;
    sg_upstream_free(u); /* closed by the worker while idle */
  }
  return sg_upstream_new(w->d->base, w->host, w->port, UPSTREAM_CONNECT_TIMEOUT_S);
}

void sg_gateway_put_conn(sg_worker_t *w, sg_upstream_t *u) {
  if (!sg_upstream_usable(u) || w->exited || w->stopping) {
    sg_upstream_free(u);
    return;
  }
  if (!w->conns)
    w->conns = xcalloc(1, sizeof(*w->conns));
  struct sg_worker_conns *c = w->conns;
  if (c->n_idle == c->cap_idle) {
    c->cap_idle = c->cap_idle ? 2 * c->cap_idle : 4;
    c->idle = xrealloc(c->idle, c->cap_idle * sizeof(*c->idle));
  }
  c->idle[c->n_idle++] = u;
}

void sg_gateway_conns_free(sg_worker_t *w) {
  struct sg_worker_conns *c = w->conns;
  if (!c)
    return;
  for (size_t i = 0; i < c->n_idle; i++)
    sg_upstream_free(c->idle[i]);
  free(c->idle);
  free(c);
  w->conns = NULL;
}
