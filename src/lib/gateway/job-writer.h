/* The job writer: a batcher (sgpu/batcher.h) with its own store connection
 * (synchronous=FULL) that makes job writes durable with group commit. The
 * loop queues writes, each a batch of one; the batcher's thread takes
 * everything queued at once, writes it in one transaction (one commit, one
 * sync of the log), and each write's callback runs on the loop as the
 * batch's completion. Writes commit in the order they were queued, so a
 * callback also means every earlier write is on disk. Writes queued while a
 * commit runs share the next one: the busier the queue, the bigger the
 * batches. Expired jobs are deleted after a commit, at most once a second. */
#ifndef SGPU_JOB_WRITER_H
#define SGPU_JOB_WRITER_H

#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>

#include "sgpu/error.h"
#include "sgpu/jobs-store.h"

typedef struct sg_job_writer sg_job_writer_t;

/* Runs on the loop once the write is committed (result 0) or failed
 * (result as in sg_job_write_t). */
typedef void (*sg_job_write_cb)(void *arg, int result);

typedef struct sg_job_writer_stats {
  uint64_t writes;  /* writes committed or failed */
  uint64_t commits; /* transactions */
  uint64_t failed;  /* writes that failed */
} sg_job_writer_stats_t;

/* Opens its own connection to db_path and starts the batcher; callbacks run
 * on base. max_batch bounds the writes of one transaction (0: no bound;
 * 1: one commit per write). */
sg_job_writer_t *sg_job_writer_start(struct event_base *base, const char *db_path, size_t max_batch, sg_error_t **err);
/* Queues an insert (insert true) or an update of rec. Every string of rec is
 * copied; cb may be NULL. Never blocks on the disk. Loop thread. */
void sg_job_writer_put(sg_job_writer_t *w, bool insert, const sg_job_record_t *rec, sg_job_write_cb cb, void *arg);
/* Queues no write: cb runs once everything queued before is committed. */
void sg_job_writer_barrier(sg_job_writer_t *w, sg_job_write_cb cb, void *arg);
/* Writes not yet committed. */
size_t sg_job_writer_backlog(sg_job_writer_t *w);
void sg_job_writer_get_stats(sg_job_writer_t *w, sg_job_writer_stats_t *out);
/* Writes what is queued, stops the batcher and frees w. Callbacks of writes
 * not yet delivered do not run. */
void sg_job_writer_stop(sg_job_writer_t *w);

#endif
