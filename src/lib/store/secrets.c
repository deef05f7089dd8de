/* SQL of the secrets table (migration 7 in store.c): sealed values only. */
#include <sqlite3.h>

#include "sgpu/secrets-store.h"
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

void sg_store_set_seal_key(sg_store_t *s, const unsigned char key[SG_SEAL_KEY_LEN]) {
  memcpy(s->seal_key, key, SG_SEAL_KEY_LEN);
  s->has_seal_key = true;
}

int sg_store_secret_put(sg_store_t *s, const sg_secret_record_t *r, sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s,
              "INSERT INTO secrets(name, value, created_ms, updated_ms) VALUES(?1,?2,?3,?4)"
              " ON CONFLICT(name) DO UPDATE SET value = ?2, updated_ms = ?4",
              &st, err) < 0)
    return -SG_ESTORE;
  sqlite3_bind_text(st, 1, r->name, -1, SQLITE_TRANSIENT);
  sqlite3_bind_blob(st, 2, r->sealed, (int)r->sealed_len, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 3, r->created_ms);
  sqlite3_bind_int64(st, 4, r->updated_ms);
  if (sqlite3_step(st) != SQLITE_DONE)
    return fail(s, err, "put secret");
  return 0;
}

/* *users gets the stored endpoints whose spec's env names secret `name`, as
 * "\"a\", \"b\"" (a new string), or NULL when none does. */
int sg_store_secret_delete(sg_store_t *s, const char *name, sg_error_t **err) {
  sg_assert_not_loop_thread();
  /* Checked here too, in the order of the store's writes: an endpoint
   * write accepted before this delete is in the table by now. */
  cleanup_free char *users = NULL;
  if (sg_store_spec_users(s, "$.env", "$.secret", name, &users, err) < 0)
    return -SG_ESTORE;
  if (users)
    return sg_make_error(err, SG_EEXIST, "secret \"%s\" is used by endpoint(s) %s: change or delete them first", name,
                         users);
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s, "DELETE FROM secrets WHERE name = ?", &st, err) < 0)
    return -SG_ESTORE;
  sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
  if (sqlite3_step(st) != SQLITE_DONE)
    return fail(s, err, "delete secret");
  if (sqlite3_changes(s->db) == 0)
    return sg_make_error(err, SG_ENOTFOUND, "secret %s not found", name);
  return 0;
}

int sg_store_secret_load(sg_store_t *s, void (*cb)(void *ud, const sg_secret_record_t *rec), void *ud,
                         sg_error_t **err) {
  sg_assert_not_loop_thread();
  cleanup_stmt sqlite3_stmt *st = NULL;
  if (prepare(s, "SELECT name, value, created_ms, updated_ms FROM secrets ORDER BY name", &st, err) < 0)
    return -SG_ESTORE;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    sg_secret_record_t r = {(const char *)sqlite3_column_text(st, 0), sqlite3_column_blob(st, 1),
                            (size_t)sqlite3_column_bytes(st, 1), sqlite3_column_int64(st, 2),
                            sqlite3_column_int64(st, 3)};
    cb(ud, &r);
  }
  if (rc != SQLITE_DONE)
    return fail(s, err, "read secrets");
  return 0;
}
