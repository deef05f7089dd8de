/* bench-runpod: async jobs through RunPod's worker protocol (pull workers,
 * "async": {"protocol": "runpod"}) beside today's push to async.path
 * (protocol "http"), in the same run, under one private sgpud.
 *
 * Four async endpoints, workers.max_concurrency 1 each:
 *   http-1, http-4   echo-worker (tests/fixtures/test-worker.c), jobs POSTed
 *                    to its /run: the baseline
 *   rp-1, rp-4       this program re-executed with --pull-worker: a worker
 *                    that speaks the protocol as RunPod's Python SDK does
 *                    (long-poll take on a kept-alive connection, the result
 *                    POSTed as JSON with the form content type, the raw
 *                    token in Authorization, a ping loop of its own and a
 *                    long-polled stop route beside the take)
 * with 1 and 4 workers (min = max). Both handlers do nothing but sleep the
 * input's sleep_ms and echo the input.
 *
 * Measured, interleaved so that drift in the machine's load spreads over
 * both protocols:
 *   jobs/s   --jobs jobs POSTed to /v2/NAME/run by --submitters threads,
 *            from the first submission until /v2/NAME/health counts them
 *            all finished (each rep checks that none failed)
 *   latency  one POST /v2/NAME/runsync at a time of a job whose handler
 *            sleeps --handler-ms, on the 1-worker endpoints: the answer's
 *            time minus the handler's, median and p99
 *
 * usage: bench-runpod [--jobs N] [--reps N] [--submitters N] [--rounds N]
 *                     [--handler-ms N] [--sgpud PATH] [--worker PATH]
 *        bench-runpod --pull-worker   (what sgpud starts for rp-1, rp-4) */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench-config.h"
#include "common.h"

#define READY_TIMEOUT_MS 30000.0
#define FINISH_TIMEOUT_MS 300000.0
#define MAX_REPS 20
#define MAX_SUBMITTERS 64
#define SDK_VERSION "1.12.0"
/* The SDK's client timeout for a take: sgpud answers well before it. */
#define TAKE_TIMEOUT_MS 90000L
#define STATS_JOBS 500

/* ======================================================================
 * The pull worker (--pull-worker)
 * ====================================================================== */

struct pw {
  char *take_url, *stop_url, *done_tmpl, *ping_url;
  char *auth; /* "Authorization: <token>" */
  long ping_ms;
  pthread_mutex_t mu;
  char held[128]; /* the job being handled, "" when none */
};

static const char *need_env(const char *name) {
  const char *v = getenv(name);
  if (!v || !*v) {
    fprintf(stderr, "pull-worker: %s is not set\n", name);
    exit(2);
  }
  return v;
}

/* s with every "from" replaced by "to" (malloc'ed). */
static char *replace_all(const char *s, const char *from, const char *to) {
  size_t fl = strlen(from), tl = strlen(to), n = 0;
  for (const char *p = s; (p = strstr(p, from)); p += fl)
    n++;
  char *out = malloc(strlen(s) + n * tl + 1), *o = out;
  if (!out)
    abort();
  for (const char *p = s, *q; *p; p = q + fl) {
    q = strstr(p, from);
    if (!q) {
      strcpy(o, p);
      return out;
    }
    memcpy(o, p, (size_t)(q - p));
    o += q - p;
    memcpy(o, to, tl);
    o += tl;
  }
  *o = '\0';
  return out;
}

/* The answer of one request, read whole (small: jobs and stop lists). */
struct answer {
  char *body;
  size_t len;
};

static size_t on_data(char *p, size_t size, size_t n, void *arg) {
  struct answer *a = arg;
  size_t add = size * n;
  if (a->len + add > (64u << 20))
    return 0;
  a->body = realloc(a->body, a->len + add + 1);
  if (!a->body)
    abort();
  memcpy(a->body + a->len, p, add);
  a->len += add;
  a->body[a->len] = '\0';
  return add;
}

/* One request on h (its connection is kept alive between calls); returns
 * the HTTP status, 0 when none came. */
