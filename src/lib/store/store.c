#include "sgpu/store.h"

#include <errno.h>
#include <sqlite3.h>
#include <string.h>

#include "sgpu/log.h"
#include "sgpu/util.h"

struct sg_store {
  sqlite3 *db;
};

static void finalizep(sqlite3_stmt **st) {
  if (*st)
    sqlite3_finalize(*st);
}
#define cleanup_stmt __attribute__((cleanup(finalizep)))

static const char *const migrations[] = {
    /* 1 */
    "CREATE TABLE endpoints ("
    "  name TEXT PRIMARY KEY,"
    "  spec TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  updated_ms INTEGER NOT NULL);"
    "CREATE TABLE workers ("
    "  id TEXT PRIMARY KEY,"
    "  endpoint TEXT NOT NULL,"
    "  runtime TEXT NOT NULL,"
    "  pid INTEGER NOT NULL,"
    "  started_ms INTEGER NOT NULL);"
    "CREATE TABLE logs ("
    "  id INTEGER PRIMARY KEY,"
    "  ts_ms INTEGER NOT NULL,"
    "  endpoint TEXT NOT NULL,"
    "  worker TEXT,"
    "  stream TEXT NOT NULL,"
    "  line TEXT NOT NULL);"
    "CREATE INDEX logs_endpoint_id ON logs(endpoint, id);",
};

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

static int migrate(sqlite3 *db, sg_error_t **err) {
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(db, "PRAGMA user_version", &st, err) < 0)
    return -SG_ESTORE;
  int version = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
  for (int v = version; v < (int)SG_ARRAY_SIZE(migrations); v++) {
    if (exec(db, "BEGIN IMMEDIATE", err) < 0)
      return -SG_ESTORE;
    cleanup_free char *bump = xasprintf("PRAGMA user_version = %d", v + 1);
    if (exec(db, migrations[v], err) < 0 || exec(db, bump, err) < 0) {
      exec(db, "ROLLBACK", NULL);
      return -SG_ESTORE;
    }
    if (exec(db, "COMMIT", err) < 0)
      return -SG_ESTORE;
  }
  return 0;
}

sg_store_t *sg_store_open(const char *path, sg_error_t **err) {
  sqlite3 *db = NULL;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) !=
      SQLITE_OK) {
    sg_make_error(err, SG_ESTORE, "store: cannot open %s: %s", path, db ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_close(db);
    return NULL;
  }
  sqlite3_busy_timeout(db, 5000);
  if (exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;", err) < 0 ||
      migrate(db, err) < 0) {
    sqlite3_close(db);
    return NULL;
  }
  sg_store_t *s = xcalloc(1, sizeof(*s));
  s->db = db;
  return s;
}

void sg_store_close(sg_store_t *store) {
  if (!store)
    return;
  sqlite3_close(store->db);
  free(store);
}

static void bind_text(sqlite3_stmt *st, int i, const char *s) {
  if (s)
    sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
  else
    sqlite3_bind_null(st, i);
}

static const char *col_text(sqlite3_stmt *st, int i) { return (const char *)sqlite3_column_text(st, i); }

int sg_store_endpoint_insert(sg_store_t *s, const sg_endpoint_record_t *rec, sg_error_t **err) {
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "INSERT INTO endpoints(name, spec, version, created_ms, updated_ms) VALUES(?,?,?,?,?)", &st,
              err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, rec->name);
  bind_text(st, 2, rec->spec_json);
  sqlite3_bind_int(st, 3, rec->version);
  sqlite3_bind_int64(st, 4, rec->created_ms);
  sqlite3_bind_int64(st, 5, rec->updated_ms);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_CONSTRAINT && sqlite3_extended_errcode(s->db) == SQLITE_CONSTRAINT_PRIMARYKEY)
    return sg_make_error(err, SG_EEXIST, "endpoint %s already exists", rec->name);
  if (rc != SQLITE_DONE)
    return db_error(s->db, err, "insert endpoint");
  return 0;
}

int sg_store_endpoint_update(sg_store_t *s, const sg_endpoint_record_t *rec, sg_error_t **err) {
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "UPDATE endpoints SET spec = ?, version = ?, updated_ms = ? WHERE name = ?", &st, err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, rec->spec_json);
  sqlite3_bind_int(st, 2, rec->version);
  sqlite3_bind_int64(st, 3, rec->updated_ms);
  bind_text(st, 4, rec->name);
  if (sqlite3_step(st) != SQLITE_DONE)
    return db_error(s->db, err, "update endpoint");
  if (sqlite3_changes(s->db) == 0)
    return sg_make_error(err, SG_ENOTFOUND, "endpoint %s not found", rec->name);
  return 0;
}

int sg_store_endpoint_delete(sg_store_t *s, const char *name, sg_error_t **err) {
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "DELETE FROM endpoints WHERE name = ?", &st, err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, name);
  if (sqlite3_step(st) != SQLITE_DONE)
    return db_error(s->db, err, "delete endpoint");
  if (sqlite3_changes(s->db) == 0)
    return sg_make_error(err, SG_ENOTFOUND, "endpoint %s not found", name);
  return 0;
}

int sg_store_endpoint_each(sg_store_t *s, void (*cb)(void *ud, const sg_endpoint_record_t *rec), void *ud,
                           sg_error_t **err) {
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "SELECT name, spec, version, created_ms, updated_ms FROM endpoints ORDER BY name", &st, err) < 0)
    return -SG_ESTORE;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    sg_endpoint_record_t rec = {col_text(st, 0), col_text(st, 1), sqlite3_column_int(st, 2),
                                sqlite3_column_int64(st, 3), sqlite3_column_int64(st, 4)};
    cb(ud, &rec);
  }
  if (rc != SQLITE_DONE)
    return db_error(s->db, err, "list endpoints");
  return 0;
}

