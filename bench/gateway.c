/* bench-gateway: throughput and latency of the sync gateway.
 *
 * One endpoint (workers.min = max = 1, echo-worker with DELAY_MS=0) runs
 * under a private sgpud. The same wrk load (POST /infer with a small JSON
 * body, keep-alive connections) is sent to three targets in front of that
 * one worker process:
 *   direct  the worker's own port
 *   nginx   nginx (one worker process, upstream keepalive) proxying to it,
 *           the peer baseline
 *   sgpud   the gateway, POST /e/NAME/infer
 * Every run is repeated and the medians of requests/s, p50 and p99 latency
 * are reported with sgpud's ratios to direct and to nginx. The runs of the
 * three targets are interleaved so that drift in the machine's load spreads
 * over all of them. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench-config.h"
#include "common.h"

#define ENDPOINT "gateway"
#define INFER_BODY "{\"prompt\":\"hello\"}"
#define READY_TIMEOUT_MS 15000.0
#define MAX_REPS 20

enum { T_DIRECT, T_NGINX, T_SGPUD, N_TARGETS };
static const char *const target_names[N_TARGETS] = {"direct", "nginx", "sgpud"};

struct options {
  long threads, connections, duration_s, reps, warmup_s;
  bool nginx;
  const char *sgpud, *worker, *wrk, *nginx_bin;
};

struct wrk_result {
  double rps, p50_ms, p99_ms;
  long requests, non2xx, socket_errors;
};

struct target {
  char *url;
  bool enabled;
  struct wrk_result runs[MAX_REPS];
  long n;
};

/* ---- sgpud and its worker -------------------------------------------------------- */

static void create_endpoint(bench_http_t *api, const char *url, const char *worker, long concurrency) {
  json_t *spec = json_pack("{s:s, s:s, s:[s], s:{s:s, s:s}, s:{s:s}, s:{s:i, s:i, s:i, s:i, s:i}}", "name", ENDPOINT,
                           "runtime", "process", "command", worker, "env", "WARMUP_MS", "0", "DELAY_MS", "0", "health",
                           "path", "/health", "workers", "min", 1, "max", 1, "idle_timeout_s", 3600, "max_concurrency",
                           (int)concurrency, "request_timeout_s", 60);
  char *body = json_dumps(spec, JSON_COMPACT);
  char *u = bench_asprintf("%s/v1/endpoints", url);
  json_decref(bench_http_json(api, "POST", u, body, 201));
  free(u);
  free(body);
  json_decref(spec);
}

/* Waits for the endpoint's worker to be ready; returns its port. */
static int wait_worker(bench_http_t *api, const char *url) {
  char *u = bench_asprintf("%s/v1/endpoints/" ENDPOINT "/workers", url);
  double deadline = bench_now_ms() + READY_TIMEOUT_MS;
  int port = 0;
  while (!port) {
    json_t *j = bench_http_json(api, "GET", u, NULL, 200);
    size_t i;
    json_t *w;
    json_array_foreach(json_object_get(j, "workers"), i, w) {
      const char *state = json_string_value(json_object_get(w, "state"));
      if (state && !strcmp(state, "ready"))
        port = (int)json_integer_value(json_object_get(w, "port"));
    }
    json_decref(j);
    if (port)
      break;
    if (bench_now_ms() > deadline || bench_interrupted())
      bench_die("the endpoint's worker was not ready within %.0f s", READY_TIMEOUT_MS / 1000);
    bench_sleep_ms(20);
  }
  free(u);
  return port;
}

/* ---- nginx ---------------------------------------------------------------------------- */

/* Starts nginx in the foreground with everything under tmpdir/nginx; returns
 * its pid and sets *port. */
