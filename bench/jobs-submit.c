/* bench-jobs-submit: durable job submissions per second through the job
 * writer (gateway/job-writer.c), the path every POST /v2/{name}/run takes
 * before it is answered: a record queued from the event loop, written to
 * SQLite (WAL, synchronous=FULL) on the writer thread, and its callback run
 * back on the loop once the commit, and its fsync, returned.
 *
 * Two modes in the same run, on the same disk:
 *   group   every write queued while a commit runs joins the next commit
 *           (what sgpud does)
 *   single  one transaction, and one fsync, per job (jobs_max_batch = 1)
 * The submitter keeps --window writes outstanding, as that many clients
 * waiting for their answers would. Latency is from queuing a write to its
 * callback.
 *
 * usage: bench-jobs-submit [--jobs N] [--single-jobs N] [--window N] [--input-bytes N] [--dir DIR] */
#include <event2/event.h>
#include <ftw.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gateway/job-writer.h"
#include "gateway/jobs-proto.h"
#include "sgpu/util.h"

struct run;

/* What a write's callback gets: its run and its index. */
struct slot {
  struct run *r;
  long i;
};

struct run {
  struct event_base *base;
  sg_job_writer_t *w;
  long total, window, input_bytes;
  long queued, done, failed;
  char *input;
  double *lat_ms;
  double *t0;
  struct slot *slots;
};

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void submit_one(struct run *r);

static void on_written(void *arg, int result) {
  struct slot *sl = arg;
  struct run *r = sl->r;
  long i = sl->i;
  r->lat_ms[i] = now_ms() - r->t0[i];
  if (result < 0)
    r->failed++;
  r->done++;
  if (r->queued < r->total)
    submit_one(r);
  if (r->done == r->total)
    event_base_loopbreak(r->base);
}

static void submit_one(struct run *r) {
  long i = r->queued++;
  char *id = sg_job_new_id();
  sg_job_record_t rec = {.id = id,
                         .endpoint = "bench",
                         .status = SG_JOB_IN_QUEUE,
                         .input = r->input,
                         .exec_timeout_ms = 600000,
                         .ttl_ms = 86400000,
                         .created_ms = sg_wall_ms()};
  r->t0[i] = now_ms();
  sg_job_writer_put(r->w, true, &rec, on_written, &r->slots[i]);
  free(id);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(double *v, long n, double p) {
  if (n == 0)
    return NAN;
  double rank = p / 100.0 * (double)(n - 1);
  long lo = (long)rank;
  long hi = lo + 1 < n ? lo + 1 : lo;
  return v[lo] + (v[hi] - v[lo]) * (rank - (double)lo);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) { return remove(path); }

struct result {
  double rate, p50, p99, avg_batch;
  long jobs;
  uint64_t commits;
};

static struct result run_mode(const char *dir, const char *name, long total, long window, long input_bytes,
                              size_t max_batch) {
  char *path = xasprintf("%s/%s.db", dir, name);
  struct run r = {.total = total, .window = window, .input_bytes = input_bytes};
  r.base = event_base_new();
  sg_error_t *err = NULL;
  r.w = sg_job_writer_start(r.base, path, max_batch, &err);
  if (!r.w) {
    fprintf(stderr, "bench-jobs-submit: %s\n", err->message);
    exit(1);
  }
  /* A JSON string input of the requested size. */
  r.input = xmalloc((size_t)input_bytes + 3);
  r.input[0] = '"';
  memset(r.input + 1, 'x', (size_t)input_bytes);
  r.input[input_bytes + 1] = '"';
  r.input[input_bytes + 2] = '\0';
  r.lat_ms = xcalloc((size_t)total, sizeof(double));
  r.t0 = xcalloc((size_t)total, sizeof(double));
  r.slots = xcalloc((size_t)total, sizeof(*r.slots));
  for (long i = 0; i < total; i++)
    r.slots[i] = (struct slot){&r, i};
  double start = now_ms();
  for (long i = 0; i < window && r.queued < total; i++)
    submit_one(&r);
  event_base_dispatch(r.base);
  double secs = (now_ms() - start) / 1e3;
  sg_job_writer_stats_t st;
  sg_job_writer_get_stats(r.w, &st);
  sg_job_writer_stop(r.w);
  event_base_free(r.base);
  if (r.failed)
    fprintf(stderr, "bench-jobs-submit: %s: %ld writes failed\n", name, r.failed);
  qsort(r.lat_ms, (size_t)total, sizeof(double), cmp_double);
  struct result res = {(double)total / secs,
                       pct(r.lat_ms, total, 50),
                       pct(r.lat_ms, total, 99),
                       st.commits ? (double)st.writes / (double)st.commits : 0,
                       total,
                       st.commits};
  free(r.input);
  free(r.lat_ms);
  free(r.t0);
  free(r.slots);
  free(path);
  return res;
}

int main(int argc, char **argv) {
  long jobs = 200000, single_jobs = 2000, window = 1024, input_bytes = 200;
  const char *dir = NULL;
  static const struct option opts[] = {{"jobs", required_argument, NULL, 'n'},
                                       {"single-jobs", required_argument, NULL, 's'},
                                       {"window", required_argument, NULL, 'w'},
                                       {"input-bytes", required_argument, NULL, 'i'},
                                       {"dir", required_argument, NULL, 'd'},
                                       {"help", no_argument, NULL, 'h'},
                                       {0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (ch) {
    case 'n':
      jobs = atol(optarg);
      break;
    case 's':
      single_jobs = atol(optarg);
      break;
    case 'w':
      window = atol(optarg);
      break;
    case 'i':
      input_bytes = atol(optarg);
      break;
    case 'd':
      dir = optarg;
      break;
    default:
      fprintf(stderr, "usage: bench-jobs-submit [--jobs N] [--single-jobs N] [--window N] [--input-bytes N] "
                      "[--dir DIR]\n");
      return ch == 'h' ? 0 : 2;
    }
  }
  if (jobs < 1 || single_jobs < 1 || window < 1 || input_bytes < 0 || input_bytes > (1 << 20)) {
    fprintf(stderr, "bench-jobs-submit: bad option value\n");
    return 2;
  }
  /* On the disk of the current directory by default: a tmpfs would make
   * every fsync free and the comparison meaningless. */
  char tmpl[4096];
  snprintf(tmpl, sizeof(tmpl), "%s/bench-jobs-XXXXXX", dir ? dir : ".");
  if (!mkdtemp(tmpl)) {
    perror("bench-jobs-submit: mkdtemp");
    return 1;
  }
  printf("durable job submissions (SQLite WAL, synchronous=FULL) in %s\n", tmpl);
  printf("window %ld outstanding, input %ld bytes\n\n", window, input_bytes);
  struct result g = run_mode(tmpl, "group", jobs, window, input_bytes, 0);
  struct result s = run_mode(tmpl, "single", single_jobs, window, input_bytes, 1);
  printf("%-8s %9s %12s %10s %12s %10s %10s\n", "mode", "jobs", "jobs/s", "commits", "jobs/commit", "p50 ms", "p99 ms");
  printf("%-8s %9ld %12.0f %10llu %12.1f %10.2f %10.2f\n", "group", g.jobs, g.rate, (unsigned long long)g.commits,
         g.avg_batch, g.p50, g.p99);
  printf("%-8s %9ld %12.0f %10llu %12.1f %10.2f %10.2f\n", "single", s.jobs, s.rate, (unsigned long long)s.commits,
         s.avg_batch, s.p50, s.p99);
  printf("\ngroup commit: %.1fx the rate of one fsync per job\n", g.rate / s.rate);
  nftw(tmpl, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  return 0;
}
