/* bench-coldstart-slurm: time to the first answer of a slurm endpoint at
 * zero workers, beside the process runtime, in one run.
 *
 * Set-up: a one-machine Slurm cluster is started (or found running) with
 * scripts/slurm-up.sh, and a private sgpud is configured to use it.
 *
 * Each round, in turn:
 *   process  a new endpoint (runtime process, workers.min 0) running
 *            echo-worker with WARMUP_MS=0 is created and seen at zero
 *            workers; one POST /e/NAME/infer is timed from send to the last
 *            byte of its answer. The worker's cold_start_ms is read back from
 *            GET /v1/endpoints/NAME/workers. The endpoint is then deleted and
 *            its worker waited for.
 *   slurm    the same with runtime slurm and one a100 GPU as GRES: the
 *            request waits for sbatch, Slurm's scheduler, the job's start on
 *            the node, its address file being seen by sgpud's poll and the
 *            first healthy probe. After the delete, the round waits until
 *            Slurm no longer runs the job.
 * Medians and p90 are reported, since the machine is shared and noisy.
 * Needs root and slurm-wlm, slurm-client and munge; when Slurm cannot start
 * it says why and exits with status 0. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench-config.h"
#include "common.h"

#define INFER_BODY "{\"prompt\":\"hello\"}"
#define ZERO_TIMEOUT_MS 30000.0
#define JOB_END_TIMEOUT_MS 60000.0
#define MAX_ROUNDS 1000

/* Runs a shell command line; returns its exit status (-1: not run) and its
 * output (malloc'ed) in *out. */
static int run_shell(const char *cmd, char **out) {
  FILE *f = popen(cmd, "r");
  if (!f) {
    *out = bench_asprintf("cannot run %s: %s", cmd, strerror(errno));
    return -1;
  }
  size_t len = 0, cap = 4096;
  char *buf = malloc(cap);
  if (!buf)
    abort();
  size_t n;
  while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
    len += n;
    if (len + 1 == cap) {
      buf = realloc(buf, cap *= 2);
      if (!buf)
        abort();
    }
  }
  buf[len] = '\0';
  int st = pclose(f);
  *out = buf;
  return st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- sgpud ------------------------------------------------------------------ */

struct ours {
  bench_sgpud_t d;
  bench_http_t api;
  const char *worker;
  long serial;
};

static void create_endpoint(struct ours *o, const char *name, bool slurm) {
  json_t *spec = json_pack("{s:s, s:s, s:[s], s:{s:s, s:s}, s:{s:s}, s:{s:i, s:i, s:i, s:i, s:i}}", "name", name,
                           "runtime", slurm ? "slurm" : "process", "command", o->worker, "env", "WARMUP_MS", "0",
                           "DELAY_MS", "0", "health", "path", "/health", "workers", "min", 0, "max", 1,
                           "idle_timeout_s", 60, "max_concurrency", 1, "request_timeout_s", 60);
  if (slurm)
    json_object_set_new(spec, "gpu", json_pack("{s:s, s:i}", "type", "a100", "count", 1));
  char *body = json_dumps(spec, JSON_COMPACT);
  char *url = bench_asprintf("%s/v1/endpoints", o->d.url);
  json_decref(bench_http_json(&o->api, "POST", url, body, 201));
  free(url);
  free(body);
  json_decref(spec);
}

/* The ready worker's cold_start_ms, pid and Slurm job id (malloc'ed, or NULL). */
static double ready_worker(struct ours *o, const char *workers_url, json_int_t *pid, char **job_id) {
  json_t *j = bench_http_json(&o->api, "GET", workers_url, NULL, 200);
  double r = NAN;
  size_t i;
  json_t *w;
  *pid = 0;
  *job_id = NULL;
  json_array_foreach(json_object_get(j, "workers"), i, w) {
    if (strcmp(json_string_value(json_object_get(w, "state")) ?: "", "ready"))
      continue;
    if (json_is_integer(json_object_get(w, "cold_start_ms")))
      r = (double)json_integer_value(json_object_get(w, "cold_start_ms"));
    *pid = json_integer_value(json_object_get(w, "pid"));
    const char *jid = json_string_value(json_object_get(json_object_get(w, "slurm"), "job_id"));
    if (jid)
      *job_id = bench_asprintf("%s", jid);
  }
  json_decref(j);
  return r;
}

