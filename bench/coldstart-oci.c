/* bench-coldstart-oci: time to the first answer of an oci endpoint at zero
 * workers, beside bare crun running the same bundle and beside the process
 * runtime, all in one run.
 *
 * Set-up: the static echo-worker is built into an OCI image
 * (tests/integration/oci-image.sh), pushed to a docker-registry on a free
 * loopback port, and preheated into a private sgpud (POST /v1/images), so
 * that every measured start finds the image cached. echo-worker runs with
 * WARMUP_MS=0.
 *
 * Each round, in turn:
 *   oci      a new endpoint (runtime oci, workers.min 0) is created and seen
 *            at zero workers; one POST /e/NAME/infer is timed from send to
 *            the last byte of its answer. The worker's cold_start (pull,
 *            rootfs, container, first healthy probe) is read back from
 *            GET /v1/endpoints/NAME/workers. The endpoint is then deleted
 *            and its container waited for.
 *   process  the same with the process runtime running the same binary.
 *   bare     `crun run` of the same bundle (the config.json sgpud wrote for
 *            its first oci worker, the image unpacked with umoci as its root),
 *            started as sgpud starts it (on hybrid cgroup hosts: a private
 *            mount namespace without /sys/fs/cgroup/unified and
 *            --cgroup-manager=disabled); GET /health is polled every
 *            --poll-ms from the spawn, and the times from the spawn to the
 *            first 200 and to the first /infer answer are taken.
 * Medians are reported, since the machine is shared and noisy. Needs root,
 * crun, umoci, skopeo, docker-registry and cc; without them it says why and
 * exits with status 0. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "bench-config.h"
#include "common.h"

#define INFER_BODY "{\"prompt\":\"hello\"}"
#define IMAGE_NAME "bench/echo:latest"
#define ZERO_TIMEOUT_MS 15000.0
#define HEALTH_TIMEOUT_MS 10000.0
#define PULL_TIMEOUT_MS 60000.0
#define MAX_ROUNDS 1000
#define CGROUP2_MAGIC 0x63677270

/* The path of name on PATH (malloc'ed), or NULL. */
static char *on_path(const char *name) {
  const char *path = getenv("PATH");
  char *copy = bench_asprintf("%s", path ? path : "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
  char *found = NULL;
  for (char *save = NULL, *d = strtok_r(copy, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
    char *p = bench_asprintf("%s/%s", d, name);
    if (access(p, X_OK) == 0)
      found = p;
    else
      free(p);
  }
  free(copy);
  return found;
}

/* True on hybrid cgroup hosts, where crun runs as sgpud runs it there. */
static bool cgroup_hybrid(void) {
  struct statfs a, b;
  return !(statfs("/sys/fs/cgroup", &a) == 0 && (long)a.f_type == CGROUP2_MAGIC) &&
         statfs("/sys/fs/cgroup/unified", &b) == 0 && (long)b.f_type == CGROUP2_MAGIC;
}

/* ---- the image and its registry --------------------------------------------- */

struct registry {
  pid_t pid;
  char addr[32];
};

static void registry_start(struct registry *r) {
  int port = bench_free_port();
  snprintf(r->addr, sizeof(r->addr), "127.0.0.1:%d", port);
  char *root = bench_tmp_path("registry");
  char *conf = bench_tmp_path("registry.yml");
  char *text = bench_asprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\n"
                              "http:\n  addr: %s\n",
                              root, r->addr);
  bench_write_file(conf, text);
  char *log = bench_tmp_path("registry.log");
  char *argv[] = {"docker-registry", "serve", conf, NULL};
  bench_spawn_opts_t o = {.argv = argv, .out_path = log};
  r->pid = bench_spawn(&o);
  bench_http_t c;
  bench_http_init(&c, NULL);
  char *url = bench_asprintf("http://%s/v2/", r->addr);
  double deadline = bench_now_ms() + 10000;
  while (bench_http(&c, "GET", url, NULL, 1000) != 200) {
    if (bench_child_exited(r->pid, NULL) || bench_now_ms() > deadline || bench_interrupted())
      bench_die("docker-registry did not answer on %s (its log: %s)", r->addr, log);
    bench_sleep_ms(10);
  }
  bench_http_cleanup(&c);
  free(url);
  free(log);
  free(text);
  free(conf);
  free(root);
}

/* Builds the image into TMP/img and pushes it; returns the image reference. */
static char *image_build_push(const struct registry *r) {
  char *script = bench_asprintf("%s/tests/integration/oci-image.sh", BENCH_SOURCE_ROOT);
  char *out = bench_tmp_path("img");
  char *build[] = {"bash", script, "build", out, BENCH_SOURCE_ROOT, NULL};
  bench_run_tool(build);
  char *ref = bench_asprintf("%s/%s", r->addr, IMAGE_NAME);
  char *push[] = {"bash", script, "push", out, (char *)r->addr, IMAGE_NAME, NULL};
  bench_run_tool(push);
  free(out);
  free(script);
  return ref;
}

/* ---- sgpud ------------------------------------------------------------------ */

struct ours {
  bench_sgpud_t d;
  bench_http_t api;
  const char *image;
  const char *worker; /* for the process runtime */
  long serial;
  char *bare_config; /* the config.json of the first oci worker */
};

static void preheat(struct ours *o) {
  char *url = bench_asprintf("%s/v1/images", o->d.url);
  char *body = bench_asprintf("{\"image\":\"%s\"}", o->image);
  long st = bench_http(&o->api, "POST", url, body, 10000);
  if (st != 200 && st != 202)
    bench_die("POST /v1/images: HTTP %ld: %.300s", st, o->api.body ? o->api.body : "");
  double deadline = bench_now_ms() + PULL_TIMEOUT_MS;
  for (;;) {
    json_t *j = bench_http_json(&o->api, "GET", url, NULL, 200);
    bool cached = false;
    size_t i;
    json_t *img;
    json_array_foreach(json_object_get(j, "images"), i, img) {
      const char *ref = json_string_value(json_object_get(img, "image"));
      cached |= ref && strstr(ref, IMAGE_NAME) != NULL;
    }
    json_t *p;
    json_array_foreach(json_object_get(j, "pulls"), i, p) {
      const char *e = json_string_value(json_object_get(p, "error"));
      if (e)
        bench_die("the preheat of %s failed: %s", o->image, e);
    }
    json_decref(j);
    if (cached)
      break;
    if (bench_now_ms() > deadline || bench_interrupted())
      bench_die("%s was not cached within %.0f s", o->image, PULL_TIMEOUT_MS / 1000);
    bench_sleep_ms(20);
  }
  free(body);
  free(url);
}

static void create_endpoint(struct ours *o, const char *name, bool oci) {
  json_t *spec =
      json_pack("{s:s, s:s, s:{s:s, s:s}, s:{s:s}, s:{s:i, s:i, s:i, s:i, s:i}}", "name", name, "runtime",
                oci ? "oci" : "process", "env", "WARMUP_MS", "0", "DELAY_MS", "0", "health", "path", "/health",
                "workers", "min", 0, "max", 1, "idle_timeout_s", 30, "max_concurrency", 1, "request_timeout_s", 30);
  if (oci)
    json_object_set_new(spec, "image", json_string(o->image));
  else
    json_object_set_new(spec, "command", json_pack("[s]", o->worker));
  char *body = json_dumps(spec, JSON_COMPACT);
  char *url = bench_asprintf("%s/v1/endpoints", o->d.url);
  json_decref(bench_http_json(&o->api, "POST", url, body, 201));
  free(url);
  free(body);
  json_decref(spec);
}

/* A worker's start, as the workers API reports it. */
struct phases {
  double total, pull, rootfs, container, probe;
};

static double num(json_t *o, const char *key) {
  json_t *v = json_object_get(o, key);
  return json_is_number(v) ? json_number_value(v) : NAN;
}

/* One request to a new endpoint at zero workers; returns its time in ms. */
static double ours_round(struct ours *o, bool oci, struct phases *ph) {
  char name[32];
  snprintf(name, sizeof(name), "%s-%ld", oci ? "oci" : "proc", ++o->serial);
  char *ep_url = bench_asprintf("%s/v1/endpoints/%s", o->d.url, name);
  char *workers_url = bench_asprintf("%s/workers", ep_url);
  create_endpoint(o, name, oci);
  double ms = bench_first_answer(&o->api, o->d.url, name, ep_url, INFER_BODY, 30000, ZERO_TIMEOUT_MS);

  json_t *j = bench_http_json(&o->api, "GET", workers_url, NULL, 200);
  json_t *w = json_array_get(json_object_get(j, "workers"), 0);
  if (!w)
    bench_die("%s lists no worker after it answered", workers_url);
  json_t *cs = json_object_get(w, "cold_start");
  *ph = (struct phases){num(cs, "total_ms"), num(cs, "pull_ms"), num(cs, "rootfs_ms"), num(cs, "container_ms"),
                        num(cs, "probe_ms")};
  pid_t pid = (pid_t)json_integer_value(json_object_get(w, "pid"));
  if (oci && !o->bare_config) {
    char *path =
        bench_asprintf("%s/oci/workers/%s/config.json", o->d.data_dir, json_string_value(json_object_get(w, "id")));
    o->bare_config = bench_read_file(path);
    if (!o->bare_config)
      bench_die("cannot read the worker's bundle config %s", path);
    free(path);
  }
  json_decref(j);

  json_decref(bench_http_json(&o->api, "DELETE", ep_url, NULL, 200));
  double deadline = bench_now_ms() + ZERO_TIMEOUT_MS;
  while (pid > 0 && (kill(pid, 0) == 0 || errno != ESRCH)) {
    if (bench_now_ms() > deadline || bench_interrupted())
      bench_die("worker %d of a deleted endpoint still runs after %.0f s", (int)pid, ZERO_TIMEOUT_MS / 1000);
    bench_sleep_ms(5);
  }
  free(ep_url);
  free(workers_url);
  return ms;
}

/* ---- bare crun ------------------------------------------------------------------ */

struct bare {
  const char *crun;
  bool hybrid;
  char *bundle, *state, *rootfs;
  json_t *config; /* sgpud's config.json, root and PORT to be replaced */
  long serial;
  double poll_ms;
};

static void bare_setup(struct bare *b, const char *image_out) {
  b->bundle = bench_tmp_path("bare");
  b->state = bench_tmp_path("bare-state");
  char *layout = bench_asprintf("%s/layout:latest", image_out);
  char *unpack[] = {"umoci", "unpack", "--image", layout, b->bundle, NULL};
  bench_run_tool(unpack);
  b->rootfs = bench_asprintf("%s/rootfs", b->bundle);
  free(layout);
}

/* Writes config.json for a container answering on port. */
static void bare_config(struct bare *b, int port) {
  json_t *c = json_deep_copy(b->config);
  json_object_set_new(json_object_get(c, "root"), "path", json_string(b->rootfs));
  json_t *env = json_object_get(json_object_get(c, "process"), "env");
  size_t i;
  json_t *v;
  json_array_foreach(env, i, v) {
    const char *s = json_string_value(v);
    if (s && !strncmp(s, "PORT=", 5)) {
      char kv[32];
      snprintf(kv, sizeof(kv), "PORT=%d", port);
      json_array_set_new(env, i, json_string(kv));
    }
  }
  char *path = bench_asprintf("%s/config.json", b->bundle);
  if (json_dump_file(c, path, JSON_COMPACT) < 0)
    bench_die("cannot write %s", path);
  free(path);
  json_decref(c);
}

/* Runs the bundle in the foreground; sets the times from the spawn to the
 * first /health 200 and to the first /infer answer. */
static void bare_round(struct bare *b, double *health_ms, double *infer_ms) {
  int port = bench_free_port();
  bare_config(b, port);
  char id[32], url[96];
  snprintf(id, sizeof(id), "bench-%d-%ld", (int)getpid(), ++b->serial);
  char *argv[12];
  int n = 0;
  argv[n++] = (char *)b->crun;
  argv[n++] = "--root";
  argv[n++] = b->state;
  if (b->hybrid)
    argv[n++] = "--cgroup-manager=disabled";
  argv[n++] = "run";
  argv[n++] = "--bundle";
  argv[n++] = b->bundle;
  argv[n++] = id;
  argv[n] = NULL;
  char *envp[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", NULL};
  bench_http_t c;
  bench_http_init(&c, NULL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/health", port);
  bench_spawn_opts_t so = {.argv = argv, .envp = envp, .own_session = true, .hide_cgroup2 = b->hybrid};
  double t0 = bench_now_ms();
  pid_t pid = bench_spawn(&so);
  double t_health;
  for (;;) {
    long status = bench_http(&c, "GET", url, NULL, 2000);
    double now = bench_now_ms();
    if (status == 200) {
      t_health = now;
      break;
    }
    if (now - t0 > HEALTH_TIMEOUT_MS || bench_interrupted() || bench_child_exited(pid, NULL))
      bench_die("bare crun did not answer /health with 200 within %.0f s", HEALTH_TIMEOUT_MS / 1000);
    bench_sleep_ms(b->poll_ms);
  }
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/infer", port);
  long status = bench_http(&c, "POST", url, INFER_BODY, 30000);
  double t_infer = bench_now_ms();
  if (status != 200)
    bench_die("POST %s on bare crun: HTTP %ld", url, status);
  bench_http_cleanup(&c);
  /* crun in the foreground forwards SIGTERM to the container and removes it
   * once it exited. */
  bench_stop_child(pid, 5000);
  char *left = bench_asprintf("%s/%s", b->state, id);
  struct stat st;
  if (stat(left, &st) == 0) {
    char *del[8];
    int k = 0;
    del[k++] = (char *)b->crun;
    del[k++] = "--root";
    del[k++] = b->state;
    if (b->hybrid)
      del[k++] = "--cgroup-manager=disabled";
    del[k++] = "delete";
    del[k++] = "--force";
    del[k++] = id;
    del[k] = NULL;
    bench_spawn_opts_t dso = {.argv = del, .hide_cgroup2 = b->hybrid};
    pid_t dp = bench_spawn(&dso);
    bench_stop_child(dp, 10000);
  }
  free(left);
  *health_ms = t_health - t0;
  *infer_ms = t_infer - t0;
}

/* ---- main ---------------------------------------------------------------------- */

static const char usage[] =
    "usage: bench-coldstart-oci [--rounds N] [--warmup N] [--poll-ms MS] [--sgpud PATH] [--worker PATH]\n"
    "\n"
    "Times the first answer of an oci endpoint at zero workers (image cached)\n"
    "through sgpud, beside bare `crun run` of the same bundle and beside the\n"
    "process runtime, and prints medians and the workers API's breakdown.\n"
    "\n"
    "  --rounds N     measured rounds (default 10, at most 1000)\n"
    "  --warmup N     unmeasured rounds first (default 1)\n"
    "  --poll-ms MS   bare crun: /health polled every MS ms (default 0.5)\n"
    "  --sgpud PATH   the daemon (default " BENCH_SGPUD ")\n"
    "  --worker PATH  the worker of the process runtime (default " BENCH_ECHO_WORKER ")\n";

int main(int argc, char **argv) {
  static const struct option opts[] = {{"rounds", required_argument, NULL, 'r'},
                                       {"warmup", required_argument, NULL, 'w'},
                                       {"poll-ms", required_argument, NULL, 'p'},
                                       {"sgpud", required_argument, NULL, 's'},
                                       {"worker", required_argument, NULL, 'k'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  long rounds = 10, warmup = 1;
  double poll_ms = 0.5;
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
    case 'p':
      poll_ms = strtod(optarg, NULL);
      if (!(poll_ms >= 0.01 && poll_ms <= 100)) {
        fprintf(stderr, "bench-coldstart-oci: --poll-ms must be 0.01..100\n");
        return 2;
      }
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
    fprintf(stderr, "bench-coldstart-oci: --worker must be an absolute path\n");
    return 2;
  }
  bench_init("bench-coldstart-oci");
  bench_need_executable("sgpud", sgpud);
  bench_need_executable("worker", worker);
  if (geteuid() != 0) {
    bench_note("skipped: containers need root");
    return 0;
  }
  static const char *const tools[] = {"crun", "umoci", "skopeo", "docker-registry", "cc", "bash"};
  for (size_t i = 0; i < sizeof(tools) / sizeof(tools[0]); i++) {
    char *p = on_path(tools[i]);
    if (!p) {
      bench_note("skipped: %s is not installed (scripts/install-deps.sh installs it)", tools[i]);
      return 0;
    }
    free(p);
  }
  char *crun = on_path("crun");

  struct registry reg;
  registry_start(&reg);
  char *image = image_build_push(&reg);
  char *image_out = bench_tmp_path("img");
  struct bare b = {.crun = crun, .hybrid = cgroup_hybrid(), .poll_ms = poll_ms};
  bare_setup(&b, image_out);

  struct ours o = {.image = image, .worker = worker};
  char *config = bench_asprintf("{\"insecure_registries\":[\"%s\"],\"stop_grace_s\":2}", reg.addr);
  bench_sgpud_start_config(&o.d, sgpud, config);
  bench_http_init(&o.api, o.d.key);
  preheat(&o);

  bench_series_t oci = {0}, proc = {0}, bare_health = {0}, bare_infer = {0};
  bench_series_t ph_total = {0}, ph_pull = {0}, ph_rootfs = {0}, ph_container = {0}, ph_probe = {0};
  bench_series_t proc_cold = {0};
  for (long r = -warmup; r < rounds; r++) {
    struct phases ph, pph;
    double t_oci = ours_round(&o, true, &ph);
    if (!b.config) {
      b.config = json_loads(o.bare_config, 0, NULL);
      if (!b.config)
        bench_die("the worker's config.json is not JSON");
    }
    double t_proc = ours_round(&o, false, &pph);
    double health, infer;
    bare_round(&b, &health, &infer);
    bench_note("round %ld/%ld: oci %.3f ms (start %.0f: rootfs %.0f, container %.0f, probe %.0f); process %.3f ms; "
               "bare crun %.3f / %.3f ms",
               r + 1, rounds, t_oci, ph.total, ph.rootfs, ph.container, ph.probe, t_proc, health, infer);
    if (r < 0)
      continue;
    bench_series_add(&oci, t_oci);
    bench_series_add(&proc, t_proc);
    bench_series_add(&bare_health, health);
    bench_series_add(&bare_infer, infer);
    bench_series_add(&ph_total, ph.total);
    bench_series_add(&ph_pull, ph.pull);
    bench_series_add(&ph_rootfs, ph.rootfs);
    bench_series_add(&ph_container, ph.container);
    bench_series_add(&ph_probe, ph.probe);
    bench_series_add(&proc_cold, pph.total);
  }

  printf("\nbench-coldstart-oci: first answer at zero workers, image cached, %ld rounds (after %ld warm-up), "
         "echo-worker WARMUP_MS=0\n",
         rounds, warmup);
  printf("crun %s; bare /health polled every %.2f ms\n\n",
         b.hybrid ? "in a private mount namespace without /sys/fs/cgroup/unified, --cgroup-manager=disabled" : "as is",
         poll_ms);
  printf("  %-50s %9s %9s %9s\n", "ms", "median", "p90", "min");
  bench_series_row("bare crun run: spawn -> first /health 200", &bare_health, 50, 3, "");
  bench_series_row("bare crun run: spawn -> first /infer answer", &bare_infer, 50, 3, "");
  bench_series_row("oci: POST /e/NAME/infer at zero -> answer", &oci, 50, 3, "");
  bench_series_row("process: POST /e/NAME/infer at zero -> answer", &proc, 50, 3, "");
  printf("\n  oci workers' cold_start (workers API, whole ms)\n");
  bench_series_row("  pull_ms", &ph_pull, 50, 3, "");
  bench_series_row("  rootfs_ms (overlay + config.json)", &ph_rootfs, 50, 3, "");
  bench_series_row("  container_ms (crun spawned -> pid file)", &ph_container, 50, 3, "");
  bench_series_row("  probe_ms (-> first healthy probe)", &ph_probe, 50, 3, "");
  bench_series_row("  total_ms (worker start -> healthy)", &ph_total, 50, 3, "");
  bench_series_row("process workers' total_ms", &proc_cold, 50, 3, "");
  printf("\n  %-58s %7s %9s\n", "medians", "ratio", "diff ms");
  printf("  %-58s %7.2f %+9.3f\n", "oci first answer / bare crun first /infer answer",
         bench_series_median(&oci) / bench_series_median(&bare_infer),
         bench_series_median(&oci) - bench_series_median(&bare_infer));
  printf("  %-58s %7.2f %+9.3f\n", "oci first answer / bare crun first /health 200",
         bench_series_median(&oci) / bench_series_median(&bare_health),
         bench_series_median(&oci) - bench_series_median(&bare_health));
  printf("  %-58s %7.2f %+9.3f\n", "oci first answer / process first answer",
         bench_series_median(&oci) / bench_series_median(&proc),
         bench_series_median(&oci) - bench_series_median(&proc));
  printf("\n");
  fflush(stdout);

  bench_http_cleanup(&o.api);
  bench_sgpud_stop(&o.d);
  bench_stop_child(reg.pid, 5000);
  json_decref(b.config);
  free(b.bundle);
  free(b.state);
  free(b.rootfs);
  free(o.bare_config);
  free(config);
  free(image_out);
  free(image);
  free(crun);
  bench_series_t *all[] = {&oci,     &proc,      &bare_health,  &bare_infer, &ph_total,
                           &ph_pull, &ph_rootfs, &ph_container, &ph_probe,   &proc_cold};
  for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
    free(all[i]->v);
  return 0;
}
