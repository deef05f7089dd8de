/* The scaler loop (scaler.c) over the pure step (policy.c). Loop-thread only. */
#ifndef SGPU_SCALER_H
#define SGPU_SCALER_H

#include "daemon/fleet.h"

/* Subscribes to the fleet's events: demand changes and endpoint changes kick a pass. */
void sg_scaler_init(sg_daemon_t *d);
void sg_scaler_kick(sg_daemon_t *d);
void sg_scaler_run(sg_daemon_t *d);

#endif
