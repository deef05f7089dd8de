/* The store against a real SQLite file in a fresh temporary directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ftw.h>
#include <sqlite3.h>
#include <stdio.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>
#include <pthread.h>

#include "sgpu/keys-store.h"
#include "sgpu/images-store.h"
#include "sgpu/secrets-store.h"
#include "sgpu/store.h"
#include "sgpu/util.h"
#include "sgpu/volumes-store.h"

typedef struct fixture {
  char *dir;
  char *path;
  sg_store_t *store;
} fixture_t;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int setup(void **state) {
  char tmpl[] = "/tmp/sgpu-test-store-XXXXXX";
  if (!mkdtemp(tmpl))
    return -1;
  fixture_t *f = xcalloc(1, sizeof(*f));
  f->dir = xstrdup(tmpl);
  f->path = xasprintf("%s/state.db", tmpl);
  sg_error_t *err = NULL;
  f->store = sg_store_open(f->path, &err);
  if (!f->store) {
    fprintf(stderr, "open: %s\n", err ? err->message : "?");
    return -1;
  }
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  sg_store_close(f->store);
  nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(f->dir);
  free(f->path);
  free(f);
  return 0;
}

static void reopen(fixture_t *f) {
  sg_store_close(f->store);
  sg_error_t *err = NULL;
  f->store = sg_store_open(f->path, &err);
  if (!f->store)
    fail_msg("reopen: %s", err ? err->message : "?");
}

/* ---- collected rows ---- */

typedef struct row {
  char *a, *b, *c, *d;
  int64_t x, y, z;
} row_t;

typedef struct rows {
  row_t r[64];
  size_t n;
} rows_t;

static char *dup_or_null(const char *s) { return s ? xstrdup(s) : NULL; }

static void rows_free(rows_t *rs) {
  for (size_t i = 0; i < rs->n; i++) {
    free(rs->r[i].a);
    free(rs->r[i].b);
    free(rs->r[i].c);
    free(rs->r[i].d);
  }
  rs->n = 0;
}

static void collect_endpoint(void *ud, const sg_endpoint_record_t *rec) {
  rows_t *rs = ud;
  assert_true(rs->n < SG_ARRAY_SIZE(rs->r));
  rs->r[rs->n++] = (row_t){
      dup_or_null(rec->name), dup_or_null(rec->spec_json), NULL, NULL, rec->version, rec->created_ms, rec->updated_ms};
}

static void collect_worker(void *ud, const sg_worker_record_t *rec) {
  rows_t *rs = ud;
  assert_true(rs->n < SG_ARRAY_SIZE(rs->r));
  rs->r[rs->n++] = (row_t){
      dup_or_null(rec->id), dup_or_null(rec->endpoint), dup_or_null(rec->runtime), NULL, rec->pid, rec->started_ms, 0};
}

static void collect_log(void *ud, const sg_log_line_t *l) {
  rows_t *rs = ud;
  assert_true(rs->n < SG_ARRAY_SIZE(rs->r));
  rs->r[rs->n++] = (row_t){
      dup_or_null(l->endpoint), dup_or_null(l->worker), dup_or_null(l->stream), dup_or_null(l->line), l->ts_ms, 0, 0};
}

static void list_endpoints(fixture_t *f, rows_t *rs) {
  rows_free(rs);
  sg_error_t *err = NULL;
  assert_int_equal(sg_store_endpoint_each(f->store, collect_endpoint, rs, &err), 0);
  assert_null(err);
}

static void list_workers(fixture_t *f, rows_t *rs) {
  rows_free(rs);
  sg_error_t *err = NULL;
  assert_int_equal(sg_store_worker_each(f->store, collect_worker, rs, &err), 0);
  assert_null(err);
}

static void query(fixture_t *f, const sg_log_query_t *q, rows_t *rs) {
  rows_free(rs);
  sg_error_t *err = NULL;
  assert_int_equal(sg_store_logs_query(f->store, q, collect_log, rs, &err), 0);
  assert_null(err);
}

/* The lines of rs joined with '|', for compact comparisons. */
static char *lines_of(const rows_t *rs) {
  size_t cap = 1;
  for (size_t i = 0; i < rs->n; i++)
    cap += strlen(rs->r[i].d) + 1;
  char *s = xcalloc(1, cap);
  for (size_t i = 0; i < rs->n; i++) {
    if (i)
      strcat(s, "|");
    strcat(s, rs->r[i].d);
  }
  return s;
}

#define assert_lines(rs, want)                                                                                         \
  do {                                                                                                                 \
    char *got_ = lines_of(rs);                                                                                         \
    assert_string_equal(got_, (want));                                                                                 \
    free(got_);                                                                                                        \
  } while (0)

/* ---- endpoints ---- */