int sg_store_worker_add(sg_store_t *s, const sg_worker_record_t *rec, sg_error_t **err) {
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "INSERT OR REPLACE INTO workers(id, endpoint, runtime, pid, started_ms) VALUES(?,?,?,?,?)",
              &st, err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, rec->id);
  bind_text(st, 2, rec->endpoint);
  bind_text(st, 3, rec->runtime);
  sqlite3_bind_int(st, 4, rec->pid);
  sqlite3_bind_int64(st, 5, rec->started_ms);
  if (sqlite3_step(st) != SQLITE_DONE)
    return db_error(s->db, err, "add worker");
  return 0;
}

int sg_store_worker_remove(sg_store_t *s, const char *id, sg_error_t **err) {
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "DELETE FROM workers WHERE id = ?", &st, err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, id);
  if (sqlite3_step(st) != SQLITE_DONE)
    return db_error(s->db, err, "remove worker");
  return 0;
}

int sg_store_worker_clear(sg_store_t *s, sg_error_t **err) { return exec(s->db, "DELETE FROM workers", err); }

int sg_store_worker_each(sg_store_t *s, void (*cb)(void *ud, const sg_worker_record_t *rec), void *ud,
                         sg_error_t **err) {
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "SELECT id, endpoint, runtime, pid, started_ms FROM workers ORDER BY started_ms", &st, err) < 0)
    return -SG_ESTORE;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    sg_worker_record_t rec = {col_text(st, 0), col_text(st, 1), col_text(st, 2), sqlite3_column_int(st, 3),
                              sqlite3_column_int64(st, 4)};
    cb(ud, &rec);
  }
  if (rc != SQLITE_DONE)
    return db_error(s->db, err, "list workers");
  return 0;
}

int sg_store_logs_append(sg_store_t *s, const sg_log_line_t *lines, size_t n, sg_error_t **err) {
  if (n == 0)
    return 0;
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "INSERT INTO logs(ts_ms, endpoint, worker, stream, line) VALUES(?,?,?,?,?)", &st, err) < 0)
    return -SG_ESTORE;
  if (exec(s->db, "BEGIN", err) < 0)
    return -SG_ESTORE;
  for (size_t i = 0; i < n; i++) {
    sqlite3_bind_int64(st, 1, lines[i].ts_ms);
    bind_text(st, 2, lines[i].endpoint);
    bind_text(st, 3, lines[i].worker);
    bind_text(st, 4, lines[i].stream);
    bind_text(st, 5, lines[i].line);
    if (sqlite3_step(st) != SQLITE_DONE) {
      int r = db_error(s->db, err, "append logs");
      exec(s->db, "ROLLBACK", NULL);
      return r;
    }
    sqlite3_reset(st);
  }
  return exec(s->db, "COMMIT", err);
}

int sg_store_logs_query(sg_store_t *s, const sg_log_query_t *q, void (*cb)(void *ud, const sg_log_line_t *line),
                        void *ud, sg_error_t **err) {
  cleanup_stmt sqlite3_stmt *st = NULL;
  /* The inner query takes the newest lines; the outer one puts them in time order. */
  const char *sql =
      "SELECT ts_ms, endpoint, worker, stream, line FROM ("
      " SELECT id, ts_ms, endpoint, worker, stream, line FROM logs"
      " WHERE endpoint = ?1"
      "  AND (?2 IS NULL OR worker = ?2)"
      "  AND (?3 IS NULL OR stream = ?3)"
      "  AND (?4 IS NULL OR instr(line, ?4) > 0)"
      "  AND (?5 = 0 OR ts_ms >= ?5)"
      "  AND (?6 = 0 OR ts_ms <= ?6)"
      " ORDER BY id DESC LIMIT ?7)"
      " ORDER BY id ASC";
  if (prepare(s->db, sql, &st, err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, q->endpoint);
  bind_text(st, 2, q->worker);
  bind_text(st, 3, q->stream);
  bind_text(st, 4, q->text);
  sqlite3_bind_int64(st, 5, q->since_ms);
  sqlite3_bind_int64(st, 6, q->until_ms);
  sqlite3_bind_int(st, 7, q->limit);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    sg_log_line_t l = {sqlite3_column_int64(st, 0), col_text(st, 1), col_text(st, 2), col_text(st, 3),
                       col_text(st, 4)};
    cb(ud, &l);
  }
  if (rc != SQLITE_DONE)
    return db_error(s->db, err, "query logs");
  return 0;
}

int sg_store_logs_trim(sg_store_t *s, const char *endpoint, int64_t keep, sg_error_t **err) {
  cleanup_stmt sqlite3_stmt *st = NULL;
  const char *sql = "DELETE FROM logs WHERE endpoint = ?1 AND id <= ("
                    " SELECT id FROM logs WHERE endpoint = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)";
  if (keep == 0)
    sql = "DELETE FROM logs WHERE endpoint = ?1 AND ?2 = 0";
  if (prepare(s->db, sql, &st, err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, endpoint);
  sqlite3_bind_int64(st, 2, keep);
  if (sqlite3_step(st) != SQLITE_DONE)
    return db_error(s->db, err, "trim logs");
  return 0;
}
