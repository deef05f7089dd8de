/* Jobs of async endpoints in the store: one row per job, written in
 * batches (one transaction each) by the job writer thread, read by the loop
 * for jobs no longer held in memory and once at start-up to recover the
 * queue. All calls run on the caller's thread and may block on disk. */
#ifndef SGPU_JOBS_STORE_H
#define SGPU_JOBS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sgpu/error.h"
#include "sgpu/store.h"

/* RunPod's job states. */
typedef enum {
  SG_JOB_IN_QUEUE,
  SG_JOB_IN_PROGRESS,
  SG_JOB_COMPLETED,
  SG_JOB_FAILED,
  SG_JOB_CANCELLED,
  SG_JOB_TIMED_OUT,
} sg_job_status_t;

/* "IN_QUEUE", ...; parse returns -1 for an unknown name. */
const char *sg_job_status_name(sg_job_status_t s);
int sg_job_status_parse(const char *name);
/* True for COMPLETED, FAILED, CANCELLED and TIMED_OUT. */
bool sg_job_status_final(sg_job_status_t s);

typedef struct sg_job_record {
  const char *id;
  const char *endpoint;
  sg_job_status_t status;
  const char *input;   /* JSON text */
  const char *webhook; /* NULL: none */
  int64_t exec_timeout_ms;
  int64_t ttl_ms;
  int attempts;       /* executions started in the current run */
  int retries;        /* times it was put back in the queue (worker lost, retry) */
  const char *output; /* JSON text, or NULL */
  const char *error;  /* JSON text, or NULL */
  const char *worker; /* worker of the last execution, or NULL */
  int64_t created_ms; /* wall clock */
  int64_t started_ms; /* 0: not yet */
  int64_t finished_ms;
  int64_t delay_ms;     /* creation to the start of the last execution */
  int64_t execution_ms; /* duration of the last execution */
  int64_t expires_ms;   /* final jobs are deleted after this (0: never) */
} sg_job_record_t;

/* One write of a batch. An insert writes every field; an update writes the
 * mutable ones (all but id, endpoint, input, webhook, timeouts) of the row
 * with rec.id. result is set by sg_store_jobs_apply(). */
typedef struct sg_job_write {
  bool insert;
  sg_job_record_t rec;
  int result; /* 0, -SG_EEXIST (insert of a taken id), -SG_ENOTFOUND (update of no row), -SG_ESTORE */
} sg_job_write_t;

/* Sets the connection to sync the log on every commit (synchronous=FULL):
 * a commit that returned is on disk. */
int sg_store_jobs_durable(sg_store_t *store, sg_error_t **err);

/* Applies writes[0..n) in one transaction (one commit, one sync of the
 * log). A write that fails alone (a taken id) gets its own result and the
 * others still commit. Returns -1 when the transaction itself failed: then
 * nothing was written and every result is -SG_ESTORE. */
int sg_store_jobs_apply(sg_store_t *store, sg_job_write_t *writes, size_t n, sg_error_t **err);

/* Calls cb with the job id of endpoint (the record is valid during the call).
 * SG_ENOTFOUND when there is none. */
int sg_store_jobs_get(sg_store_t *store, const char *endpoint, const char *id,
                      void (*cb)(void *ud, const sg_job_record_t *rec), void *ud, sg_error_t **err);

/* Calls cb for at most limit jobs of endpoint, newest first (by creation):
 * those with that status (a sg_job_status_t; -1: any) created before
 * before_ms (<= 0: any time). Expired rows not yet deleted are included. */
int sg_store_jobs_list(sg_store_t *store, const char *endpoint, int status, int64_t before_ms, int limit,
                       void (*cb)(void *ud, const sg_job_record_t *rec), void *ud, sg_error_t **err);

/* Calls cb for every job IN_QUEUE or IN_PROGRESS, oldest first. */
int sg_store_jobs_each_open(sg_store_t *store, void (*cb)(void *ud, const sg_job_record_t *rec), void *ud,
                            sg_error_t **err);

/* Deletes final jobs whose expires_ms is in (0, now_ms]. Returns how many, or -1. */
int64_t sg_store_jobs_expire(sg_store_t *store, int64_t now_ms, sg_error_t **err);

#endif