static pid_t start_nginx(const char *bin, int worker_port, long connections, int *port) {
  char *prefix = bench_tmp_path("nginx");
  if (mkdir(prefix, 0700) < 0)
    bench_die("mkdir %s: %s", prefix, strerror(errno));
  *port = bench_free_port();
  char *conf = bench_asprintf("worker_processes 1;\n"
                              "daemon off;\n"
                              "pid %s/nginx.pid;\n"
                              "error_log %s/error.log warn;\n"
                              "events { worker_connections %ld; }\n"
                              "http {\n"
                              "  access_log off;\n"
                              "  client_body_temp_path %s/client_body;\n"
                              "  proxy_temp_path %s/proxy;\n"
                              "  fastcgi_temp_path %s/fastcgi;\n"
                              "  uwsgi_temp_path %s/uwsgi;\n"
                              "  scgi_temp_path %s/scgi;\n"
                              "  upstream worker {\n"
                              "    server 127.0.0.1:%d;\n"
                              "    keepalive %ld;\n"
                              "  }\n"
                              "  server {\n"
                              "    listen 127.0.0.1:%d;\n"
                              "    location / {\n"
                              "      proxy_pass http://worker;\n"
                              "      proxy_http_version 1.1;\n"
                              "      proxy_set_header Connection \"\";\n"
                              "    }\n"
                              "  }\n"
                              "}\n",
                              prefix, prefix, 4 * connections + 64, prefix, prefix, prefix, prefix, prefix, worker_port,
                              connections + 8, *port);
  char *conf_path = bench_asprintf("%s/nginx.conf", prefix);
  char *err_path = bench_asprintf("%s/error.log", prefix);
  char *out_path = bench_asprintf("%s/stderr.log", prefix);
  bench_write_file(conf_path, conf);
  char *argv[] = {(char *)bin, "-p", prefix, "-c", conf_path, "-e", err_path, NULL};
  bench_spawn_opts_t o = {.argv = argv, .out_path = out_path};
  pid_t pid = bench_spawn(&o);

  bench_http_t c;
  bench_http_init(&c, NULL);
  char *health = bench_asprintf("http://127.0.0.1:%d/health", *port);
  double deadline = bench_now_ms() + 10000;
  while (bench_http(&c, "GET", health, NULL, 1000) != 200) {
    if (bench_child_exited(pid, NULL)) {
      char *log = bench_read_file(out_path);
      bench_die("nginx exited during start-up: %.1000s", log ? log : "");
    }
    if (bench_now_ms() > deadline || bench_interrupted())
      bench_die("nginx did not answer GET /health with 200 within 10 s");
    bench_sleep_ms(10);
  }
  bench_http_cleanup(&c);
  free(health);
  free(conf);
  free(conf_path);
  free(err_path);
  free(out_path);
  free(prefix);
  return pid;
}

/* ---- wrk -------------------------------------------------------------------------------- */

static double to_ms(double v, const char *unit) {
  if (!strcmp(unit, "us"))
    return v / 1e3;
  if (!strcmp(unit, "ms"))
    return v;
  if (!strcmp(unit, "s"))
    return v * 1e3;
  if (!strcmp(unit, "m"))
    return v * 60e3;
  if (!strcmp(unit, "h"))
    return v * 3600e3;
  return NAN;
}

