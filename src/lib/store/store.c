#include "sgpu/store.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sqlite3.h>
#include <string.h>

#include "sgpu/log.h"
#include "sgpu/util.h"
#include "store/store-internal.h"

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
    /* 2: usage records, one per worker and hour (seg counts them per worker) */
    "CREATE TABLE usage ("
    "  worker TEXT NOT NULL,"
    "  seg INTEGER NOT NULL,"
    "  endpoint TEXT NOT NULL,"
    "  gpu_type TEXT,"
    "  gpu_count INTEGER NOT NULL,"
    "  price REAL NOT NULL,"
    "  start_ms INTEGER NOT NULL,"
    "  end_ms INTEGER NOT NULL,"
    "  starting_ms INTEGER NOT NULL,"
    "  busy_ms INTEGER NOT NULL,"
    "  idle_ms INTEGER NOT NULL,"
    "  requests INTEGER NOT NULL,"
    "  round_ms INTEGER NOT NULL,"
    "  closed INTEGER NOT NULL,"
    "  PRIMARY KEY (worker, seg));"
    "CREATE INDEX usage_end ON usage(end_ms);"
    "CREATE INDEX usage_open ON usage(closed) WHERE closed = 0;",
    /* 3: the image cache and registry credentials (store/images.c) */
    "CREATE TABLE images ("
    "  ref TEXT PRIMARY KEY,"
    "  digest TEXT NOT NULL,"
    "  config TEXT NOT NULL,"
    "  layers TEXT NOT NULL,"
    "  size_bytes INTEGER NOT NULL,"
    "  compressed_bytes INTEGER NOT NULL,"
    "  pulled_ms INTEGER NOT NULL,"
    "  pull_ms INTEGER NOT NULL,"
    "  last_used_ms INTEGER NOT NULL);"
    "CREATE TABLE registry_auths ("
    "  name TEXT PRIMARY KEY,"
    "  registry TEXT NOT NULL,"
    "  username TEXT NOT NULL,"
    "  secret TEXT NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  updated_ms INTEGER NOT NULL);",
    /* 4: jobs of async endpoints (store/jobs.c) */
    SG_STORE_JOBS_MIGRATION,
    /* 5: every stored spec of an endpoint, for GET .../versions and rollback */
    "CREATE TABLE endpoint_versions ("
    "  name TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  spec TEXT NOT NULL,"
    "  PRIMARY KEY (name, version));"
    "INSERT INTO endpoint_versions(name, version, created_ms, spec)"
    "  SELECT name, version, updated_ms, spec FROM endpoints;",
    /* 6: the request a worker's log line was written for (?request_id=) */
    ("ALTER TABLE logs ADD COLUMN request_id TEXT;"
     "CREATE INDEX logs_request ON logs(endpoint, request_id) WHERE request_id IS NOT NULL;"),
    /* 7: secrets, sealed (store/secrets.c); images pulled with credentials
     * (the ones cached before are assumed to have been) */
    SG_STORE_SECRETS_MIGRATION,
    /* 8: API keys, their hashes only (store/keys.c) */
    SG_STORE_KEYS_MIGRATION,
    /* 9: named volumes (store/volumes.c) */
    SG_STORE_VOLUMES_MIGRATION,
    /* 10: an endpoint's jobs newest first (GET /v1/endpoints/{name}/jobs) read
     * from this index instead of a scan of every endpoint's jobs */
    SG_STORE_JOBS_LIST_INDEX,
};

static int db_error(sqlite3 *db, sg_error_t **err, const char *what) {
  return sg_make_error(err, SG_ESTORE, "store: %s: %s", what, sqlite3_errmsg(db));
}

int sg_store_named_exists(sg_store_t *s, sg_store_named_t table, const char *name, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  const char *sql =
      table == SG_STORE_SECRETS ? "SELECT 1 FROM secrets WHERE name = ?" : "SELECT 1 FROM volumes WHERE name = ?";
  if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
    return db_error(s->db, err, "prepare");
  sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    return 1;
  if (rc == SQLITE_DONE)
    return 0;
  return db_error(s->db, err, table == SG_STORE_SECRETS ? "find a secret" : "find a volume");
}

