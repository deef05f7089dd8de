#include "common.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/close_range.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sgpu/client.h"
#include "sgpu/error.h"
#include "sgpu/util.h"

#define MAX_CHILDREN 32
#define EXIT_GRACE_MS 15000.0

static const char *prog_name = "bench";
static char *tmpdir;
static pid_t children[MAX_CHILDREN];
static volatile sig_atomic_t interrupted;
static bool exiting;

/* ---- messages, signals, exit ------------------------------------------------ */

void bench_note(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", prog_name);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

void bench_die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", prog_name);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  if (exiting)
    _exit(1);
  exit(1);
}

bool bench_interrupted(void) { return interrupted != 0; }

static void on_signal(int sig) {
  (void)sig;
  interrupted = 1;
}

static void track(pid_t pid) {
  for (int i = 0; i < MAX_CHILDREN; i++) {
    if (children[i] == 0) {
      children[i] = pid;
      return;
    }
  }
  kill(pid, SIGKILL);
  bench_die("too many child processes");
}

static void untrack(pid_t pid) {
  for (int i = 0; i < MAX_CHILDREN; i++)
    if (children[i] == pid)
      children[i] = 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)ftw;
  if ((flag == FTW_DP ? rmdir(path) : unlink(path)) < 0 && errno != ENOENT)
    fprintf(stderr, "%s: cannot remove %s: %s\n", prog_name, path, strerror(errno));
  return 0;
}

/* Stops what is still running (newest first: nginx and workers before
 * sgpud is fine either way) and removes the temporary directory. */
static void at_exit(void) {
  exiting = true;
  for (int i = MAX_CHILDREN - 1; i >= 0; i--)
    if (children[i] > 0)
      bench_stop_child(children[i], EXIT_GRACE_MS);
  if (tmpdir) {
    nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(tmpdir);
    tmpdir = NULL;
  }
  curl_global_cleanup();
}

void bench_need_executable(const char *what, const char *path) {
  if (access(path, X_OK) < 0)
    bench_die("%s %s: %s", what, path, strerror(errno));
}

void bench_init(const char *prog) {
  prog_name = prog;
  struct sigaction sa = {.sa_handler = on_signal};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
    bench_die("curl_global_init failed");
  atexit(at_exit);
}

/* ---- files and time ----------------------------------------------------------- */

const char *bench_tmpdir(void) {
  if (tmpdir)
    return tmpdir;
  const char *base = getenv("TMPDIR");
  char tmpl[4096];
  snprintf(tmpl, sizeof(tmpl), "%s/sgpu-bench-XXXXXX", base && *base ? base : "/tmp");
  if (!mkdtemp(tmpl))
    bench_die("mkdtemp %s: %s", tmpl, strerror(errno));
  tmpdir = strdup(tmpl);
  if (!tmpdir)
    abort();
  return tmpdir;
}

char *bench_asprintf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *p;
  if (vasprintf(&p, fmt, ap) < 0)
    abort();
  va_end(ap);
  return p;
}

char *bench_tmp_path(const char *name) { return bench_asprintf("%s/%s", bench_tmpdir(), name); }

double bench_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void bench_sleep_ms(double ms) {
  if (ms <= 0)
    return;
  struct timespec ts = {(time_t)(ms / 1e3), (long)(fmod(ms, 1e3) * 1e6)};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !interrupted)
    ;
}

int bench_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    bench_die("socket: %s", strerror(errno));
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(sa);
  if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
    bench_die("cannot find a free port: %s", strerror(errno));
  close(fd);
  return ntohs(sa.sin_port);
}

void bench_write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    bench_die("cannot create %s: %s", path, strerror(errno));
  size_t n = strlen(text);
  for (size_t off = 0; off < n;) {
    ssize_t w = write(fd, text + off, n - off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      bench_die("cannot write %s: %s", path, strerror(errno));
    off += (size_t)w;
  }
  close(fd);
}

char *bench_read_file(const char *path) {
  FILE *f = fopen(path, "re");
  if (!f)
    return NULL;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  if (!buf)
    abort();
  size_t r;
  while ((r = fread(buf + n, 1, cap - n - 1, f)) > 0) {
    n += r;
    if (cap - n - 1 == 0) {
      cap *= 2;
      buf = realloc(buf, cap);
      if (!buf)
        abort();
    }
  }
  fclose(f);
  buf[n] = '\0';
  return buf;
}

