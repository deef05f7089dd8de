#include "sgpu/balancer.h"

int sg_balancer_pick(const sg_balancer_slot_t *slots, size_t n, int max_concurrency) {
  int best = -1;
  for (size_t i = 0; i < n; i++) {
    const sg_balancer_slot_t *s = &slots[i];
    if (!s->ready || s->in_flight >= max_concurrency)
      continue;
    if (best < 0 || s->in_flight < slots[best].in_flight ||
        (s->in_flight == slots[best].in_flight && s->last_used_ms > slots[best].last_used_ms))
      best = (int)i;
  }
  return best;
}
