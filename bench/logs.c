/* bench-logs: how fast the log store takes lines, and how soon a follower
 * sees them.
 *
 *   baseline  raw SQLite: the same rows inserted into the same table and
 *             index with one prepared statement in one transaction (WAL,
 *             synchronous=NORMAL), the ceiling of the store underneath
 *   sgpud     end to end: a worker writes LINES lines of 100 bytes to its
 *             stdout as fast as the pipe takes them; measured from the first
 *             write until /metrics says every line is stored
 *   follow    a follower (GET .../logs?follow=1) receives lines a worker
 *             stamps with the monotonic clock when it writes them, 1,000 a
 *             second, idle and during the flood above: p50, p99, max delay
 *   isolation invocations of another endpoint, one at a time, alone and
 *             during the flood (LINES x 100 bytes of logs)
 *   search    invocations of another endpoint, one at a time, alone and
 *             while log searches that match nothing scan the LINES stored
 *             lines one after another: p50, p99 and max, the search stall
 *             as a ratio of the same run's invocations alone
 *
 * sgpud runs with no per-worker rate limit here, so the whole flood reaches
 * the store. The program also serves as the workers' line writer: with
 * --spew or --tick it waits for a trigger file and writes lines. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench-config.h"
#include "common.h"
#include "sgpu/client.h"

#define LINE_BYTES 100
#define TICK_RATE 1000
#define TICK_SECONDS 3

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void wait_trigger(const char *path) {
  while (access(path, F_OK) != 0)
    usleep(1000);
}

static void fill_line(char *buf, long i) {
  int n = snprintf(buf, LINE_BYTES + 2, "line %09ld ", i);
  memset(buf + n, 'x', LINE_BYTES - (size_t)n);
  buf[LINE_BYTES] = '\n';
}

/* Worker side: LINES lines to stdout, as fast as the pipe takes them. */
static int spew(const char *trigger, long lines) {
  wait_trigger(trigger);
  static char buf[1 << 20];
  size_t used = 0;
  for (long i = 0; i < lines; i++) {
    if (used + LINE_BYTES + 1 > sizeof(buf)) {
      if (fwrite(buf, 1, used, stdout) != used)
        return 1;
      used = 0;
    }
    fill_line(buf + used, i);
    used += LINE_BYTES + 1;
  }
  fwrite(buf, 1, used, stdout);
  fflush(stdout);
  return 0;
}

/* Worker side: "tick <monotonic ns>" lines at rate per second for seconds. */
static int tick(const char *trigger, long rate, long seconds) {
  wait_trigger(trigger);
  int64_t start = mono_ns(), step = 1000000000 / rate;
  for (long i = 0; i < rate * seconds; i++) {
    int64_t due = start + i * step, now = mono_ns();
    if (due > now)
      usleep((useconds_t)((due - now) / 1000));
    char line[64];
    int n = snprintf(line, sizeof(line), "tick %lld\n", (long long)mono_ns());
    if (write(1, line, (size_t)n) != n)
      return 1;
  }
  return 0;
}

/* ---- baseline -------------------------------------------------------------------- */