static void test_endpoint_crud(void **state) {
  fixture_t *f = *state;
  rows_t rs = {0};
  sg_error_t *err = NULL;
  list_endpoints(f, &rs);
  assert_int_equal(rs.n, 0);

  sg_endpoint_record_t b = {"bravo", "{\"name\":\"bravo\"}", 1, 1000, 1000};
  sg_endpoint_record_t a = {"alpha", "{\"name\":\"alpha\"}", 1, 2000, 2000};
  sg_endpoint_record_t c = {"charlie", "{\"name\":\"charlie\"}", 3, 3000, 3500};
  assert_int_equal(sg_store_endpoint_insert(f->store, &b, &err), 0);
  assert_int_equal(sg_store_endpoint_insert(f->store, &a, &err), 0);
  assert_int_equal(sg_store_endpoint_insert(f->store, &c, &err), 0);
  assert_null(err);

  /* In name order, every field kept. */
  list_endpoints(f, &rs);
  assert_int_equal(rs.n, 3);
  assert_string_equal(rs.r[0].a, "alpha");
  assert_string_equal(rs.r[1].a, "bravo");
  assert_string_equal(rs.r[2].a, "charlie");
  assert_string_equal(rs.r[2].b, "{\"name\":\"charlie\"}");
  assert_int_equal(rs.r[2].x, 3);
  assert_int_equal(rs.r[2].y, 3000);
  assert_int_equal(rs.r[2].z, 3500);

  /* A taken name. */
  sg_endpoint_record_t dup = {"alpha", "{}", 9, 9, 9};
  assert_int_equal(sg_store_endpoint_insert(f->store, &dup, &err), -SG_EEXIST);
  assert_non_null(err);
  assert_int_equal(err->status, SG_EEXIST);
  sg_error_free(err);
  err = NULL;
  list_endpoints(f, &rs);
  assert_int_equal(rs.n, 3);
  assert_string_equal(rs.r[0].b, "{\"name\":\"alpha\"}");
  assert_int_equal(rs.r[0].x, 1);

  /* Update replaces spec, version and updated time, not the created time. */
  sg_endpoint_record_t upd = {"alpha", "{\"name\":\"alpha\",\"port\":1}", 2, 99999, 7777};
  assert_int_equal(sg_store_endpoint_update(f->store, &upd, &err), 0);
  assert_null(err);
  list_endpoints(f, &rs);
  assert_string_equal(rs.r[0].b, "{\"name\":\"alpha\",\"port\":1}");
  assert_int_equal(rs.r[0].x, 2);
  assert_int_equal(rs.r[0].y, 2000);
  assert_int_equal(rs.r[0].z, 7777);
  /* Others untouched. */
  assert_string_equal(rs.r[1].b, "{\"name\":\"bravo\"}");
  assert_int_equal(rs.r[1].x, 1);

  sg_endpoint_record_t ghost = {"ghost", "{}", 1, 1, 1};
  assert_int_equal(sg_store_endpoint_update(f->store, &ghost, &err), -SG_ENOTFOUND);
  assert_int_equal(err->status, SG_ENOTFOUND);
  sg_error_free(err);
  err = NULL;
  list_endpoints(f, &rs);
  assert_int_equal(rs.n, 3);

  /* Delete, then delete again. */
  assert_int_equal(sg_store_endpoint_delete(f->store, "bravo", &err), 0);
  assert_null(err);
  list_endpoints(f, &rs);
  assert_int_equal(rs.n, 2);
  assert_string_equal(rs.r[0].a, "alpha");
  assert_string_equal(rs.r[1].a, "charlie");
  assert_int_equal(sg_store_endpoint_delete(f->store, "bravo", &err), -SG_ENOTFOUND);
  assert_int_equal(err->status, SG_ENOTFOUND);
  sg_error_free(err);
  err = NULL;
  /* The name is free again. */
  assert_int_equal(sg_store_endpoint_insert(f->store, &b, &err), 0);
  list_endpoints(f, &rs);
  assert_int_equal(rs.n, 3);
  rows_free(&rs);
}

static void on_version(void *ud, const sg_endpoint_record_t *rec) {
  rows_t *rs = ud;
  rs->r[rs->n].a = xstrdup(rec->name);
  rs->r[rs->n].b = xstrdup(rec->spec_json);
  rs->r[rs->n].x = rec->version;
  rs->r[rs->n].y = rec->created_ms;
  rs->n++;
}

/* Every insert and update keeps its spec as a version, the newest
 * SG_STORE_VERSIONS_KEEP of them; a delete drops them, so a new endpoint of
 * the same name starts afresh. */
static void test_endpoint_versions(void **state) {
  fixture_t *f = *state;
  sg_error_t *err = NULL;
  sg_endpoint_record_t v1 = {"alpha", "{\"v\":1}", 1, 1000, 1000};
  assert_int_equal(sg_store_endpoint_insert(f->store, &v1, &err), 0);
  sg_endpoint_record_t v2 = {"alpha", "{\"v\":2}", 2, 1000, 2000};
  assert_int_equal(sg_store_endpoint_update(f->store, &v2, &err), 0);
  sg_endpoint_record_t other = {"bravo", "{\"b\":1}", 1, 1500, 1500};
  assert_int_equal(sg_store_endpoint_insert(f->store, &other, &err), 0);
  rows_t rs = {0};
  assert_int_equal(sg_store_endpoint_versions(f->store, "alpha", on_version, &rs, &err), 0);
  assert_int_equal(rs.n, 2);
  assert_int_equal(rs.r[0].x, 1);
  assert_string_equal(rs.r[0].b, "{\"v\":1}");
  assert_int_equal(rs.r[0].y, 1000);
  assert_int_equal(rs.r[1].x, 2);
  assert_int_equal(rs.r[1].y, 2000);
  rows_free(&rs);
  char *text = sg_store_endpoint_version(f->store, "alpha", 1, &err);
  assert_string_equal(text, "{\"v\":1}");
  free(text);
  assert_null(sg_store_endpoint_version(f->store, "alpha", 3, &err));
  assert_int_equal(err->status, SG_ENOTFOUND);
  sg_error_free(err);
  err = NULL;

  /* Bounded: the oldest go. */
  for (int v = 3; v <= SG_STORE_VERSIONS_KEEP + 5; v++) {
    sg_endpoint_record_t u = {"alpha", "{}", v, 1000, 3000 + v};
    assert_int_equal(sg_store_endpoint_update(f->store, &u, &err), 0);
  }
  assert_int_equal(sg_store_endpoint_versions(f->store, "alpha", on_version, &rs, &err), 0);
  assert_int_equal(rs.n, SG_STORE_VERSIONS_KEEP);
  assert_int_equal(rs.r[0].x, 6);
  rows_free(&rs);

  /* A failed update writes no version. */
  sg_endpoint_record_t gone = {"nobody", "{}", 2, 1, 1};
  assert_int_equal(sg_store_endpoint_update(f->store, &gone, &err), -SG_ENOTFOUND);
  sg_error_free(err);
  err = NULL;
  assert_int_equal(sg_store_endpoint_versions(f->store, "nobody", on_version, &rs, &err), 0);
  assert_int_equal(rs.n, 0);

  assert_int_equal(sg_store_endpoint_delete(f->store, "alpha", &err), 0);
  assert_int_equal(sg_store_endpoint_versions(f->store, "alpha", on_version, &rs, &err), 0);
  assert_int_equal(rs.n, 0);
  assert_int_equal(sg_store_endpoint_insert(f->store, &v1, &err), 0);
  assert_int_equal(sg_store_endpoint_versions(f->store, "alpha", on_version, &rs, &err), 0);
  assert_int_equal(rs.n, 1);
  rows_free(&rs);
  assert_int_equal(sg_store_endpoint_versions(f->store, "bravo", on_version, &rs, &err), 0);
  assert_int_equal(rs.n, 1);
  rows_free(&rs);
  assert_null(err);
}

