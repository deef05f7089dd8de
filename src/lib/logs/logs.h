/* The log store's live half (logs.c): worker output and platform events,
 * buffered on the loop and written by the log writer, followers, queries on
 * the query pool, and each worker's output source (rate limit and last
 * lines). Its state is d->logs (struct sg_logs, private to logs.c); it calls
 * no other module of the daemon. Loop-thread only. */
#ifndef SGPU_LOGS_H
#define SGPU_LOGS_H

#include <stdbool.h>
#include <stddef.h>

#include "http/http.h"
#include "sgpu/error.h"

typedef struct sg_daemon sg_daemon_t;
struct evbuffer;

/* A request id is 1 to SG_REQUEST_ID_MAX characters of [A-Za-z0-9._:-]: safe
 * in a header, a log line and a query string. */
#define SG_REQUEST_ID_MAX 128
bool sg_request_id_valid(const char *id);

void sg_logs_emit(sg_daemon_t *d, const char *endpoint, const char *worker, const char *stream, const char *line,
                  size_t len);
void sg_logs_event(sg_daemon_t *d, const char *endpoint, const char *worker, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Starts the log writer on its own connection to the database. */
int sg_logs_init(sg_daemon_t *d, const char *db_path, sg_error_t **err);
void sg_logs_flush(sg_daemon_t *d);
/* GET /v1/endpoints/{endpoint}/logs (the endpoint exists). */
void sg_logs_handle(sg_daemon_t *d, sg_http_req_t *req, const char *endpoint);
void sg_logs_shutdown(sg_daemon_t *d);

/* logs.c: reports the lines each worker lost to its rate limit as events. */
void sg_logs_report_drops(sg_daemon_t *d, bool force);
/* Appends the log store's counters to a /metrics answer. */
void sg_logs_metrics(sg_daemon_t *d, struct evbuffer *b);

/* A worker's output as the log store sees it: lines over the rate limit
 * (log_rate_lines_s, log_burst_lines) are dropped and counted, the others
 * are kept in a ring of its last SG_RECENT_LINES and emitted. */
typedef struct sg_log_source sg_log_source_t;
sg_log_source_t *sg_logs_source_new(sg_daemon_t *d, const char *endpoint, const char *worker);
/* A line of the worker that holds, as a whole word, the id of a request in
 * flight on it, or of one of the last 32 that ended on it within the last
 * second, is stored with that id (the first such, oldest request first). */
void sg_logs_source_line(sg_log_source_t *src, const char *stream, const char *line, size_t len);
/* The request request_id (valid, see above) was handed to the worker
 * (in_flight) or ended on it. src may be NULL (none). */
void sg_logs_source_request(sg_log_source_t *src, const char *request_id, bool in_flight);
/* Copies its last lines, oldest first, into out (at most max; the caller
 * frees each); returns how many. src may be NULL (none). */
size_t sg_logs_source_recent(const sg_log_source_t *src, char **out, size_t max);
/* The worker exited: its dropped lines are reported on the next pass. */
void sg_logs_source_ended(sg_log_source_t *src);
void sg_logs_source_free(sg_log_source_t *src);

/* Log and usage queries waiting or running on the query pool, at most. */
#define SG_QUERY_QUEUE_MAX 64
/* When the query pool holds SG_QUERY_QUEUE_MAX queries already, answers
 * 503 busy (with Retry-After) and returns true. */
bool sg_queries_busy(sg_daemon_t *d, sg_http_req_t *req);

/* Endpoint endpoint was deleted (its "endpoint deleted" event line already
 * went out): the answers of its log follows end, so that a follow does not
 * outlive it or go on with a new endpoint of the same name. */
void sg_logs_endpoint_deleted(sg_daemon_t *d, const char *endpoint);

#endif
