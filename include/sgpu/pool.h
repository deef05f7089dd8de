/* A small pool of worker threads for work that blocks (registry pulls, layer
 * unpacking, OCI runtime invocations that wait). Jobs are submitted from the
 * loop thread; each job's work() runs on a pool thread and its done() runs
 * afterwards on the loop thread, woken through an eventfd. Jobs share nothing
 * with the loop while they run: work() reads and writes only its own data. */
#ifndef SGPU_POOL_H
#define SGPU_POOL_H

#include <stdbool.h>

#include "sgpu/error.h"

struct event_base;

typedef struct sg_pool sg_pool_t;

typedef struct sg_pool_job_ops {
  /* Runs on a pool thread; may block. */
  void (*work)(void *data);
  /* Runs on the loop thread after work(); owns data from then on. Called with
   * cancelled = true (work() not run) for jobs still queued when the pool is
   * freed. */
  void (*done)(void *data, bool cancelled);
} sg_pool_job_ops_t;

/* Starts nthreads threads. NULL with *err on failure. */
sg_pool_t *sg_pool_new(struct event_base *base, int nthreads, sg_error_t **err);

/* Queues a job (loop thread only). */
void sg_pool_submit(sg_pool_t *pool, const sg_pool_job_ops_t *ops, void *data);

/* Jobs queued or running. */
int sg_pool_pending(const sg_pool_t *pool);

/* Runs every job queued or running to its end, and their done() (and those
 * of the jobs these done() submit). Blocks the loop; only at shutdown. */
void sg_pool_drain(sg_pool_t *pool);

/* Finishes the jobs that are running, runs done(cancelled) for the queued
 * ones, waits for the threads and frees the pool. Blocks; only at shutdown. */
void sg_pool_free(sg_pool_t *pool);

#endif
