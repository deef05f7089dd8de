/* What the store's source files share: the connection. Store-only. */
#ifndef SGPU_STORE_INTERNAL_H
#define SGPU_STORE_INTERNAL_H

#include <sqlite3.h>

struct sg_store {
  sqlite3 *db;
};

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

/* The schema of the named volumes table (store/volumes.c), a migration of store.c. */
#define SG_STORE_VOLUMES_MIGRATION                                                                                     \
  "CREATE TABLE volumes ("                                                                                             \
  "  name TEXT PRIMARY KEY,"                                                                                           \
  "  size_bytes INTEGER NOT NULL,"                                                                                     \
  "  created_ms INTEGER NOT NULL);"

#endif
