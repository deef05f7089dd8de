/* The store: sgpud's durable state in one SQLite database (WAL mode).
 * This is the only module that speaks SQL. All calls run on the caller's
 * thread and may block on disk; they are short single-row operations or
 * batched writes. */
#ifndef SGPU_STORE_H
#define SGPU_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sgpu/error.h"

typedef struct sg_store sg_store_t;

/* Opens (creating and migrating) the database at path. */
sg_store_t *sg_store_open(const char *path, sg_error_t **err);
void sg_store_close(sg_store_t *store);
/* Lets this connection cache up to bytes of database pages (a writer of
 * many rows keeps its index pages in memory). */
void sg_store_set_cache(sg_store_t *store, int64_t bytes);

/* The tables of what an endpoint spec names by name. */
typedef enum { SG_STORE_SECRETS, SG_STORE_VOLUMES } sg_store_named_t;
/* 1 when table holds a row called name, 0 when not, or -SG_ESTORE. */
int sg_store_named_exists(sg_store_t *store, sg_store_named_t table, const char *name, sg_error_t **err);

/* Opens a read-only connection (SQLITE_OPEN_READONLY) to the existing
 * database at path, for queries off the event loop: in WAL mode readers run
 * beside the writers and see the last commit when their read begins. */
sg_store_t *sg_store_open_readonly(const char *path, sg_error_t **err);
/* Starts a read transaction and its snapshot now: the statements until
 * sg_store_read_end() see the database as it is at this call. */
int sg_store_read_begin(sg_store_t *store, sg_error_t **err);
void sg_store_read_end(sg_store_t *store);

/* A bounded set of read-only connections shared by query threads; each is
 * opened on first need and kept. Thread-safe. */
typedef struct sg_store_readers sg_store_readers_t;
sg_store_readers_t *sg_store_readers_new(const char *path);
/* A connection for the caller alone until it is put back; NULL with *err
 * when none could be opened. */
sg_store_t *sg_store_readers_take(sg_store_readers_t *r, sg_error_t **err);
void sg_store_readers_put(sg_store_readers_t *r, sg_store_t *store);
/* Closes the connections; none may be taken. */

/* The store thread: one thread that runs every write of a connection (and
 * the reads that must see those writes) in the order they were submitted,
 * so that the event loop never waits on SQLite. Submitted from the loop;
 * work(store, data) runs on the thread, done(data) afterwards on the loop
 * (in the same order). done may be NULL. */
struct event_base;
typedef struct sg_store_thread sg_store_thread_t;
/* The thread uses store until sg_store_thread_free; the caller closes it after. */
sg_store_thread_t *sg_store_thread_new(struct event_base *base, sg_store_t *store, sg_error_t **err);
void sg_store_thread_submit(sg_store_thread_t *t, void (*work)(sg_store_t *store, void *data), void (*done)(void *data),
                            void *data);
/* Runs every submitted job and its done() to the end (blocks the loop; only
 * at shutdown). */
void sg_store_thread_drain(sg_store_thread_t *t);
/* Drains, stops the thread and frees it. */
void sg_store_thread_free(sg_store_thread_t *t);
void sg_store_readers_free(sg_store_readers_t *r);

typedef struct sg_endpoint_record {
  const char *name;
  const char *spec_json;
  int version;
  int64_t created_ms;
  int64_t updated_ms;
} sg_endpoint_record_t;

/* Inserts a new endpoint; SG_EEXIST when the name is taken. */
int sg_store_endpoint_insert(sg_store_t *store, const sg_endpoint_record_t *rec, sg_error_t **err);
/* Replaces an endpoint's spec, version and updated time; SG_ENOTFOUND if absent. */
int sg_store_endpoint_update(sg_store_t *store, const sg_endpoint_record_t *rec, sg_error_t **err);
int sg_store_endpoint_delete(sg_store_t *store, const char *name, sg_error_t **err);
/* Insert, update and delete also write the endpoint's versions (table
 * endpoint_versions, in the same transaction): each stored spec with its
 * version and time (created_ms and updated_ms of the record), the newest
 * SG_STORE_VERSIONS_KEEP per endpoint. */
#define SG_STORE_VERSIONS_KEEP 50
/* Calls cb for each kept version of name, oldest first. */
int sg_store_endpoint_versions(sg_store_t *store, const char *name,
                               void (*cb)(void *ud, const sg_endpoint_record_t *rec), void *ud, sg_error_t **err);
/* The spec text of version `version` of name (the caller frees it), or NULL
 * with SG_ENOTFOUND when it is not kept. */
char *sg_store_endpoint_version(sg_store_t *store, const char *name, int version, sg_error_t **err);
/* Calls cb for every endpoint, in name order; the record is valid during the call. */
int sg_store_endpoint_each(sg_store_t *store, void (*cb)(void *ud, const sg_endpoint_record_t *rec), void *ud,
                           sg_error_t **err);