int sg_store_spec_users(sg_store_t *s, const char *list_path, const char *key_path, const char *name, char **users,
                        sg_error_t **err) {
  sg_assert_not_loop_thread();
  *users = NULL;
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(s->db,
                         "SELECT DISTINCT e.name FROM endpoints e, json_each(e.spec, ?1) j"
                         " WHERE json_valid(e.spec) AND j.type = 'object' AND json_extract(j.value, ?2) = ?3"
                         " ORDER BY e.name",
                         -1, &st, NULL) != SQLITE_OK)
    return db_error(s->db, err, "prepare");
  sqlite3_bind_text(st, 1, list_path, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, key_path, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, name, -1, SQLITE_TRANSIENT);
  sg_strbuf_t b = SG_STRBUF_INIT;
  bool any = false;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    sg_strbuf_appendf(&b, "%s\"%s\"", any ? ", " : "", (const char *)sqlite3_column_text(st, 0));
    any = true;
  }
  cleanup_free char *text = sg_strbuf_steal(&b);
  if (rc != SQLITE_DONE)
    return db_error(s->db, err, "find the endpoints that use a name");
  if (any)
    *users = steal_pointer(&text);
  return 0;
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

/* Makes the database file (and its WAL and shared-memory files, when
 * present) readable by sgpud's user only; SQLite gives the files it creates
 * later the database's own mode. */
static int make_private(const char *path, sg_error_t **err) {
  cleanup_close int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0 || fchmod(fd, 0600) < 0)
    return sg_make_error(err, SG_ESTORE, "store: cannot create %s with mode 0600: %s", path, strerror(errno));
  const char *suffixes[] = {"-wal", "-shm", "-journal"};
  for (size_t i = 0; i < SG_ARRAY_SIZE(suffixes); i++) {
    cleanup_free char *p = xasprintf("%s%s", path, suffixes[i]);
    if (chmod(p, 0600) < 0 && errno != ENOENT)
      return sg_make_error(err, SG_ESTORE, "store: cannot make %s mode 0600: %s", p, strerror(errno));
  }
  return 0;
}

sg_store_t *sg_store_open(const char *path, sg_error_t **err) {
  sqlite3 *db = NULL;
  if (strcmp(path, ":memory:") && make_private(path, err) < 0)
    return NULL;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
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

sg_store_t *sg_store_open_readonly(const char *path, sg_error_t **err) {
  sqlite3 *db = NULL;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
    sg_make_error(err, SG_ESTORE, "store: cannot open %s read-only: %s", path,
                  db ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_close(db);
    return NULL;
  }
  sqlite3_busy_timeout(db, 5000);
  sg_store_t *s = xcalloc(1, sizeof(*s));
  s->db = db;
  return s;
}

int sg_store_read_begin(sg_store_t *s, sg_error_t **err) {
  sg_assert_not_loop_thread();
  /* A deferred transaction takes its snapshot at its first read. */
  if (exec(s->db, "BEGIN", err) < 0)
    return -SG_ESTORE;
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "SELECT 1 FROM sqlite_master LIMIT 1", &st, err) < 0) {
    exec(s->db, "ROLLBACK", NULL);
    return -SG_ESTORE;
  }
  int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    int r = db_error(s->db, err, "begin read");
    exec(s->db, "ROLLBACK", NULL);
    return r;
  }
  return 0;
}

void sg_store_read_end(sg_store_t *s) {
  sg_assert_not_loop_thread();
  if (!sqlite3_get_autocommit(s->db))
    exec(s->db, "COMMIT", NULL);
}

void sg_store_set_cache(sg_store_t *s, int64_t bytes) {
  sg_assert_not_loop_thread();
  cleanup_free char *sql = xasprintf("PRAGMA cache_size = -%lld", (long long)(bytes / 1024));
  exec(s->db, sql, NULL);
}

