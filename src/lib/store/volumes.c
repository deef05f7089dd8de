/* SQL of the named volumes table (SG_STORE_VOLUMES_MIGRATION in store.c). */
#include <sqlite3.h>

#include "sgpu/util.h"
#include "sgpu/volumes-store.h"
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

int sg_store_volume_add(sg_store_t *s, const sg_volume_record_t *r, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s, "INSERT INTO volumes(name, size_bytes, created_ms) VALUES(?,?,?)", &st, err) < 0)
    return -SG_ESTORE;
  sqlite3_bind_text(st, 1, r->name, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 2, r->size_bytes);
  sqlite3_bind_int64(st, 3, r->created_ms);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_CONSTRAINT)
    return sg_make_error(err, SG_EEXIST, "volume %s already exists", r->name);
  if (rc != SQLITE_DONE)
    return fail(s, err, "add volume");
  return 0;
}

int sg_store_volume_delete(sg_store_t *s, const char *name, sg_error_t **err) {
  sg_assert_not_loop_thread();
  /* Checked here too, in the order of the store's writes: an endpoint
   * write accepted before this delete is in the table by now. */
  cleanup_free char *users = NULL;
  if (sg_store_spec_users(s, "$.volumes", "$.name", name, &users, err) < 0)
    return -SG_ESTORE;
  if (users)
    return sg_make_error(err, SG_EEXIST, "volume \"%s\" is mounted by endpoint(s) %s: change or delete them first",
                         name, users);
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s, "DELETE FROM volumes WHERE name = ?", &st, err) < 0)
    return -SG_ESTORE;
  sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
  if (sqlite3_step(st) != SQLITE_DONE)
    return fail(s, err, "delete volume");
  if (sqlite3_changes(s->db) == 0)
    return sg_make_error(err, SG_ENOTFOUND, "volume %s not found", name);
  return 0;
}

int sg_store_volume_each(sg_store_t *s, void (*cb)(void *ud, const sg_volume_record_t *rec), void *ud,
                         sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s, "SELECT name, size_bytes, created_ms FROM volumes ORDER BY name", &st, err) < 0)
    return -SG_ESTORE;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    sg_volume_record_t r = {(const char *)sqlite3_column_text(st, 0), sqlite3_column_int64(st, 1),
                            sqlite3_column_int64(st, 2)};
    cb(ud, &r);
  }
  if (rc != SQLITE_DONE)
    return fail(s, err, "read volumes");
  return 0;
}