/* ---- child processes ------------------------------------------------------------ */

static void write_errno(int fd, int e) {
  while (write(fd, &e, sizeof(e)) < 0 && errno == EINTR)
    ;
}

pid_t bench_spawn(const bench_spawn_opts_t *o) {
  int execp[2];
  if (pipe2(execp, O_CLOEXEC) < 0)
    bench_die("pipe: %s", strerror(errno));
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0)
    bench_die("fork: %s", strerror(errno));
  if (pid == 0) {
    /* Child: async-signal-safe calls only until exec. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    if (o->own_session) {
      setsid();
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent)
        _exit(127);
    }
    if (o->hide_cgroup2) {
      if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
        write_errno(execp[1], errno);
        _exit(127);
      }
      umount2("/sys/fs/cgroup/unified", MNT_DETACH);
    }
    /* Nothing of this process leaks into the child but its standard streams. */
    close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
    int in = open("/dev/null", O_RDONLY);
    int out = o->out_path ? open(o->out_path, O_WRONLY | O_CREAT | O_APPEND, 0600) : open("/dev/null", O_WRONLY);
    if (in < 0 || out < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0) {
      write_errno(execp[1], errno);
      _exit(127);
    }
    if (o->envp)
      execve(o->argv[0], o->argv, o->envp);
    else
      execvp(o->argv[0], o->argv);
    write_errno(execp[1], errno);
    _exit(127);
  }
  close(execp[1]);
  int child_errno = 0;
  ssize_t r;
  do
    r = read(execp[0], &child_errno, sizeof(child_errno));
  while (r < 0 && errno == EINTR);
  close(execp[0]);
  if (r > 0) {
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
      ;
    bench_die("cannot execute %s: %s", o->argv[0], strerror(child_errno));
  }
  track(pid);
  return pid;
}

bool bench_child_exited(pid_t pid, int *status) {
  int st = 0;
  pid_t r;
  do
    r = waitpid(pid, &st, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == pid || (r < 0 && errno == ECHILD)) {
    untrack(pid);
    if (status)
      *status = st;
    return true;
  }
  return false;
}

int bench_stop_child(pid_t pid, double grace_ms) {
  int st = 0;
  if (bench_child_exited(pid, &st))
    return st;
  kill(pid, SIGTERM);
  double deadline = bench_now_ms() + grace_ms;
  for (double pause = 0.2; bench_now_ms() < deadline; pause = pause < 20 ? pause * 2 : 20) {
    if (bench_child_exited(pid, &st))
      return st;
    struct timespec ts = {0, (long)(pause * 1e6)};
    nanosleep(&ts, NULL);
  }
  kill(pid, SIGKILL);
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
    ;
  untrack(pid);
  return st;
}

/* ---- sgpud ------------------------------------------------------------------------- */

static void print_log_tail(const char *path) {
  char *text = bench_read_file(path);
  if (!text)
    return;
  size_t n = strlen(text);
  const char *start = n > 2000 ? text + n - 2000 : text;
  fprintf(stderr, "--- last lines of %s ---\n%s\n---\n", path, start);
  free(text);
}

static char *trimmed(char *s) {
  size_t n = strlen(s);
  while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' '))
    s[--n] = '\0';
  return s;
}

void bench_sgpud_start(bench_sgpud_t *s, const char *sgpud_path) { bench_sgpud_start_config(s, sgpud_path, NULL); }