static double sqlite_baseline(long lines) {
  char *path = bench_tmp_path("baseline.db");
  sqlite3 *db;
  if (sqlite3_open(path, &db) != SQLITE_OK)
    bench_die("sqlite3_open %s", path);
  const char *schema = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                       "CREATE TABLE logs (id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, endpoint TEXT NOT NULL,"
                       " worker TEXT, stream TEXT NOT NULL, line TEXT NOT NULL);"
                       "CREATE INDEX logs_endpoint_id ON logs(endpoint, id);";
  if (sqlite3_exec(db, schema, NULL, NULL, NULL) != SQLITE_OK)
    bench_die("schema: %s", sqlite3_errmsg(db));
  sqlite3_stmt *st;
  sqlite3_prepare_v2(db, "INSERT INTO logs(ts_ms, endpoint, worker, stream, line) VALUES(?,?,?,?,?)", -1, &st, NULL);
  char line[LINE_BYTES + 2];
  double t0 = bench_now_ms();
  sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
  for (long i = 0; i < lines; i++) {
    fill_line(line, i);
    line[LINE_BYTES] = '\0';
    sqlite3_bind_int64(st, 1, 1764270000000 + i / 1000);
    sqlite3_bind_text(st, 2, "spew", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, "w-0123456789ab", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, "stdout", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, line, LINE_BYTES, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
      bench_die("insert: %s", sqlite3_errmsg(db));
    sqlite3_reset(st);
  }
  sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  double ms = bench_now_ms() - t0;
  sqlite3_finalize(st);
  sqlite3_close(db);
  free(path);
  return lines / (ms / 1000);
}

/* ---- sgpud ----------------------------------------------------------------------- */

static char *sgpud_log;
static bool finished;
static const char *sgpud_path = BENCH_SGPUD;

/* On a failure, the end of sgpud's log says why (the directory goes at exit). */
static void show_log_on_failure(void) {
  if (finished || !sgpud_log)
    return;
  char *cmd = bench_asprintf("tail -n 30 '%s' >&2", sgpud_log);
  if (system(cmd) != 0)
    bench_note("cannot show %s", sgpud_log);
  free(cmd);
}

struct daemon {
  pid_t pid;
  char *url, *key;
  bench_http_t api;
};

static void start_sgpud(struct daemon *d) {
  char *data = bench_tmp_path("data"), *cfg = bench_tmp_path("sgpud.json"), *log = bench_tmp_path("sgpud.log");
  if (mkdir(data, 0700) < 0)
    bench_die("mkdir %s: %s", data, strerror(errno));
  bench_write_file(cfg, "{\"log_rate_lines_s\": 0, \"log_keep_lines\": 100000000, \"log_max_bytes\": 0,"
                        " \"log_max_age_s\": 0}\n");
  char *argv[] = {(char *)sgpud_path, "--listen", "127.0.0.1:0", "--data-dir", data, "--config", cfg,
                  "--log-level",      "warn",     "--gpus",      "a100:4",     NULL};
  bench_spawn_opts_t o = {.argv = argv, .out_path = log};
  d->pid = bench_spawn(&o);
  sgpud_log = strdup(log);
  atexit(show_log_on_failure);
  char *url_path = bench_asprintf("%s/url", data), *key_path = bench_asprintf("%s/admin.key", data);
  double deadline = bench_now_ms() + 10000;
  while (!d->url) {
    char *u = bench_read_file(url_path);
    if (u && strchr(u, '\n')) {
      *strchr(u, '\n') = '\0';
      d->url = u;
    } else {
      free(u);
      if (bench_now_ms() > deadline || bench_child_exited(d->pid, NULL))
        bench_die("sgpud did not start (see %s)", log);
      bench_sleep_ms(5);
    }
  }
  char *k = bench_read_file(key_path);
  if (!k)
    bench_die("cannot read %s", key_path);
  k[strcspn(k, "\n")] = '\0';
  d->key = k;
  bench_http_init(&d->api, d->key);
  free(data), free(cfg), free(log), free(url_path), free(key_path);
}

static void create(struct daemon *d, const char *name, const char *shell) {
  json_t *spec = json_pack("{s:s, s:s, s:[s, s, s], s:{s:s}, s:{s:i, s:i, s:i}}", "name", name, "runtime", "process",
                           "command", "/bin/sh", "-c", shell, "health", "path", "/health", "workers", "min", 1, "max",
                           1, "idle_timeout_s", 3600);
  char *body = json_dumps(spec, JSON_COMPACT), *u = bench_asprintf("%s/v1/endpoints", d->url);
  json_decref(bench_http_json(&d->api, "POST", u, body, 201));
  free(body), free(u), json_decref(spec);
  u = bench_asprintf("%s/v1/endpoints/%s/workers", d->url, name);
  double deadline = bench_now_ms() + 15000;
  for (;;) {
    json_t *j = bench_http_json(&d->api, "GET", u, NULL, 200);
    json_t *w = json_array_get(json_object_get(j, "workers"), 0);
    bool ready = w && !strcmp(json_string_value(json_object_get(w, "state")), "ready");
    json_decref(j);
    if (ready)
      break;
    if (bench_now_ms() > deadline)
      bench_die("endpoint %s: no ready worker within 15 s", name);
    bench_sleep_ms(20);
  }
  free(u);
}

/* A counter from /metrics (the sample's first line starting with prefix). */
static double metric(struct daemon *d, const char *prefix) {
  char *u = bench_asprintf("%s/metrics", d->url);
  if (bench_http(&d->api, "GET", u, NULL, 5000) != 200)
    bench_die("GET /metrics failed");
  free(u);
  for (char *p = d->api.body; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
    if (!strncmp(p, prefix, strlen(prefix)))
      return strtod(p + strlen(prefix), NULL);
  return NAN;
}

/* ---- follower ---------------------------------------------------------------------- */

struct follower {
  char *url, *key;
  pthread_t thread;
  double *lat_ms;
  atomic_long n;
  long cap;
  char part[4096];
  size_t plen;
  atomic_bool connected;
};

static void follower_line(struct follower *f, const char *line) {
  const char *p = strstr(line, "\"line\":\"tick ");
  if (!p || f->n >= f->cap)
    return;
  long long ns = atoll(p + 13);
  f->lat_ms[f->n] = (double)(mono_ns() - ns) / 1e6;
  f->n++;
}

static int follower_data(const char *data, size_t len, void *ud) {
  struct follower *f = ud;
  f->connected = true;
  for (size_t i = 0; i < len; i++) {
    if (data[i] == '\n') {
      f->part[f->plen] = '\0';
      follower_line(f, f->part);
      f->plen = 0;
    } else if (f->plen + 1 < sizeof(f->part)) {
      f->part[f->plen++] = data[i];
    }
  }
  return f->n >= f->cap; /* non-zero ends the transfer */
}

/* Follows the log through libsgpu's API client, as `sgpu logs -f` does. */
static void *follower_run(void *arg) {
  struct follower *f = arg;
  sg_client_options_t opts = {.no_proxy = true};
  sg_error_t *err = NULL;
  sg_client_t *c = sg_client_new("", f->key, NULL, &opts, &err);
  if (!c)
    bench_die("%s", err->message);
  sg_client_stream_t s = {
      .method = "GET",
      .path = f->url,
      .timeout_s = 60,
      .on_data = follower_data,
      .ud = f,
  };
  if (sg_client_stream(c, &s, &err) < 0) {
    bench_note("follower: %s", err->message);
    sg_error_free(err);
  }
  sg_client_free(c);
  return NULL;
}

static void follower_start(struct follower *f, struct daemon *d, const char *name, long cap) {
  memset(f, 0, sizeof(*f));
  f->url = bench_asprintf("%s/v1/endpoints/%s/logs?follow=1&limit=1&stream=stdout&q=tick", d->url, name);
  f->key = d->key;
  f->cap = cap;
  f->lat_ms = calloc((size_t)cap, sizeof(double));
  pthread_create(&f->thread, NULL, follower_run, f);
  double deadline = bench_now_ms() + 5000;
  while (!f->connected && bench_now_ms() < deadline)
    bench_sleep_ms(5);
  bench_sleep_ms(100);
}

static void follower_wait(struct follower *f, double timeout_ms) {
  double deadline = bench_now_ms() + timeout_ms;
  while (f->n < f->cap && bench_now_ms() < deadline)
    bench_sleep_ms(10);
  if (f->n < f->cap)
    bench_note("follower got %ld of %ld lines", (long)f->n, f->cap);
  pthread_cancel(f->thread);
  pthread_join(f->thread, NULL);
}

/* ---- invocations beside the flood ------------------------------------------------- */

struct prober {
  char *url, *key;
  pthread_t thread;
  atomic_bool stop;
  double lat[200000];
  long n;
};

static void *prober_run(void *arg) {
  struct prober *p = arg;
  bench_http_t c;
  bench_http_init(&c, p->key);
  while (!p->stop && p->n < (long)(sizeof(p->lat) / sizeof(p->lat[0]))) {
    double t = bench_now_ms();
    if (bench_http(&c, "POST", p->url, "x", 10000) != 200)
      bench_die("invocation failed");
    p->lat[p->n++] = bench_now_ms() - t;
  }
  bench_http_cleanup(&c);
  return NULL;
}

static double probe_alone(struct daemon *d, const char *url, long n) {
  bench_http_t c;
  bench_http_init(&c, d->key);
  double *v = calloc((size_t)n, sizeof(double));
  for (long i = 0; i < n; i++) {
    double t = bench_now_ms();
    if (bench_http(&c, "POST", url, "x", 10000) != 200)
      bench_die("invocation failed");
    v[i] = bench_now_ms() - t;
  }
  double p50 = bench_percentile(v, (size_t)n, 50);
  free(v);
  bench_http_cleanup(&c);
  return p50;
}

/* ---- invocations beside log searches ------------------------------------------- */

#define SEARCH_MS 3000

struct searcher {
  char *url, *key;
  pthread_t thread;
  atomic_bool stop;
  double ms[10000];
  long n;
};

static void *searcher_run(void *arg) {
  struct searcher *s = arg;
  bench_http_t c;
  bench_http_init(&c, s->key);
  while (!s->stop && s->n < (long)(sizeof(s->ms) / sizeof(s->ms[0]))) {
    double t = bench_now_ms();
    if (bench_http(&c, "GET", s->url, NULL, 120000) != 200)
      bench_die("log search failed");
    s->ms[s->n++] = bench_now_ms() - t;
  }
  bench_http_cleanup(&c);
  return NULL;
}

/* Runs the prober for SEARCH_MS (and, with searcher, at least until one
 * search ended); fills p50/p99/max of its latencies. */
static long probe_for(struct prober *pr, struct searcher *se, double *p50, double *p99, double *mx) {
  pr->n = 0;
  pr->stop = false;
  if (se)
    pthread_create(&se->thread, NULL, searcher_run, se);
  pthread_create(&pr->thread, NULL, prober_run, pr);
  double t0 = bench_now_ms();
  while (bench_now_ms() - t0 < SEARCH_MS || (se && se->n < 1 && bench_now_ms() - t0 < 120000))
    bench_sleep_ms(10);
  pr->stop = true;
  if (se)
    se->stop = true;
  pthread_join(pr->thread, NULL);
  if (se)
    pthread_join(se->thread, NULL);
  *p50 = bench_percentile(pr->lat, (size_t)pr->n, 50);
  *p99 = bench_percentile(pr->lat, (size_t)pr->n, 99);
  *mx = 0;
  for (long i = 0; i < pr->n; i++)
    *mx = pr->lat[i] > *mx ? pr->lat[i] : *mx;
  return pr->n;
}

static const char usage_text[] = "usage: bench-logs [--lines N]\n"
                                 "  --lines N   lines of the flood (default 1000000, 100 bytes each)\n"
                                 "  --sgpud P   the sgpud to measure (default: this build's)\n";

int main(int argc, char **argv) {
  if (argc == 4 && !strcmp(argv[1], "--spew"))
    return spew(argv[2], atol(argv[3]));
  if (argc == 5 && !strcmp(argv[1], "--tick"))
    return tick(argv[2], atol(argv[3]), atol(argv[4]));
  long lines = 1000000;
  static const struct option opts[] = {{"lines", required_argument, NULL, 'n'},
                                       {"sgpud", required_argument, NULL, 's'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    if (ch == 'n' && atol(optarg) >= 1000)
      lines = atol(optarg);
    else if (ch == 's')
      sgpud_path = optarg;
    else {
      fputs(usage_text, ch == 'h' ? stdout : stderr);
      return ch == 'h' ? 0 : 2;
    }
  }
  bench_init("bench-logs");
  bench_need_executable("sgpud", sgpud_path);
  bench_need_executable("echo-worker", BENCH_ECHO_WORKER);
  char self[4096];
  ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (sl <= 0)
    bench_die("cannot find this program's path");
  self[sl] = '\0';

  /* Process workers run as another user when sgpud is root: they wait for
   * trigger files in the temporary directory, so they must reach it. */
  if (chmod(bench_tmpdir(), 0711) < 0)
    bench_die("chmod %s: %s", bench_tmpdir(), strerror(errno));
  bench_note("baseline: %ld raw SQLite inserts in one transaction", lines);
  double base_rate = sqlite_baseline(lines);

  struct daemon d = {0};
  start_sgpud(&d);
  char *spew_trig = bench_tmp_path("spew.go"), *tick_idle = bench_tmp_path("tick1.go"),
       *tick_load = bench_tmp_path("tick2.go");
  char *sh = bench_asprintf("%s --spew %s %ld & exec %s", self, spew_trig, lines, BENCH_ECHO_WORKER);
  create(&d, "spew", sh);
  free(sh);
  sh = bench_asprintf("%s --tick %s %d %d & exec %s", self, tick_idle, TICK_RATE, TICK_SECONDS, BENCH_ECHO_WORKER);
  create(&d, "tick-idle", sh);
  free(sh);
  sh = bench_asprintf("%s --tick %s %d %d & exec %s", self, tick_load, TICK_RATE, TICK_SECONDS, BENCH_ECHO_WORKER);
  create(&d, "tick-load", sh);
  free(sh);
  create(&d, "calm", "exec " BENCH_ECHO_WORKER);
  char *calm_url = bench_asprintf("%s/e/calm/infer", d.url);

  /* follow latency, idle */
  bench_note("follow latency: %d lines/s for %d s, idle", TICK_RATE, TICK_SECONDS);
  struct follower f_idle;
  follower_start(&f_idle, &d, "tick-idle", TICK_RATE * TICK_SECONDS);
  bench_write_file(tick_idle, "go");
  follower_wait(&f_idle, TICK_SECONDS * 1000 + 5000);

  double alone_p50 = probe_alone(&d, calm_url, 2000);

  /* the flood, with a follower and an invoker beside it */
  bench_note("flood: %ld lines of %d bytes through sgpud", lines, LINE_BYTES);
  struct follower f_load;
  follower_start(&f_load, &d, "tick-load", TICK_RATE * TICK_SECONDS);
  static struct prober pr;
  pr.url = calm_url;
  pr.key = d.key;
  pthread_create(&pr.thread, NULL, prober_run, &pr);
  double stored0 = metric(&d, "sgpu_log_lines_stored_total ");
  double t0 = bench_now_ms();
  bench_write_file(spew_trig, "go");
  bench_write_file(tick_load, "go");
  double deadline = t0 + 120000, stored = stored0, dropped = 0;
  while (stored - stored0 < lines && bench_now_ms() < deadline) {
    bench_sleep_ms(20);
    stored = metric(&d, "sgpu_log_lines_stored_total ");
    dropped = metric(&d, "sgpu_log_lines_dropped_total{reason=\"backlog\"} ");
    if (stored - stored0 + dropped >= lines && dropped > 0)
      break;
  }
  double flood_ms = bench_now_ms() - t0;
  pr.stop = true;
  pthread_join(pr.thread, NULL);
  follower_wait(&f_load, 10000);
  double flood_rate = (stored - stored0) / (flood_ms / 1000);
  double beside_p50 = bench_percentile(pr.lat, (size_t)pr.n, 50);

  printf("\nLog store, %ld lines of %d bytes (one worker's stdout; sgpud without rate limit)\n\n", lines, LINE_BYTES);
  printf("| what | lines/s | note |\n| --- | ---: | --- |\n");
  printf("| baseline: raw SQLite, same table and index, one transaction | %.0f | ceiling of the store |\n", base_rate);
  printf("| sgpud: worker stdout -> stored, end to end | %.0f | %.0f stored in %.2f s, %.0f dropped; %.0f%% of "
         "baseline |\n",
         flood_rate, stored - stored0, flood_ms / 1000, dropped, 100 * flood_rate / base_rate);
  printf("\nFollow delay (written by the worker -> received by a follower over HTTP), %d lines/s\n\n", TICK_RATE);
  printf("| when | lines | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: |\n");
  struct follower *fs[] = {&f_idle, &f_load};
  const char *names[] = {"idle", "during the flood"};
  for (int i = 0; i < 2; i++) {
    size_t n = (size_t)fs[i]->n;
    double mx = 0;
    for (size_t k = 0; k < n; k++)
      mx = fs[i]->lat_ms[k] > mx ? fs[i]->lat_ms[k] : mx;
    printf("| %s | %zu | %.2f | %.2f | %.2f |\n", names[i], n, bench_percentile(fs[i]->lat_ms, n, 50),
           bench_percentile(fs[i]->lat_ms, n, 99), mx);
  }
  printf("\nInvocations of another endpoint, one at a time (p50 latency)\n\n");
  printf("| when | requests | p50 ms |\n| --- | ---: | ---: |\n");
  printf("| alone | 2000 | %.3f |\n| during the flood | %ld | %.3f (%+.0f%%) |\n", alone_p50, pr.n, beside_p50,
         100 * (beside_p50 / alone_p50 - 1));
  fflush(stdout);

  /* searches over what the flood stored, beside invocations */
  bench_note("search: invocations alone, then beside searches over %.0f stored lines", stored - stored0);
  static struct searcher se;
  se.url = bench_asprintf("%s/v1/endpoints/spew/logs?q=never-said&limit=10000", d.url);
  se.key = d.key;
  double a50, a99, amax, s50, s99, smax;
  long an = probe_for(&pr, NULL, &a50, &a99, &amax);
  long sn = probe_for(&pr, &se, &s50, &s99, &smax);
  double search_p50 = bench_percentile(se.ms, (size_t)se.n, 50);
  printf("\nInvocations of another endpoint, one at a time, beside log searches (GET .../logs?q=never-said, "
         "a scan of %.0f lines, one after another)\n\n",
         stored - stored0);
  printf("| when | requests | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: |\n");
  printf("| baseline: alone | %ld | %.3f | %.3f | %.3f |\n", an, a50, a99, amax);
  printf("| beside %ld searches (p50 %.0f ms each) | %ld | %.3f | %.3f | %.3f |\n", se.n, search_p50, sn, s50, s99,
         smax);
  printf("| ratio beside / alone | | %.2f | %.2f | %.2f |\n", s50 / a50, s99 / a99, smax / amax);
  fflush(stdout);
  finished = true;
  bench_stop_child(d.pid, 15000);
  return 0;
}
