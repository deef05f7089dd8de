/* bench-jobs-list: a page of one endpoint's jobs, newest first, the query
 * behind GET /v1/endpoints/{name}/jobs (sg_store_jobs_list), read from a
 * jobs table that holds many endpoints' jobs.
 *
 * Setup: a store in a temporary directory (every migration applied), filled
 * with --jobs finished jobs spread round-robin over --endpoints endpoints
 * (one in 50 of each endpoint's FAILED, the others COMPLETED), created one millisecond apart.
 *
 * The same queries run twice on the same rows, in one run:
 *   index     the schema as it is: the index jobs_endpoint_created
 *             (endpoint, created_ms, seq) of migration 10
 *   no index  the same store after DROP INDEX jobs_endpoint_created: the
 *             schema before migration 10
 * Each round lists, for an endpoint taken in turn: the first page (limit 50),
 * a page further back (before the median creation time), and the first page
 * of FAILED jobs. Medians per query and their ratio are printed.
 *
 * usage: bench-jobs-list [--jobs N] [--endpoints N] [--rounds N] */
#include <getopt.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "sgpu/jobs-store.h"

#define PAGE 50
#define BATCH 10000
#define T0_MS 1700000000000LL

static const char usage[] = "usage: bench-jobs-list [--jobs N] [--endpoints N] [--rounds N]\n"
                            "\n"
                            "Times a page of one endpoint's jobs from a store of many endpoints' jobs,\n"
                            "with the index of migration 10 and without it, and prints medians and\n"
                            "their ratio.\n"
                            "\n"
                            "  --jobs N       jobs in the table (default 1000000)\n"
                            "  --endpoints N  endpoints they belong to (default 100)\n"
                            "  --rounds N     measured rounds of each query (default 30)\n";

enum { Q_FIRST, Q_BEFORE, Q_FAILED, N_QUERIES };
static const char *const query_names[N_QUERIES] = {"first page", "page before the median time", "first FAILED page"};

static void count_row(void *ud, const sg_job_record_t *rec) {
  (void)rec;
  (*(int *)ud)++;
}

static void fill(sg_store_t *st, long jobs, int endpoints) {
  sg_job_write_t *w = calloc(BATCH, sizeof(*w));
  char(*ids)[40] = calloc(BATCH, sizeof(*ids));
  char(*eps)[32] = calloc(BATCH, sizeof(*eps));
  if (!w || !ids || !eps)
    bench_die("out of memory");
  for (long done = 0; done < jobs && !bench_interrupted();) {
    size_t n = 0;
    for (; n < BATCH && done < jobs; n++, done++) {
      snprintf(ids[n], sizeof(ids[n]), "job-%010ld", done);
      snprintf(eps[n], sizeof(eps[n]), "ep-%03ld", done % endpoints);
      sg_job_status_t status = (done / endpoints) % 50 == 7 ? SG_JOB_FAILED : SG_JOB_COMPLETED;
      w[n] = (sg_job_write_t){.insert = true,
                              .rec = {.id = ids[n],
                                      .endpoint = eps[n],
                                      .status = status,
                                      .input = "{\"prompt\":\"hello\"}",
                                      .exec_timeout_ms = 600000,
                                      .output = status == SG_JOB_COMPLETED ? "{\"text\":\"hi\"}" : NULL,
                                      .error = status == SG_JOB_FAILED ? "\"boom\"" : NULL,
                                      .worker = "w-000000000000",
                                      .created_ms = T0_MS + done,
                                      .started_ms = T0_MS + done,
                                      .finished_ms = T0_MS + done + 5,
                                      .execution_ms = 5}};
    }
    sg_error_t *err = NULL;
    if (sg_store_jobs_apply(st, w, n, &err) < 0)
      bench_die("insert: %s", err->message);
  }
  free(w);
  free(ids);
  free(eps);
}