/* Workers that sgpud started, so a restart can find and clean up leftovers. */
typedef struct sg_worker_record {
  const char *id;
  const char *endpoint;
  const char *runtime;
  int pid;
  int64_t started_ms;
} sg_worker_record_t;

int sg_store_worker_add(sg_store_t *store, const sg_worker_record_t *rec, sg_error_t **err);
int sg_store_worker_remove(sg_store_t *store, const char *id, sg_error_t **err);
/* Forgets every worker record. */
int sg_store_worker_clear(sg_store_t *store, sg_error_t **err);
int sg_store_worker_each(sg_store_t *store, void (*cb)(void *ud, const sg_worker_record_t *rec), void *ud,
                         sg_error_t **err);
/* The same writes queued on the store thread (rec is copied); a failure is logged. */
void sg_store_thread_worker_add(sg_store_thread_t *t, const sg_worker_record_t *rec);
void sg_store_thread_worker_remove(sg_store_thread_t *t, const char *id);

typedef struct sg_log_line {
  int64_t ts_ms; /* wall clock */
  const char *endpoint;
  const char *worker; /* may be NULL for endpoint events */
  const char *stream; /* "stdout", "stderr", "event" */
  const char *line;
  const char *request_id; /* NULL: none; the request the worker wrote it for */
} sg_log_line_t;

/* Appends lines in one transaction. */
int sg_store_logs_append(sg_store_t *store, const sg_log_line_t *lines, size_t n, sg_error_t **err);

typedef struct sg_log_query {
  const char *endpoint;
  const char *worker;     /* NULL: any */
  const char *stream;     /* NULL: any */
  const char *text;       /* NULL: any; substring match */
  const char *request_id; /* NULL: any; else only lines stored with it */
  int64_t since_ms;       /* 0: no bound */
  int64_t until_ms;       /* 0: no bound */
  int limit;              /* newest `limit` lines, returned oldest first */
  bool oldest_first;      /* the oldest `limit` lines instead */
} sg_log_query_t;

/* May scan many rows: never on the event loop (asserted in debug builds). */
int sg_store_logs_query(sg_store_t *store, const sg_log_query_t *q, void (*cb)(void *ud, const sg_log_line_t *line),
                        void *ud, sg_error_t **err);
/* Keeps the newest keep lines of an endpoint; deletes all when keep is 0. */
int sg_store_logs_trim(sg_store_t *store, const char *endpoint, int64_t keep, sg_error_t **err);
/* Deletes an endpoint's oldest lines until the text of those left is at
 * most max_bytes. */
int sg_store_logs_trim_bytes(sg_store_t *store, const char *endpoint, int64_t max_bytes, sg_error_t **err);
/* Deletes an endpoint's lines older than before_ms. */
int sg_store_logs_trim_age(sg_store_t *store, const char *endpoint, int64_t before_ms, sg_error_t **err);
/* Calls cb with each endpoint that has log lines. */
int sg_store_logs_endpoints(sg_store_t *store, void (*cb)(void *ud, const char *endpoint), void *ud, sg_error_t **err);

/* Usage: one record per worker and hour (seg numbers a worker's records
 * from 0). Times are wall-clock ms; the *_ms durations are metered time by
 * state; round_ms is what rounding the worker's whole time up to the second
 * added, set on its last record when it closes. */
typedef struct sg_usage_record {
  const char *worker;
  int seg;
  const char *endpoint;
  const char *gpu_type; /* NULL without GPUs */
  int gpu_count;
  double price; /* per GPU-second */
  int64_t start_ms, end_ms;
  int64_t starting_ms, busy_ms, idle_ms;
  int64_t requests;
  int64_t round_ms;
  bool closed;
} sg_usage_record_t;

/* Writes records (insert or update by worker and seg) in one transaction.
 * A closed record is never changed again, so a record written twice is
 * billed once. */
int sg_store_usage_put(sg_store_t *store, const sg_usage_record_t *recs, size_t n, sg_error_t **err);
/* Closes every open record at its last checkpoint (after a crash). */
int sg_store_usage_close_open(sg_store_t *store, sg_error_t **err);
/* Reopens the last record of worker (one a new sgpud adopts, closed by the
 * earlier sgpud) so that it can be written on: its rounding is taken back.
 * Then calls cb for each of the worker's records, oldest first. Returns the
 * number of records (0: none) or a negative error. */
int sg_store_usage_reopen(sg_store_t *store, const char *worker, void (*cb)(void *ud, const sg_usage_record_t *rec),
                          void *ud, sg_error_t **err);
/* Calls cb for each record of endpoint (NULL: all) that overlaps [from_ms, to_ms). */
/* May scan many rows: never on the event loop (asserted in debug builds). */
int sg_store_usage_each(sg_store_t *store, const char *endpoint, int64_t from_ms, int64_t to_ms,
                        void (*cb)(void *ud, const sg_usage_record_t *rec), void *ud, sg_error_t **err);

#endif