static void test_endpoint_insert_other_failure(void **state) {
  fixture_t *f = *state;
  /* A failure that is not a taken name is not reported as one. */
  sg_endpoint_record_t bad = {"nospec", NULL, 1, 1, 1};
  sg_error_t *err = NULL;
  int r = sg_store_endpoint_insert(f->store, &bad, &err);
  assert_true(r < 0);
  assert_non_null(err);
  assert_int_not_equal(err->status, SG_EEXIST);
  assert_int_equal(r, -err->status);
  sg_error_free(err);
  rows_t rs = {0};
  list_endpoints(f, &rs);
  assert_int_equal(rs.n, 0);
}

static void test_endpoint_text_kept_exactly(void **state) {
  fixture_t *f = *state;
  const char *spec = "{\"env\":{\"Q\":\"it's \\\"quoted\\\"; DROP TABLE endpoints; --\"},\"x\":\"\xe2\x98\x83\"}";
  sg_endpoint_record_t r = {"q", spec, 1, 1, 1};
  assert_int_equal(sg_store_endpoint_insert(f->store, &r, NULL), 0);
  rows_t rs = {0};
  list_endpoints(f, &rs);
  assert_int_equal(rs.n, 1);
  assert_string_equal(rs.r[0].b, spec);
  rows_free(&rs);
}

/* ---- workers ---- */

static void test_workers(void **state) {
  fixture_t *f = *state;
  sg_error_t *err = NULL;
  rows_t rs = {0};
  sg_worker_record_t w1 = {"w-1", "alpha", "process", 101, 3000};
  sg_worker_record_t w2 = {"w-2", "alpha", "process", 102, 1000};
  sg_worker_record_t w3 = {"w-3", "bravo", "oci", 103, 2000};
  assert_int_equal(sg_store_worker_add(f->store, &w1, &err), 0);
  assert_int_equal(sg_store_worker_add(f->store, &w2, &err), 0);
  assert_int_equal(sg_store_worker_add(f->store, &w3, &err), 0);
  assert_null(err);

  /* In start order. */
  list_workers(f, &rs);
  assert_int_equal(rs.n, 3);
  assert_string_equal(rs.r[0].a, "w-2");
  assert_string_equal(rs.r[1].a, "w-3");
  assert_string_equal(rs.r[2].a, "w-1");
  assert_string_equal(rs.r[1].b, "bravo");
  assert_string_equal(rs.r[1].c, "oci");
  assert_int_equal(rs.r[1].x, 103);
  assert_int_equal(rs.r[1].y, 2000);

  /* Adding an id again replaces it. */
  sg_worker_record_t w1b = {"w-1", "alpha", "process", 201, 500};
  assert_int_equal(sg_store_worker_add(f->store, &w1b, &err), 0);
  list_workers(f, &rs);
  assert_int_equal(rs.n, 3);
  assert_string_equal(rs.r[0].a, "w-1");
  assert_int_equal(rs.r[0].x, 201);

  assert_int_equal(sg_store_worker_remove(f->store, "w-2", &err), 0);
  list_workers(f, &rs);
  assert_int_equal(rs.n, 2);
  assert_string_equal(rs.r[0].a, "w-1");
  assert_string_equal(rs.r[1].a, "w-3");
  /* Removing an unknown id is not an error. */
  assert_int_equal(sg_store_worker_remove(f->store, "w-2", &err), 0);
  assert_null(err);

  /* Survives a reopen. */
  reopen(f);
  list_workers(f, &rs);
  assert_int_equal(rs.n, 2);

  assert_int_equal(sg_store_worker_clear(f->store, &err), 0);
  assert_null(err);
  list_workers(f, &rs);
  assert_int_equal(rs.n, 0);
  assert_int_equal(sg_store_worker_clear(f->store, &err), 0);
  rows_free(&rs);
}

/* ---- logs ---- */

static void seed_logs(fixture_t *f) {
  const sg_log_line_t lines[] = {
      {1000, "alpha", NULL, "event", "worker w-1 starting"},
      {1100, "alpha", "w-1", "stdout", "listening on 8001"},
      {1200, "alpha", "w-1", "stderr", "warning: slow disk"},
      {1300, "alpha", "w-2", "stdout", "listening on 8002"},
      {1300, "bravo", "w-9", "stdout", "bravo says hi"},
      {1400, "alpha", "w-2", "stdout", "request 1 ok"},
      {1500, "alpha", "w-1", "stdout", "request 2 ok"},
      {1600, "alpha", "w-2", "stderr", "error: request 3 failed"},
      {1700, "alpha", NULL, "event", "worker w-2 stopped"},
  };
  sg_error_t *err = NULL;
  assert_int_equal(sg_store_logs_append(f->store, lines, SG_ARRAY_SIZE(lines), &err), 0);
  assert_null(err);
}

static void test_logs_append_query(void **state) {
  fixture_t *f = *state;
  rows_t rs = {0};
  assert_int_equal(sg_store_logs_append(f->store, NULL, 0, NULL), 0);
  seed_logs(f);

  sg_log_query_t q = {.endpoint = "alpha", .limit = 100};
  query(f, &q, &rs);
  assert_int_equal(rs.n, 8);
  assert_lines(&rs, "worker w-1 starting|listening on 8001|warning: slow disk|listening on 8002|request 1 ok|"
                    "request 2 ok|error: request 3 failed|worker w-2 stopped");
  /* Every field comes back. */
  assert_string_equal(rs.r[0].a, "alpha");
  assert_null(rs.r[0].b);
  assert_string_equal(rs.r[0].c, "event");
  assert_int_equal(rs.r[0].x, 1000);
  assert_string_equal(rs.r[2].b, "w-1");
  assert_string_equal(rs.r[2].c, "stderr");
  assert_int_equal(rs.r[2].x, 1200);

  q = (sg_log_query_t){.endpoint = "bravo", .limit = 100};
  query(f, &q, &rs);
  assert_lines(&rs, "bravo says hi");
  q = (sg_log_query_t){.endpoint = "nobody", .limit = 100};
  query(f, &q, &rs);
  assert_int_equal(rs.n, 0);
  rows_free(&rs);
}

