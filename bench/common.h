/* Shared pieces of the benchmark programs: a temporary directory, child
 * processes that are always stopped on exit, a private sgpud, a small
 * client over libsgpu's API client and order statistics.
 *
 * Every failure is fatal: bench_die() prints one line and exits, and the
 * exit handler stops every child still tracked and removes the temporary
 * directory, so callers need no error paths of their own. */
#ifndef SGPU_BENCH_COMMON_H
#define SGPU_BENCH_COMMON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct sg_client;
struct curl_slist;

/* Sets up signal handling, the exit handler and libcurl; prog prefixes messages. */
void bench_init(const char *prog);

/* Dies unless path names an executable file; what names it in the message. */
void bench_need_executable(const char *what, const char *path);

/* Prints "prog: message" on stderr and exits with status 1 (cleaning up). */
__attribute__((format(printf, 1, 2), noreturn)) void bench_die(const char *fmt, ...);

/* Prints "prog: message" on stderr (progress and warnings). */
__attribute__((format(printf, 1, 2))) void bench_note(const char *fmt, ...);

/* True once SIGINT or SIGTERM arrived; long loops stop when it is. */
bool bench_interrupted(void);

/* The private temporary directory of this run, created on first use and
 * removed with everything in it at exit. */
const char *bench_tmpdir(void);

/* asprintf() that aborts when out of memory. */
__attribute__((format(printf, 1, 2))) char *bench_asprintf(const char *fmt, ...);

/* Returns a malloc'ed "tmpdir/name". */
char *bench_tmp_path(const char *name);

/* Monotonic clock in milliseconds, with sub-millisecond precision. */
double bench_now_ms(void);
void bench_sleep_ms(double ms);

/* A loopback TCP port that was free a moment ago. */
int bench_free_port(void);

/* Writes text to path (mode 0600), dying on failure. */
void bench_write_file(const char *path, const char *text);

/* Reads a whole small file; returns NULL when it does not exist (yet). */
char *bench_read_file(const char *path);

/* Options of bench_spawn(). */
typedef struct {
  char *const *argv;    /* argv[0] is the path executed */
  char *const *envp;    /* NULL: inherit this environment, and search PATH for argv[0] */
  const char *out_path; /* stdout and stderr go here; NULL: /dev/null */
  bool own_session;     /* setsid() and die with this process, as sgpud's runtime does */
  bool hide_cgroup2;    /* a private mount namespace without /sys/fs/cgroup/unified, as
                           sgpud starts crun on hybrid cgroup hosts */
} bench_spawn_opts_t;

/* Forks and executes; returns once the exec succeeded (an exec failure is
 * fatal). The child is tracked: it is stopped at exit unless
 * bench_stop_child() reaped it first. */
pid_t bench_spawn(const bench_spawn_opts_t *o);

/* Sends SIGTERM, waits up to grace_ms, then SIGKILL; reaps and untracks the
 * child. Returns its wait status. */
int bench_stop_child(pid_t pid, double grace_ms);

/* Reaps pid if it already exited; returns true (and untracks it) when it did. */
bool bench_child_exited(pid_t pid, int *status);

/* A private sgpud on 127.0.0.1 with its data directory under bench_tmpdir(). */
typedef struct {
  pid_t pid;
  char *url; /* "http://127.0.0.1:PORT" */
  char *key; /* admin key */
  char *data_dir;
  char *log_path;
} bench_sgpud_t;

/* Starts sgpud on a free port and waits until /healthz answers 200. */
void bench_sgpud_start(bench_sgpud_t *s, const char *sgpud_path);

/* bench_sgpud_start() with config_json (may be NULL) as its --config file. */
void bench_sgpud_start_config(bench_sgpud_t *s, const char *sgpud_path, const char *config_json);

/* Runs argv (PATH searched) to completion with its output in a file of the
 * temporary directory; dies, showing that output, unless it exits with 0. */
void bench_run_tool(char *const *argv);

/* Stops sgpud (it stops its workers) and frees s's strings. */
void bench_sgpud_stop(bench_sgpud_t *s);

/* A client of libsgpu's API client module (include/sgpu/client.h) with one
 * reused connection, sending "Content-Type: application/json", and the last
 * answer's body. URLs are whole ("http://127.0.0.1:PORT/v1/..."). */
typedef struct {
  struct sg_client *client;
  struct curl_slist *headers;
  char *body; /* the last answer's body, NUL-terminated; NULL when none came */
  size_t len;
} bench_http_t;

/* key may be NULL (no Authorization header). */
void bench_http_init(bench_http_t *c, const char *key);
void bench_http_cleanup(bench_http_t *c);

/* Sends one request (body NULL: none) and reads the whole answer into
 * c->body. Returns the HTTP status, or 0 when no answer came (connection
 * refused, timeout). */
long bench_http(bench_http_t *c, const char *method, const char *url, const char *body, long timeout_ms);

/* bench_http() whose answer must be status want with a JSON object body;
 * returns the parsed object (the caller owns it). */
json_t *bench_http_json(bench_http_t *c, const char *method, const char *url, const char *body, long want);

/* Percentile p in [0, 100] of v[0..n-1] by linear interpolation between
 * closest ranks; v is not changed. Returns NAN for n == 0. */
double bench_percentile(const double *v, size_t n, double p);

/* A growing list of measurements. */
typedef struct {
  double *v;
  size_t n;
} bench_series_t;

void bench_series_add(bench_series_t *s, double x);
double bench_series_median(const bench_series_t *s);
/* Prints "  label  median p90 min  note" with `decimals` digits, the label
 * padded to `width`; nothing when the series is empty. */
void bench_series_row(const char *label, const bench_series_t *s, int width, int decimals, const char *note);
void bench_series_free(bench_series_t *s);

/* Parses the integer value of option opt within [lo, hi]; exits with status
 * 2 and a message otherwise. */
long bench_parse_count(const char *opt, const char *s, long lo, long hi);

/* Waits (at most timeout_ms) until the endpoint at ep_url has no starting,
 * ready or draining worker; dies otherwise. */
void bench_wait_zero(bench_http_t *api, const char *ep_url, double timeout_ms);

/* Times one POST of body to base_url/e/NAME/infer once the endpoint at
 * ep_url has no worker (and 50 ms more, so nothing of the last round is in
 * flight): from send to the whole answer, in ms. Dies unless it is 200; the
 * answer stays in api->body. */
double bench_first_answer(bench_http_t *api, const char *base_url, const char *name, const char *ep_url,
                          const char *body, long timeout_ms, double zero_timeout_ms);

#endif
