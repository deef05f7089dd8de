#include "sgpu/policy.h"

#include <math.h>
#include <stdio.h>

void sg_scale_params_from_spec(const sg_spec_t *spec, sg_scale_params_t *out) {
  out->min = spec->workers.min;
  out->max = spec->workers.max;
  out->max_concurrency = spec->workers.max_concurrency;
  out->policy = spec->scale.policy;
  out->value = spec->scale.value;
}

static int ceil_div(int a, int b) { return b > 0 ? (a + b - 1) / b : a; }

void sg_scale_decide(const sg_scale_params_t *p, const sg_scale_metrics_t *m, sg_scale_decision_t *out) {
  int active = m->ready + m->starting;
  int demand = m->in_flight + m->queued;
  int need;
  const char *why;

  if (p->policy == SG_SCALE_CONCURRENCY) {
    double target = p->value > 0 ? p->value : 1;
    if (target > p->max_concurrency)
      target = p->max_concurrency;
    need = (int)ceil(demand / target);
    why = "concurrency";
  } else {
    /* Busy workers are needed; more are added only while the oldest queued
     * request has waited longer than the configured delay, or when there is
     * demand and nothing at all runs (scale from zero). Workers already
     * starting take the queue first, so a burst does not start them twice. */
    need = ceil_div(m->in_flight, p->max_concurrency);
    why = "queue_delay";
    if (m->queued > 0 && (active == 0 || m->oldest_wait_ms >= (int64_t)(p->value * 1000))) {
      int extra = ceil_div(m->queued, p->max_concurrency) - m->starting;
      need = active + (extra > 0 ? extra : 0);
    } else if (m->queued > 0 && need < active) {
      need = active;
    }
  }

  int desired = need;
  if (desired < active - m->idle_expired)
    desired = active - m->idle_expired; /* keep workers that are not idle long enough */
  if (desired < p->min)
    desired = p->min;
  if (desired > p->max)
    desired = p->max;

  int start = 0, stop = 0;
  if (desired > active) {
    start = desired - active;
    if (m->start_slots >= 0 && start > m->start_slots)
      start = m->start_slots;
  } else if (desired < active) {
    stop = active - desired;
    if (stop > m->idle_expired)
      stop = m->idle_expired;
  }
  out->desired = desired;
  out->start = start;
  out->stop = stop;

  if (start > 0)
    snprintf(out->reason, sizeof(out->reason),
             "scale up %d -> %d (%s: %d in flight, %d queued, oldest waited %lld ms)%s", active, active + start, why,
             m->in_flight, m->queued, (long long)m->oldest_wait_ms,
             start < desired - active ? "; limited by free GPUs or backoff" : "");
  else if (desired > active)
    snprintf(out->reason, sizeof(out->reason), "want %d workers, have %d: waiting for free GPUs or backoff",
             desired, active);
  else if (stop > 0)
    snprintf(out->reason, sizeof(out->reason), "scale down %d -> %d (%d idle past the idle timeout, min %d)",
             active, active - stop, m->idle_expired, p->min);
  else
    snprintf(out->reason, sizeof(out->reason), "hold at %d (%s: %d in flight, %d queued)", active, why,
             m->in_flight, m->queued);
}
