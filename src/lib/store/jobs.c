/* The jobs table. See sgpu/jobs-store.h. */
#include <string.h>

#include "sgpu/jobs-store.h"
#include "sgpu/util.h"
#include "store/store-internal.h"

static const char *const status_names[] = {"IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"};

const char *sg_job_status_name(sg_job_status_t s) {
  return (unsigned)s < SG_ARRAY_SIZE(status_names) ? status_names[s] : "UNKNOWN";
}

int sg_job_status_parse(const char *name) {
  for (size_t i = 0; i < SG_ARRAY_SIZE(status_names); i++)
    if (name && !strcmp(name, status_names[i]))
      return (int)i;
  return -1;
}

bool sg_job_status_final(sg_job_status_t s) { return s >= SG_JOB_COMPLETED; }

static void finalizep(sqlite3_stmt **st) {
  if (*st)
    sqlite3_finalize(*st);
}
#define cleanup_stmt __attribute__((cleanup(finalizep)))

static int db_error(sqlite3 *db, sg_error_t **err, const char *what) {
  return sg_make_error(err, SG_ESTORE, "store: %s: %s", what, sqlite3_errmsg(db));
}

static int exec(sqlite3 *db, const char *sql, sg_error_t **err) {
  char *msg = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    int r = sg_make_error(err, SG_ESTORE, "store: %s", msg ? msg : "error");
    sqlite3_free(msg);
    return r;
  }
  return 0;
}

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st, sg_error_t **err) {
  if (sqlite3_prepare_v2(db, sql, -1, st, NULL) != SQLITE_OK)
    return db_error(db, err, "prepare");
  return 0;
}

static void bind_text(sqlite3_stmt *st, int i, const char *s) {
  if (s)
    sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
  else
    sqlite3_bind_null(st, i);
}

static const char *col_text(sqlite3_stmt *st, int i) { return (const char *)sqlite3_column_text(st, i); }

int sg_store_jobs_durable(sg_store_t *s, sg_error_t **err) {
  sg_assert_not_loop_thread();
  return exec(s->db, "PRAGMA synchronous=FULL", err);
}

#define INSERT_SQL                                                                                                     \
  "INSERT INTO jobs(id, endpoint, status, input, webhook, exec_timeout_ms, ttl_ms, attempts, retries, output,"         \
  " error, worker, created_ms, started_ms, finished_ms, delay_ms, execution_ms, expires_ms)"                           \
  " VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18)"
#define UPDATE_SQL                                                                                                     \
  "UPDATE jobs SET status = ?3, attempts = ?8, retries = ?9, output = ?10, error = ?11, worker = ?12,"                 \
  " created_ms = ?13, started_ms = ?14, finished_ms = ?15, delay_ms = ?16, execution_ms = ?17,"                        \
  " expires_ms = ?18 WHERE id = ?1"

static void bind_record(sqlite3_stmt *st, const sg_job_record_t *r, bool insert) {
  bind_text(st, 1, r->id);
  if (insert) {
    bind_text(st, 2, r->endpoint);
    bind_text(st, 4, r->input);
    bind_text(st, 5, r->webhook);
    sqlite3_bind_int64(st, 6, r->exec_timeout_ms);
    sqlite3_bind_int64(st, 7, r->ttl_ms);
  }
  bind_text(st, 3, sg_job_status_name(r->status));
  sqlite3_bind_int(st, 8, r->attempts);
  sqlite3_bind_int(st, 9, r->retries);
  bind_text(st, 10, r->output);
  bind_text(st, 11, r->error);
  bind_text(st, 12, r->worker);
  sqlite3_bind_int64(st, 13, r->created_ms);
  sqlite3_bind_int64(st, 14, r->started_ms);
  sqlite3_bind_int64(st, 15, r->finished_ms);
  sqlite3_bind_int64(st, 16, r->delay_ms);
  sqlite3_bind_int64(st, 17, r->execution_ms);
  sqlite3_bind_int64(st, 18, r->expires_ms);
}

