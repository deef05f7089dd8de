/* The usage writer: a thread with its own store connection that writes
 * batches of usage records, so that no SQLite transaction runs on the event
 * loop. The submitting side is the loop thread. */
#ifndef SGPU_METER_WRITER_H
#define SGPU_METER_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "sgpu/error.h"
#include "sgpu/store.h"

typedef struct sg_usage_writer sg_usage_writer_t;

/* Opens its own connection to the database at db_path and starts the thread. */
sg_usage_writer_t *sg_usage_writer_start(const char *db_path, sg_error_t **err);
/* Hands over n records (the array and the strings in each, all malloc'ed).
 * Returns the batch's sequence number; never blocks on the disk. */
uint64_t sg_usage_writer_submit(sg_usage_writer_t *w, sg_usage_record_t *recs, size_t n);
/* Blocks until batch seq and every one before it are written. */
void sg_usage_writer_wait(sg_usage_writer_t *w, uint64_t seq);
/* Batches written that failed (the records were logged as lost). */
uint64_t sg_usage_writer_failures(sg_usage_writer_t *w);
/* Writes what is queued, then stops the thread and frees w. */
void sg_usage_writer_stop(sg_usage_writer_t *w);

/* Frees recs[0..n) and their strings, then the array. */
void sg_usage_records_free(sg_usage_record_t *recs, size_t n);

#endif
