/* Async endpoints: the durable job queue and RunPod's job API on /v2.
 * Loop-thread only (the writer and webhook threads are internal). */
#ifndef SGPU_JOBS_H
#define SGPU_JOBS_H

#include <stdint.h>

#include "daemon/fleet.h"
#include "http/router.h"
#include "gateway/jobs-proto.h"

/* Subscribes to the fleet's events (jobs of a deleted endpoint are cancelled,
 * a freed worker slot dispatches, queued jobs count as waiting demand), then
 * starts the job writer (its own connection to db_path) and the webhook
 * threads, and recovers the queue: jobs left IN_PROGRESS by an earlier
 * sgpud go back to the queue (their lost execution counted as an attempt).
 * Call after the endpoints are loaded. */
int sg_jobs_init(sg_daemon_t *d, const char *db_path, sg_error_t **err);
/* Writes what is queued, stops the threads and frees every job in memory.
 * Requests still waiting are left to the HTTP server to close. */
void sg_jobs_shutdown(sg_daemon_t *d);

/* Registers /v2/ (RunPod's job API) with the router. */
void sg_jobs_routes(sg_router_t *r, sg_daemon_t *d);
/* Adds the routes pull workers talk to (/worker/...; jobs-pull.c). */
void sg_jobs_pull_routes(sg_router_t *r, sg_daemon_t *d);
/* GET /v1/endpoints/{endpoint}/jobs?status=&limit=&before=: ep's jobs,
 * newest first; the stored ones are read on the query pool and merged on the
 * loop with the jobs in memory (whose state is newer). */
void sg_jobs_list(sg_daemon_t *d, sg_http_req_t *req, sg_endpoint_t *ep);

#endif
