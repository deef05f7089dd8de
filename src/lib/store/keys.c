/* SQL of the API keys table (SG_STORE_KEYS_MIGRATION in store.c). */
#include <sqlite3.h>

#include "sgpu/keys-store.h"
#include "sgpu/util.h"
#include "store/store-internal.h"

static void finalizep(sqlite3_stmt **st) {
  if (*st)
    sqlite3_finalize(*st);
}
#define cleanup_stmt __attribute__((cleanup(finalizep)))

static int fail(sg_store_t *s, sg_error_t **err, const char *what) {
  return sg_make_error(err, SG_ESTORE, "store: %s: %s", what, sqlite3_errmsg(s->db));
}

static int prepare(sg_store_t *s, const char *sql, sqlite3_stmt **st, sg_error_t **err) {
  if (sqlite3_prepare_v2(s->db, sql, -1, st, NULL) != SQLITE_OK)
    return fail(s, err, "prepare");
  return 0;
}

static void text(sqlite3_stmt *st, int i, const char *v) {
  if (v)
    sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT);
  else
    sqlite3_bind_null(st, i);
}

int sg_store_key_insert(sg_store_t *s, const sg_key_record_t *r, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s,
              "INSERT INTO api_keys(name, prefix, hash, scopes, endpoints, created_ms, last_used_ms, expires_ms,"
              " rate, burst) VALUES(?,?,?,?,?,?,?,?,?,?)",
              &st, err) < 0)
    return -SG_ESTORE;
  text(st, 1, r->name);
  text(st, 2, r->prefix);
  sqlite3_bind_blob(st, 3, r->hash, SG_KEY_HASH_LEN, SQLITE_TRANSIENT);
  text(st, 4, r->scopes);
  text(st, 5, r->endpoints);
  sqlite3_bind_int64(st, 6, r->created_ms);
  sqlite3_bind_int64(st, 7, r->last_used_ms);
  sqlite3_bind_int64(st, 8, r->expires_ms);
  sqlite3_bind_double(st, 9, r->rate);
  sqlite3_bind_double(st, 10, r->burst);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_CONSTRAINT)
    return sg_make_error(err, SG_EEXIST, "an API key named \"%s\" already exists", r->name);
  if (rc != SQLITE_DONE)
    return fail(s, err, "insert API key");
  return 0;
}

int sg_store_key_delete(sg_store_t *s, const char *name, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s, "DELETE FROM api_keys WHERE name = ?", &st, err) < 0)
    return -SG_ESTORE;
  text(st, 1, name);
  if (sqlite3_step(st) != SQLITE_DONE)
    return fail(s, err, "delete API key");
  if (sqlite3_changes(s->db) == 0)
    return sg_make_error(err, SG_ENOTFOUND, "no API key named \"%s\"", name);
  return 0;
}

int sg_store_key_touch(sg_store_t *s, char *const *names, const int64_t *last_used_ms, size_t n, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s, "UPDATE api_keys SET last_used_ms = max(last_used_ms, ?) WHERE name = ?", &st, err) < 0)
    return -SG_ESTORE;
  if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
    return fail(s, err, "begin");
  for (size_t i = 0; i < n; i++) {
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, last_used_ms[i]);
    text(st, 2, names[i]);
    if (sqlite3_step(st) != SQLITE_DONE) {
      int r = fail(s, err, "touch API keys");
      sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
      return r;
    }
  }
  if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
    int r = fail(s, err, "commit");
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return r;
  }
  return 0;
}

int sg_store_key_load(sg_store_t *s, void (*cb)(void *ud, const sg_key_record_t *rec), void *ud, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s,
              "SELECT name, prefix, hash, scopes, endpoints, created_ms, last_used_ms, expires_ms, rate, burst"
              " FROM api_keys ORDER BY name",
              &st, err) < 0)
    return -SG_ESTORE;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (sqlite3_column_bytes(st, 2) != SG_KEY_HASH_LEN)
      continue;
    sg_key_record_t r = {
        .name = (const char *)sqlite3_column_text(st, 0),
        .prefix = (const char *)sqlite3_column_text(st, 1),
        .hash = sqlite3_column_blob(st, 2),
        .scopes = (const char *)sqlite3_column_text(st, 3),
        .endpoints = (const char *)sqlite3_column_text(st, 4),
        .created_ms = sqlite3_column_int64(st, 5),
        .last_used_ms = sqlite3_column_int64(st, 6),
        .expires_ms = sqlite3_column_int64(st, 7),
        .rate = sqlite3_column_double(st, 8),
        .burst = sqlite3_column_double(st, 9),
    };
    cb(ud, &r);
  }
  if (rc != SQLITE_DONE)
    return fail(s, err, "read API keys");
  return 0;
}