static long pw_request(CURL *h, struct curl_slist *headers, const char *url, const char *post, long timeout_ms,
                       struct answer *a) {
  free(a->body);
  a->body = NULL;
  a->len = 0;
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_PROXY, "");
  curl_easy_setopt(h, CURLOPT_USERAGENT, "RunPod-Python-SDK/" SDK_VERSION " (bench-runpod)");
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, a);
  if (post) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, post);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(post));
  } else {
    curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
  }
  if (curl_easy_perform(h) != CURLE_OK)
    return 0;
  long status = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  return status;
}

static void pw_sleep_ms(long ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
    ;
}

/* The SDK's ping loop (a process of its own there): every interval, the
 * ids of the jobs in progress, or none. */
static void *pw_ping_loop(void *arg) {
  struct pw *w = arg;
  CURL *h = curl_easy_init();
  struct curl_slist *headers = curl_slist_append(NULL, w->auth);
  struct answer a = {0};
  for (;;) {
    pthread_mutex_lock(&w->mu);
    char held[sizeof(w->held)];
    memcpy(held, w->held, sizeof(held));
    pthread_mutex_unlock(&w->mu);
    char *url;
    if (*held) {
      /* requests encodes the comma-joined list as a query value. */
      char *esc = curl_easy_escape(h, held, 0);
      url = bench_asprintf("%s&job_id=%s&runpod_version=" SDK_VERSION, w->ping_url, esc);
      curl_free(esc);
    } else {
      url = bench_asprintf("%s&runpod_version=" SDK_VERSION, w->ping_url);
    }
    long st = pw_request(h, headers, url, NULL, w->ping_ms, &a);
    if (st != 200)
      fprintf(stderr, "pull-worker: ping answered %ld\n", st);
    free(url);
    pw_sleep_ms(w->ping_ms);
  }
  return NULL;
}

/* The SDK's stop poll (1.10+): a long poll beside the take; a job to stop
 * is dropped without a result (sgpud sets its final state). */
static void *pw_stop_loop(void *arg) {
  struct pw *w = arg;
  CURL *h = curl_easy_init();
  struct curl_slist *headers = curl_slist_append(NULL, w->auth);
  struct answer a = {0};
  for (;;) {
    long st = pw_request(h, headers, w->stop_url, NULL, TAKE_TIMEOUT_MS, &a);
    if (st == 200 || st == 204)
      continue;
    fprintf(stderr, "pull-worker: stop poll answered %ld\n", st);
    pw_sleep_ms(1000);
  }
  return NULL;
}