int sg_store_jobs_apply(sg_store_t *s, sg_job_write_t *writes, size_t n, sg_error_t **err) {
  sg_assert_not_loop_thread();
  if (n == 0)
    return 0;
  cleanup_stmt sqlite3_stmt *ins = NULL;
  cleanup_stmt sqlite3_stmt *upd = NULL;
  if (prepare(s->db, INSERT_SQL, &ins, err) < 0 || prepare(s->db, UPDATE_SQL, &upd, err) < 0)
    goto failed;
  if (exec(s->db, "BEGIN", err) < 0)
    goto failed;
  for (size_t i = 0; i < n; i++) {
    sqlite3_stmt *st = writes[i].insert ? ins : upd;
    bind_record(st, &writes[i].rec, writes[i].insert);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
      writes[i].result = !writes[i].insert && sqlite3_changes(s->db) == 0 ? -SG_ENOTFOUND : 0;
    else if (rc == SQLITE_CONSTRAINT)
      writes[i].result = -SG_EEXIST;
    else
      writes[i].result = -SG_ESTORE;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (writes[i].result == -SG_ESTORE && sqlite3_get_autocommit(s->db)) {
      /* The error ended the transaction: nothing of it holds. */
      db_error(s->db, err, "write jobs");
      goto failed;
    }
  }
  if (exec(s->db, "COMMIT", err) < 0) {
    exec(s->db, "ROLLBACK", NULL);
    goto failed;
  }
  return 0;
failed:
  for (size_t i = 0; i < n; i++)
    writes[i].result = -SG_ESTORE;
  return -1;
}

#define SELECT_COLS                                                                                                    \
  "SELECT id, endpoint, status, input, webhook, exec_timeout_ms, ttl_ms, attempts, retries, output, error,"            \
  " worker, created_ms, started_ms, finished_ms, delay_ms, execution_ms, expires_ms FROM jobs"

static void read_record(sqlite3_stmt *st, sg_job_record_t *r) {
  int status = sg_job_status_parse(col_text(st, 2));
  *r = (sg_job_record_t){
      .id = col_text(st, 0),
      .endpoint = col_text(st, 1),
      .status = status < 0 ? SG_JOB_FAILED : (sg_job_status_t)status,
      .input = col_text(st, 3),
      .webhook = col_text(st, 4),
      .exec_timeout_ms = sqlite3_column_int64(st, 5),
      .ttl_ms = sqlite3_column_int64(st, 6),
      .attempts = sqlite3_column_int(st, 7),
      .retries = sqlite3_column_int(st, 8),
      .output = col_text(st, 9),
      .error = col_text(st, 10),
      .worker = col_text(st, 11),
      .created_ms = sqlite3_column_int64(st, 12),
      .started_ms = sqlite3_column_int64(st, 13),
      .finished_ms = sqlite3_column_int64(st, 14),
      .delay_ms = sqlite3_column_int64(st, 15),
      .execution_ms = sqlite3_column_int64(st, 16),
      .expires_ms = sqlite3_column_int64(st, 17),
  };
}

int sg_store_jobs_get(sg_store_t *s, const char *endpoint, const char *id,
                      void (*cb)(void *ud, const sg_job_record_t *rec), void *ud, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, SELECT_COLS " WHERE id = ?1 AND endpoint = ?2", &st, err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, id);
  bind_text(st, 2, endpoint);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_DONE)
    return sg_make_error(err, SG_ENOTFOUND, "no job %s", id);
  if (rc != SQLITE_ROW)
    return db_error(s->db, err, "get job");
  sg_job_record_t r;
  read_record(st, &r);
  cb(ud, &r);
  return 0;
}

int sg_store_jobs_list(sg_store_t *s, const char *endpoint, int status, int64_t before_ms, int limit,
                       void (*cb)(void *ud, const sg_job_record_t *rec), void *ud, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, SELECT_COLS SG_STORE_JOBS_LIST_WHERE, &st, err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, endpoint);
  bind_text(st, 2, status >= 0 ? sg_job_status_name((sg_job_status_t)status) : NULL);
  sqlite3_bind_int64(st, 3, before_ms > 0 ? before_ms : INT64_MAX);
  sqlite3_bind_int(st, 4, limit);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    sg_job_record_t r;
    read_record(st, &r);
    cb(ud, &r);
  }
  if (rc != SQLITE_DONE)
    return db_error(s->db, err, "list jobs");
  return 0;
}

int sg_store_jobs_each_open(sg_store_t *s, void (*cb)(void *ud, const sg_job_record_t *rec), void *ud,
                            sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, SELECT_COLS " WHERE status IN ('IN_QUEUE', 'IN_PROGRESS') ORDER BY seq", &st, err) < 0)
    return -SG_ESTORE;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    sg_job_record_t r;
    read_record(st, &r);
    cb(ud, &r);
  }
  if (rc != SQLITE_DONE)
    return db_error(s->db, err, "list open jobs");
  return 0;
}

int64_t sg_store_jobs_expire(sg_store_t *s, int64_t now_ms, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "DELETE FROM jobs WHERE expires_ms > 0 AND expires_ms <= ?1", &st, err) < 0)
    return -1;
  sqlite3_bind_int64(st, 1, now_ms);
  if (sqlite3_step(st) != SQLITE_DONE) {
    db_error(s->db, err, "expire jobs");
    return -1;
  }
  return sqlite3_changes(s->db);
}
