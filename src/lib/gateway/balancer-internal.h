/* Worker choice over an endpoint's live workers, shared by the proxy and
 * async job dispatch so that both follow the same rotation. */
#ifndef SGPU_GATEWAY_BALANCER_INTERNAL_H
#define SGPU_GATEWAY_BALANCER_INTERNAL_H

#include <stdbool.h>

#include "daemon/fleet.h"

/* Returns true for a worker the caller will not use this time (for example
 * one this request already failed on). */
typedef bool (*sg_balancer_skip_fn)(const sg_worker_t *w, const void *arg);

/* The worker of ep that should take the next request or job, or NULL when
 * none can. Only ready workers that are not suspect (out of rotation until a
 * probe passes), have fewer than workers.max_concurrency in flight and are
 * not skipped (skip may be NULL) are candidates; of those the one with the
 * fewest in flight wins, ties going to the most recently used (as
 * sg_balancer_pick) and then to the earliest in ep's list. Pure: reads ep,
 * changes nothing. */
sg_worker_t *sg_balancer_pick_worker(sg_endpoint_t *ep, sg_balancer_skip_fn skip, const void *arg);

#endif