/* True while Slurm still holds the job (pending, running or completing). */
static bool job_live(const char *job_id) {
  char *cmd = bench_asprintf("squeue --noheader --states=all --jobs=%s --format=%%T 2>/dev/null", job_id);
  char *out = NULL;
  run_shell(cmd, &out);
  bool live =
      strstr(out, "PENDING") || strstr(out, "RUNNING") || strstr(out, "CONFIGURING") || strstr(out, "COMPLETING");
  free(out);
  free(cmd);
  return live;
}

/* Deletes the endpoint and waits until its worker is gone: the local process,
 * or the Slurm job. */
static void delete_endpoint(struct ours *o, const char *ep_url, json_int_t pid, const char *job_id) {
  json_decref(bench_http_json(&o->api, "DELETE", ep_url, NULL, 200));
  double deadline = bench_now_ms() + JOB_END_TIMEOUT_MS;
  for (;;) {
    bool live = job_id ? job_live(job_id) : pid > 0 && (kill((pid_t)pid, 0) == 0 || errno != ESRCH);
    if (!live)
      return;
    if (bench_now_ms() > deadline)
      bench_die("the worker of deleted %s still runs after %.0f s", ep_url, JOB_END_TIMEOUT_MS / 1000);
    if (bench_interrupted())
      bench_die("interrupted");
    bench_sleep_ms(job_id ? 50 : 5);
  }
}

/* One request to a new endpoint at zero workers; returns its time in ms and
 * sets *cold_ms. */
static double round_once(struct ours *o, bool slurm, double *cold_ms) {
  char name[32];
  snprintf(name, sizeof(name), "cold-%s-%ld", slurm ? "slurm" : "proc", ++o->serial);
  char *ep_url = bench_asprintf("%s/v1/endpoints/%s", o->d.url, name);
  char *workers_url = bench_asprintf("%s/workers", ep_url);
  create_endpoint(o, name, slurm);
  double ms = bench_first_answer(&o->api, o->d.url, name, ep_url, INFER_BODY, 60000, ZERO_TIMEOUT_MS);
  json_int_t pid;
  char *job_id;
  *cold_ms = ready_worker(o, workers_url, &pid, &job_id);
  if (slurm && !job_id)
    bench_die("the slurm worker of %s names no job id", name);
  delete_endpoint(o, ep_url, pid, job_id);
  free(job_id);
  free(ep_url);
  free(workers_url);
  return ms;
}

/* ---- main ---------------------------------------------------------------------- */

static const char usage[] =
    "usage: bench-coldstart-slurm [--rounds N] [--warmup N] [--sgpud PATH] [--worker PATH] [--slurm-dir DIR]\n"
    "\n"
    "Times the first answer of an endpoint at zero workers through the slurm\n"
    "runtime beside the process runtime, and prints medians and p90.\n"
    "\n"
    "  --rounds N       measured rounds of each (default 10, at most 1000)\n"
    "  --warmup N       unmeasured rounds first (default 1)\n"
    "  --sgpud PATH     the daemon (default " BENCH_SGPUD ")\n"
    "  --worker PATH    the worker (default " BENCH_ECHO_WORKER ")\n"
    "  --slurm-dir DIR  state of the cluster scripts/slurm-up.sh starts (default /tmp/sgpu-slurm)\n";