struct rid_count {
  const char *want; /* every line must come back with it (NULL: none) */
  int n;
};

static void count_rid(void *ud, const sg_log_line_t *l) {
  struct rid_count *c = ud;
  if (c->want)
    assert_string_equal(l->request_id, c->want);
  else
    assert_null(l->request_id);
  c->n++;
}

/* Lines keep their request id, in one-row and many-row inserts alike, and
 * the filter returns only those of that id. */
static void test_logs_request_id(void **state) {
  fixture_t *f = *state;
  sg_log_line_t lines[123];
  for (int i = 0; i < (int)SG_ARRAY_SIZE(lines); i++)
    lines[i] = (sg_log_line_t){1000 + i, "alpha",
                               "w-1",    i % 2 ? "stderr" : "stdout",
                               "a line", i % 3 == 0 ? "rid-a" : i % 3 == 1 ? "rid-b" : NULL};
  sg_error_t *err = NULL;
  assert_int_equal(sg_store_logs_append(f->store, lines, SG_ARRAY_SIZE(lines), &err), 0);
  struct rid_count c = {"rid-a", 0};
  sg_log_query_t q = {.endpoint = "alpha", .request_id = "rid-a", .limit = 1000};
  assert_int_equal(sg_store_logs_query(f->store, &q, count_rid, &c, &err), 0);
  assert_int_equal(c.n, 41);
  c = (struct rid_count){"rid-b", 0};
  q = (sg_log_query_t){.endpoint = "alpha", .request_id = "rid-b", .stream = "stderr", .limit = 1000};
  assert_int_equal(sg_store_logs_query(f->store, &q, count_rid, &c, &err), 0);
  assert_int_equal(c.n, 21); /* i = 1, 7, 13, ... 121: odd i with i % 3 == 1 */
  c = (struct rid_count){"rid-b", 0};
  q = (sg_log_query_t){.endpoint = "alpha", .request_id = "rid-b", .oldest_first = true, .limit = 5};
  assert_int_equal(sg_store_logs_query(f->store, &q, count_rid, &c, &err), 0);
  assert_int_equal(c.n, 5);
  c = (struct rid_count){"rid-c", 0};
  q = (sg_log_query_t){.endpoint = "alpha", .request_id = "rid-c", .limit = 1000};
  assert_int_equal(sg_store_logs_query(f->store, &q, count_rid, &c, &err), 0);
  assert_int_equal(c.n, 0);
  assert_null(err);
}

static void test_logs_filters(void **state) {
  fixture_t *f = *state;
  rows_t rs = {0};
  seed_logs(f);
  sg_log_query_t q = {.endpoint = "alpha", .worker = "w-1", .limit = 100};
  query(f, &q, &rs);
  assert_lines(&rs, "listening on 8001|warning: slow disk|request 2 ok");

  q = (sg_log_query_t){.endpoint = "alpha", .stream = "stderr", .limit = 100};
  query(f, &q, &rs);
  assert_lines(&rs, "warning: slow disk|error: request 3 failed");
  q = (sg_log_query_t){.endpoint = "alpha", .stream = "event", .limit = 100};
  query(f, &q, &rs);
  assert_lines(&rs, "worker w-1 starting|worker w-2 stopped");

  /* Substring, case-sensitive, and not a pattern. */
  q = (sg_log_query_t){.endpoint = "alpha", .text = "request", .limit = 100};
  query(f, &q, &rs);
  assert_lines(&rs, "request 1 ok|request 2 ok|error: request 3 failed");
  q = (sg_log_query_t){.endpoint = "alpha", .text = "REQUEST", .limit = 100};
  query(f, &q, &rs);
  assert_int_equal(rs.n, 0);
  q = (sg_log_query_t){.endpoint = "alpha", .text = "%", .limit = 100};
  query(f, &q, &rs);
  assert_int_equal(rs.n, 0);
  q = (sg_log_query_t){.endpoint = "alpha", .text = "on 800", .limit = 100};
  query(f, &q, &rs);
  assert_lines(&rs, "listening on 8001|listening on 8002");

  /* Time bounds are inclusive. */
  q = (sg_log_query_t){.endpoint = "alpha", .since_ms = 1300, .limit = 100};
  query(f, &q, &rs);
  assert_lines(&rs, "listening on 8002|request 1 ok|request 2 ok|error: request 3 failed|worker w-2 stopped");
  q = (sg_log_query_t){.endpoint = "alpha", .until_ms = 1200, .limit = 100};
  query(f, &q, &rs);
  assert_lines(&rs, "worker w-1 starting|listening on 8001|warning: slow disk");
  q = (sg_log_query_t){.endpoint = "alpha", .since_ms = 1200, .until_ms = 1400, .limit = 100};
  query(f, &q, &rs);
  assert_lines(&rs, "warning: slow disk|listening on 8002|request 1 ok");
  q = (sg_log_query_t){.endpoint = "alpha", .since_ms = 1800, .limit = 100};
  query(f, &q, &rs);
  assert_int_equal(rs.n, 0);

  /* Filters combine. */
  q = (sg_log_query_t){.endpoint = "alpha",
                       .worker = "w-2",
                       .stream = "stdout",
                       .text = "ok",
                       .since_ms = 1350,
                       .until_ms = 1650,
                       .limit = 100};
  query(f, &q, &rs);
  assert_lines(&rs, "request 1 ok");
  q = (sg_log_query_t){.endpoint = "alpha", .worker = "w-9", .limit = 100};
  query(f, &q, &rs);
  assert_int_equal(rs.n, 0);
  rows_free(&rs);
}