/* Reads the figures of one `wrk --latency` report; false when one is missing. */
static bool parse_wrk(const char *text, struct wrk_result *r) {
  memset(r, 0, sizeof(*r));
  r->rps = r->p50_ms = r->p99_ms = NAN;
  r->requests = -1;
  bool in_dist = false;
  for (const char *line = text; line && *line;) {
    const char *eol = strchr(line, '\n');
    size_t len = eol ? (size_t)(eol - line) : strlen(line);
    char buf[256];
    snprintf(buf, sizeof(buf), "%.*s", (int)(len < sizeof(buf) ? len : sizeof(buf) - 1), line);
    double pct, v;
    char unit[8];
    long a, b, c, d;
    if (strstr(buf, "Latency Distribution")) {
      in_dist = true;
    } else if (in_dist && sscanf(buf, " %lf%% %lf%7s", &pct, &v, unit) == 3) {
      if (pct == 50)
        r->p50_ms = to_ms(v, unit);
      else if (pct == 99)
        r->p99_ms = to_ms(v, unit);
    } else if (sscanf(buf, " %ld requests in", &a) == 1) {
      in_dist = false;
      r->requests = a;
    } else if (sscanf(buf, " Non-2xx or 3xx responses: %ld", &a) == 1) {
      r->non2xx = a;
    } else if (sscanf(buf, " Socket errors: connect %ld, read %ld, write %ld, timeout %ld", &a, &b, &c, &d) == 4) {
      r->socket_errors = a + b + c + d;
    } else if (sscanf(buf, "Requests/sec: %lf", &v) == 1) {
      r->rps = v;
    }
    line = eol ? eol + 1 : NULL;
  }
  return !isnan(r->rps) && !isnan(r->p50_ms) && !isnan(r->p99_ms) && r->requests >= 0;
}

/* Runs wrk once against url for seconds s and parses its report. */
static struct wrk_result run_wrk(const struct options *o, const char *script, const char *url, long s) {
  static int serial;
  char *out = bench_asprintf("%s/wrk-%d.out", bench_tmpdir(), serial++);
  char t[24], c[24], d[24];
  snprintf(t, sizeof(t), "%ld", o->threads);
  snprintf(c, sizeof(c), "%ld", o->connections);
  snprintf(d, sizeof(d), "%lds", s);
  char *argv[] = {(char *)o->wrk, "-t", t, "-c", c, "-d", d, "--latency", "-s", (char *)script, (char *)url, NULL};
  bench_spawn_opts_t so = {.argv = argv, .out_path = out};
  pid_t pid = bench_spawn(&so);
  double deadline = bench_now_ms() + (double)s * 1e3 + 30e3;
  int status = 0;
  while (!bench_child_exited(pid, &status)) {
    if (bench_interrupted())
      bench_die("interrupted");
    if (bench_now_ms() > deadline)
      bench_die("wrk did not finish within %ld s", s + 30);
    bench_sleep_ms(20);
  }
  char *text = bench_read_file(out);
  struct wrk_result r;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !text || !parse_wrk(text, &r))
    bench_die("wrk against %s failed (wait status 0x%x):\n%s", url, status, text ? text : "");
  free(text);
  unlink(out);
  free(out);
  return r;
}

/* ---- report ------------------------------------------------------------------------------- */

struct summary {
  double rps, p50, p99, p99_max;
  long errors;
};

static struct summary summarize(const struct target *t) {
  double rps[MAX_REPS], p50[MAX_REPS], p99[MAX_REPS];
  struct summary s = {0};
  for (long i = 0; i < t->n; i++) {
    rps[i] = t->runs[i].rps;
    p50[i] = t->runs[i].p50_ms;
    p99[i] = t->runs[i].p99_ms;
    s.errors += t->runs[i].non2xx + t->runs[i].socket_errors;
  }
  s.rps = bench_percentile(rps, (size_t)t->n, 50);
  s.p50 = bench_percentile(p50, (size_t)t->n, 50);
  s.p99 = bench_percentile(p99, (size_t)t->n, 50);
  s.p99_max = bench_percentile(p99, (size_t)t->n, 100);
  return s;
}

/* Prints " num/den num/nginx |" for one figure. */
static void ratio_pair(double v, double direct, bool have_nginx, double nginx) {
  printf(" %7.2f", v / direct);
  if (have_nginx)
    printf(" %7.2f |", v / nginx);
  else
    printf(" %7s |", "-");
}

