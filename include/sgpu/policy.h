/* Scale policy: a pure function from (spec bounds, metrics, now) to the
 * number of workers an endpoint should have and why. No I/O, no clocks:
 * the same code runs in sgpud and in the trace simulator. */
#ifndef SGPU_POLICY_H
#define SGPU_POLICY_H

#include <stdint.h>

#include "sgpu/spec.h"

typedef struct sg_scale_params {
  int min;
  int max;
  int max_concurrency;
  sg_scale_policy_t policy;
  double value; /* concurrency target per worker, or queue delay in seconds */
} sg_scale_params_t;

typedef struct sg_scale_metrics {
  int ready;          /* workers taking traffic */
  int starting;       /* workers started and not yet healthy */
  int idle_expired;   /* ready workers idle for at least the idle timeout */
  int in_flight;      /* requests being served */
  int queued;         /* requests waiting for a worker */
  int64_t oldest_wait_ms; /* how long the oldest queued request has waited */
  int start_slots;    /* workers that could still be started (GPUs, backoff); -1: unlimited */
} sg_scale_metrics_t;

typedef struct sg_scale_decision {
  int desired;
  int start; /* workers to start now */
  int stop;  /* idle-expired workers to stop now */
  char reason[160];
} sg_scale_decision_t;

void sg_scale_params_from_spec(const sg_spec_t *spec, sg_scale_params_t *out);

/* Decides the worker count. Never below min, never above max, never stops a
 * worker that is not idle-expired, never starts more than start_slots. */
void sg_scale_decide(const sg_scale_params_t *p, const sg_scale_metrics_t *m, sg_scale_decision_t *out);

#endif