void sg_store_close(sg_store_t *store) {
  if (!store)
    return;
  explicit_bzero(store->seal_key, sizeof(store->seal_key));
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

/* Records rec's spec as its version (the table endpoint_versions), keeping
 * the newest SG_STORE_VERSIONS_KEEP of the endpoint. */
static int version_add(sg_store_t *s, const sg_endpoint_record_t *rec, sg_error_t **err) {
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "INSERT OR REPLACE INTO endpoint_versions(name, version, created_ms, spec) VALUES(?,?,?,?)", &st,
              err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, rec->name);
  sqlite3_bind_int(st, 2, rec->version);
  sqlite3_bind_int64(st, 3, rec->updated_ms);
  bind_text(st, 4, rec->spec_json);
  if (sqlite3_step(st) != SQLITE_DONE)
    return db_error(s->db, err, "add endpoint version");
  cleanup_stmt sqlite3_stmt *trim = NULL;
  if (prepare(s->db, "DELETE FROM endpoint_versions WHERE name = ? AND version <= ?", &trim, err) < 0)
    return -SG_ESTORE;
  bind_text(trim, 1, rec->name);
  sqlite3_bind_int(trim, 2, rec->version - SG_STORE_VERSIONS_KEEP);
  if (sqlite3_step(trim) != SQLITE_DONE)
    return db_error(s->db, err, "trim endpoint versions");
  return 0;
}

static int versions_delete(sg_store_t *s, const char *name, sg_error_t **err) {
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "DELETE FROM endpoint_versions WHERE name = ?", &st, err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, name);
  if (sqlite3_step(st) != SQLITE_DONE)
    return db_error(s->db, err, "delete endpoint versions");
  return 0;
}

/* Runs op in one transaction: both tables change, or neither. */
static int in_transaction(sg_store_t *s, int (*op)(sg_store_t *, const void *, sg_error_t **), const void *arg,
                          sg_error_t **err) {
  if (exec(s->db, "BEGIN IMMEDIATE", err) < 0)
    return -SG_ESTORE;
  int r = op(s, arg, err);
  if (r < 0) {
    exec(s->db, "ROLLBACK", NULL);
    return r;
  }
  if (exec(s->db, "COMMIT", err) < 0) {
    exec(s->db, "ROLLBACK", NULL);
    return -SG_ESTORE;
  }
  return 0;
}

static int endpoint_insert(sg_store_t *s, const void *arg, sg_error_t **err) {
  const sg_endpoint_record_t *rec = arg;
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "INSERT INTO endpoints(name, spec, version, created_ms, updated_ms) VALUES(?,?,?,?,?)", &st, err) <
      0)
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
  /* Versions a deleted endpoint of the same name left (stores before the
   * delete removed them) are not this one's. */
  if (versions_delete(s, rec->name, err) < 0)
    return -SG_ESTORE;
  return version_add(s, rec, err);
}

int sg_store_endpoint_insert(sg_store_t *s, const sg_endpoint_record_t *rec, sg_error_t **err) {
  sg_assert_not_loop_thread();
  return in_transaction(s, endpoint_insert, rec, err);
}

static int endpoint_update(sg_store_t *s, const void *arg, sg_error_t **err) {
  const sg_endpoint_record_t *rec = arg;
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
  return version_add(s, rec, err);
}

int sg_store_endpoint_update(sg_store_t *s, const sg_endpoint_record_t *rec, sg_error_t **err) {
  sg_assert_not_loop_thread();
  return in_transaction(s, endpoint_update, rec, err);
}

static int endpoint_delete(sg_store_t *s, const void *arg, sg_error_t **err) {
  const char *name = arg;
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "DELETE FROM endpoints WHERE name = ?", &st, err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, name);
  if (sqlite3_step(st) != SQLITE_DONE)
    return db_error(s->db, err, "delete endpoint");
  if (sqlite3_changes(s->db) == 0)
    return sg_make_error(err, SG_ENOTFOUND, "endpoint %s not found", name);
  return versions_delete(s, name, err);
}

int sg_store_endpoint_delete(sg_store_t *s, const char *name, sg_error_t **err) {
  sg_assert_not_loop_thread();
  return in_transaction(s, endpoint_delete, name, err);
}

