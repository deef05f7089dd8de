/* Async endpoints: the durable job queue and RunPod's job API on /v2.
 * Loop-thread only (the writer and webhook threads are internal). */
#ifndef SGPU_JOBS_H
#define SGPU_JOBS_H

#include <stdint.h>

#include "daemon/daemon-internal.h"
#include "gateway/jobs-proto.h"

/* Starts the job writer (its own connection to db_path) and the webhook
 * threads, and recovers the queue: jobs left IN_PROGRESS by an earlier
 * sgpud go back to the queue (their lost execution counted as an attempt).
 * Call after the endpoints are loaded. */
int sg_jobs_init(sg_daemon_t *d, const char *db_path, sg_error_t **err);
/* Writes what is queued, stops the threads and frees every job in memory.
 * Requests still waiting are left to the HTTP server to close. */
void sg_jobs_shutdown(sg_daemon_t *d);

/* Registers /v2/ (RunPod's job API) with the router. */
void sg_jobs_routes(sg_router_t *r, sg_daemon_t *d);

/* A worker slot of ep may have freed, or a worker became ready: queued jobs
 * are dispatched from a fresh stack frame. */
void sg_jobs_kick(sg_endpoint_t *ep);
/* ep was deleted: its queued and running jobs end as CANCELLED. */
void sg_jobs_endpoint_deleted(sg_endpoint_t *ep);
/* Frees ep's job state (ep is being freed). */
void sg_jobs_endpoint_free(sg_endpoint_t *ep);

/* Jobs of ep waiting for a worker, and how long the oldest has waited (ms):
 * the scaler counts them like queued requests. */
int sg_jobs_queued(const sg_endpoint_t *ep);
int64_t sg_jobs_oldest_wait(const sg_endpoint_t *ep, int64_t now_mono);

#endif
