/* bench-coldstart: time to the first answer of an endpoint at zero workers.
 *
 * Each round, in turn:
 *   sgpud  a new endpoint with workers.min 0 running echo-worker
 *          (WARMUP_MS=0) is created and seen at zero workers; one
 *          POST /e/NAME/infer is timed from send to the last byte of its
 *          answer. The worker's cold_start_ms (start to first healthy probe,
 *          as sgpud recorded it) is read back from
 *          GET /v1/endpoints/NAME/workers to split the total into
 *          start + health and the rest (queue, scaler, proxy). The endpoint
 *          is then deleted and its worker waited for. A new endpoint each
 *          round makes the measure independent of when the scaler would
 *          scale an existing one down.
 *   bare   the same echo-worker is forked and executed directly with PORT
 *          set, GET /health is polled on sgpud's start-up schedule (first
 *          probe 0.5 ms after fork, then 0.5 ms + elapsed/20 after each failed
 *          one), and the times from fork to the first 200 and to the first
 *          /infer answer are taken. The same is done once more polling every
 *          0.1 ms from the start: the floor, when the worker can first answer.
 * Medians are reported, since the machine is shared and noisy. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "bench-config.h"
#include "common.h"

#define INFER_BODY "{\"prompt\":\"hello\"}"
#define ZERO_TIMEOUT_MS 15000.0
#define HEALTH_TIMEOUT_MS 10000.0
#define PROBE_MIN_MS 0.5
#define PROBE_MAX_MS 100.0
#define TIGHT_PROBE_MS 0.1
#define MAX_ROUNDS 1000

/* ---- sgpud ------------------------------------------------------------------ */

struct ours {
  bench_sgpud_t d;
  bench_http_t api;
  const char *worker;
  long serial;
};

/* Creates endpoint name with workers.min 0: it has no worker until called. */
static void create_endpoint(struct ours *o, const char *name) {
  json_t *spec =
      json_pack("{s:s, s:s, s:[s], s:{s:s, s:s}, s:{s:s}, s:{s:i, s:i, s:i, s:i, s:i}}", "name", name, "runtime",
                "process", "command", o->worker, "env", "WARMUP_MS", "0", "DELAY_MS", "0", "health", "path", "/health",
                "workers", "min", 0, "max", 1, "idle_timeout_s", 30, "max_concurrency", 1, "request_timeout_s", 30);
  char *body = json_dumps(spec, JSON_COMPACT);
  char *url = bench_asprintf("%s/v1/endpoints", o->d.url);
  json_decref(bench_http_json(&o->api, "POST", url, body, 201));
  free(url);
  free(body);
  json_decref(spec);
}

/* The cold_start_ms sgpud recorded for the worker with this pid, or NAN. */
static double recorded_cold_start(struct ours *o, const char *workers_url, json_int_t pid) {
  json_t *j = bench_http_json(&o->api, "GET", workers_url, NULL, 200);
  double r = NAN;
  size_t i;
  json_t *w;
  json_array_foreach(json_object_get(j, "workers"), i, w) {
    if (json_integer_value(json_object_get(w, "pid")) == pid && json_is_integer(json_object_get(w, "cold_start_ms")))
      r = (double)json_integer_value(json_object_get(w, "cold_start_ms"));
  }
  json_decref(j);
  return r;
}

/* Deletes the endpoint and waits until its worker process is gone, so that
 * the next round starts on a quiet machine. */
static void delete_endpoint(struct ours *o, const char *ep_url, json_int_t pid) {
  json_decref(bench_http_json(&o->api, "DELETE", ep_url, NULL, 200));
  double deadline = bench_now_ms() + ZERO_TIMEOUT_MS;
  while (kill((pid_t)pid, 0) == 0 || errno != ESRCH) {
    if (bench_now_ms() > deadline)
      bench_die("worker %lld of a deleted endpoint still runs after %.0f s", (long long)pid, ZERO_TIMEOUT_MS / 1000);
    if (bench_interrupted())
      bench_die("interrupted");
    bench_sleep_ms(5);
  }
}

/* One request to a new endpoint at zero workers; returns its time in ms and
 * sets *cold_ms. */