int main(int argc, char **argv) {
  static const struct option opts[] = {{"rounds", required_argument, NULL, 'r'},
                                       {"warmup", required_argument, NULL, 'w'},
                                       {"sgpud", required_argument, NULL, 's'},
                                       {"worker", required_argument, NULL, 'k'},
                                       {"slurm-dir", required_argument, NULL, 'd'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  long rounds = 10, warmup = 1;
  const char *sgpud = BENCH_SGPUD, *worker = BENCH_ECHO_WORKER, *slurm_dir = "/tmp/sgpu-slurm";
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 'r':
      rounds = bench_parse_count("--rounds", optarg, 1, MAX_ROUNDS);
      break;
    case 'w':
      warmup = bench_parse_count("--warmup", optarg, 0, MAX_ROUNDS);
      break;
    case 's':
      sgpud = optarg;
      break;
    case 'k':
      worker = optarg;
      break;
    case 'd':
      slurm_dir = optarg;
      break;
    case 'h':
      fputs(usage, stdout);
      return 0;
    default:
      fputs(usage, stderr);
      return 2;
    }
  }
  if (optind < argc) {
    fputs(usage, stderr);
    return 2;
  }
  if (worker[0] != '/') {
    fprintf(stderr, "bench-coldstart-slurm: --worker must be an absolute path (it runs on the Slurm node)\n");
    return 2;
  }
  bench_init("bench-coldstart-slurm");
  bench_need_executable("sgpud", sgpud);
  bench_need_executable("worker", worker);

  if (geteuid() != 0) {
    printf("bench-coldstart-slurm: skipped: Slurm's daemons are started here, which needs root\n");
    return 0;
  }
  char *up = bench_asprintf("'%s/scripts/slurm-up.sh' '%s' 2>&1", BENCH_SOURCE_ROOT, slurm_dir);
  char *out = NULL;
  int st = run_shell(up, &out);
  if (st != 0) {
    printf("bench-coldstart-slurm: skipped: Slurm could not start (scripts/slurm-up.sh exit %d): %s\n", st, out);
    free(out);
    free(up);
    return 0;
  }
  free(out);
  free(up);
  char *conf = bench_asprintf("%s/slurm.conf", slurm_dir);
  setenv("SLURM_CONF", conf, 1);
  free(conf);

  struct ours o = {.worker = worker};
  bench_sgpud_start_config(&o.d, sgpud, "{\"slurm\": {\"partition\": \"gpu\"}}");
  bench_http_init(&o.api, o.d.key);

  bench_series_t proc_total = {0}, proc_cold = {0}, slurm_total = {0}, slurm_cold = {0};
  for (long r = -warmup; r < rounds; r++) {
    double pcold, scold;
    double ptotal = round_once(&o, false, &pcold);
    double stotal = round_once(&o, true, &scold);
    if (r < 0)
      continue;
    bench_series_add(&proc_total, ptotal);
    bench_series_add(&slurm_total, stotal);
    if (!isnan(pcold))
      bench_series_add(&proc_cold, pcold);
    if (!isnan(scold))
      bench_series_add(&slurm_cold, scold);
    bench_note("round %ld/%ld: process %.1f ms (cold_start_ms %.0f); slurm %.1f ms (cold_start_ms %.0f)", r + 1, rounds,
               ptotal, pcold, stotal, scold);
  }

  printf("\nbench-coldstart-slurm: first answer at zero workers, %ld rounds of each (after %ld warm-up), "
         "echo-worker WARMUP_MS=0\n\n",
         rounds, warmup);
  printf("  %-48s %9s %9s %9s\n", "ms", "median", "p90", "min");
  bench_series_row("process: POST /e/NAME/infer at zero -> answer", &proc_total, 48, 1, "");
  bench_series_row("process: worker cold_start_ms (start -> 200)", &proc_cold, 48, 1, "(as sgpud records it)");
  bench_series_row("slurm: POST /e/NAME/infer at zero -> answer", &slurm_total, 48, 1, "(1 a100 GRES)");
  bench_series_row("slurm: worker cold_start_ms (sbatch -> 200)", &slurm_cold, 48, 1, "(as sgpud records it)");
  printf("\n  %-58s %9s %9s\n", "medians", "ratio", "diff ms");
  printf("  %-58s %9.1f %+9.1f\n", "slurm first answer / process first answer",
         bench_series_median(&slurm_total) / bench_series_median(&proc_total),
         bench_series_median(&slurm_total) - bench_series_median(&proc_total));
  if (proc_cold.n && slurm_cold.n)
    printf("  %-58s %9.1f %+9.1f\n", "slurm cold_start_ms / process cold_start_ms",
           bench_series_median(&slurm_cold) / bench_series_median(&proc_cold),
           bench_series_median(&slurm_cold) - bench_series_median(&proc_cold));
  printf("\n");
  fflush(stdout);

  bench_http_cleanup(&o.api);
  bench_sgpud_stop(&o.d);
  bench_series_free(&proc_total);
  bench_series_free(&proc_cold);
  bench_series_free(&slurm_total);
  bench_series_free(&slurm_cold);
  return 0;
}