static void report(const struct options *o, struct target *targets) {
  struct summary s[N_TARGETS] = {{0}};
  for (int i = 0; i < N_TARGETS; i++)
    if (targets[i].enabled)
      s[i] = summarize(&targets[i]);
  bool ng = targets[T_NGINX].enabled;
  const struct summary *dr = &s[T_DIRECT], *nx = &s[T_NGINX];
  printf("\nbench-gateway: POST /infer (%zu-byte JSON body), wrk -t%ld -c%ld -d%lds, median of %ld runs per target;\n"
         "one echo-worker (DELAY_MS=0) behind every target; ratios are target / baseline\n\n",
         strlen(INFER_BODY), o->threads, o->connections, o->duration_s, o->reps);
  printf("  %-7s %10s %8s %8s %8s | %-15s | %-15s | %-15s |\n", "", "", "", "", "worst", "req/s ratio", "p50 ratio",
         "p99 ratio");
  printf("  %-7s %10s %8s %8s %8s |", "target", "req/s", "p50 ms", "p99 ms", "p99 ms");
  for (int k = 0; k < 3; k++)
    printf(" %7s %7s |", "/direct", "/nginx");
  printf(" errors\n");
  for (int i = 0; i < N_TARGETS; i++) {
    if (!targets[i].enabled)
      continue;
    printf("  %-7s %10.0f %8.3f %8.3f %8.3f |", target_names[i], s[i].rps, s[i].p50, s[i].p99, s[i].p99_max);
    ratio_pair(s[i].rps, dr->rps, ng, nx->rps);
    ratio_pair(s[i].p50, dr->p50, ng, nx->p50);
    ratio_pair(s[i].p99, dr->p99, ng, nx->p99);
    printf(" %ld\n", s[i].errors);
  }
  printf("\n  req/s, p50, p99: medians over the runs; worst p99: the highest p99 of one run;\n"
         "  errors: non-2xx answers plus socket errors, summed over the runs\n\n");
  fflush(stdout);
}

/* ---- main ---------------------------------------------------------------------------------- */