static void test_logs_limit(void **state) {
  fixture_t *f = *state;
  rows_t rs = {0};
  seed_logs(f);
  /* The newest N, oldest first. */
  sg_log_query_t q = {.endpoint = "alpha", .limit = 3};
  query(f, &q, &rs);
  assert_lines(&rs, "request 2 ok|error: request 3 failed|worker w-2 stopped");
  assert_int_equal(rs.r[0].x, 1500);
  assert_int_equal(rs.r[2].x, 1700);
  q.limit = 1;
  query(f, &q, &rs);
  assert_lines(&rs, "worker w-2 stopped");
  q.limit = 8;
  query(f, &q, &rs);
  assert_int_equal(rs.n, 8);
  assert_string_equal(rs.r[0].d, "worker w-1 starting");
  /* The limit applies after the filters. */
  q = (sg_log_query_t){.endpoint = "alpha", .worker = "w-1", .limit = 2};
  query(f, &q, &rs);
  assert_lines(&rs, "warning: slow disk|request 2 ok");
  q = (sg_log_query_t){.endpoint = "alpha", .until_ms = 1400, .limit = 2};
  query(f, &q, &rs);
  assert_lines(&rs, "listening on 8002|request 1 ok");

  /* Lines with equal timestamps keep their order of arrival. */
  const sg_log_line_t same[] = {
      {5000, "gamma", "w", "stdout", "first"},
      {5000, "gamma", "w", "stdout", "second"},
      {5000, "gamma", "w", "stdout", "third"},
  };
  assert_int_equal(sg_store_logs_append(f->store, same, 3, NULL), 0);
  q = (sg_log_query_t){.endpoint = "gamma", .limit = 2};
  query(f, &q, &rs);
  assert_lines(&rs, "second|third");
  rows_free(&rs);
}

static void test_logs_trim(void **state) {
  fixture_t *f = *state;
  rows_t rs = {0};
  sg_error_t *err = NULL;
  seed_logs(f);
  /* More than there are: nothing goes. */
  assert_int_equal(sg_store_logs_trim(f->store, "alpha", 100, &err), 0);
  assert_int_equal(sg_store_logs_trim(f->store, "alpha", 8, &err), 0);
  sg_log_query_t q = {.endpoint = "alpha", .limit = 100};
  query(f, &q, &rs);
  assert_int_equal(rs.n, 8);

  assert_int_equal(sg_store_logs_trim(f->store, "alpha", 3, &err), 0);
  assert_null(err);
  query(f, &q, &rs);
  assert_lines(&rs, "request 2 ok|error: request 3 failed|worker w-2 stopped");
  /* Another endpoint's lines stay. */
  q.endpoint = "bravo";
  query(f, &q, &rs);
  assert_lines(&rs, "bravo says hi");

  /* New lines go after the kept ones. */
  const sg_log_line_t more[] = {{1800, "alpha", "w-3", "stdout", "later"}};
  assert_int_equal(sg_store_logs_append(f->store, more, 1, NULL), 0);
  q.endpoint = "alpha";
  query(f, &q, &rs);
  assert_lines(&rs, "request 2 ok|error: request 3 failed|worker w-2 stopped|later");

  /* keep 0 deletes all of that endpoint only. */
  assert_int_equal(sg_store_logs_trim(f->store, "alpha", 0, &err), 0);
  query(f, &q, &rs);
  assert_int_equal(rs.n, 0);
  q.endpoint = "bravo";
  query(f, &q, &rs);
  assert_int_equal(rs.n, 1);
  assert_int_equal(sg_store_logs_trim(f->store, "nobody", 0, &err), 0);
  assert_int_equal(sg_store_logs_trim(f->store, "nobody", 5, &err), 0);
  assert_null(err);
  rows_free(&rs);
}

/* ---- durability and migrations ---- */

static int user_version(const char *path) {
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  sqlite3_stmt *st = NULL;
  assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  int v = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return v;
}

static void collect_volume(void *ud, const sg_volume_record_t *r) {
  sg_strbuf_appendf(ud, "%s:%lld:%lld;", r->name, (long long)r->size_bytes, (long long)r->created_ms);
}

static char *volumes_text(fixture_t *f) {
  sg_strbuf_t b = SG_STRBUF_INIT;
  sg_strbuf_appendf(&b, "%s", "");
  sg_error_t *err = NULL;
  assert_int_equal(sg_store_volume_each(f->store, collect_volume, &b, &err), 0);
  return sg_strbuf_steal(&b);
}

static void test_volumes(void **state) {
  fixture_t *f = *state;
  sg_error_t *err = NULL;
  sg_volume_record_t hf = {"hf-cache", 0, 1000}, w = {"weights", 1 << 20, 2000};
  assert_int_equal(sg_store_volume_add(f->store, &w, &err), 0);
  assert_int_equal(sg_store_volume_add(f->store, &hf, &err), 0);
  assert_int_not_equal(sg_store_volume_add(f->store, &hf, &err), 0);
  assert_int_equal(err->status, SG_EEXIST);
  sg_error_free(err);
  err = NULL;
  char *t = volumes_text(f);
  assert_string_equal(t, "hf-cache:0:1000;weights:1048576:2000;");
  free(t);
  reopen(f);
  t = volumes_text(f);
  assert_string_equal(t, "hf-cache:0:1000;weights:1048576:2000;");
  free(t);
  assert_int_equal(sg_store_volume_delete(f->store, "hf-cache", &err), 0);
  assert_int_not_equal(sg_store_volume_delete(f->store, "hf-cache", &err), 0);
  assert_int_equal(err->status, SG_ENOTFOUND);
  sg_error_free(err);
  err = NULL;
  t = volumes_text(f);
  assert_string_equal(t, "weights:1048576:2000;");
  free(t);

  assert_int_equal(sg_store_named_exists(f->store, SG_STORE_VOLUMES, "weights", &err), 1);
  assert_int_equal(sg_store_named_exists(f->store, SG_STORE_VOLUMES, "hf-cache", &err), 0);
  assert_int_equal(sg_store_named_exists(f->store, SG_STORE_SECRETS, "weights", &err), 0);

  /* A stored endpoint that mounts it keeps it (whatever the loop knew). */
  sg_endpoint_record_t ep = {"reader", "{\"name\":\"reader\",\"volumes\":[{\"name\":\"weights\",\"path\":\"/w\"}]}", 1,
                             10, 10};
  sg_endpoint_record_t other = {"other", "{\"name\":\"other\",\"env\":{\"weights\":\"x\"}}", 1, 10, 10};
  assert_int_equal(sg_store_endpoint_insert(f->store, &ep, &err), 0);
  assert_int_equal(sg_store_endpoint_insert(f->store, &other, &err), 0);
  assert_int_not_equal(sg_store_volume_delete(f->store, "weights", &err), 0);
  assert_int_equal(err->status, SG_EEXIST);
  assert_non_null(strstr(err->message, "\"reader\""));
  assert_null(strstr(err->message, "other"));
  sg_error_free(err);
  err = NULL;
  assert_int_equal(sg_store_endpoint_delete(f->store, "reader", &err), 0);
  assert_int_equal(sg_store_volume_delete(f->store, "weights", &err), 0);
}