static int pull_worker_main(void) {
  struct pw w = {.mu = PTHREAD_MUTEX_INITIALIZER};
  const char *pod = need_env("RUNPOD_POD_ID");
  w.take_url = replace_all(need_env("RUNPOD_WEBHOOK_GET_JOB"), "$ID", pod);
  w.stop_url = replace_all(w.take_url, "/job-take/", "/job-stop/");
  w.done_tmpl = replace_all(need_env("RUNPOD_WEBHOOK_POST_OUTPUT"), "$RUNPOD_POD_ID", pod);
  w.ping_url = replace_all(need_env("RUNPOD_WEBHOOK_PING"), "$RUNPOD_POD_ID", pod);
  w.auth = bench_asprintf("Authorization: %s", need_env("RUNPOD_AI_API_KEY"));
  const char *pi = getenv("RUNPOD_PING_INTERVAL");
  w.ping_ms = pi && *pi ? atol(pi) : 10000;
  if (w.ping_ms < 1000)
    w.ping_ms = 1000;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
    return 1;
  pthread_t t;
  if (pthread_create(&t, NULL, pw_ping_loop, &w) != 0 || pthread_create(&t, NULL, pw_stop_loop, &w) != 0)
    return 1;

  CURL *h = curl_easy_init();
  struct curl_slist *take_headers = curl_slist_append(NULL, w.auth);
  struct curl_slist *post_headers = curl_slist_append(NULL, w.auth);
  post_headers = curl_slist_append(post_headers, "charset: utf-8");
  post_headers = curl_slist_append(post_headers, "Content-Type: application/x-www-form-urlencoded");
  /* aiohttp sends the body at once: no "Expect: 100-continue" wait. */
  post_headers = curl_slist_append(post_headers, "Expect:");
  char *take = bench_asprintf("%s&job_in_progress=0", w.take_url);
  struct answer a = {0};
  /* Where a job's time goes, over the last STATS_JOBS jobs: from sending
   * the take that got it to its arrival, the handler, from sending the
   * result to its answer. Printed on stdout (the endpoint's logs). */
  double t_take = 0, t_run = 0, t_post = 0;
  long n_stats = 0;
  for (;;) {
    double t0 = bench_now_ms();
    long st = pw_request(h, take_headers, take, NULL, TAKE_TIMEOUT_MS, &a);
    double t1 = bench_now_ms();
    if (st == 204 || st == 400)
      continue;
    if (st == 429) {
      pw_sleep_ms(5000);
      continue;
    }
    if (st == 401) {
      fprintf(stderr, "pull-worker: take refused (401): %.300s\n", a.body ? a.body : "");
      return 1;
    }
    if (st != 200) {
      /* The SDK retries at once; a pause keeps a broken sgpud from
       * spinning this process. */
      fprintf(stderr, "pull-worker: take answered %ld\n", st);
      pw_sleep_ms(100);
      continue;
    }
    json_error_t jerr;
    json_t *job = json_loadb(a.body ? a.body : "", a.len, 0, &jerr);
    const char *id = json_string_value(json_object_get(job, "id"));
    json_t *input = json_object_get(job, "input");
    if (!id || strlen(id) >= sizeof(w.held) || !input) {
      fprintf(stderr, "pull-worker: a take answer without id and input: %.300s\n", a.body ? a.body : "");
      json_decref(job);
      continue;
    }
    pthread_mutex_lock(&w.mu);
    snprintf(w.held, sizeof(w.held), "%s", id);
    pthread_mutex_unlock(&w.mu);

    /* The handler: sleeps the input's sleep_ms and echoes the input. */
    json_int_t sleep_ms = json_integer_value(json_object_get(input, "sleep_ms"));
    if (sleep_ms > 0 && sleep_ms < 600000)
      pw_sleep_ms((long)sleep_ms);
    json_t *result = json_pack("{s:{s:s, s:O}}", "output", "id", id, "input", input);
    char *body = json_dumps(result, JSON_COMPACT);
    char *done = replace_all(w.done_tmpl, "$ID", id);
    char *url = bench_asprintf("%s&isStream=false", done);
    /* The SDK retries a 5xx after 2 s and 3 s; a 4xx drops the result. */
    long pst = 0;
    double t2 = bench_now_ms();
    for (int attempt = 0; attempt < 3; attempt++) {
      pst = pw_request(h, post_headers, url, body, 30000, &a);
      if (pst >= 200 && pst < 500)
        break;
      pw_sleep_ms(attempt == 0 ? 2000 : 3000);
    }
    t_take += t1 - t0;
    t_run += t2 - t1;
    t_post += bench_now_ms() - t2;
    if (++n_stats == STATS_JOBS) {
      printf("pull-stats: last %d jobs, ms per job: take %.3f handler %.3f result %.3f\n", STATS_JOBS,
             t_take / STATS_JOBS, t_run / STATS_JOBS, t_post / STATS_JOBS);
      fflush(stdout);
      t_take = t_run = t_post = 0;
      n_stats = 0;
    }
    if (pst < 200 || pst > 299)
      fprintf(stderr, "pull-worker: result of %s answered %ld: %.300s\n", id, pst, a.body ? a.body : "");
    pthread_mutex_lock(&w.mu);
    w.held[0] = '\0';
    pthread_mutex_unlock(&w.mu);
    free(url);
    free(done);
    free(body);
    json_decref(result);
    json_decref(job);
  }
}

/* ======================================================================
 * The measurement
 * ====================================================================== */

