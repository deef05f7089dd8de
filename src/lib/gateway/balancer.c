/* Worker choice, one rule for every caller: the proxy (requests), jobs
 * (async dispatch) and the simulator (bench/scaler-sim, through the pure
 * sg_balancer_pick over slots). */
#include "gateway/balancer-internal.h"
#include "sgpu/balancer.h"

/* Whether a worker with a_in_flight requests, last used at a_used, should
 * take the next request before one with b_in_flight, last used at b_used:
 * fewer in flight first, then the one used most recently. Equal ones keep
 * the earlier candidate. */
static bool prefer(int a_in_flight, int64_t a_used, int b_in_flight, int64_t b_used) {
  return a_in_flight < b_in_flight || (a_in_flight == b_in_flight && a_used > b_used);
}

int sg_balancer_pick(const sg_balancer_slot_t *slots, size_t n, int max_concurrency) {
  int best = -1;
  for (size_t i = 0; i < n; i++) {
    const sg_balancer_slot_t *s = &slots[i];
    if (!s->ready || s->in_flight >= max_concurrency)
      continue;
    if (best < 0 || prefer(s->in_flight, s->last_used_ms, slots[best].in_flight, slots[best].last_used_ms))
      best = (int)i;
  }
  return best;
}

sg_worker_t *sg_balancer_pick_worker(sg_endpoint_t *ep, sg_balancer_skip_fn skip, const void *arg) {
  int maxc = ep->spec->workers.max_concurrency;
  sg_worker_t *best = NULL;
  sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) {
    if (w->state != SG_W_READY || w->suspect || w->in_flight >= maxc || (skip && skip(w, arg)))
      continue;
    if (!best || prefer(w->in_flight, w->last_used_mono, best->in_flight, best->last_used_mono))
      best = w;
  }
  return best;
}