static void test_reopen_keeps_data(void **state) {
  fixture_t *f = *state;
  rows_t rs = {0};
  sg_endpoint_record_t a = {"alpha", "{\"v\":1}", 4, 10, 20};
  assert_int_equal(sg_store_endpoint_insert(f->store, &a, NULL), 0);
  sg_worker_record_t w = {"w-1", "alpha", "process", 4242, 30};
  assert_int_equal(sg_store_worker_add(f->store, &w, NULL), 0);
  seed_logs(f);
  int v = user_version(f->path);
  assert_true(v >= 1);

  for (int i = 0; i < 3; i++) {
    reopen(f);
    assert_int_equal(user_version(f->path), v);
    list_endpoints(f, &rs);
    assert_int_equal(rs.n, 1);
    assert_string_equal(rs.r[0].a, "alpha");
    assert_string_equal(rs.r[0].b, "{\"v\":1}");
    assert_int_equal(rs.r[0].x, 4);
    assert_int_equal(rs.r[0].y, 10);
    assert_int_equal(rs.r[0].z, 20);
    list_workers(f, &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.r[0].x, 4242);
    sg_log_query_t q = {.endpoint = "alpha", .limit = 2};
    query(f, &q, &rs);
    assert_lines(&rs, "error: request 3 failed|worker w-2 stopped");
  }
  /* Still writable after the reopens, and duplicates still caught. */
  assert_int_equal(sg_store_endpoint_insert(f->store, &a, NULL), -SG_EEXIST);
  sg_endpoint_record_t b = {"bravo", "{}", 1, 1, 1};
  assert_int_equal(sg_store_endpoint_insert(f->store, &b, NULL), 0);
  rows_free(&rs);
}

typedef struct keys_seen {
  int n;
  char names[4][32];
  int64_t last_used[4];
  unsigned char first_hash[SG_KEY_HASH_LEN];
  double rate;
} keys_seen_t;

static void collect_key(void *ud, const sg_key_record_t *r) {
  keys_seen_t *k = ud;
  if (k->n == 0) {
    memcpy(k->first_hash, r->hash, SG_KEY_HASH_LEN);
    k->rate = r->rate;
  }
  if (k->n < 4) {
    snprintf(k->names[k->n], sizeof(k->names[0]), "%s", r->name);
    k->last_used[k->n] = r->last_used_ms;
  }
  k->n++;
}

static void test_api_keys(void **state) {
  fixture_t *f = *state;
  unsigned char h1[SG_KEY_HASH_LEN], h2[SG_KEY_HASH_LEN];
  memset(h1, 0xab, sizeof(h1));
  memset(h2, 0xcd, sizeof(h2));
  sg_key_record_t a = {"alpha", "sgpu_0123abcd", h1, "invoke|read", "[\"e1\"]", 10, 0, 0, 2.5, 3};
  sg_key_record_t b = {"bravo", "sgpu_ffff0000", h2, "admin", NULL, 11, 0, 99, 0, 0};
  assert_int_equal(sg_store_key_insert(f->store, &a, NULL), 0);
  assert_int_equal(sg_store_key_insert(f->store, &b, NULL), 0);
  sg_error_t *err = NULL;
  assert_int_equal(sg_store_key_insert(f->store, &a, &err), -SG_EEXIST);
  sg_error_free(err);
  char *names[] = {"alpha", "gone"};
  int64_t when[] = {500, 600};
  assert_int_equal(sg_store_key_touch(f->store, names, when, 2, NULL), 0);
  when[0] = 400; /* an older time never goes back */
  assert_int_equal(sg_store_key_touch(f->store, names, when, 1, NULL), 0);
  reopen(f);
  keys_seen_t k = {0};
  assert_int_equal(sg_store_key_load(f->store, collect_key, &k, NULL), 0);
  assert_int_equal(k.n, 2);
  assert_string_equal(k.names[0], "alpha");
  assert_int_equal(k.last_used[0], 500);
  assert_int_equal(k.last_used[1], 0);
  assert_memory_equal(k.first_hash, h1, SG_KEY_HASH_LEN);
  assert_true(k.rate == 2.5);
  assert_int_equal(sg_store_key_delete(f->store, "alpha", NULL), 0);
  err = NULL;
  assert_int_equal(sg_store_key_delete(f->store, "alpha", &err), -SG_ENOTFOUND);
  sg_error_free(err);
  memset(&k, 0, sizeof(k));
  assert_int_equal(sg_store_key_load(f->store, collect_key, &k, NULL), 0);
  assert_int_equal(k.n, 1);
  assert_string_equal(k.names[0], "bravo");
}

static void test_two_stores_same_file(void **state) {
  fixture_t *f = *state;
  sg_error_t *err = NULL;
  sg_store_t *other = sg_store_open(f->path, &err);
  assert_non_null(other);
  sg_endpoint_record_t a = {"alpha", "{}", 1, 1, 1};
  assert_int_equal(sg_store_endpoint_insert(other, &a, NULL), 0);
  sg_store_close(other);
  rows_t rs = {0};
  list_endpoints(f, &rs);
  assert_int_equal(rs.n, 1);
  rows_free(&rs);
}

static void test_open_errors(void **state) {
  fixture_t *f = *state;
  sg_error_t *err = NULL;
  char *missing = xasprintf("%s/no/such/dir/state.db", f->dir);
  assert_null(sg_store_open(missing, &err));
  assert_non_null(err);
  assert_int_equal(err->status, SG_ESTORE);
  sg_error_free(err);
  err = NULL;
  free(missing);

  char *junk = xasprintf("%s/junk.db", f->dir);
  char garbage[4096];
  memset(garbage, 'z', sizeof(garbage));
  assert_int_equal(sg_write_file_atomic(junk, garbage, sizeof(garbage), 0600), 0);
  assert_null(sg_store_open(junk, &err));
  assert_non_null(err);
  assert_int_equal(err->status, SG_ESTORE);
  sg_error_free(err);
  free(junk);
}