int sg_store_endpoint_versions(sg_store_t *s, const char *name, void (*cb)(void *ud, const sg_endpoint_record_t *rec),
                               void *ud, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "SELECT spec, version, created_ms FROM endpoint_versions WHERE name = ? ORDER BY version", &st,
              err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, name);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    sg_endpoint_record_t rec = {name, col_text(st, 0), sqlite3_column_int(st, 1), sqlite3_column_int64(st, 2),
                                sqlite3_column_int64(st, 2)};
    cb(ud, &rec);
  }
  if (rc != SQLITE_DONE)
    return db_error(s->db, err, "list endpoint versions");
  return 0;
}

char *sg_store_endpoint_version(sg_store_t *s, const char *name, int version, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "SELECT spec FROM endpoint_versions WHERE name = ? AND version = ?", &st, err) < 0)
    return NULL;
  bind_text(st, 1, name);
  sqlite3_bind_int(st, 2, version);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    return xstrdup(col_text(st, 0));
  if (rc == SQLITE_DONE)
    sg_make_error(err, SG_ENOTFOUND, "endpoint %s has no version %d (the newest %d are kept)", name, version,
                  SG_STORE_VERSIONS_KEEP);
  else
    db_error(s->db, err, "read endpoint version");
  return NULL;
}

int sg_store_endpoint_each(sg_store_t *s, void (*cb)(void *ud, const sg_endpoint_record_t *rec), void *ud,
                           sg_error_t **err) {
  sg_assert_not_loop_thread();
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
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "INSERT OR REPLACE INTO workers(id, endpoint, runtime, pid, started_ms) VALUES(?,?,?,?,?)", &st,
              err) < 0)
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
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "DELETE FROM workers WHERE id = ?", &st, err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, id);
  if (sqlite3_step(st) != SQLITE_DONE)
    return db_error(s->db, err, "remove worker");
  return 0;
}

int sg_store_worker_clear(sg_store_t *s, sg_error_t **err) {
  sg_assert_not_loop_thread();
  return exec(s->db, "DELETE FROM workers", err);
}

