/* SQL of the image cache and registry credentials tables (migration 3 in
 * store.c). Registry passwords are sealed here (sgpu/seal.h) under the key
 * of sg_store_set_seal_key: the secret column holds a BLOB, never the
 * password (a TEXT value is one a store before sealing wrote, until
 * sg_store_auth_seal_clear seals it). */
#include <sqlite3.h>

#include "sgpu/images-store.h"
#include "sgpu/log.h"
#include "sgpu/seal.h"
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
              " pull_ms, last_used_ms, with_auth) VALUES(?,?,?,?,?,?,?,?,?,?)",
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
  sqlite3_bind_int(st, 10, r->with_auth);
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
              "SELECT ref, digest, config, layers, size_bytes, compressed_bytes, pulled_ms, pull_ms, last_used_ms,"
              " with_auth FROM images ORDER BY last_used_ms",
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
                           sqlite3_column_int64(st, 8),
                           sqlite3_column_int(st, 9) != 0};
    cb(ud, &r);
  }
  if (rc != SQLITE_DONE)
    return fail(s, err, "list images");
  return 0;
}

/* The associated data of a registry password: its row's name. */
static char *auth_ad(const char *name) { return xasprintf("registry_auth:%s", name); }

static int seal_secret(sg_store_t *s, const char *name, const char *secret, unsigned char **out, size_t *len,
                       sg_error_t **err) {
  if (!s->has_seal_key)
    return sg_make_error(err, SG_EINVAL, "store: no secret key to seal registry passwords with");
  cleanup_free char *ad = auth_ad(name);
  return sg_seal(s->seal_key, ad, secret, strlen(secret), out, len, err);
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
  cleanup_free unsigned char *sealed = NULL;
  size_t sealed_len = 0;
  if (seal_secret(s, r->name, r->secret, &sealed, &sealed_len, err) < 0)
    return -SG_EINVAL;
  text(st, 1, r->name);
  text(st, 2, r->registry);
  text(st, 3, r->username);
  sqlite3_bind_blob(st, 4, sealed, (int)sealed_len, SQLITE_TRANSIENT);
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
    char *plain = NULL;
    if (secret && sqlite3_column_type(st, 3) == SQLITE_BLOB) {
      cleanup_free char *ad = auth_ad(col(st, 0));
      if (!s->has_seal_key)
        return sg_make_error(err, SG_EINVAL, "store: no secret key to open registry passwords with");
      if (sg_unseal(s->seal_key, ad, sqlite3_column_blob(st, 3), (size_t)sqlite3_column_bytes(st, 3), &plain, NULL,
                    NULL) < 0) {
        if (!name) {
          /* The others still load; a PUT of this one replaces it. */
          sg_warn("registry auth %s: its sealed password does not open (changed, or sealed under another "
                  "secret.key): left out until it is stored again (PUT /v1/registry-auths/%s)",
                  col(st, 0), col(st, 0));
          continue;
        }
        return sg_make_error(err, SG_EINVAL,
                             "registry auth %s: its sealed password does not open (changed, or sealed under "
                             "another secret.key)",
                             col(st, 0));
      }
    }
    sg_registry_auth_record_t r = {col(st, 0),
                                   col(st, 1),
                                   col(st, 2),
                                   plain    ? plain
                                   : secret ? col(st, 3)
                                            : NULL,
                                   sqlite3_column_int64(st, 4),
                                   sqlite3_column_int64(st, 5)};
    cb(ud, &r);
    sg_unsealed_free(plain);
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

/* Seals the passwords of one row at a time in one transaction. */
static int seal_clear_rows(sg_store_t *s, int *count, sg_error_t **err) {
  cleanup_stmt sqlite3_stmt *sel = NULL, *up = NULL;
  if (prepare(s, "SELECT name, secret FROM registry_auths WHERE typeof(secret) = 'text'", &sel, err) < 0 ||
      prepare(s, "UPDATE registry_auths SET secret = ? WHERE name = ?", &up, err) < 0)
    return -SG_ESTORE;
  int rc;
  while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
    cleanup_free unsigned char *sealed = NULL;
    size_t len = 0;
    if (seal_secret(s, col(sel, 0), col(sel, 1), &sealed, &len, err) < 0)
      return -SG_EINVAL;
    sqlite3_bind_blob(up, 1, sealed, (int)len, SQLITE_TRANSIENT);
    text(up, 2, col(sel, 0));
    if (sqlite3_step(up) != SQLITE_DONE)
      return fail(s, err, "seal registry password");
    sqlite3_reset(up);
    (*count)++;
  }
  if (rc != SQLITE_DONE)
    return fail(s, err, "read registry auths");
  return 0;
}

int sg_store_auth_seal_clear(sg_store_t *s, sg_error_t **err) {
  sg_assert_not_loop_thread();
  int count = 0;
  /* Freed space is zeroed, and the WAL folded into the database and
   * emptied, so that no page keeps a password in clear. */
  if (sqlite3_exec(s->db, "PRAGMA secure_delete = ON; BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
    return fail(s, err, "begin sealing registry passwords");
  int r = seal_clear_rows(s, &count, err);
  if (r < 0 || sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
    if (r == 0)
      r = fail(s, err, "commit sealed registry passwords");
    sqlite3_exec(s->db, "ROLLBACK; PRAGMA secure_delete = OFF", NULL, NULL, NULL);
    return r;
  }
  if (count > 0 && sqlite3_exec(s->db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL) != SQLITE_OK)
    r = fail(s, err, "checkpoint after sealing registry passwords");
  sqlite3_exec(s->db, "PRAGMA secure_delete = OFF", NULL, NULL, NULL);
  return r < 0 ? r : count;
}