struct options {
  long jobs, reps, submitters, rounds, handler_ms;
  const char *sgpud, *worker;
  char *self;
};

enum { E_HTTP1, E_RP1, E_HTTP4, E_RP4, N_EPS };
static const char *const ep_names[N_EPS] = {"http-1", "rp-1", "http-4", "rp-4"};
static const int ep_workers[N_EPS] = {1, 1, 4, 4};

static bool is_runpod(int e) { return e == E_RP1 || e == E_RP4; }

static void create_endpoint(bench_http_t *api, const char *url, const struct options *o, int e) {
  json_t *spec = json_pack("{s:s, s:s, s:s, s:{s:i, s:i, s:i, s:i, s:i}}", "name", ep_names[e], "runtime", "process",
                           "type", "async", "workers", "min", ep_workers[e], "max", ep_workers[e], "idle_timeout_s",
                           3600, "max_concurrency", 1, "request_timeout_s", 120);
  if (is_runpod(e)) {
    json_object_set_new(spec, "command", json_pack("[s, s]", o->self, "--pull-worker"));
    json_object_set_new(spec, "async", json_pack("{s:s}", "protocol", "runpod"));
  } else {
    json_object_set_new(spec, "command", json_pack("[s]", o->worker));
    json_object_set_new(spec, "env", json_pack("{s:s}", "WARMUP_MS", "0"));
    json_object_set_new(spec, "health", json_pack("{s:s}", "path", "/health"));
  }
  char *body = json_dumps(spec, JSON_COMPACT);
  char *u = bench_asprintf("%s/v1/endpoints", url);
  json_decref(bench_http_json(api, "POST", u, body, 201));
  free(u);
  free(body);
  json_decref(spec);
}

static void wait_ready(bench_http_t *api, const char *url, int e) {
  char *u = bench_asprintf("%s/v1/endpoints/%s/workers", url, ep_names[e]);
  double deadline = bench_now_ms() + READY_TIMEOUT_MS;
  for (;;) {
    json_t *j = bench_http_json(api, "GET", u, NULL, 200);
    size_t i;
    json_t *w;
    int ready = 0;
    json_array_foreach(json_object_get(j, "workers"), i, w) {
      const char *state = json_string_value(json_object_get(w, "state"));
      if (state && !strcmp(state, "ready"))
        ready++;
    }
    json_decref(j);
    if (ready >= ep_workers[e])
      break;
    if (bench_now_ms() > deadline || bench_interrupted())
      bench_die("%s: %d of %d workers ready after %.0f s", ep_names[e], ready, ep_workers[e], READY_TIMEOUT_MS / 1000);
    bench_sleep_ms(20);
  }
  free(u);
}

/* Jobs finished (completed, failed) on the endpoint since sgpud started. */
static void finished(bench_http_t *api, const char *url, int e, long long *completed, long long *failed) {
  char *u = bench_asprintf("%s/v2/%s/health", url, ep_names[e]);
  json_t *j = bench_http_json(api, "GET", u, NULL, 200);
  json_t *jobs = json_object_get(j, "jobs");
  *completed = json_integer_value(json_object_get(jobs, "completed"));
  *failed = json_integer_value(json_object_get(jobs, "failed"));
  json_decref(j);
  free(u);
}

struct submitter {
  pthread_t thread;
  const char *base, *key, *name;
  long from, to;
  long full; /* 503 answers (queue full), retried */
};

static void *submit_loop(void *arg) {
  struct submitter *s = arg;
  bench_http_t c;
  bench_http_init(&c, s->key);
  char *u = bench_asprintf("%s/v2/%s/run", s->base, s->name);
  for (long i = s->from; i < s->to && !bench_interrupted(); i++) {
    char *body = bench_asprintf("{\"input\":{\"n\":%ld}}", i);
    long st;
    while ((st = bench_http(&c, "POST", u, body, 30000)) == 503) {
      s->full++;
      bench_sleep_ms(5);
    }
    if (st != 200)
      bench_die("POST %s: HTTP %ld: %.300s", u, st, c.body ? c.body : "");
    free(body);
  }
  free(u);
  bench_http_cleanup(&c);
  return NULL;
}

