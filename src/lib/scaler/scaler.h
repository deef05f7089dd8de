/* The scaler loop (scaler.c) over the pure step (policy.c); per-endpoint
 * state behind ep->scale, private to scaler.c. Loop-thread only. */
#ifndef SGPU_SCALER_H
#define SGPU_SCALER_H

#include "daemon/fleet.h"

/* Subscribes to the fleet's events: demand changes and endpoint changes kick
 * a pass; its state of an endpoint (ep->scale) shows in the endpoint's
 * status (desired, last_decision) and goes when the endpoint is freed. */
void sg_scaler_init(sg_daemon_t *d);
/* Workers the scaler's last pass over ep wanted (0 before its first). */
int sg_scaler_desired(const sg_endpoint_t *ep);
void sg_scaler_kick(sg_daemon_t *d);
void sg_scaler_run(sg_daemon_t *d);

#endif
