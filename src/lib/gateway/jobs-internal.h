/* Async jobs, private to gateway/jobs*.c: the job table and its jobs, the
 * requests that wait on them, and what the files of the module call of each
 * other. jobs.c holds the state and a job's life (table by id, per-endpoint
 * queues, writes, the end of a job, recovery, the fleet subscription),
 * jobs-dispatch.c the exchange with workers, jobs-wait.c the waiting
 * requests and their answers, jobs-routes.c the /v2 handlers. Loop thread
 * only. */
#ifndef SGPU_GATEWAY_JOBS_INTERNAL_H
#define SGPU_GATEWAY_JOBS_INTERNAL_H

#include <event2/buffer.h>

#include "gateway/gateway.h"
#include "gateway/job-writer.h"
#include "gateway/jobs.h"
#include "gateway/webhook.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

typedef struct sg_job sg_job_t;
typedef struct jreq jreq_t;
typedef struct sg_job_exec sg_job_exec_t;
struct pull_req;

struct sg_ep_jobs {
  TAILQ_HEAD(, sg_job) queue;
  LIST_HEAD(, sg_job) running;
  int queued, running_n, inserting;
  uint64_t completed, failed, retried;
  struct event *pump_ev;
  TAILQ_HEAD(, pull_req) takes; /* parked takes of pull workers, oldest first (jobs-pull.c) */
};

typedef struct sg_jobs {
  sg_daemon_t *d;
  sg_job_writer_t *writer;
  sg_webhooks_t *webhooks;
  sg_job_t **buckets;
  size_t n_buckets, count;
  LIST_HEAD(, sg_job) all;
  LIST_HEAD(, jreq) reqs;
  /* Executions whose job ended first (cancel, timeout): each holds its
   * worker slot until the worker's answer ends (jobs-dispatch.c). */
  LIST_HEAD(, sg_job_exec) orphans;
  size_t input_bytes;
} sg_jobs_t;

struct sg_job {
  TAILQ_ENTRY(sg_job) qlink; /* ep queue, while in_queue */
  LIST_ENTRY(sg_job) rlink;  /* ep running list, while w */
  LIST_ENTRY(sg_job) alink;  /* J->all */
  sg_job_t *hnext;
  sg_jobs_t *J;
  sg_endpoint_t *ep;
  char *id;
  sg_job_status_t status; /* as the API shows it */
  sg_job_status_t final_status;
  bool mapped, in_queue, committed, finishing;
  int pending; /* writes not yet committed */
  char *input;
  size_t input_len;
  char *webhook;
  int64_t exec_timeout_ms, ttl_ms;
  int attempts, retries;
  char *output, *error, *worker_id;
  int64_t created_wall, started_wall, finished_wall, delay_ms, execution_ms, expires_wall;
  int64_t queued_mono, started_mono;
  int64_t ttl_from_wall; /* the ttl counts from here: the submission, or the last /retry (memory only) */
  char *avoid_worker;    /* id of the worker its last attempt was lost on: not sent there again
                            unless that worker passes a health check after the loss */
  /* the execution in progress */
  sg_worker_t *w;
  sg_upstream_t *u;
  sg_job_exec_t *x; /* the exchange's handler argument (jobs-dispatch.c) */
  struct evbuffer *answer;
  int answer_status;
  bool answer_lines;
  json_t *items; /* partial outputs of a streamed answer */
  size_t items_read;
  char *item_error;
  struct event *exec_timer, *ttl_timer;
  struct event *keep_timer; /* a final job with unread partial outputs stays this long */
  bool keep_over;
  /* taken by a pull worker (jobs-pull.c) */
  bool pulled;
  int ping_misses;     /* the worker's pings in a row that did not carry it */
  char *progress;      /* the last progress output (memory only), shown while IN_PROGRESS */
  size_t stream_bytes; /* partial outputs received, bounded by max_body */
  LIST_HEAD(, jreq) waiters;
};

enum jr_action { A_RUN, A_RUNSYNC, A_STATUS, A_CANCEL, A_RETRY, A_PURGE, A_HEALTH, A_STREAM };
enum jr_wait { W_NONE, W_COMMIT, W_FINAL, W_STREAM, W_BARRIER, W_STORE, W_CHECK };

struct jreq {
  LIST_ENTRY(jreq) link;  /* J->reqs */
  LIST_ENTRY(jreq) wlink; /* job->waiters, while job */
  sg_jobs_t *J;
  sg_http_req_t *req; /* NULL once the client went away */
  enum jr_action action;
  enum jr_wait wait;
  char *ep_name, *id;
  struct evbuffer *body;
  size_t limit;
  int64_t wait_ms;
  bool then_final; /* W_COMMIT of runsync: wait for the end next */
  sg_job_t *job;
  struct event *timer;
  int purged;
};

struct loaded {
  sg_jobs_t *J;
  sg_endpoint_t *ep;
  sg_job_t *job;
  bool expired;
};

/* ---- the state (jobs.c) ---- */

