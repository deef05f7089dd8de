/* The log writer thread: writes log batches through its own store
 * connection, off the event loop. The submitting side is the loop thread. */
#ifndef SGPU_LOG_WRITER_H
#define SGPU_LOG_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "sgpu/daemon.h"
#include "sgpu/error.h"
#include "sgpu/store.h"

typedef struct sg_log_writer sg_log_writer_t;

/* Opens its own connection to the database at db_path and starts the thread.
 * Every trim_every_s, each endpoint that got lines is trimmed to its
 * retention: its rule in rules[0..n_rules) (fields at -1 take def's), else
 * def; limits of 0 are no limit. The rules are copied. */
sg_log_writer_t *sg_log_writer_start(const char *db_path, const sg_log_retention_t *def,
                                     const sg_log_retention_t *rules, size_t n_rules, double trim_every_s,
                                     sg_error_t **err);
/* Hands over n lines: the array, and each line's strings, which live in one
 * malloc'ed block that starts at its endpoint.
 * Returns the batch's sequence number; never blocks on the disk. */
uint64_t sg_log_writer_submit(sg_log_writer_t *w, sg_log_line_t *lines, size_t n);
/* Blocks until the batch seq and every one before it are written. */
void sg_log_writer_wait(sg_log_writer_t *w, uint64_t seq);
/* Begins a read transaction on reader (sg_store_read_begin) whose snapshot
 * holds exactly the first *lines lines ever submitted (counting those of
 * batches whose write failed): lines submitted later are not in it. Any
 * thread; may wait for a batch being written. */
int sg_log_writer_snapshot(sg_log_writer_t *w, sg_store_t *reader, uint64_t *lines, sg_error_t **err);
/* Lines written since the start. */
uint64_t sg_log_writer_stored(sg_log_writer_t *w);
/* Lines submitted and not yet written. */
size_t sg_log_writer_backlog(sg_log_writer_t *w);
/* Writes what is queued, then stops the thread and frees w. */
void sg_log_writer_stop(sg_log_writer_t *w);

/* Frees lines[0..n) and their blocks, then the array. */
void sg_log_lines_free(sg_log_line_t *lines, size_t n);

#endif