static double ours_round(struct ours *o, double *cold_ms) {
  char name[32];
  snprintf(name, sizeof(name), "cold-%ld", ++o->serial);
  char *ep_url = bench_asprintf("%s/v1/endpoints/%s", o->d.url, name);
  char *workers_url = bench_asprintf("%s/workers", ep_url);
  create_endpoint(o, name);
  double ms = bench_first_answer(&o->api, o->d.url, name, ep_url, INFER_BODY, 30000, ZERO_TIMEOUT_MS);
  json_t *ans = json_loads(o->api.body, 0, NULL);
  json_int_t pid = json_integer_value(json_object_get(ans, "worker_pid"));
  json_decref(ans);
  if (pid <= 0)
    bench_die("the /infer answer names no worker_pid: %.300s", o->api.body);
  *cold_ms = recorded_cold_start(o, workers_url, pid);
  delete_endpoint(o, ep_url, pid);
  free(ep_url);
  free(workers_url);
  return ms;
}

/* ---- bare worker ------------------------------------------------------------- */

/* Starts the worker directly; sets the times from fork to the first healthy
 * probe and to the first /infer answer. Probes follow sgpud's start-up
 * schedule, or with tight set, come every TIGHT_PROBE_MS from the start. */
static void bare_round(const char *worker, bool tight, double *health_ms, double *infer_ms) {
  int port = bench_free_port();
  char port_env[32], url[96];
  snprintf(port_env, sizeof(port_env), "PORT=%d", port);
  const char *path = getenv("PATH");
  char *path_env = bench_asprintf("PATH=%s", path ? path : "/usr/bin:/bin");
  char *envp[] = {path_env, port_env, "WARMUP_MS=0", "DELAY_MS=0", "CUDA_VISIBLE_DEVICES=", NULL};
  char *argv[] = {(char *)worker, NULL};
  bench_http_t c;
  bench_http_init(&c, NULL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/health", port);

  bench_spawn_opts_t so = {.argv = argv, .envp = envp, .own_session = true};
  double t0 = bench_now_ms();
  pid_t pid = bench_spawn(&so);
  double next = tight ? bench_now_ms() : t0 + PROBE_MIN_MS;
  double t_health;
  for (;;) {
    bench_sleep_ms(next - bench_now_ms());
    long status = bench_http(&c, "GET", url, NULL, 2000);
    double now = bench_now_ms();
    if (status == 200) {
      t_health = now;
      break;
    }
    if (now - t0 > HEALTH_TIMEOUT_MS || bench_interrupted())
      bench_die("the bare worker did not answer /health with 200 within %.0f s", HEALTH_TIMEOUT_MS / 1000);
    double delay = tight ? TIGHT_PROBE_MS : PROBE_MIN_MS + (now - t0) / 20;
    next = now + (delay > PROBE_MAX_MS ? PROBE_MAX_MS : delay);
  }
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/infer", port);
  long status = bench_http(&c, "POST", url, INFER_BODY, 30000);
  double t_infer = bench_now_ms();
  if (status != 200)
    bench_die("POST %s on the bare worker: HTTP %ld", url, status);
  bench_http_cleanup(&c);
  bench_stop_child(pid, 5000);
  free(path_env);
  *health_ms = t_health - t0;
  *infer_ms = t_infer - t0;
}

/* ---- main ---------------------------------------------------------------------- */

static const char usage[] = "usage: bench-coldstart [--rounds N] [--warmup N] [--sgpud PATH] [--worker PATH]\n"
                            "\n"
                            "Times the first answer of an endpoint at zero workers through sgpud, beside\n"
                            "the same worker started directly, and prints medians.\n"
                            "\n"
                            "  --rounds N     measured rounds (default 10, at most 1000)\n"
                            "  --warmup N     unmeasured rounds first (default 1)\n"
                            "  --sgpud PATH   the daemon (default " BENCH_SGPUD ")\n"
                            "  --worker PATH  the worker (default " BENCH_ECHO_WORKER ")\n";

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"rounds", required_argument, NULL, 'r'}, {"warmup", required_argument, NULL, 'w'},
      {"sgpud", required_argument, NULL, 's'},  {"worker", required_argument, NULL, 'k'},
      {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
  long rounds = 10, warmup = 1;
  const char *sgpud = BENCH_SGPUD, *worker = BENCH_ECHO_WORKER;
  int ch;
  while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (ch) {
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
    fprintf(stderr, "bench-coldstart: --worker must be an absolute path\n");
    return 2;
  }
  bench_init("bench-coldstart");
  bench_need_executable("sgpud", sgpud);
  bench_need_executable("worker", worker);

  struct ours o = {.worker = worker};
  bench_sgpud_start(&o.d, sgpud);
  bench_http_init(&o.api, o.d.key);

  bench_series_t ours_total = {0}, ours_cold = {0}, ours_rest = {0};
  bench_series_t bare_health = {0}, bare_infer = {0}, tight_health = {0}, tight_infer = {0};
  long unrecorded = 0;
  for (long r = -warmup; r < rounds; r++) {
    double cold, health, infer, thealth, tinfer;
    double total = ours_round(&o, &cold);
    bare_round(worker, false, &health, &infer);
    bare_round(worker, true, &thealth, &tinfer);
    if (r < 0)
      continue;
    bench_series_add(&ours_total, total);
    bench_series_add(&bare_health, health);
    bench_series_add(&bare_infer, infer);
    bench_series_add(&tight_health, thealth);
    bench_series_add(&tight_infer, tinfer);
    if (isnan(cold)) {
      unrecorded++;
    } else {
      bench_series_add(&ours_cold, cold);
      bench_series_add(&ours_rest, total - cold);
    }
    bench_note("round %ld/%ld: sgpud %.3f ms (cold_start_ms %.0f); bare %.3f / %.3f ms; tight %.3f / %.3f ms", r + 1,
               rounds, total, cold, health, infer, thealth, tinfer);
  }
  if (unrecorded)
    bench_note("%ld round(s) whose worker had no cold_start_ms in the workers list", unrecorded);

  printf("\nbench-coldstart: first answer at zero workers, %ld rounds (after %ld warm-up), "
         "echo-worker WARMUP_MS=0\n\n",
         rounds, warmup);
  printf("  %-46s %9s %9s %9s\n", "ms", "median", "p90", "min");
  bench_series_row("bare: fork -> first /health 200", &bare_health, 46, 3, "(probes on sgpud's schedule)");
  bench_series_row("bare: fork -> first /infer answer", &bare_infer, 46, 3, "");
  bench_series_row("bare, tight poll: fork -> first /health 200", &tight_health, 46, 3, "(a probe every 0.1 ms)");
  bench_series_row("bare, tight poll: fork -> first /infer answer", &tight_infer, 46, 3, "");
  bench_series_row("sgpud: POST /e/NAME/infer at zero -> answer", &ours_total, 46, 3, "");
  if (ours_cold.n) {
    bench_series_row("sgpud: worker cold_start_ms (start -> 200)", &ours_cold, 46, 3,
                     "(whole ms, as sgpud records it)");
    bench_series_row("sgpud: answer - cold_start_ms (queue+proxy)", &ours_rest, 46, 3, "");
  }
  printf("\n  %-58s %7s %9s\n", "medians", "ratio", "diff ms");
  printf("  %-58s %7.2f %+9.3f\n", "sgpud first answer / bare first answer",
         bench_series_median(&ours_total) / bench_series_median(&bare_infer),
         bench_series_median(&ours_total) - bench_series_median(&bare_infer));
  printf("  %-58s %7.2f %+9.3f\n", "sgpud first answer / bare first answer, tight poll",
         bench_series_median(&ours_total) / bench_series_median(&tight_infer),
         bench_series_median(&ours_total) - bench_series_median(&tight_infer));
  if (ours_cold.n)
    printf("  %-58s %7.2f %+9.3f\n", "sgpud cold_start_ms / bare fork -> 200",
           bench_series_median(&ours_cold) / bench_series_median(&bare_health),
           bench_series_median(&ours_cold) - bench_series_median(&bare_health));
  printf("\n");
  fflush(stdout);

  bench_http_cleanup(&o.api);
  bench_sgpud_stop(&o.d);
  bench_series_free(&ours_total);
  bench_series_free(&ours_cold);
  bench_series_free(&ours_rest);
  bench_series_free(&bare_health);
  bench_series_free(&bare_infer);
  bench_series_free(&tight_health);
  bench_series_free(&tight_infer);
  return 0;
}