/* One round of each query for endpoint ep; adds the times to s. */
static void round_of(sg_store_t *st, const char *ep, long jobs, bench_series_t s[N_QUERIES]) {
  const int64_t before[N_QUERIES] = {0, T0_MS + jobs / 2, 0};
  const int status[N_QUERIES] = {-1, -1, SG_JOB_FAILED};
  for (int q = 0; q < N_QUERIES; q++) {
    int rows = 0;
    sg_error_t *err = NULL;
    double t = bench_now_ms();
    if (sg_store_jobs_list(st, ep, status[q], before[q], PAGE, count_row, &rows, &err) < 0)
      bench_die("list: %s", err->message);
    bench_series_add(&s[q], bench_now_ms() - t);
    if (rows != PAGE)
      bench_die("%s of %s: %d rows, not %d (too few jobs per endpoint?)", query_names[q], ep, rows, PAGE);
  }
}

static void measure(const char *path, long jobs, int endpoints, int rounds, bench_series_t s[N_QUERIES]) {
  sg_error_t *err = NULL;
  sg_store_t *st = sg_store_open(path, &err);
  if (!st)
    bench_die("open %s: %s", path, err->message);
  char ep[32];
  for (int r = -1; r < rounds && !bench_interrupted(); r++) {
    snprintf(ep, sizeof(ep), "ep-%03d", (r < 0 ? 0 : r) % endpoints);
    bench_series_t scratch[N_QUERIES] = {0};
    round_of(st, ep, jobs, r < 0 ? scratch : s); /* round -1 warms the cache */
    for (int q = 0; q < N_QUERIES; q++)
      bench_series_free(&scratch[q]);
  }
  sg_store_close(st);
}

static void drop_index(const char *path) {
  sqlite3 *db = NULL;
  char *msg = NULL;
  if (sqlite3_open(path, &db) != SQLITE_OK ||
      sqlite3_exec(db, "DROP INDEX jobs_endpoint_created", NULL, NULL, &msg) != SQLITE_OK)
    bench_die("drop index: %s", msg ? msg : sqlite3_errmsg(db));
  sqlite3_close(db);
}

int main(int argc, char **argv) {
  bench_init("bench-jobs-list");
  long jobs = 1000000;
  int endpoints = 100, rounds = 30;
  static const struct option opts[] = {{"jobs", required_argument, NULL, 'j'},
                                       {"endpoints", required_argument, NULL, 'e'},
                                       {"rounds", required_argument, NULL, 'r'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 'j':
      jobs = strtol(optarg, NULL, 10);
      break;
    case 'e':
      endpoints = (int)strtol(optarg, NULL, 10);
      break;
    case 'r':
      rounds = (int)strtol(optarg, NULL, 10);
      break;
    default: /* -h: the usage asked for; anything else: a mistake */
      fputs(usage, c == 'h' ? stdout : stderr);
      return c == 'h' ? 0 : 2;
    }
  }
  if (endpoints < 1 || endpoints > 999 || rounds < 1 || rounds > 100000 || jobs < (long)endpoints * 2 * PAGE * 50)
    bench_die("need 1-999 endpoints, 1-100000 rounds and at least %d jobs per endpoint", 2 * PAGE * 50);

  char *path = bench_tmp_path("sgpu.db");
  sg_error_t *err = NULL;
  sg_store_t *st = sg_store_open(path, &err);
  if (!st)
    bench_die("open %s: %s", path, err->message);
  double t = bench_now_ms();
  fill(st, jobs, endpoints);
  sg_store_close(st);
  bench_note("%ld jobs of %d endpoints written in %.1f s", jobs, endpoints, (bench_now_ms() - t) / 1000);

  bench_series_t with[N_QUERIES] = {0}, without[N_QUERIES] = {0};
  measure(path, jobs, endpoints, rounds, with);
  drop_index(path);
  measure(path, jobs, endpoints, rounds, without);
  if (bench_interrupted())
    bench_die("interrupted");

  printf("bench-jobs-list: a page of %d of one endpoint's jobs; %ld jobs of %d endpoints; %d rounds\n\n", PAGE, jobs,
         endpoints, rounds);
  printf("  %-28s %12s %12s %8s\n", "query (median ms)", "no index", "index", "speedup");
  for (int q = 0; q < N_QUERIES; q++) {
    double a = bench_series_median(&without[q]), b = bench_series_median(&with[q]);
    printf("  %-28s %12.3f %12.3f %7.0fx\n", query_names[q], a, b, a / b);
    bench_series_free(&with[q]);
    bench_series_free(&without[q]);
  }
  free(path);
  return 0;
}
