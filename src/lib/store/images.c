/* SQL of the image cache and registry credentials tables (migration 3 in store.c). */
#include <sqlite3.h>

#include "sgpu/images-store.h"
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

static const char *col(sqlite3_stmt *st, int i) { return (const char *)sqlite3_column_text(st, i); }

int sg_store_image_put(sg_store_t *s, const sg_image_record_t *r, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s,
              "INSERT OR REPLACE INTO images(ref, digest, config, layers, size_bytes, compressed_bytes, pulled_ms,"
              " pull_ms, last_used_ms) VALUES(?,?,?,?,?,?,?,?,?)",
              &st, err) < 0)
    return -SG_ESTORE;
  text(st, 1, r->ref);
  text(st, 2, r->digest);
  text(st, 3, r->config_json);
  text(st, 4, r->layers_json);
  sqlite3_bind_int64(st, 5, r->size_bytes);
  sqlite3_bind_int64(st, 6, r->compressed_bytes);
  sqlite3_bind_int64(st, 7, r->pulled_ms);
  sqlite3_bind_int64(st, 8, r->pull_ms);
  sqlite3_bind_int64(st, 9, r->last_used_ms);
  if (sqlite3_step(st) != SQLITE_DONE)
    return fail(s, err, "put image");
  return 0;
}

int sg_store_image_touch(sg_store_t *s, const char *ref, int64_t last_used_ms, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s, "UPDATE images SET last_used_ms = ? WHERE ref = ?", &st, err) < 0)
    return -SG_ESTORE;
  sqlite3_bind_int64(st, 1, last_used_ms);
  text(st, 2, ref);
  if (sqlite3_step(st) != SQLITE_DONE)
    return fail(s, err, "touch image");
  return 0;
}

int sg_store_image_delete(sg_store_t *s, const char *ref, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s, "DELETE FROM images WHERE ref = ?", &st, err) < 0)
    return -SG_ESTORE;
  text(st, 1, ref);
  if (sqlite3_step(st) != SQLITE_DONE)
    return fail(s, err, "delete image");
  return 0;
}

int sg_store_image_each(sg_store_t *s, void (*cb)(void *ud, const sg_image_record_t *rec), void *ud, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s,
              "SELECT ref, digest, config, layers, size_bytes, compressed_bytes, pulled_ms, pull_ms, last_used_ms"
              " FROM images ORDER BY last_used_ms",
              &st, err) < 0)
    return -SG_ESTORE;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    sg_image_record_t r = {col(st, 0),
                           col(st, 1),
                           col(st, 2),
                           col(st, 3),
                           sqlite3_column_int64(st, 4),
                           sqlite3_column_int64(st, 5),
                           sqlite3_column_int64(st, 6),
                           sqlite3_column_int64(st, 7),
                           sqlite3_column_int64(st, 8)};
    cb(ud, &r);
  }
  if (rc != SQLITE_DONE)
    return fail(s, err, "list images");
  return 0;
}

int sg_store_auth_put(sg_store_t *s, const sg_registry_auth_record_t *r, bool replace, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  const char *sql = replace ? "INSERT INTO registry_auths(name, registry, username, secret, created_ms, updated_ms)"
                              " VALUES(?1,?2,?3,?4,?5,?6) ON CONFLICT(name) DO UPDATE SET registry = ?2,"
                              " username = ?3, secret = ?4, updated_ms = ?6"
                            : "INSERT INTO registry_auths(name, registry, username, secret, created_ms, updated_ms)"
                              " VALUES(?1,?2,?3,?4,?5,?6)";
  if (prepare(s, sql, &st, err) < 0)
    return -SG_ESTORE;
  text(st, 1, r->name);
  text(st, 2, r->registry);
  text(st, 3, r->username);
  text(st, 4, r->secret);
  sqlite3_bind_int64(st, 5, r->created_ms);
  sqlite3_bind_int64(st, 6, r->updated_ms);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_CONSTRAINT)
    return sg_make_error(err, SG_EEXIST, "registry auth %s already exists", r->name);
  if (rc != SQLITE_DONE)
    return fail(s, err, "put registry auth");
  return 0;
}

static int auth_query(sg_store_t *s, const char *name, bool secret,
                      void (*cb)(void *ud, const sg_registry_auth_record_t *rec), void *ud, sg_error_t **err) {
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s,
              name
                  ? "SELECT name, registry, username, secret, created_ms, updated_ms FROM registry_auths WHERE name = ?"
                  : "SELECT name, registry, username, secret, created_ms, updated_ms FROM registry_auths ORDER BY name",
              &st, err) < 0)
    return -SG_ESTORE;
  if (name)
    text(st, 1, name);
  int rc, n = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    sg_registry_auth_record_t r = {col(st, 0),
                                   col(st, 1),
                                   col(st, 2),
                                   secret ? col(st, 3) : NULL,
                                   sqlite3_column_int64(st, 4),
                                   sqlite3_column_int64(st, 5)};
    cb(ud, &r);
    n++;
  }
  if (rc != SQLITE_DONE)
    return fail(s, err, "read registry auths");
  if (name && n == 0)
    return sg_make_error(err, SG_ENOTFOUND, "registry auth %s not found", name);
  return 0;
}

int sg_store_auth_get(sg_store_t *s, const char *name, void (*cb)(void *ud, const sg_registry_auth_record_t *rec),
                      void *ud, sg_error_t **err) {
  sg_assert_not_loop_thread();
  return auth_query(s, name, true, cb, ud, err);
}

int sg_store_auth_each(sg_store_t *s, void (*cb)(void *ud, const sg_registry_auth_record_t *rec), void *ud,
                       sg_error_t **err) {
  sg_assert_not_loop_thread();
  return auth_query(s, NULL, false, cb, ud, err);
}

int sg_store_auth_load(sg_store_t *s, void (*cb)(void *ud, const sg_registry_auth_record_t *rec), void *ud,
                       sg_error_t **err) {
  sg_assert_not_loop_thread();
  return auth_query(s, NULL, true, cb, ud, err);
}

int sg_store_auth_delete(sg_store_t *s, const char *name, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s, "DELETE FROM registry_auths WHERE name = ?", &st, err) < 0)
    return -SG_ESTORE;
  text(st, 1, name);
  if (sqlite3_step(st) != SQLITE_DONE)
    return fail(s, err, "delete registry auth");
  if (sqlite3_changes(s->db) == 0)
    return sg_make_error(err, SG_ENOTFOUND, "registry auth %s not found", name);
  return 0;
}
