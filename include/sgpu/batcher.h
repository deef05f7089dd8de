/* A batcher: a thread that takes batches submitted by the loop thread and
 * hands them, in order, to a write function (typically one store
 * transaction each), so that no disk write runs on the event loop. The
 * submitter gets a sequence number and can wait until a batch is written
 * (the barrier, for threads other than the loop), or ask for a completion:
 * a callback that runs on the loop once the batch is written or failed.
 *
 * Group commit: with write_group, the thread takes every batch queued at
 * once (up to max_group items) and writes them together, so one commit
 * serves all of them; the busier the queue, the bigger the groups. */
#ifndef SGPU_BATCHER_H
#define SGPU_BATCHER_H

#include <stddef.h>
#include <stdint.h>

#include "sgpu/error.h"

struct event_base;

typedef struct sg_batcher sg_batcher_t;

/* One submitted batch as write_group sees it. */
typedef struct sg_batcher_batch {
  void *items;
  size_t n;   /* 0 for a batch that carries only a completion */
  int result; /* 0 on entry; write_group sets it < 0 when this batch failed */
} sg_batcher_batch_t;

typedef struct sg_batcher_ops {
  /* Writes one batch; runs on the batcher's thread. Returns 0, or -1 when
   * the batch could not be written (counted; the items are freed anyway).
   * Unused when write_group is set. */
  int (*write)(void *ctx, void *items, size_t n);
  /* Frees a batch's items after write. */
  void (*free_items)(void *items, size_t n);
  /* Optional: runs on the thread every period_ms, and once before it ends. */
  void (*tick)(void *ctx);
  int64_t period_ms;
  /* Optional, instead of write: writes batches[0..n), consecutive batches
   * in the order submitted, as one group (typically one transaction), and
   * sets the result of each that failed. Runs on the batcher's thread. */
  void (*write_group)(void *ctx, sg_batcher_batch_t *batches, size_t n);
  /* Items in one group at most (a group holds at least one batch, and
   * batches of no items always join); 0: no bound. */
  size_t max_group;
} sg_batcher_ops_t;

/* Runs on the loop thread once the batch is written (result 0) or failed
 * (result < 0: -1 from write, or what write_group set). */
typedef void (*sg_batcher_done_cb)(void *arg, int result);

/* Starts the thread; name appears in errors. ops and ctx must outlive it.
 * Batches of a batcher started this way have no completions. */
sg_batcher_t *sg_batcher_start(const char *name, const sg_batcher_ops_t *ops, void *ctx, sg_error_t **err);
/* As sg_batcher_start, and completions run on base (woken through an
 * eventfd, as core/pool.c's done()). */
sg_batcher_t *sg_batcher_start_on(struct event_base *base, const char *name, const sg_batcher_ops_t *ops, void *ctx,
                                  sg_error_t **err);
/* Hands over a batch of n items (owned from now on; items may be NULL when
 * n is 0). Returns its sequence number; never blocks on the disk. */
uint64_t sg_batcher_submit(sg_batcher_t *b, void *items, size_t n);
/* As sg_batcher_submit, and done(arg, result) runs on the loop once the
 * batch is written or failed. Completions run in the order the batches were
 * submitted, so a completion also means every earlier batch is done. Needs
 * a batcher from sg_batcher_start_on; done may be NULL. Loop thread. */
uint64_t sg_batcher_submit_cb(sg_batcher_t *b, void *items, size_t n, sg_batcher_done_cb done, void *arg);
/* Blocks until batch seq and every one before it are written. */
void sg_batcher_wait(sg_batcher_t *b, uint64_t seq);
/* Items submitted and not yet written. */
size_t sg_batcher_backlog(sg_batcher_t *b);
/* Items written, and batches whose write failed, since the start. */
uint64_t sg_batcher_written(sg_batcher_t *b);
uint64_t sg_batcher_failures(sg_batcher_t *b);
/* Writes what is queued, runs tick once, stops the thread and frees b.
 * Completions not yet run are dropped: they never run. */
void sg_batcher_stop(sg_batcher_t *b);

#endif