/* The job of that id in the table, or NULL. */
sg_job_t *sg_jobs_map_get(sg_jobs_t *J, const char *id);
/* Takes j out of the table (it stays allocated). */
void sg_jobs_map_del(sg_jobs_t *J, sg_job_t *j);
/* ep's job state, made on first use. */
struct sg_ep_jobs *sg_jobs_ep(sg_endpoint_t *ep);
/* A new job of ep in the table (counted in ep->proxies until freed). */
sg_job_t *sg_job_new(sg_jobs_t *J, sg_endpoint_t *ep, const char *id);
/* Frees j's input and stops counting it in J->input_bytes. */
void sg_job_drop_input(sg_job_t *j);
/* Frees j (out of the table and J->all); no write of it may be pending. */
void sg_job_free(sg_job_t *j);
/* Forgets j if it is final and nothing waits for it (see jobs.c). */
void sg_job_maybe_release(sg_job_t *j);
/* Fills r with j as it is, with that status; r borrows j's strings. */
void sg_job_to_record(const sg_job_t *j, sg_job_status_t status, sg_job_record_t *r);
/* Frees *slot and takes value in its place. */
void sg_jobs_set_str(char **slot, char *value);
/* A JSON value from stored text (NULL text: null). */
json_t *sg_jobs_json_value(const char *text);
/* The status answer of a record; position > 0 for a queued job. */
json_t *sg_jobs_record_json(const sg_job_record_t *r, int position);
/* The status answer of j. */
json_t *sg_job_json(const sg_job_t *j);
/* (Re)arms *ev (made on first use) to call cb after ms (now if negative). */
void sg_jobs_arm(struct event **ev, struct event_base *base, event_callback_fn cb, void *arg, int64_t ms);
/* Writes j with status to the job writer; cb (given j) runs on its commit. */
void sg_job_put(sg_job_t *j, bool insert, sg_job_status_t status, sg_job_write_cb cb);
/* The completion of a write nothing waits for. */
void sg_job_written(void *arg, int result);
/* Takes j out of its endpoint's queue, if it is there. */
void sg_job_unqueue(sg_job_t *j);
/* Ends j as status (output and error are JSON text, taken); shown once
 * committed. */
void sg_job_finish(sg_job_t *j, sg_job_status_t status, char *output, char *error);
/* A JSON string of the formatted message, as text (caller frees). */
char *sg_jobs_error_text(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Queues j (at the head for a re-queue) and kicks its endpoint. */
void sg_job_enqueue(sg_job_t *j, bool head);
/* Arms j's ttl from its creation time. */
void sg_job_arm_ttl(sg_job_t *j);
/* A job in memory from a stored record (ud: struct loaded); l->job stays
 * NULL and l->expired is set for one past its retention. */
void sg_jobs_load_record(void *ud, const sg_job_record_t *rec);

/* ---- dispatch (jobs-dispatch.c) ---- */

/* Gives j's worker slot back (when j runs); the connection goes back to the
 * pool only after a complete exchange. */
void sg_job_release_worker(sg_job_t *j, bool completed);
/* j ends while its worker still computes it (cancel, timeout): the exchange
 * goes on without j, its answer discarded, and holds the worker's slot until
 * the answer ends or the connection closes (the worker exited). */
void sg_job_abandon_worker(sg_job_t *j);
/* Starts j's execution on w: out of the queue, IN_PROGRESS (written), w's
 * slot taken, its execution timeout armed. */
void sg_job_start_on(sg_job_t *j, sg_worker_t *w);
/* Takes j off its worker without giving the slot back. */
void sg_job_take_off_worker(sg_job_t *j);
/* The worker was lost during j's execution (taken: the job reached it):
 * queued again at the head, or FAILED once async.max_retries is spent. */
void sg_job_worker_lost(sg_job_t *j, const char *why, bool taken);
/* Frees the executions left by ended jobs (shutdown). */
void sg_jobs_orphans_free(sg_jobs_t *J);
/* Worker w passed a health check: queued jobs lost on it may go to it again. */
void sg_jobs_worker_trusted(sg_endpoint_t *ep, const sg_worker_t *w);
/* Dispatches ep's queued jobs to the workers that can take them. */
void sg_jobs_pump(sg_endpoint_t *ep);

/* ---- pull workers (jobs-pull.c) ---- */

/* Hands queued jobs of ep to its parked takes. */
void sg_jobs_pull_pump(sg_endpoint_t *ep);
/* j ended while a pull worker held it: the worker is told to stop it and
 * the slot stays taken until the worker is free again. */
void sg_jobs_pull_hold(sg_job_t *j);
/* w ended: the jobs it held are lost, its polls answered, its slots freed. */
void sg_jobs_pull_worker_ended(sg_worker_t *w);
/* Frees w's pull state. */
void sg_jobs_pull_free(sg_worker_t *w);

/* ---- waiting requests (jobs-wait.c) ---- */

/* The close callback of a waiting request's client. */
void sg_jreq_client_closed(sg_http_req_t *req, void *arg);

/* Frees r (out of J->reqs and its job's waiters). */
void sg_jreq_free(jreq_t *r);
/* Answers r (when its client is still there) and frees it. */
void sg_jreq_reply(jreq_t *r, int status, json_t *body);
/* Answers r with an error (when its client is still there) and frees it. */
void sg_jreq_error(jreq_t *r, int status, const char *code, const char *msg);
/* Answers r with the partial outputs of its job not read yet. */
void sg_jreq_stream_reply(jreq_t *r);
/* Makes r a waiter of j for wait. */
void sg_jreq_attach(jreq_t *r, sg_job_t *j, enum jr_wait wait);
/* Waits for the job's end (or new partial outputs) at most r->wait_ms. */
void sg_jreq_wait(jreq_t *r, enum jr_wait wait);
/* Answers the waiters of j that wait for what happened. */
void sg_job_notify(sg_job_t *j, enum jr_wait what);

#endif