/* ---- read-only connections for queries off the loop ---- */

static void query_on(sg_store_t *s, const sg_log_query_t *q, rows_t *rs) {
  rows_free(rs);
  sg_error_t *err = NULL;
  assert_int_equal(sg_store_logs_query(s, q, collect_log, rs, &err), 0);
  assert_null(err);
}

static void test_readers_snapshot(void **state) {
  fixture_t *f = *state;
  rows_t rs = {0};
  seed_logs(f);
  sg_store_readers_t *readers = sg_store_readers_new(f->path);
  sg_error_t *err = NULL;
  sg_store_t *a = sg_store_readers_take(readers, &err), *b = sg_store_readers_take(readers, &err);
  assert_non_null(a);
  assert_non_null(b);
  assert_ptr_not_equal(a, b);
  sg_store_readers_put(readers, a);
  assert_ptr_equal(sg_store_readers_take(readers, &err), a); /* kept and reused */

  sg_log_query_t q = {.endpoint = "alpha", .limit = 100};
  assert_int_equal(sg_store_read_begin(a, &err), 0);
  const sg_log_line_t later = {1800, "alpha", NULL, "event", "after the snapshot"};
  assert_int_equal(sg_store_logs_append(f->store, &later, 1, &err), 0);
  query_on(a, &q, &rs);
  assert_int_equal(rs.n, 8); /* the snapshot */
  query_on(b, &q, &rs);
  assert_int_equal(rs.n, 9); /* a reader outside a read transaction sees the last commit */
  sg_store_read_end(a);
  query_on(a, &q, &rs);
  assert_int_equal(rs.n, 9);

  /* Read-only: a write fails. */
  sg_endpoint_record_t rec = {"ro", "{}", 1, 1, 1};
  assert_true(sg_store_endpoint_insert(a, &rec, &err) < 0);
  assert_non_null(err);
  sg_error_free(err);
  err = NULL;

  sg_store_readers_put(readers, a);
  sg_store_readers_put(readers, b);
  sg_store_readers_free(readers);
  rows_free(&rs);
}

#ifndef NDEBUG
/* A query on the loop thread aborts in debug builds. */
static void test_query_on_loop_thread_aborts(void **state) {
  fixture_t *f = *state;
  seed_logs(f);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    dup2(null, 2);
    sg_loop_thread_set();
    sg_log_query_t q = {.endpoint = "alpha", .limit = 100};
    rows_t rs = {0};
    sg_store_logs_query(f->store, &q, collect_log, &rs, NULL);
    _exit(0);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFSIGNALED(status));
  assert_int_equal(WTERMSIG(status), SIGABRT);
}
#endif

/* The store thread runs jobs one at a time in submission order, off the
 * calling thread, and their done() on the loop in that order; freeing it
 * runs every job still queued. */
typedef struct order_job {
  int i;
  int *ran; /* appended on the store thread */
  int *nran;
  int *finished; /* appended on the loop */
  int *nfinished;
  pthread_t loop;
  bool off_loop;
} order_job_t;

static void order_work(sg_store_t *store, void *data) {
  order_job_t *j = data;
  sg_endpoint_record_t rec = {NULL, "{}", j->i, 1, 1};
  char name[16];
  snprintf(name, sizeof(name), "e%d", j->i);
  rec.name = name;
  assert_int_equal(sg_store_endpoint_insert(store, &rec, NULL), 0);
  j->off_loop = !pthread_equal(j->loop, pthread_self());
  j->ran[(*j->nran)++] = j->i;
}

static void order_done(void *data) {
  order_job_t *j = data;
  assert_true(pthread_equal(j->loop, pthread_self()));
  assert_true(j->off_loop);
  j->finished[(*j->nfinished)++] = j->i;
  free(j);
}

static void test_store_thread_order_and_drain(void **state) {
  fixture_t *f = *state;
  struct event_base *base = event_base_new();
  sg_error_t *err = NULL;
  sg_store_thread_t *t = sg_store_thread_new(base, f->store, &err);
  assert_non_null(t);
  enum { N = 50 };
  int ran[N], finished[N], nran = 0, nfinished = 0;
  for (int i = 0; i < N; i++) {
    order_job_t *j = xcalloc(1, sizeof(*j));
    *j = (order_job_t){i, ran, &nran, finished, &nfinished, pthread_self(), false};
    sg_store_thread_submit(t, order_work, order_done, j);
  }
  /* Some done() on the loop now, the rest when the thread is freed. */
  while (nfinished < N / 2)
    event_base_loop(base, EVLOOP_ONCE);
  sg_store_thread_free(t);
  assert_int_equal(nran, N);
  assert_int_equal(nfinished, N);
  for (int i = 0; i < N; i++) {
    assert_int_equal(ran[i], i);
    assert_int_equal(finished[i], i);
  }
  event_base_free(base);
}

#ifndef NDEBUG
/* A write on the loop thread aborts in debug builds, as a query does. */
static void test_write_on_loop_thread_aborts(void **state) {
  fixture_t *f = *state;
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    dup2(null, 2);
    sg_loop_thread_set();
    sg_endpoint_record_t rec = {"alpha", "{}", 1, 1, 1};
    sg_store_endpoint_insert(f->store, &rec, NULL);
    _exit(0);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFSIGNALED(status));
  assert_int_equal(WTERMSIG(status), SIGABRT);
}
#endif

static void count_secret(void *ud, const sg_secret_record_t *r) {
  (void)r;
  (*(int *)ud)++;
}

/* A secret referenced by a stored endpoint's env cannot be deleted; once
 * the endpoint is gone it can. */