void bench_sgpud_start_config(bench_sgpud_t *s, const char *sgpud_path, const char *config_json) {
  memset(s, 0, sizeof(*s));
  s->data_dir = bench_tmp_path("sgpud-data");
  s->log_path = bench_tmp_path("sgpud.log");
  if (mkdir(s->data_dir, 0700) < 0)
    bench_die("mkdir %s: %s", s->data_dir, strerror(errno));
  char *config_path = bench_tmp_path("sgpud.json");
  if (config_json)
    bench_write_file(config_path, config_json);
  char *argv[] = {(char *)sgpud_path, "--listen",    "127.0.0.1:0", "--data-dir",
                  s->data_dir,        "--log-level", "warn",        config_json ? "--config" : NULL,
                  config_path,        NULL};
  bench_spawn_opts_t o = {.argv = argv, .out_path = s->log_path};
  s->pid = bench_spawn(&o);
  free(config_path);

  char *url_path = bench_tmp_path("sgpud-data/url");
  char *key_path = bench_tmp_path("sgpud-data/admin.key");
  double deadline = bench_now_ms() + 10000;
  while (!s->url) {
    if (bench_child_exited(s->pid, NULL)) {
      print_log_tail(s->log_path);
      bench_die("sgpud exited during start-up");
    }
    if (bench_now_ms() > deadline || interrupted)
      bench_die("sgpud did not write %s within 10 s", url_path);
    char *u = bench_read_file(url_path);
    if (u && strchr(u, '\n'))
      s->url = strdup(trimmed(u));
    free(u);
    if (!s->url)
      bench_sleep_ms(5);
  }
  char *k = bench_read_file(key_path);
  if (!k)
    bench_die("cannot read %s", key_path);
  s->key = strdup(trimmed(k));
  free(k);
  free(url_path);
  free(key_path);
  if (strncmp(s->url, "http://127.0.0.1:", 17) != 0)
    bench_die("sgpud listens on %s, not on 127.0.0.1", s->url);

  bench_http_t c;
  bench_http_init(&c, NULL);
  char *health = bench_asprintf("%s/healthz", s->url);
  while (bench_http(&c, "GET", health, NULL, 1000) != 200) {
    if (bench_now_ms() > deadline || interrupted)
      bench_die("sgpud's /healthz did not answer 200 within 10 s");
    bench_sleep_ms(5);
  }
  free(health);
  bench_http_cleanup(&c);
}

void bench_sgpud_stop(bench_sgpud_t *s) {
  if (s->pid > 0) {
    int st = bench_stop_child(s->pid, EXIT_GRACE_MS);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      bench_note("sgpud ended with wait status 0x%x", st);
      print_log_tail(s->log_path);
    }
  }
  free(s->url);
  free(s->key);
  free(s->data_dir);
  free(s->log_path);
  memset(s, 0, sizeof(*s));
}

/* ---- HTTP client ----------------------------------------------------------------------- */

/* Control-API calls go through libsgpu's client (include/sgpu/client.h), the
 * one the CLI uses; only the loss of an answer is folded into status 0. */

/* The benchmarks read answers they asked for (log pages, /metrics) whole. */
#define BENCH_MAX_ANSWER ((size_t)1 << 30)

void bench_http_init(bench_http_t *c, const char *key) {
  memset(c, 0, sizeof(*c));
  /* Loopback measurements: no proxy from the environment in between. */
  sg_client_options_t opts = {.no_proxy = true};
  sg_error_t *err = NULL;
  c->client = sg_client_new("", key, NULL, &opts, &err);
  if (!c->client)
    bench_die("%s", err->message);
  c->headers = curl_slist_append(NULL, "Content-Type: application/json");
  if (!c->headers)
    abort();
}

void bench_http_cleanup(bench_http_t *c) {
  sg_client_free(c->client);
  curl_slist_free_all(c->headers);
  free(c->body);
  memset(c, 0, sizeof(*c));
}

long bench_http(bench_http_t *c, const char *method, const char *url, const char *body, long timeout_ms) {
  free(c->body);
  c->body = NULL;
  c->len = 0;
  sg_client_request_t req = {
      .method = method,
      .path = url,
      .body = body,
      .body_len = body ? strlen(body) : 0,
      .headers = c->headers,
      .timeout_ms = timeout_ms,
      .max_bytes = BENCH_MAX_ANSWER,
  };
  sg_client_response_t resp;
  sg_error_t *err = NULL;
  if (sg_client_send(c->client, &req, &resp, &err) < 0) {
    sg_error_free(err);
    return 0;
  }
  c->body = steal_pointer(&resp.body);
  c->len = resp.len;
  long status = resp.status;
  sg_client_response_free(&resp);
  return status;
}