int sg_store_worker_each(sg_store_t *s, void (*cb)(void *ud, const sg_worker_record_t *rec), void *ud,
                         sg_error_t **err) {
  sg_assert_not_loop_thread();
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

#define LOG_ROWS_PER_INSERT 50

static void bind_line(sqlite3_stmt *st, int base, const sg_log_line_t *l) {
  /* The strings outlive each step: bound without a copy. */
  sqlite3_bind_int64(st, base + 1, l->ts_ms);
  sqlite3_bind_text(st, base + 2, l->endpoint, -1, SQLITE_STATIC);
  if (l->worker)
    sqlite3_bind_text(st, base + 3, l->worker, -1, SQLITE_STATIC);
  else
    sqlite3_bind_null(st, base + 3);
  sqlite3_bind_text(st, base + 4, l->stream, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, base + 5, l->line, -1, SQLITE_STATIC);
  if (l->request_id)
    sqlite3_bind_text(st, base + 6, l->request_id, -1, SQLITE_STATIC);
  else
    sqlite3_bind_null(st, base + 6);
}

int sg_store_logs_append(sg_store_t *s, const sg_log_line_t *lines, size_t n, sg_error_t **err) {
  sg_assert_not_loop_thread();
  if (n == 0)
    return 0;
  /* Rows go in groups of LOG_ROWS_PER_INSERT per statement (less work per
   * row than one statement each), the rest one by one. */
  cleanup_stmt sqlite3_stmt *one = NULL, *many = NULL;
  if (prepare(s->db, "INSERT INTO logs(ts_ms, endpoint, worker, stream, line, request_id) VALUES(?,?,?,?,?,?)", &one,
              err) < 0)
    return -SG_ESTORE;
  if (n >= LOG_ROWS_PER_INSERT) {
    cleanup_free char *sql =
        xstrdup("INSERT INTO logs(ts_ms, endpoint, worker, stream, line, request_id) VALUES(?,?,?,?,?,?)");
    for (int i = 1; i < LOG_ROWS_PER_INSERT; i++) {
      char *next = xasprintf("%s,(?,?,?,?,?,?)", sql);
      free(sql);
      sql = next;
    }
    if (prepare(s->db, sql, &many, err) < 0)
      return -SG_ESTORE;
  }
  if (exec(s->db, "BEGIN", err) < 0)
    return -SG_ESTORE;
  size_t i = 0;
  while (i < n) {
    sqlite3_stmt *st = many && n - i >= LOG_ROWS_PER_INSERT ? many : one;
    size_t rows = st == many ? LOG_ROWS_PER_INSERT : 1;
    for (size_t r = 0; r < rows; r++)
      bind_line(st, (int)(6 * r), &lines[i + r]);
    if (sqlite3_step(st) != SQLITE_DONE) {
      int ret = db_error(s->db, err, "append logs");
      exec(s->db, "ROLLBACK", NULL);
      return ret;
    }
    sqlite3_reset(st);
    i += rows;
  }
  return exec(s->db, "COMMIT", err);
}

int sg_store_logs_query(sg_store_t *s, const sg_log_query_t *q, void (*cb)(void *ud, const sg_log_line_t *line),
                        void *ud, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  /* The inner query takes the newest lines; the outer one puts them in time order. */
  const char *sql = "SELECT ts_ms, endpoint, worker, stream, line, request_id FROM ("
                    " SELECT id, ts_ms, endpoint, worker, stream, line, request_id FROM logs"
                    " WHERE endpoint = ?1"
                    "  AND (?2 IS NULL OR worker = ?2)"
                    "  AND (?3 IS NULL OR stream = ?3)"
                    "  AND (?4 IS NULL OR instr(line, ?4) > 0)"
                    "  AND (?5 = 0 OR ts_ms >= ?5)"
                    "  AND (?6 = 0 OR ts_ms <= ?6)"
                    "  AND (?8 IS NULL OR request_id = ?8)"
                    " ORDER BY id DESC LIMIT ?7)"
                    " ORDER BY id ASC";
  if (q->oldest_first)
    sql = "SELECT ts_ms, endpoint, worker, stream, line, request_id FROM logs"
          " WHERE endpoint = ?1"
          "  AND (?2 IS NULL OR worker = ?2)"
          "  AND (?3 IS NULL OR stream = ?3)"
          "  AND (?4 IS NULL OR instr(line, ?4) > 0)"
          "  AND (?5 = 0 OR ts_ms >= ?5)"
          "  AND (?6 = 0 OR ts_ms <= ?6)"
          "  AND (?8 IS NULL OR request_id = ?8)"
          " ORDER BY id ASC LIMIT ?7";
  if (prepare(s->db, sql, &st, err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, q->endpoint);
  bind_text(st, 2, q->worker);
  bind_text(st, 3, q->stream);
  bind_text(st, 4, q->text);
  sqlite3_bind_int64(st, 5, q->since_ms);
  sqlite3_bind_int64(st, 6, q->until_ms);
  sqlite3_bind_int(st, 7, q->limit);
  bind_text(st, 8, q->request_id);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    sg_log_line_t l = {sqlite3_column_int64(st, 0),
                       col_text(st, 1),
                       col_text(st, 2),
                       col_text(st, 3),
                       col_text(st, 4),
                       col_text(st, 5)};
    cb(ud, &l);
  }
  if (rc != SQLITE_DONE)
    return db_error(s->db, err, "query logs");
  return 0;
}

int sg_store_logs_trim(sg_store_t *s, const char *endpoint, int64_t keep, sg_error_t **err) {
  sg_assert_not_loop_thread();
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

int sg_store_usage_put(sg_store_t *s, const sg_usage_record_t *recs, size_t n, sg_error_t **err) {
  sg_assert_not_loop_thread();
  if (n == 0)
    return 0;
  cleanup_stmt sqlite3_stmt *st = NULL;
  /* Values are absolute, so writing a record again changes nothing. */
  const char *sql =
      "INSERT INTO usage(worker, seg, endpoint, gpu_type, gpu_count, price, start_ms, end_ms, starting_ms,"
      " busy_ms, idle_ms, requests, round_ms, closed) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
      " ON CONFLICT(worker, seg) DO UPDATE SET end_ms = excluded.end_ms, starting_ms = excluded.starting_ms,"
      " busy_ms = excluded.busy_ms, idle_ms = excluded.idle_ms, requests = excluded.requests,"
      " round_ms = excluded.round_ms, closed = excluded.closed WHERE usage.closed = 0";
  if (prepare(s->db, sql, &st, err) < 0)
    return -SG_ESTORE;
  if (exec(s->db, "BEGIN", err) < 0)
    return -SG_ESTORE;
  for (size_t i = 0; i < n; i++) {
    const sg_usage_record_t *r = &recs[i];
    bind_text(st, 1, r->worker);
    sqlite3_bind_int(st, 2, r->seg);
    bind_text(st, 3, r->endpoint);
    bind_text(st, 4, r->gpu_type);
    sqlite3_bind_int(st, 5, r->gpu_count);
    sqlite3_bind_double(st, 6, r->price);
    sqlite3_bind_int64(st, 7, r->start_ms);
    sqlite3_bind_int64(st, 8, r->end_ms);
    sqlite3_bind_int64(st, 9, r->starting_ms);
    sqlite3_bind_int64(st, 10, r->busy_ms);
    sqlite3_bind_int64(st, 11, r->idle_ms);
    sqlite3_bind_int64(st, 12, r->requests);
    sqlite3_bind_int64(st, 13, r->round_ms);
    sqlite3_bind_int(st, 14, r->closed);
    if (sqlite3_step(st) != SQLITE_DONE) {
      int ret = db_error(s->db, err, "write usage");
      exec(s->db, "ROLLBACK", NULL);
      return ret;
    }
    sqlite3_reset(st);
  }
  return exec(s->db, "COMMIT", err);
}

int sg_store_usage_close_open(sg_store_t *s, sg_error_t **err) {
  sg_assert_not_loop_thread();
  /* Each open record ends at its last checkpoint; its worker's metered time
   * is rounded up to the whole second on it. */
  return exec(s->db,
              "UPDATE usage SET closed = 1, round_ms = ((t.total + 999) / 1000) * 1000 - t.total"
              " FROM (SELECT worker, sum(starting_ms + busy_ms + idle_ms) AS total FROM usage"
              "       WHERE worker IN (SELECT worker FROM usage WHERE closed = 0) GROUP BY worker) AS t"
              " WHERE usage.closed = 0 AND usage.worker = t.worker",
              err);
}

/* The record in the current row of a query selecting usage's columns in
 * their order; its strings live until the next step. */
static sg_usage_record_t usage_row(sqlite3_stmt *st) {
  return (sg_usage_record_t){
      .worker = col_text(st, 0),
      .seg = sqlite3_column_int(st, 1),
      .endpoint = col_text(st, 2),
      .gpu_type = col_text(st, 3),
      .gpu_count = sqlite3_column_int(st, 4),
      .price = sqlite3_column_double(st, 5),
      .start_ms = sqlite3_column_int64(st, 6),
      .end_ms = sqlite3_column_int64(st, 7),
      .starting_ms = sqlite3_column_int64(st, 8),
      .busy_ms = sqlite3_column_int64(st, 9),
      .idle_ms = sqlite3_column_int64(st, 10),
      .requests = sqlite3_column_int64(st, 11),
      .round_ms = sqlite3_column_int64(st, 12),
      .closed = sqlite3_column_int(st, 13) != 0,
  };
}

int sg_store_usage_each(sg_store_t *s, const char *endpoint, int64_t from_ms, int64_t to_ms,
                        void (*cb)(void *ud, const sg_usage_record_t *rec), void *ud, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  const char *sql = "SELECT worker, seg, endpoint, gpu_type, gpu_count, price, start_ms, end_ms, starting_ms,"
                    " busy_ms, idle_ms, requests, round_ms, closed FROM usage"
                    " WHERE end_ms >= ?2 AND start_ms < ?3 AND (?1 IS NULL OR endpoint = ?1)"
                    " ORDER BY start_ms, worker, seg";
  if (prepare(s->db, sql, &st, err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, endpoint);
  sqlite3_bind_int64(st, 2, from_ms);
  sqlite3_bind_int64(st, 3, to_ms);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    sg_usage_record_t r = usage_row(st);
    cb(ud, &r);
  }
  if (rc != SQLITE_DONE)
    return db_error(s->db, err, "query usage");
  return 0;
}

int sg_store_usage_reopen(sg_store_t *s, const char *worker, void (*cb)(void *ud, const sg_usage_record_t *rec),
                          void *ud, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *up = NULL, *st = NULL;
  if (prepare(s->db,
              "UPDATE usage SET closed = 0, round_ms = 0 WHERE worker = ?1"
              " AND seg = (SELECT max(seg) FROM usage WHERE worker = ?1)",
              &up, err) < 0 ||
      prepare(s->db,
              "SELECT worker, seg, endpoint, gpu_type, gpu_count, price, start_ms, end_ms, starting_ms,"
              " busy_ms, idle_ms, requests, round_ms, closed FROM usage WHERE worker = ? ORDER BY seg",
              &st, err) < 0)
    return -SG_ESTORE;
  bind_text(up, 1, worker);
  if (sqlite3_step(up) != SQLITE_DONE)
    return db_error(s->db, err, "reopen usage");
  bind_text(st, 1, worker);
  int rc, n = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    sg_usage_record_t r = usage_row(st);
    cb(ud, &r);
    n++;
  }
  if (rc != SQLITE_DONE)
    return db_error(s->db, err, "query usage");
  return n;
}

int sg_store_logs_trim_bytes(sg_store_t *s, const char *endpoint, int64_t max_bytes, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  /* Walks from the newest line back until the bytes kept pass max_bytes;
   * that line and every older one go. */
  if (prepare(s->db, "SELECT id, length(CAST(line AS BLOB)) FROM logs WHERE endpoint = ? ORDER BY id DESC", &st, err) <
      0)
    return -SG_ESTORE;
  bind_text(st, 1, endpoint);
  int64_t total = 0, cut = -1;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    total += sqlite3_column_int64(st, 1);
    if (total > max_bytes) {
      cut = sqlite3_column_int64(st, 0);
      break;
    }
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    return db_error(s->db, err, "trim logs by size");
  sqlite3_finalize(st);
  st = NULL;
  if (cut < 0)
    return 0;
  if (prepare(s->db, "DELETE FROM logs WHERE endpoint = ? AND id <= ?", &st, err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, endpoint);
  sqlite3_bind_int64(st, 2, cut);
  if (sqlite3_step(st) != SQLITE_DONE)
    return db_error(s->db, err, "trim logs by size");
  return 0;
}

int sg_store_logs_trim_age(sg_store_t *s, const char *endpoint, int64_t before_ms, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  /* Lines are stored in time order: everything before the first line at or
   * after before_ms goes (all of them when there is none). The scan stops
   * at that line, so the cost follows what is deleted. */
  const char *sql = "DELETE FROM logs WHERE endpoint = ?1 AND id < coalesce("
                    " (SELECT id FROM logs WHERE endpoint = ?1 AND ts_ms >= ?2 ORDER BY id LIMIT 1),"
                    " (SELECT max(id) + 1 FROM logs WHERE endpoint = ?1))";
  if (prepare(s->db, sql, &st, err) < 0)
    return -SG_ESTORE;
  bind_text(st, 1, endpoint);
  sqlite3_bind_int64(st, 2, before_ms);
  if (sqlite3_step(st) != SQLITE_DONE)
    return db_error(s->db, err, "trim logs by age");
  return 0;
}

int sg_store_logs_endpoints(sg_store_t *s, void (*cb)(void *ud, const char *endpoint), void *ud, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s->db, "SELECT DISTINCT endpoint FROM logs", &st, err) < 0)
    return -SG_ESTORE;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW)
    cb(ud, col_text(st, 0));
  if (rc != SQLITE_DONE)
    return db_error(s->db, err, "list log endpoints");
  return 0;
}