static void test_secret_delete_in_use(void **state) {
  fixture_t *f = *state;
  sg_error_t *err = NULL;
  unsigned char sealed[4] = {1, 2, 3, 4};
  sg_secret_record_t sec = {"hf", sealed, sizeof(sealed), 10, 10};
  assert_int_equal(sg_store_secret_put(f->store, &sec, &err), 0);
  sg_secret_record_t other = {"hf2", sealed, sizeof(sealed), 10, 10};
  assert_int_equal(sg_store_secret_put(f->store, &other, &err), 0);
  sg_endpoint_record_t ep = {"uses", "{\"name\":\"uses\",\"env\":{\"A\":\"hf\",\"T\":{\"secret\":\"hf\"}}}", 1, 1, 1};
  assert_int_equal(sg_store_endpoint_insert(f->store, &ep, &err), 0);
  /* A plain value equal to the name is no reference. */
  sg_endpoint_record_t plain = {"plain", "{\"name\":\"plain\",\"env\":{\"A\":\"hf2\"}}", 1, 1, 1};
  assert_int_equal(sg_store_endpoint_insert(f->store, &plain, &err), 0);
  assert_true(sg_store_secret_delete(f->store, "hf", &err) < 0);
  assert_int_equal(err->status, SG_EEXIST);
  assert_non_null(strstr(err->message, "\"uses\""));
  sg_error_free(err);
  err = NULL;
  assert_int_equal(sg_store_secret_delete(f->store, "hf2", &err), 0);
  assert_int_equal(sg_store_endpoint_delete(f->store, "uses", &err), 0);
  assert_int_equal(sg_store_secret_delete(f->store, "hf", &err), 0);
  assert_true(sg_store_secret_delete(f->store, "hf", &err) < 0);
  assert_int_equal(err->status, SG_ENOTFOUND);
  sg_error_free(err);
  int n = 0;
  assert_int_equal(sg_store_secret_load(f->store, count_secret, &n, NULL), 0);
  assert_int_equal(n, 0);
}

static void count_auth(void *ud, const sg_registry_auth_record_t *r) {
  (void)r;
  (*(int *)ud)++;
}

static void keep_secret(void *ud, const sg_registry_auth_record_t *r) {
  snprintf(ud, 64, "%s", r->secret ? r->secret : "(null)");
}

/* Registry passwords: refused without a key, sealed with one (a BLOB that
 * does not hold the password), read back in clear; a row written in clear
 * is sealed once. */
static void test_auth_sealed(void **state) {
  fixture_t *f = *state;
  sg_error_t *err = NULL;
  sg_registry_auth_record_t rec = {"reg", "ghcr.io", "me", "hunter2-password", 5, 5};
  assert_true(sg_store_auth_put(f->store, &rec, false, &err) < 0);
  sg_error_free(err);
  err = NULL;
  unsigned char key[SG_SEAL_KEY_LEN];
  memset(key, 7, sizeof(key));
  sg_store_set_seal_key(f->store, key);
  assert_int_equal(sg_store_auth_put(f->store, &rec, false, &err), 0);
  char got[64] = "";
  assert_int_equal(sg_store_auth_get(f->store, "reg", keep_secret, got, &err), 0);
  assert_string_equal(got, "hunter2-password");
  sqlite3 *db;
  assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
  sqlite3_stmt *st;
  assert_int_equal(
      sqlite3_prepare_v2(db, "SELECT typeof(secret), instr(secret, 'hunter2') FROM registry_auths", -1, &st, NULL),
      SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  assert_string_equal((const char *)sqlite3_column_text(st, 0), "blob");
  assert_int_equal(sqlite3_column_int(st, 1), 0);
  sqlite3_finalize(st);
  /* A row as an earlier sgpud wrote it. */
  assert_int_equal(sqlite3_exec(db, "INSERT INTO registry_auths VALUES('old', 'docker.io', 'u', 'clear-pass', 1, 1)",
                                NULL, NULL, NULL),
                   SQLITE_OK);
  sqlite3_close(db);
  assert_int_equal(sg_store_auth_seal_clear(f->store, &err), 1);
  assert_int_equal(sg_store_auth_seal_clear(f->store, &err), 0);
  assert_int_equal(sg_store_auth_get(f->store, "old", keep_secret, got, &err), 0);
  assert_string_equal(got, "clear-pass");
  /* Another key does not open them. */
  unsigned char other[SG_SEAL_KEY_LEN];
  memset(other, 8, sizeof(other));
  sg_store_set_seal_key(f->store, other);
  assert_true(sg_store_auth_get(f->store, "old", keep_secret, got, &err) < 0);
  assert_non_null(strstr(err->message, "does not open"));
  sg_error_free(err);
  err = NULL;
  /* Loading all leaves them out rather than failing. */
  int n = 0;
  assert_int_equal(sg_store_auth_load(f->store, count_auth, &n, &err), 0);
  assert_int_equal(n, 0);
  sg_store_set_seal_key(f->store, key);
  assert_int_equal(sg_store_auth_load(f->store, count_auth, &n, &err), 0);
  assert_int_equal(n, 2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_endpoint_crud, setup, teardown),
      cmocka_unit_test_setup_teardown(test_api_keys, setup, teardown),
      cmocka_unit_test_setup_teardown(test_endpoint_versions, setup, teardown),
      cmocka_unit_test_setup_teardown(test_store_thread_order_and_drain, setup, teardown),
      cmocka_unit_test_setup_teardown(test_endpoint_insert_other_failure, setup, teardown),
      cmocka_unit_test_setup_teardown(test_endpoint_text_kept_exactly, setup, teardown),
      cmocka_unit_test_setup_teardown(test_workers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_logs_append_query, setup, teardown),
      cmocka_unit_test_setup_teardown(test_logs_filters, setup, teardown),
      cmocka_unit_test_setup_teardown(test_logs_request_id, setup, teardown),
      cmocka_unit_test_setup_teardown(test_logs_limit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_logs_trim, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reopen_keeps_data, setup, teardown),
      cmocka_unit_test_setup_teardown(test_volumes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_two_stores_same_file, setup, teardown),
      cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_readers_snapshot, setup, teardown),
      cmocka_unit_test_setup_teardown(test_secret_delete_in_use, setup, teardown),
      cmocka_unit_test_setup_teardown(test_auth_sealed, setup, teardown),
#ifndef NDEBUG
      cmocka_unit_test_setup_teardown(test_query_on_loop_thread_aborts, setup, teardown),
      cmocka_unit_test_setup_teardown(test_write_on_loop_thread_aborts, setup, teardown),
#endif
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