/* One throughput run: jobs/s from the first submission to the last job
 * finished. */
static double throughput(bench_http_t *api, const bench_sgpud_t *d, const struct options *o, int e) {
  long long c0, f0, c, f;
  finished(api, d->url, e, &c0, &f0);
  struct submitter subs[MAX_SUBMITTERS];
  long per = o->jobs / o->submitters, extra = o->jobs % o->submitters, at = 0;
  double t0 = bench_now_ms();
  for (long i = 0; i < o->submitters; i++) {
    long n = per + (i < extra ? 1 : 0);
    subs[i] = (struct submitter){.base = d->url, .key = d->key, .name = ep_names[e], .from = at, .to = at + n};
    at += n;
    if (pthread_create(&subs[i].thread, NULL, submit_loop, &subs[i]) != 0)
      bench_die("pthread_create failed");
  }
  long full = 0;
  for (long i = 0; i < o->submitters; i++) {
    pthread_join(subs[i].thread, NULL);
    full += subs[i].full;
  }
  for (;;) {
    finished(api, d->url, e, &c, &f);
    if (c - c0 + f - f0 >= o->jobs)
      break;
    if (bench_interrupted())
      bench_die("interrupted");
    if (bench_now_ms() - t0 > FINISH_TIMEOUT_MS)
      bench_die("%s: %lld of %ld jobs finished after %.0f s", ep_names[e], c - c0 + f - f0, o->jobs,
                FINISH_TIMEOUT_MS / 1000);
    bench_sleep_ms(2);
  }
  double secs = (bench_now_ms() - t0) / 1000;
  if (f - f0 > 0)
    bench_die("%s: %lld of %ld jobs FAILED", ep_names[e], f - f0, o->jobs);
  if (full)
    bench_note("%s: %ld submissions were refused (queue full) and sent again", ep_names[e], full);
  return (double)o->jobs / secs;
}

/* One runsync of a job whose handler sleeps handler_ms; returns the time
 * from sending to the whole answer, in ms. */
static double runsync_ms(bench_http_t *api, const char *url, int e, long handler_ms) {
  char *u = bench_asprintf("%s/v2/%s/runsync?wait=60000", url, ep_names[e]);
  char *body = bench_asprintf("{\"input\":{\"sleep_ms\":%ld}}", handler_ms);
  double t0 = bench_now_ms();
  long st = bench_http(api, "POST", u, body, 70000);
  double ms = bench_now_ms() - t0;
  if (st != 200 || !api->body || !strstr(api->body, "\"COMPLETED\""))
    bench_die("POST %s: HTTP %ld: %.300s", u, st, api->body ? api->body : "");
  free(u);
  free(body);
  return ms;
}

/* Lines of the endpoint's log holding text (NDJSON, one line each): what
 * its pull workers complained of, or jobs lost. */
static long log_lines(bench_http_t *api, const char *url, int e, const char *text) {
  char *esc = curl_easy_escape(NULL, text, 0);
  char *u = bench_asprintf("%s/v1/endpoints/%s/logs?q=%s&limit=10000", url, ep_names[e], esc);
  long st = bench_http(api, "GET", u, NULL, 10000);
  if (st != 200)
    bench_die("GET %s: HTTP %ld", u, st);
  long n = 0;
  for (const char *p = api->body; p && *p; p++)
    n += *p == '\n';
  curl_free(esc);
  free(u);
  return n;
}

/* The newest "pull-stats" line of the endpoint's workers (malloc'ed), or
 * NULL when none is stored. */
static char *newest_stats(bench_http_t *api, const char *url, int e) {
  char *u = bench_asprintf("%s/v1/endpoints/%s/logs?q=pull-stats:&limit=1", url, ep_names[e]);
  long st = bench_http(api, "GET", u, NULL, 10000);
  if (st != 200)
    bench_die("GET %s: HTTP %ld", u, st);
  free(u);
  json_t *j = api->body ? json_loads(api->body, JSON_DISABLE_EOF_CHECK, NULL) : NULL;
  const char *line = json_string_value(json_object_get(j, "line"));
  char *out = line ? strdup(line) : NULL;
  json_decref(j);
  return out;
}

