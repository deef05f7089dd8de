/* bench-volume: the cold start of a worker that loads its weights from a
 * volume, beside one that downloads the same bytes from a local HTTP server
 * when it starts, measured in one run.
 *
 * Setup: a private sgpud; a named volume "weights" preloaded with a file of
 * --size bytes (default 1 GiB, random) through POST /v1/volumes/weights/files
 * (a tarball); a small HTTP server of this program on 127.0.0.1 that answers
 * GET /weights.bin with the same file (sendfile).
 *
 * Each round, in turn (a new endpoint each time, min 0 max 1, process runtime,
 * echo-worker):
 *   volume    mounts the volume read-only; the worker reads
 *             $SGPU_VOLUME_WEIGHTS/weights.bin whole before it listens
 *             (WEIGHTS_DIR_ENV, WEIGHTS_NAME).
 *   download  mounts nothing; the worker downloads http://127.0.0.1:P/weights.bin
 *             whole before it listens (WEIGHTS_URL).
 * One POST /e/NAME/infer is timed from send to the last byte of its answer,
 * at zero workers; the worker's log line "weights loaded: N bytes" is checked
 * to hold the whole size. The file stays in the page cache for both (this
 * program does not drop caches, which would disturb everything else on the
 * machine): what differs is a read of a local file against a download through
 * a socket. Medians and their ratio are printed. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench-config.h"
#include "common.h"

#define INFER_BODY "{\"prompt\":\"hello\"}"
#define ZERO_TIMEOUT_MS 30000.0
#define MAX_ROUNDS 1000

static const char usage[] =
    "usage: bench-volume [--rounds N] [--warmup N] [--size BYTES] [--sgpud PATH] [--worker PATH]\n"
    "\n"
    "Times the cold start of a worker that reads its weights from a volume beside one\n"
    "that downloads them from a local HTTP server, and prints medians and their ratio.\n"
    "\n"
    "  --rounds N     measured rounds of each (default 5, at most 1000)\n"
    "  --warmup N     unmeasured rounds first (default 1)\n"
    "  --size BYTES   the weights file (default 1073741824)\n"
    "  --sgpud PATH   the daemon (default " BENCH_SGPUD ")\n"
    "  --worker PATH  the worker (default " BENCH_ECHO_WORKER ")\n";

/* Writes size random-looking bytes (a cheap generator: the content does not
 * matter, only that it is not sparse) to path. */
static void make_weights(const char *path, long long size) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    bench_die("%s: %s", path, strerror(errno));
  static unsigned long long buf[1 << 17];
  unsigned long long x = 0x9e3779b97f4a7c15ull;
  for (long long done = 0; done < size;) {
    for (size_t i = 0; i < sizeof(buf) / sizeof(buf[0]); i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      buf[i] = x;
    }
    size_t n = size - done < (long long)sizeof(buf) ? (size_t)(size - done) : sizeof(buf);
    if (write(fd, buf, n) != (ssize_t)n)
      bench_die("%s: %s", path, strerror(errno));
    done += (long long)n;
  }
  close(fd);
}

/* A forked HTTP/1.0 server: every connection gets the file, then is closed. */
static pid_t serve_file(const char *path, int *port) {
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(sa);
  int one = 1;
  if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
      bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 64) < 0 ||
      getsockname(lfd, (struct sockaddr *)&sa, &len) < 0)
    bench_die("HTTP server: %s", strerror(errno));
  *port = ntohs(sa.sin_port);
  pid_t pid = fork();
  if (pid < 0)
    bench_die("fork: %s", strerror(errno));
  if (pid > 0) {
    close(lfd);
    return pid;
  }
  signal(SIGTERM, SIG_DFL);
  prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives this program */
  for (;;) {
    int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
      continue;
    char req[4096];
    size_t got = 0;
    while (got < sizeof(req) - 1) { /* the request head, to its empty line */
      ssize_t n = read(c, req + got, sizeof(req) - 1 - got);
      if (n <= 0)
        break;
      got += (size_t)n;
      req[got] = '\0';
      if (strstr(req, "\r\n\r\n"))
        break;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0) {
      char head[128];
      int hn = snprintf(head, sizeof(head), "HTTP/1.0 200 OK\r\nContent-Length: %lld\r\n\r\n", (long long)st.st_size);
      if (write(c, head, (size_t)hn) == hn) {
        off_t off = 0;
        while (off < st.st_size && sendfile(c, fd, &off, (size_t)(st.st_size - off)) > 0)
          ;
      }
    }
    if (fd >= 0)
      close(fd);
    close(c);
  }
}

struct run {
  bench_sgpud_t d;
  bench_http_t api;
  const char *worker;
  long serial;
  long long size;
  char *weights_url;
};

/* Whether the endpoint's log says its worker loaded size bytes. */
static bool loaded_all(struct run *r, const char *ep_url) {
  char *url = bench_asprintf("%s/logs?limit=100", ep_url);
  char *want = bench_asprintf("weights loaded: %lld bytes", r->size);
  long status = bench_http(&r->api, "GET", url, NULL, 10000);
  bool ok = status == 200 && r->api.body && strstr(r->api.body, want);
  free(url);
  free(want);
  return ok;
}