static const char usage[] =
    "usage: bench-gateway [--threads N] [--connections N] [--duration S] [--reps N] [--warmup S]\n"
    "                     [--no-nginx] [--sgpud PATH] [--worker PATH] [--wrk PATH] [--nginx PATH]\n"
    "\n"
    "Sends the same wrk load to an echo-worker directly, through nginx and through\n"
    "the sgpud gateway, and prints median requests/s and latencies with ratios.\n"
    "\n"
    "  --threads N      wrk threads (default 2)\n"
    "  --connections N  wrk connections (default 32)\n"
    "  --duration S     seconds per run (default 5)\n"
    "  --reps N         runs per target (default 3, at most 20)\n"
    "  --warmup S       unmeasured seconds of load per target first (default 1, 0: none)\n"
    "  --no-nginx       leave the nginx baseline out\n"
    "  --sgpud PATH     the daemon (default " BENCH_SGPUD ")\n"
    "  --worker PATH    the worker (default " BENCH_ECHO_WORKER ")\n"
    "  --wrk PATH       the load generator (default " BENCH_WRK ")\n"
    "  --nginx PATH     the peer baseline (default " BENCH_NGINX ")\n";

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"threads", required_argument, NULL, 't'},  {"connections", required_argument, NULL, 'c'},
      {"duration", required_argument, NULL, 'd'}, {"reps", required_argument, NULL, 'r'},
      {"warmup", required_argument, NULL, 'w'},   {"no-nginx", no_argument, NULL, 'N'},
      {"sgpud", required_argument, NULL, 's'},    {"worker", required_argument, NULL, 'k'},
      {"wrk", required_argument, NULL, 'W'},      {"nginx", required_argument, NULL, 'n'},
      {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0}};
  struct options o = {2, 32, 5, 3, 1, true, BENCH_SGPUD, BENCH_ECHO_WORKER, BENCH_WRK, BENCH_NGINX};
  int ch;
  while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (ch) {
    case 't':
      o.threads = bench_parse_count("--threads", optarg, 1, 64);
      break;
    case 'c':
      o.connections = bench_parse_count("--connections", optarg, 1, 1000);
      break;
    case 'd':
      o.duration_s = bench_parse_count("--duration", optarg, 1, 60);
      break;
    case 'r':
      o.reps = bench_parse_count("--reps", optarg, 1, MAX_REPS);
      break;
    case 'w':
      o.warmup_s = bench_parse_count("--warmup", optarg, 0, 60);
      break;
    case 'N':
      o.nginx = false;
      break;
    case 's':
      o.sgpud = optarg;
      break;
    case 'k':
      o.worker = optarg;
      break;
    case 'W':
      o.wrk = optarg;
      break;
    case 'n':
      o.nginx_bin = optarg;
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
  if (o.worker[0] != '/') {
    fprintf(stderr, "bench-gateway: --worker must be an absolute path\n");
    return 2;
  }
  if (o.connections < o.threads) {
    fprintf(stderr, "bench-gateway: --connections must be at least --threads\n");
    return 2;
  }
  bench_init("bench-gateway");
  bench_need_executable("sgpud", o.sgpud);
  bench_need_executable("worker", o.worker);

  bench_sgpud_t d;
  bench_sgpud_start(&d, o.sgpud);
  bench_http_t api;
  bench_http_init(&api, d.key);
  long concurrency = o.connections > 64 ? o.connections : 64;
  create_endpoint(&api, d.url, o.worker, concurrency);
  int worker_port = wait_worker(&api, d.url);
  bench_http_cleanup(&api);

  pid_t nginx = 0;
  int nginx_port = 0;
  if (o.nginx)
    nginx = start_nginx(o.nginx_bin, worker_port, o.connections, &nginx_port);

  /* The same request everywhere; the worker ignores the Authorization header
   * and sgpud drops it before proxying. */
  char *script = bench_tmp_path("post.lua");
  char *lua = bench_asprintf("wrk.method = \"POST\"\n"
                             "wrk.body = '%s'\n"
                             "wrk.headers[\"Content-Type\"] = \"application/json\"\n"
                             "wrk.headers[\"Authorization\"] = \"Bearer %s\"\n",
                             INFER_BODY, d.key);
  bench_write_file(script, lua);
  free(lua);

  struct target targets[N_TARGETS] = {
      [T_DIRECT] = {bench_asprintf("http://127.0.0.1:%d/infer", worker_port), true, {{0}}, 0},
      [T_NGINX] = {o.nginx ? bench_asprintf("http://127.0.0.1:%d/infer", nginx_port) : NULL, o.nginx, {{0}}, 0},
      [T_SGPUD] = {bench_asprintf("%s/e/" ENDPOINT "/infer", d.url), true, {{0}}, 0},
  };

  if (o.warmup_s > 0)
    for (int i = 0; i < N_TARGETS; i++)
      if (targets[i].enabled)
        run_wrk(&o, script, targets[i].url, o.warmup_s);
  for (long rep = 0; rep < o.reps; rep++) {
    for (int i = 0; i < N_TARGETS; i++) {
      struct target *t = &targets[i];
      if (!t->enabled)
        continue;
      struct wrk_result r = run_wrk(&o, script, t->url, o.duration_s);
      t->runs[t->n++] = r;
      bench_note("run %ld/%ld %-6s %9.0f req/s  p50 %7.3f ms  p99 %7.3f ms  %ld requests%s", rep + 1, o.reps,
                 target_names[i], r.rps, r.p50_ms, r.p99_ms, r.requests,
                 r.non2xx || r.socket_errors ? "  (with errors)" : "");
    }
  }
  report(&o, targets);

  if (nginx)
    bench_stop_child(nginx, 10000);
  bench_sgpud_stop(&d);
  for (int i = 0; i < N_TARGETS; i++)
    free(targets[i].url);
  free(script);
  return 0;
}
