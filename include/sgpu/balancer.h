/* Worker choice for one request: a pure function over the endpoint's workers. */
#ifndef SGPU_BALANCER_H
#define SGPU_BALANCER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sg_balancer_slot {
  bool ready;
  int in_flight;
  int64_t last_used_ms;
} sg_balancer_slot_t;

/* Returns the index of the ready worker with the fewest outstanding requests
 * below max_concurrency, or -1 if none. Ties go to the worker used most
 * recently: light load stays on few workers, so the others become idle and
 * the scaler can stop them after their idle timeout. */
int sg_balancer_pick(const sg_balancer_slot_t *slots, size_t n, int max_concurrency);

#endif