/* One request to a new endpoint at zero workers; its time in ms. */
static double round_one(struct run *r, bool volume) {
  char name[32];
  snprintf(name, sizeof(name), "%s-%ld", volume ? "vol" : "dl", ++r->serial);
  json_t *env = json_pack("{s:s, s:s}", "WARMUP_MS", "0", "DELAY_MS", "0");
  if (volume) {
    json_object_set_new(env, "WEIGHTS_DIR_ENV", json_string("SGPU_VOLUME_WEIGHTS"));
    json_object_set_new(env, "WEIGHTS_NAME", json_string("weights.bin"));
  } else {
    json_object_set_new(env, "WEIGHTS_URL", json_string(r->weights_url));
  }
  json_t *spec =
      json_pack("{s:s, s:s, s:[s], s:o, s:{s:s, s:f}, s:{s:i, s:i, s:i, s:i, s:i}}", "name", name, "runtime", "process",
                "command", r->worker, "env", env, "health", "path", "/health", "startup_timeout_s", 600.0, "workers",
                "min", 0, "max", 1, "idle_timeout_s", 300, "max_concurrency", 1, "request_timeout_s", 600);
  if (volume)
    json_object_set_new(spec, "volumes",
                        json_pack("[{s:s, s:s, s:b}]", "name", "weights", "path", "/weights", "read_only", 1));
  char *body = json_dumps(spec, JSON_COMPACT);
  char *url = bench_asprintf("%s/v1/endpoints", r->d.url);
  json_decref(bench_http_json(&r->api, "POST", url, body, 201));
  char *ep_url = bench_asprintf("%s/v1/endpoints/%s", r->d.url, name);
  double ms = bench_first_answer(&r->api, r->d.url, name, ep_url, INFER_BODY, 600000, ZERO_TIMEOUT_MS);
  double deadline = bench_now_ms() + 10000;
  while (!loaded_all(r, ep_url)) {
    if (bench_now_ms() > deadline)
      bench_die("endpoint %s: no \"weights loaded: %lld bytes\" in its log", name, r->size);
    bench_sleep_ms(20);
  }
  json_decref(bench_http_json(&r->api, "DELETE", ep_url, NULL, 200));
  free(ep_url);
  free(url);
  free(body);
  json_decref(spec);
  return ms;
}

int main(int argc, char **argv) {
  static const struct option opts[] = {{"rounds", required_argument, NULL, 'r'},
                                       {"warmup", required_argument, NULL, 'w'},
                                       {"size", required_argument, NULL, 'z'},
                                       {"sgpud", required_argument, NULL, 's'},
                                       {"worker", required_argument, NULL, 'k'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  long rounds = 5, warmup = 1;
  long long size = 1ll << 30;
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
    case 'z':
      size = bench_parse_count("--size", optarg, 1, 1l << 40);
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
  if (optind < argc || worker[0] != '/') {
    fputs(usage, stderr);
    return 2;
  }
  bench_init("bench-volume");
  bench_need_executable("sgpud", sgpud);
  bench_need_executable("worker", worker);

  struct run r = {.worker = worker, .size = size};
  char *dir = bench_tmp_path("weights");
  if (mkdir(dir, 0755) < 0)
    bench_die("%s: %s", dir, strerror(errno));
  char *file = bench_asprintf("%s/weights.bin", dir);
  bench_note("writing %lld bytes of weights", size);
  make_weights(file, size);
  int port;
  pid_t server = serve_file(file, &port);
  r.weights_url = bench_asprintf("http://127.0.0.1:%d/weights.bin", port);

  bench_sgpud_start(&r.d, sgpud);
  bench_http_init(&r.api, r.d.key);
  char *url = bench_asprintf("%s/v1/volumes", r.d.url);
  json_decref(bench_http_json(&r.api, "POST", url, "{\"name\": \"weights\"}", 201));
  free(url);
  /* The preload: a tarball of the file, uploaded with curl (streamed). */
  char *tar = bench_tmp_path("weights.tar");
  char *tar_argv[] = {"tar", "-C", dir, "-cf", tar, "weights.bin", NULL};
  bench_run_tool(tar_argv);
  char *auth = bench_asprintf("Authorization: Bearer %s", r.d.key);
  char *data = bench_asprintf("%s", tar);
  char *up = bench_asprintf("%s/v1/volumes/weights/files", r.d.url);
  char *curl_argv[] = {"curl", "-sf", "-o", "/dev/null", "-H", auth, "-X", "POST", "-T", data, up, NULL};
  double t0 = bench_now_ms();
  bench_run_tool(curl_argv);
  bench_note("preloaded the volume in %.0f ms", bench_now_ms() - t0);
  unlink(tar);

  bench_series_t vol = {0}, dl = {0};
  for (long i = -warmup; i < rounds; i++) {
    double v = round_one(&r, true);
    double d = round_one(&r, false);
    bench_note("round %ld: volume %.0f ms, download %.0f ms", i, v, d);
    if (i < 0)
      continue;
    bench_series_add(&vol, v);
    bench_series_add(&dl, d);
  }
  printf("cold start with %lld bytes of weights, %ld rounds (ms)\n", size, rounds);
  printf("  %-24s %10s %10s %10s\n", "", "median", "p90", "min");
  bench_series_row("volume (read file)", &vol, 24, 1, "");
  bench_series_row("download (local HTTP)", &dl, 24, 1, "");
  printf("  download / volume: %.2f\n", bench_series_median(&dl) / bench_series_median(&vol));

  kill(server, SIGTERM);
  waitpid(server, NULL, 0);
  bench_http_cleanup(&r.api);
  bench_sgpud_stop(&r.d);
  bench_series_free(&vol);
  bench_series_free(&dl);
  free(r.weights_url);
  free(file);
  free(dir);
  free(tar);
  free(auth);
  free(data);
  free(up);
  return 0;
}
