/* The meter's live half (recorder.c: per-worker usage records, w->meter,
 * private) and the console's series (series.c: ep->series, private).
 * Loop-thread only. */
#ifndef SGPU_METER_INTERNAL_H
#define SGPU_METER_INTERNAL_H

#include <jansson.h>

#include "daemon/fleet.h"
#include "sgpu/meter.h"

/* meter/recorder.c */
/* Subscribes to the fleet first of all, then starts the usage writer. */
int sg_meter_init(sg_daemon_t *d, const char *db_path, sg_error_t **err);
const sg_price_table_t *sg_meter_prices(sg_daemon_t *d);
/* (sg_meter_init subscribes to the fleet's worker events: a worker is
 * metered from worker_started to worker_ended, split by worker_ready and
 * worker_load; a request counted on request_ended.) */
/* Checkpoints every worker when the interval passed (called every tick). */
void sg_meter_tick(sg_daemon_t *d);
void sg_meter_checkpoint_all(sg_daemon_t *d);
/* Checkpoints every worker and returns the barrier a query waits for off
 * the loop (sg_usage_writer_wait(*writer, *seq)) before it reads usage:
 * *writer is NULL when there is nothing to wait for. Never blocks. */
struct sg_usage_writer;
void sg_meter_barrier(sg_daemon_t *d, struct sg_usage_writer **writer, uint64_t *seq);
/* Closes every open record now and stops the writer. */
void sg_meter_shutdown(sg_daemon_t *d);

/* meter/series.c: per-endpoint time series of the last hour */
void sg_series_tick(sg_daemon_t *d);
void sg_series_free(sg_series_t *s);
/* The points from since_wall_ms on: of the last hour in 5 s steps, or
 * (coarse) of the last seven days in 10 min steps; the last point is the
 * step in progress. */
json_t *sg_series_to_json(sg_endpoint_t *ep, int64_t since_wall_ms, bool coarse);

#endif
