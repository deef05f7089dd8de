/* A batcher: a thread that takes batches submitted by the loop thread and
 * hands them, in order, to a write function (typically one store
 * transaction each), so that no disk write runs on the event loop. The
 * submitter gets a sequence number and can wait until a batch is written. */
#ifndef SGPU_BATCHER_H
#define SGPU_BATCHER_H

#include <stddef.h>
#include <stdint.h>

#include "sgpu/error.h"

typedef struct sg_batcher sg_batcher_t;

typedef struct sg_batcher_ops {
  /* Writes one batch; runs on the batcher's thread. Returns 0, or -1 when
   * the batch could not be written (counted; the items are freed anyway). */
  int (*write)(void *ctx, void *items, size_t n);
  /* Frees a batch's items after write. */
  void (*free_items)(void *items, size_t n);
  /* Optional: runs on the thread every period_ms, and once before it ends. */
  void (*tick)(void *ctx);
  int64_t period_ms;
} sg_batcher_ops_t;

/* Starts the thread; name appears in errors. ops and ctx must outlive it. */
sg_batcher_t *sg_batcher_start(const char *name, const sg_batcher_ops_t *ops, void *ctx, sg_error_t **err);
/* Hands over a batch of n items (owned from now on). Returns its sequence
 * number; never blocks on the disk. */
uint64_t sg_batcher_submit(sg_batcher_t *b, void *items, size_t n);
/* Blocks until batch seq and every one before it are written. */
void sg_batcher_wait(sg_batcher_t *b, uint64_t seq);
/* Items submitted and not yet written. */
size_t sg_batcher_backlog(sg_batcher_t *b);
/* Items written, and batches whose write failed, since the start. */
uint64_t sg_batcher_written(sg_batcher_t *b);
uint64_t sg_batcher_failures(sg_batcher_t *b);
/* Writes what is queued, runs tick once, stops the thread and frees b. */
void sg_batcher_stop(sg_batcher_t *b);

#endif