static void usage(FILE *f) {
  fprintf(f, "usage: bench-runpod [--jobs N] [--reps N] [--submitters N] [--rounds N] [--handler-ms N]\n"
             "                    [--sgpud PATH] [--worker PATH]\n"
             "  --jobs N         jobs per throughput run (default 5000)\n"
             "  --reps N         throughput runs per endpoint, interleaved (default 3)\n"
             "  --submitters N   threads submitting with POST /v2/NAME/run (default 8)\n"
             "  --rounds N       runsync rounds per protocol for the latency (default 200)\n"
             "  --handler-ms N   the handler's own time in those rounds (default 20)\n"
             "  --sgpud PATH     default " BENCH_SGPUD "\n"
             "  --worker PATH    the push worker of the baseline, default " BENCH_ECHO_WORKER "\n");
}

int main(int argc, char **argv) {
  if (argc == 2 && !strcmp(argv[1], "--pull-worker"))
    return pull_worker_main();
  struct options o = {.jobs = 5000,
                      .reps = 3,
                      .submitters = 8,
                      .rounds = 200,
                      .handler_ms = 20,
                      .sgpud = BENCH_SGPUD,
                      .worker = BENCH_ECHO_WORKER};
  static const struct option opts[] = {{"jobs", required_argument, NULL, 'j'},
                                       {"reps", required_argument, NULL, 'r'},
                                       {"submitters", required_argument, NULL, 's'},
                                       {"rounds", required_argument, NULL, 'n'},
                                       {"handler-ms", required_argument, NULL, 'm'},
                                       {"sgpud", required_argument, NULL, 'd'},
                                       {"worker", required_argument, NULL, 'w'},
                                       {"help", no_argument, NULL, 'h'},
                                       {0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (ch) {
    case 'j':
      o.jobs = bench_parse_count("--jobs", optarg, 1, 1000000);
      break;
    case 'r':
      o.reps = bench_parse_count("--reps", optarg, 1, MAX_REPS);
      break;
    case 's':
      o.submitters = bench_parse_count("--submitters", optarg, 1, MAX_SUBMITTERS);
      break;
    case 'n':
      o.rounds = bench_parse_count("--rounds", optarg, 1, 100000);
      break;
    case 'm':
      o.handler_ms = bench_parse_count("--handler-ms", optarg, 0, 60000);
      break;
    case 'd':
      o.sgpud = optarg;
      break;
    case 'w':
      o.worker = optarg;
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      usage(stderr);
      return 2;
    }
  }
  if (optind != argc) {
    usage(stderr);
    return 2;
  }
  bench_init("bench-runpod");
  char self[PATH_MAX];
  ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (sl <= 0)
    bench_die("cannot read /proc/self/exe: %s", strerror(errno));
  self[sl] = '\0';
  o.self = self;
  bench_need_executable("sgpud", o.sgpud);
  bench_need_executable("worker", o.worker);

  bench_sgpud_t d;
  bench_sgpud_start(&d, o.sgpud);
  bench_http_t api;
  bench_http_init(&api, d.key);
  for (int e = 0; e < N_EPS; e++)
    create_endpoint(&api, d.url, &o, e);
  for (int e = 0; e < N_EPS; e++)
    wait_ready(&api, d.url, e);
  bench_note("sgpud %s, 4 endpoints ready", d.url);

  /* Throughput: one unmeasured run each, then reps runs interleaved. */
  double rate[N_EPS][MAX_REPS];
  struct options warm = o;
  warm.jobs = o.jobs / 10 > 0 ? o.jobs / 10 : 1;
  for (int e = 0; e < N_EPS; e++)
    throughput(&api, &d, &warm, e);
  for (long r = 0; r < o.reps; r++) {
    for (int e = 0; e < N_EPS; e++) {
      rate[e][r] = throughput(&api, &d, &o, e);
      bench_note("rep %ld %-6s %8.0f jobs/s", r + 1, ep_names[e], rate[e][r]);
    }
  }

  /* Where a pulled job's time went in the last throughput runs. The log
   * writer stores lines a moment after they are written. */
  bench_sleep_ms(500);
  char *stats[2] = {newest_stats(&api, d.url, E_RP1), newest_stats(&api, d.url, E_RP4)};

  /* Latency: runsync rounds alternating between the 1-worker endpoints. */
  double *added[2];
  for (int p = 0; p < 2; p++)
    added[p] = calloc((size_t)o.rounds, sizeof(double));
  if (!added[0] || !added[1])
    abort();
  for (int i = 0; i < 10; i++)
    runsync_ms(&api, d.url, i % 2 ? E_RP1 : E_HTTP1, o.handler_ms);
  for (long i = 0; i < o.rounds; i++) {
    for (int p = 0; p < 2; p++) {
      int e = (i + p) % 2 ? E_RP1 : E_HTTP1;
      added[e == E_RP1][i] = runsync_ms(&api, d.url, e, o.handler_ms) - (double)o.handler_ms;
    }
    if (bench_interrupted())
      bench_die("interrupted");
  }

  /* The figures hold only if the pull workers ran clean. */
  long complaints = 0, lost = 0;
  for (int e = 0; e < N_EPS; e++) {
    if (is_runpod(e))
      complaints += log_lines(&api, d.url, e, "pull-worker:");
    lost += log_lines(&api, d.url, e, "lost");
  }
  if (complaints || lost)
    bench_note("the logs hold %ld complaints of pull workers and %ld lines on lost jobs or workers", complaints, lost);

  printf("async jobs: protocol runpod (pull workers) vs http (push to async.path), one sgpud\n");
  printf("no-op handlers, workers.max_concurrency 1; %ld jobs per run, %ld submitters, median of %ld runs\n\n", o.jobs,
         o.submitters, o.reps);
  printf("%-22s %12s %12s %14s\n", "jobs/s end to end", "http", "runpod", "runpod/http");
  for (int n = 0; n < 2; n++) {
    int h = n ? E_HTTP4 : E_HTTP1, p = n ? E_RP4 : E_RP1;
    double mh = bench_percentile(rate[h], (size_t)o.reps, 50), mp = bench_percentile(rate[p], (size_t)o.reps, 50);
    printf("%-22s %12.0f %12.0f %13.2fx\n", n ? "4 workers" : "1 worker", mh, mp, mp / mh);
  }
  printf("\nadded latency over the handler's %ld ms (runsync, 1 worker, %ld rounds each), ms\n", o.handler_ms,
         o.rounds);
  printf("%-22s %12s %12s %14s\n", "", "http", "runpod", "runpod/http");
  double p50h = bench_percentile(added[0], (size_t)o.rounds, 50),
         p50p = bench_percentile(added[1], (size_t)o.rounds, 50);
  double p99h = bench_percentile(added[0], (size_t)o.rounds, 99),
         p99p = bench_percentile(added[1], (size_t)o.rounds, 99);
  printf("%-22s %12.2f %12.2f %13.2fx\n", "median", p50h, p50p, p50p / p50h);
  printf("%-22s %12.2f %12.2f %13.2fx\n", "p99", p99h, p99p, p99p / p99h);
  printf("\npull workers' complaints in the logs: %ld; lines on lost jobs or workers: %ld\n", complaints, lost);
  printf("a pull worker's own view, end of the throughput runs:\n");
  for (int i = 0; i < 2; i++) {
    printf("  %-6s %s\n", ep_names[i ? E_RP4 : E_RP1], stats[i] ? stats[i] : "(no pull-stats line stored)");
    free(stats[i]);
  }
  free(added[0]);
  free(added[1]);
  bench_http_cleanup(&api);
  bench_sgpud_stop(&d);
  return 0;
}