json_t *bench_http_json(bench_http_t *c, const char *method, const char *url, const char *body, long want) {
  long status = bench_http(c, method, url, body, 10000);
  if (status != want)
    bench_die("%s %s: expected HTTP %ld, got %ld: %.500s", method, url, want, status, c->body ? c->body : "");
  json_error_t jerr;
  json_t *j = json_loadb(c->body ? c->body : "", c->len, 0, &jerr);
  if (!json_is_object(j))
    bench_die("%s %s: the answer is not a JSON object: %.500s", method, url, c->body ? c->body : "");
  return j;
}

/* ---- statistics ------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double bench_percentile(const double *v, size_t n, double p) {
  if (n == 0)
    return NAN;
  double *s = malloc(n * sizeof(*s));
  if (!s)
    abort();
  memcpy(s, v, n * sizeof(*s));
  qsort(s, n, sizeof(*s), cmp_double);
  double rank = p / 100.0 * (double)(n - 1);
  size_t lo = (size_t)rank;
  double frac = rank - (double)lo;
  double r = lo + 1 < n ? s[lo] + frac * (s[lo + 1] - s[lo]) : s[lo];
  free(s);
  return r;
}

void bench_run_tool(char *const *argv) {
  char *log = bench_tmp_path("tool.log");
  unlink(log);
  bench_spawn_opts_t o = {.argv = argv, .out_path = log};
  pid_t pid = bench_spawn(&o);
  int st = 0;
  while (!bench_child_exited(pid, &st)) {
    if (interrupted)
      bench_die("interrupted");
    bench_sleep_ms(5);
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    print_log_tail(log);
    bench_die("%s failed (status 0x%x)", argv[0], st);
  }
  free(log);
}

void bench_series_add(bench_series_t *s, double x) {
  s->v = realloc(s->v, (s->n + 1) * sizeof(*s->v));
  if (!s->v)
    abort();
  s->v[s->n++] = x;
}

double bench_series_median(const bench_series_t *s) { return bench_percentile(s->v, s->n, 50); }

void bench_series_row(const char *label, const bench_series_t *s, int width, int decimals, const char *note) {
  if (!s->n)
    return;
  printf("  %-*s %9.*f %9.*f %9.*f  %s\n", width, label, decimals, bench_percentile(s->v, s->n, 50), decimals,
         bench_percentile(s->v, s->n, 90), decimals, bench_percentile(s->v, s->n, 0), note);
}

void bench_series_free(bench_series_t *s) {
  free(s->v);
  s->v = NULL;
  s->n = 0;
}

long bench_parse_count(const char *opt, const char *s, long lo, long hi) {
  char *end;
  long v = strtol(s, &end, 10);
  if (!*s || *end || v < lo || v > hi) {
    fprintf(stderr, "%s: %s must be an integer %ld..%ld\n", prog_name, opt, lo, hi);
    exit(2);
  }
  return v;
}

void bench_wait_zero(bench_http_t *api, const char *ep_url, double timeout_ms) {
  double deadline = bench_now_ms() + timeout_ms;
  for (;;) {
    json_t *ep = bench_http_json(api, "GET", ep_url, NULL, 200);
    json_t *ws = json_object_get(json_object_get(ep, "status"), "workers");
    json_int_t live = json_integer_value(json_object_get(ws, "starting")) +
                      json_integer_value(json_object_get(ws, "ready")) +
                      json_integer_value(json_object_get(ws, "draining"));
    json_decref(ep);
    if (live == 0)
      return;
    if (bench_interrupted())
      bench_die("interrupted");
    if (bench_now_ms() > deadline)
      bench_die("%s still has workers after %.0f s", ep_url, timeout_ms / 1000);
    bench_sleep_ms(10);
  }
}

double bench_first_answer(bench_http_t *api, const char *base_url, const char *name, const char *ep_url,
                          const char *body, long timeout_ms, double zero_timeout_ms) {
  char *infer_url = bench_asprintf("%s/e/%s/infer", base_url, name);
  bench_wait_zero(api, ep_url, zero_timeout_ms);
  bench_sleep_ms(50);
  double t0 = bench_now_ms();
  long status = bench_http(api, "POST", infer_url, body, timeout_ms);
  double t1 = bench_now_ms();
  if (status != 200)
    bench_die("POST %s: HTTP %ld: %.300s", infer_url, status, api->body ? api->body : "");
  free(infer_url);
  return t1 - t0;
}
