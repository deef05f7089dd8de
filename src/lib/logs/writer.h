/* The log writer thread: writes log batches through its own store
 * connection, off the event loop. The submitting side is the loop thread. */
#ifndef SGPU_LOG_WRITER_H
#define SGPU_LOG_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "sgpu/error.h"
#include "sgpu/store.h"

typedef struct sg_log_writer sg_log_writer_t;

/* Opens its own connection to the database at db_path and starts the thread.
 * Each endpoint's lines are trimmed to its newest keep_lines now and then. */
sg_log_writer_t *sg_log_writer_start(const char *db_path, int64_t keep_lines, sg_error_t **err);
/* Hands over n lines (the array and every string in it, all malloc'ed).
 * Returns the batch's sequence number; never blocks on the disk. */
uint64_t sg_log_writer_submit(sg_log_writer_t *w, sg_log_line_t *lines, size_t n);
/* Blocks until the batch seq and every one before it are written. */
void sg_log_writer_wait(sg_log_writer_t *w, uint64_t seq);
/* Lines submitted and not yet written. */
size_t sg_log_writer_backlog(sg_log_writer_t *w);
/* Writes what is queued, then stops the thread and frees w. */
void sg_log_writer_stop(sg_log_writer_t *w);

/* Frees lines[0..n) and their strings, then the array. */
void sg_log_lines_free(sg_log_line_t *lines, size_t n);

#endif
