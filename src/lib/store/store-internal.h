/* What the store's source files share: the connection. Store-only. */
#ifndef SGPU_STORE_INTERNAL_H
#define SGPU_STORE_INTERNAL_H

#include <sqlite3.h>
#include <stdbool.h>

#include "sgpu/seal.h"

struct sg_store {
  sqlite3 *db;
  /* Seals registry passwords (store/images.c); set by sg_store_set_seal_key. */
  unsigned char seal_key[SG_SEAL_KEY_LEN];
  bool has_seal_key;
};

/* Secrets (store/secrets.c) and whether a cached image was pulled with
 * credentials (store/images.c): migration 7 of store.c. */
#define SG_STORE_SECRETS_MIGRATION                                                                                     \
  "CREATE TABLE secrets ("                                                                                             \
  "  name TEXT PRIMARY KEY,"                                                                                           \
  "  value BLOB NOT NULL,"                                                                                             \
  "  created_ms INTEGER NOT NULL,"                                                                                     \
  "  updated_ms INTEGER NOT NULL);"                                                                                    \
  "ALTER TABLE images ADD COLUMN with_auth INTEGER NOT NULL DEFAULT 0;"                                                \
  "UPDATE images SET with_auth = 1;"

/* The schema of the jobs table (store/jobs.c), a migration of store.c. */
#define SG_STORE_JOBS_MIGRATION                                                                                        \
  "CREATE TABLE jobs ("                                                                                                \
  "  seq INTEGER PRIMARY KEY,"                                                                                         \
  "  id TEXT NOT NULL UNIQUE,"                                                                                         \
  "  endpoint TEXT NOT NULL,"                                                                                          \
  "  status TEXT NOT NULL,"                                                                                            \
  "  input TEXT NOT NULL,"                                                                                             \
  "  webhook TEXT,"                                                                                                    \
  "  exec_timeout_ms INTEGER NOT NULL,"                                                                                \
  "  ttl_ms INTEGER NOT NULL,"                                                                                         \
  "  attempts INTEGER NOT NULL DEFAULT 0,"                                                                             \
  "  retries INTEGER NOT NULL DEFAULT 0,"                                                                              \
  "  output TEXT,"                                                                                                     \
  "  error TEXT,"                                                                                                      \
  "  worker TEXT,"                                                                                                     \
  "  created_ms INTEGER NOT NULL,"                                                                                     \
  "  started_ms INTEGER NOT NULL DEFAULT 0,"                                                                           \
  "  finished_ms INTEGER NOT NULL DEFAULT 0,"                                                                          \
  "  delay_ms INTEGER NOT NULL DEFAULT 0,"                                                                             \
  "  execution_ms INTEGER NOT NULL DEFAULT 0,"                                                                         \
  "  expires_ms INTEGER NOT NULL DEFAULT 0);"                                                                          \
  "CREATE INDEX jobs_open ON jobs(status, seq) WHERE status IN ('IN_QUEUE', 'IN_PROGRESS');"                           \
  "CREATE INDEX jobs_expires ON jobs(expires_ms) WHERE expires_ms > 0;"

/* The index of sg_store_jobs_list (migration 10), and the condition and order
 * of its query: a range of that index, walked backwards from ?3 (created
 * before) until ?4 rows pass the status ?2 (NULL: any). */
#define SG_STORE_JOBS_LIST_INDEX "CREATE INDEX jobs_endpoint_created ON jobs(endpoint, created_ms, seq);"
#define SG_STORE_JOBS_LIST_WHERE                                                                                       \
  " WHERE endpoint = ?1 AND created_ms < ?3 AND (?2 IS NULL OR status = ?2) ORDER BY created_ms DESC, seq DESC LIMIT " \
  "?4"

/* The schema of the API keys table (store/keys.c), a migration of store.c:
 * the SHA-256 of each secret, never the secret. */
#define SG_STORE_KEYS_MIGRATION                                                                                        \
  "CREATE TABLE api_keys ("                                                                                            \
  "  name TEXT PRIMARY KEY,"                                                                                           \
  "  prefix TEXT NOT NULL,"                                                                                            \
  "  hash BLOB NOT NULL UNIQUE,"                                                                                       \
  "  scopes TEXT NOT NULL,"                                                                                            \
  "  endpoints TEXT,"                                                                                                  \
  "  created_ms INTEGER NOT NULL,"                                                                                     \
  "  last_used_ms INTEGER NOT NULL DEFAULT 0,"                                                                         \
  "  expires_ms INTEGER NOT NULL DEFAULT 0,"                                                                           \
  "  rate REAL NOT NULL DEFAULT 0,"                                                                                    \
  "  burst REAL NOT NULL DEFAULT 0);"
/* The schema of the named volumes table (store/volumes.c), a migration of store.c. */
#define SG_STORE_VOLUMES_MIGRATION                                                                                     \
  "CREATE TABLE volumes ("                                                                                             \
  "  name TEXT PRIMARY KEY,"                                                                                           \
  "  size_bytes INTEGER NOT NULL,"                                                                                     \
  "  created_ms INTEGER NOT NULL);"

/* The stored endpoints whose spec names `name` as the member key_path of
 * an object in the list (or object) list_path ("$.env" and "$.secret": the
 * secrets an env takes; "$.volumes" and "$.name": the volumes mounted), as
 * '"a", "b"' in *users (NULL: none). Run in a delete on the store thread,
 * after every endpoint write accepted before it: what the loop's own check
 * cannot see yet. */
int sg_store_spec_users(sg_store_t *s, const char *list_path, const char *key_path, const char *name, char **users,
                        sg_error_t **err);

#endif
