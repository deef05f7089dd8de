/* Worker lifecycle: start through the endpoint's runtime, capture output,
 * health-gate traffic, stop (SIGTERM then SIGKILL), notice exits. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "daemon/fleet.h"
#include "logs/logs.h"
#include "sgpu/image.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define KEEP_ENDED 10
#define BACKOFF_BASE_MS 500
#define BACKOFF_MAX_MS 60000

const char *sg_worker_state_name(enum sg_worker_state s) {
  static const char *names[] = {"starting", "ready", "draining", "stopped", "failed"};
  return names[s];
}

bool sg_worker_live(const sg_worker_t *w) { return w->state == SG_W_STARTING || w->state == SG_W_READY; }

bool sg_worker_draining(const sg_worker_t *w) { return w->stopping && !w->term_sent && !w->exited; }

/* A free TCP port on loopback, chosen by the kernel. */
static int pick_port(sg_error_t **err) {
  cleanup_close int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return sg_make_error(err, errno, "socket: %s", strerror(errno));
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(sa);
  if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
    return sg_make_error(err, errno, "cannot find a free port: %s", strerror(errno));
  return ntohs(sa.sin_port);
}

static void on_line(void *ud, const char *stream, const char *line, size_t len) {
  sg_worker_t *w = ud;
  sg_logs_source_line(w->logs, stream, line, len);
}

/* Copies a failed worker's last lines into its endpoint's state. */
static void keep_last_logs(sg_worker_t *w) {
  sg_endpoint_t *ep = w->ep;
  for (int i = 0; i < ep->n_last_logs; i++)
    free(ep->last_logs[i]);
  ep->n_last_logs = (int)sg_logs_source_recent(w->logs, ep->last_logs, SG_RECENT_LINES);
}

static void set_error(char **slot, const char *msg) {
  free(*slot);
  *slot = msg ? xstrdup(msg) : NULL;
}

/* Counts a start that never reached ready and sets the backoff before the next. */
static void note_start_failure(sg_worker_t *w, const char *why) {
  sg_endpoint_t *ep = w->ep;
  if (w->counted_failure || w->version != ep->version)
    return;
  w->counted_failure = true;
  ep->consecutive_failures++;
  int shift = ep->consecutive_failures - 1 < 7 ? ep->consecutive_failures - 1 : 7;
  int64_t backoff = (int64_t)BACKOFF_BASE_MS << shift;
  if (backoff > BACKOFF_MAX_MS)
    backoff = BACKOFF_MAX_MS;
  ep->backoff_until_mono = sg_now_ms() + backoff;
  set_error(&ep->last_error, why);
  keep_last_logs(w);
  if (ep->consecutive_failures >= SG_CRASH_LOOP_FAILURES)
    sg_logs_event(w->d, ep->name, w->id, "crash loop: %d starts failed in a row (%s); next start in %lld ms",
                  ep->consecutive_failures, why, (long long)backoff);
}

static void release_resources(sg_worker_t *w) {
  sg_health_stop(w);
  if (w->kill_timer) {
    event_free(w->kill_timer);
    w->kill_timer = NULL;
  }
  if (w->drain_timer) {
    event_free(w->drain_timer);
    w->drain_timer = NULL;
  }
  sg_gpu_release(w->d->gpus, w->id);
  sg_store_thread_worker_remove(w->d->store_thread, w->id);
}

static void on_exit_cb(void *ud, int status) {
  sg_worker_t *w = ud;
  sg_endpoint_t *ep = w->ep;
  w->exited = true;
  sg_logs_source_ended(w->logs);
  w->exit_status = status;
  w->ended_wall = sg_wall_ms();
  if (w->rt->remote) {
    sg_placement_t pl;
    w->rt->placement(w->inst, &pl);
    sg_fleet_worker_ended(w, true, pl.end_wall);
  } else {
    sg_fleet_worker_ended(w, false, 0);
  }
  char desc[96];
  if (WIFEXITED(status))
    snprintf(desc, sizeof(desc), "exited with status %d", WEXITSTATUS(status));
  else if (WIFSIGNALED(status))
    snprintf(desc, sizeof(desc), "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
  else
    snprintf(desc, sizeof(desc), "ended (status 0x%x)", status);
  if (w->stopping) {
    w->state = w->unhealthy ? SG_W_FAILED : SG_W_STOPPED;
    sg_logs_event(w->d, ep->name, w->id, "worker stopped: %s", desc);
  } else {
    bool was_ready = w->ready_mono > 0;
    w->state = SG_W_FAILED;
    cleanup_free char *msg = xasprintf("worker %s %s%s", w->id, desc, was_ready ? "" : " before it became healthy");
    set_error(&w->last_error, msg);
    sg_logs_event(w->d, ep->name, w->id, "worker crashed: %s", desc);
    if (!was_ready)
      note_start_failure(w, msg);
    else
      set_error(&ep->last_error, msg);
  }
  release_resources(w);
  sg_fleet_demand_changed(w->d);
}

/* Writes the worker's GPU indexes as "0,1" into buf. */
static void gpu_list(const sg_worker_t *w, char *buf, size_t len) {
  size_t off = 0;
  buf[0] = '\0';
  for (int i = 0; i < w->n_gpus && off < len; i++)
    off += (size_t)snprintf(buf + off, len - off, "%s%d", i ? "," : "", w->gpus[i]);
}

/* True for "localhost", 127.0.0.0/8 and ::1. */
static bool loopback_host(const char *host) {
  struct in_addr a4;
  struct in6_addr a6;
  if (!strcasecmp(host, "localhost"))
    return true;
  if (inet_pton(AF_INET, host, &a4) == 1)
    return (ntohl(a4.s_addr) >> 24) == 127;
  return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

char *sg_worker_base_url(const sg_daemon_t *d, bool *local_only) {
  if (d->cfg.advertise_url) {
    *local_only = false;
    return xstrdup(d->cfg.advertise_url);
  }
  /* The listen address as bind_http reads it ("HOST:PORT", "[V6]:PORT"),
   * with the port it bound (listen may say 0) from d->url. */
  const char *listen = d->cfg.listen ? d->cfg.listen : "";
  const char *colon = strrchr(listen, ':');
  cleanup_free char *host = xstrndup(listen, colon ? (size_t)(colon - listen) : 0);
  size_t hlen = strlen(host);
  if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
    memmove(host, host + 1, hlen - 2);
    host[hlen - 2] = '\0';
  }
  const char *port_text = d->url && strrchr(d->url, ':') ? strrchr(d->url, ':') + 1 : colon ? colon + 1 : "";
  int port = atoi(port_text);
  if (!*host || !strcmp(host, "0.0.0.0") || !strcmp(host, "::")) {
    *local_only = true;
    return xasprintf("http://127.0.0.1:%d", port);
  }
  *local_only = loopback_host(host);
  return strchr(host, ':') ? xasprintf("http://[%s]:%d", host, port) : xasprintf("http://%s:%d", host, port);
}

/* How many variables add_runpod_env adds. */
#define RUNPOD_ENV_VARS 9

/* The RunPod worker protocol's variables for w (docs/API.md, async.protocol):
 * the SDK substitutes the literal "$ID" and "$RUNPOD_POD_ID" itself. */
static void add_runpod_env(const sg_worker_t *w, const sg_spec_t *spec, char **env, size_t *n) {
  bool local_only;
  cleanup_free char *base = sg_worker_base_url(w->d, &local_only);
  cleanup_free char *at = xasprintf("%s/worker/%s", base, spec->name);
  const char *gpu = spec->gpu.count > 0 && spec->gpu.type ? spec->gpu.type : "none";
  char token[SG_WORKER_TOKEN_LEN + 1];
  sg_worker_token(w->d, w->id, token);
  env[(*n)++] = xasprintf("RUNPOD_WEBHOOK_GET_JOB=%s/job-take/$ID?gpu=%s", at, gpu);
  env[(*n)++] = xasprintf("RUNPOD_WEBHOOK_POST_OUTPUT=%s/job-done/$RUNPOD_POD_ID/$ID?gpu=%s", at, gpu);
  env[(*n)++] = xasprintf("RUNPOD_WEBHOOK_POST_STREAM=%s/job-stream/$RUNPOD_POD_ID/$ID?gpu=%s", at, gpu);
  env[(*n)++] = xasprintf("RUNPOD_WEBHOOK_PING=%s/ping/$RUNPOD_POD_ID?gpu=%s", at, gpu);
  env[(*n)++] = xasprintf("RUNPOD_POD_ID=%s", w->id);
  env[(*n)++] = xasprintf("RUNPOD_ENDPOINT_ID=%s", spec->name);
  env[(*n)++] = xasprintf("RUNPOD_AI_API_KEY=%s", token);
  env[(*n)++] = xasprintf("RUNPOD_PING_INTERVAL=%d", sg_spec_ping_interval_ms(spec));
  env[(*n)++] = xstrdup("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS=true");
}

/* Keeps only the last "NAME=value" of each name in env (n entries, then
 * NULL): what sgpud sets after the spec's env then wins for every reader
 * (getenv and most runtimes take the first of duplicates). */
static void env_keep_last(char **env, size_t *n) {
  size_t out = 0;
  for (size_t i = 0; i < *n; i++) {
    size_t len = strcspn(env[i], "=");
    bool later = false;
    for (size_t j = i + 1; j < *n && !later; j++)
      later = !strncmp(env[i], env[j], len) && env[j][len] == '=';
    if (later)
      sg_unsealed_free(env[i]); /* it may hold a secret's value */
    else
      env[out++] = env[i];
  }
  for (size_t i = out; i < *n; i++)
    env[i] = NULL;
  *n = out;
}

/* The values of spec's env entries (n_env strings, a new vector the caller
 * frees with strv_wipe_free): the spec's strings, and for a {"secret": S}
 * entry the secret's value, unsealed now. NULL with *err when a secret is
 * gone or does not open (the message names the variable, never a value). */
static char **env_values(sg_daemon_t *d, const sg_spec_t *spec, sg_error_t **err) {
  char **v = xcalloc(spec->n_env + 1, sizeof(char *));
  for (size_t i = 0; i < spec->n_env; i++) {
    if (!spec->env_secrets[i]) {
      v[i] = xstrdup(spec->env_values[i]);
      continue;
    }
    cleanup_error sg_error_t *e = NULL;
    v[i] = sg_daemon_secret_value(d, spec->env_secrets[i], &e);
    if (!v[i]) {
      sg_make_error(err, e->status, "env.%s: %s", spec->env_keys[i], e->message);
      for (size_t k = 0; k < i; k++)
        sg_unsealed_free(v[k]);
      free(v);
      return NULL;
    }
  }
  return v;
}

/* Wipes each string of a NULL-terminated vector that may hold secret
 * values, then frees it. */
static void strv_wipe_free(char **v) {
  for (size_t i = 0; v && v[i]; i++)
    sg_unsealed_free(v[i]);
  free(v);
}

/* SGPU_VOLUME_<NAME>=where the worker finds volume i: the container path
 * when the runtime runs the spec's image, else the host (or node) directory. */
static size_t volume_env(char **env, size_t n, const sg_worker_t *w, const sg_spec_t *spec,
                         const sg_launch_volume_t *vols) {
  bool in_image = spec->image && (w->rt->caps & SG_RUNTIME_IMAGES);
  for (size_t i = 0; vols && i < spec->n_volumes; i++) {
    cleanup_free char *name = sg_spec_volume_env_name(&spec->volumes[i]);
    env[n++] = xasprintf("%s=%s", name, in_image ? vols[i].path : vols[i].source);
  }
  return n;
}

static char **build_env(sg_worker_t *w, const sg_spec_t *spec, char **values, const sg_launch_volume_t *vols) {
  size_t cap = spec->n_env + spec->n_volumes + 16 + RUNPOD_ENV_VARS, n = 0;
  char **env = xcalloc(cap, sizeof(char *));
  /* A container's PATH and HOME come from its image, not from this host. */
  bool host = !w->ep->spec->image || (w->rt->caps & SG_RUNTIME_HOST_ENV);
  const char *path = getenv("PATH");
  if (host)
    env[n++] = xasprintf("PATH=%s", path ? path : "/usr/local/bin:/usr/bin:/bin");
  /* A worker run as another user gets that user's home. */
  const sg_run_as_t *user = w->rt->user ? w->rt->user() : NULL;
  const char *home = user ? user->home : getenv("HOME");
  if (home && host)
    env[n++] = xasprintf("HOME=%s", home);
  for (size_t i = 0; i < spec->n_env; i++)
    env[n++] = xasprintf("%s=%s", spec->env_keys[i], values[i]);
  n = volume_env(env, n, w, spec, vols);
  char gpus[SG_SPEC_MAX_GPUS * 6 + 1] = "";
  gpu_list(w, gpus, sizeof(gpus));
  /* Set last so that a spec cannot override what sgpud assigns. */
  env[n++] = xasprintf("PORT=%d", w->port);
  env[n++] = xasprintf("CUDA_VISIBLE_DEVICES=%s", w->n_gpus ? gpus : "");
  env[n++] = xasprintf("NVIDIA_VISIBLE_DEVICES=%s", w->n_gpus ? gpus : "void");
  env[n++] = xstrdup("CUDA_DEVICE_ORDER=PCI_BUS_ID");
  env[n++] = xasprintf("SGPU_WORKER_ID=%s", w->id);
  env[n++] = xasprintf("SGPU_ENDPOINT=%s", spec->name);
  if (sg_spec_is_runpod(spec))
    add_runpod_env(w, spec, env, &n);
  env_keep_last(env, &n);
  return env;
}

/* Replaces every "$PORT" in arg with the port. */
static char *subst_port(const char *arg, int port) {
  char portstr[16];
  snprintf(portstr, sizeof(portstr), "%d", port);
  size_t cap = strlen(arg) + 1, n = 0;
  for (const char *p = arg; (p = strstr(p, "$PORT")); p += 5)
    cap += strlen(portstr);
  char *out = xmalloc(cap);
  for (const char *p = arg; *p;) {
    if (!strncmp(p, "$PORT", 5)) {
      memcpy(out + n, portstr, strlen(portstr));
      n += strlen(portstr);
      p += 5;
    } else {
      out[n++] = *p++;
    }
  }
  out[n] = '\0';
  return out;
}

static void free_worker(sg_worker_t *w) {
  release_resources(w);
  sg_fleet_worker_freed(w);
  if (w->inst)
    w->rt->release(w->inst);
  sg_logs_source_free(w->logs);
  free(w->last_error);
  free(w->host);
  free(w->id);
  free(w);
}

/* A start that never got a process running. */
static void start_failed(sg_worker_t *w, const char *msg) {
  w->state = SG_W_FAILED;
  w->exited = true;
  sg_logs_source_ended(w->logs);
  w->never_ran = true;
  w->ended_wall = sg_wall_ms();
  set_error(&w->last_error, msg);
  sg_logs_event(w->d, w->ep->name, w->id, "worker failed to start: %s", msg);
  note_start_failure(w, msg);
  release_resources(w);
}

/* A remote worker's node, port and GPUs, from its runtime; it is metered
 * from the start its scheduler reports. */
static void take_placement(sg_worker_t *w) {
  sg_placement_t pl;
  w->rt->placement(w->inst, &pl);
  w->port = pl.port;
  free(w->host);
  w->host = pl.addr ? xstrdup(pl.addr) : NULL;
  w->n_gpus = pl.n_gpus < SG_SPEC_MAX_GPUS ? pl.n_gpus : SG_SPEC_MAX_GPUS;
  memcpy(w->gpus, pl.gpus, (size_t)w->n_gpus * sizeof(int));
  if (!w->adopted) /* an adopted worker is metered since it was adopted */
    sg_fleet_worker_started(w, SG_FLEET_START_PLACED, pl.start_wall);
  sg_logs_event(w->d, w->ep->name, w->id, "worker %s: Slurm job %s on node %s (%s), port %d",
                w->adopted ? "adopted" : "started", pl.job_id ? pl.job_id : "?", pl.node ? pl.node : "?",
                pl.addr ? pl.addr : "?", w->port);
}

/* Async starts: the worker's process runs; probing begins. */
static void on_running(void *ud) {
  sg_worker_t *w = ud;
  w->running_mono = sg_now_ms();
  if (w->rt->remote) {
    take_placement(w);
    if (!w->stopping)
      sg_health_start(w);
    return;
  }
  w->pid = w->rt->pid(w->inst);
  sg_logs_event(w->d, w->ep->name, w->id, "worker started: %s runtime process %d, port %d", w->rt->name, (int)w->pid,
                w->port);
  if (!w->stopping)
    sg_health_start(w);
}

static void on_started(void *ud) {
  sg_worker_t *w = ud;
  if (!w->stopping)
    sg_health_process_started(w);
}

static void on_fail(void *ud, const char *message) {
  sg_worker_t *w = ud;
  sg_fleet_worker_ended(w, false, 0);
  start_failed(w, message);
  sg_fleet_demand_changed(w->d);
}

/* The start's steps: image, root filesystem, container, first healthy probe. */
static json_t *cold_start_json(const sg_worker_t *w) {
  sg_start_phases_t ph = {0, 0, -1};
  if (w->rt->phases && w->inst)
    w->rt->phases(w->inst, &ph);
  else if (w->running_mono)
    ph.container_ms = w->running_mono - w->started_mono;
  if (ph.container_ms < 0 && w->running_mono && ph.pull_ms >= 0 && ph.rootfs_ms >= 0)
    ph.container_ms = w->running_mono - w->started_mono - ph.pull_ms - ph.rootfs_ms;
  int64_t probe = -1;
  if (w->ready_mono && ph.pull_ms >= 0 && ph.rootfs_ms >= 0 && ph.container_ms >= 0) {
    probe = w->ready_mono - w->started_mono - ph.pull_ms - ph.rootfs_ms - ph.container_ms;
    /* The phases are whole milliseconds, each rounded on its own: their
     * sum may pass the total by a millisecond when the probe took less. */
    if (probe < 0)
      probe = 0;
  }
#define MS(x) ((x) >= 0 ? json_integer(x) : json_null())
  return json_pack("{s:o, s:o, s:o, s:o, s:o}", "pull_ms", MS(ph.pull_ms), "rootfs_ms", MS(ph.rootfs_ms),
                   "container_ms", MS(ph.container_ms), "probe_ms", MS(probe), "total_ms",
                   MS(w->ready_mono ? w->ready_mono - w->started_mono : -1));
#undef MS
}

sg_instance_t *sg_worker_adopt(sg_endpoint_t *ep, const sg_runtime_ops_t *rt, const sg_leftover_t *job) {
  sg_worker_t *w = xcalloc(1, sizeof(*w));
  w->d = ep->d;
  w->ep = ep;
  w->id = xstrdup(job->worker_id);
  w->version = ep->version;
  w->rt = rt;
  w->state = SG_W_STARTING;
  w->adopted = true;
  w->logs = sg_logs_source_new(w->d, ep->name, w->id);
  w->n_gpus = ep->spec->gpu.count < SG_SPEC_MAX_GPUS ? ep->spec->gpu.count : SG_SPEC_MAX_GPUS;
  w->started_mono = sg_now_ms();
  w->started_wall = job->start_wall > 0 ? job->start_wall : sg_wall_ms();
  sg_instance_callbacks_t cbs = {on_line, on_exit_cb, on_running, on_fail};
  w->inst = rt->adopt_instance(job, &cbs, w);
  TAILQ_INSERT_TAIL(&ep->workers, w, link);
  sg_fleet_worker_started(w, SG_FLEET_START_ADOPTED, job->start_wall);
  sg_logs_event(w->d, ep->name, w->id, "adopting Slurm job %s left running by an earlier sgpud", job->job_id);
  return w->inst;
}

/* The environment of a remote worker: what the spec adds, the worker's
 * identity and, for a runpod endpoint, the protocol's variables (PORT and the
 * GPU variables are set on the node). */
static char **remote_env(const sg_worker_t *w, const sg_spec_t *spec, char **values, const sg_launch_volume_t *vols) {
  char **envp = xcalloc(spec->n_env + spec->n_volumes + 3 + RUNPOD_ENV_VARS, sizeof(char *));
  size_t n = 0;
  for (size_t i = 0; i < spec->n_env; i++)
    envp[n++] = xasprintf("%s=%s", spec->env_keys[i], values[i]);
  n = volume_env(envp, n, w, spec, vols);
  envp[n++] = xasprintf("SGPU_WORKER_ID=%s", w->id);
  envp[n++] = xasprintf("SGPU_ENDPOINT=%s", spec->name);
  if (sg_spec_is_runpod(spec))
    add_runpod_env(w, spec, envp, &n);
  env_keep_last(envp, &n);
  return envp;
}

/* One start path for every runtime. A runtime that schedules its own GPUs
 * (SG_RUNTIME_OWN_GPUS, remote) chooses the node, the GPUs and the port
 * there, so argv keeps "$PORT" and envp only what the spec adds; it is
 * metered from when it runs (see take_placement). Any other gets GPUs from
 * this node's inventory, a port here and the full environment. */
sg_worker_t *sg_worker_start(sg_endpoint_t *ep, sg_error_t **err) {
  sg_daemon_t *d = ep->d;
  const sg_spec_t *spec = ep->spec;
  const sg_runtime_ops_t *rt = sg_runtime_find(spec->runtime);
  if (!rt) {
    sg_make_error(err, SG_EINVAL, "unknown runtime %s", spec->runtime);
    return NULL;
  }
  sg_worker_t *w = xcalloc(1, sizeof(*w));
  w->d = d;
  w->ep = ep;
  w->id = sg_new_id("w-");
  w->logs = sg_logs_source_new(d, ep->name, w->id);
  w->version = ep->version;
  w->rt = rt;
  w->state = SG_W_STARTING;
  bool own_gpus = rt->caps & SG_RUNTIME_OWN_GPUS;
  if (!own_gpus && spec->gpu.count > 0) {
    if (sg_gpu_acquire(d->gpus, spec->gpu.type, spec->gpu.count, w->id, ep->name, w->gpus) < 0) {
      sg_make_error(err, EBUSY, "no %d free %s GPU(s)", spec->gpu.count, spec->gpu.type);
      sg_logs_source_free(w->logs);
      free(w->id);
      free(w);
      return NULL;
    }
    w->n_gpus = spec->gpu.count;
  }
  if (!rt->remote) {
    int port = pick_port(err);
    if (port < 0) {
      free_worker(w);
      return NULL;
    }
    w->port = port;
  }
  char **values = env_values(d, spec, err);
  if (!values) {
    TAILQ_INSERT_TAIL(&ep->workers, w, link);
    start_failed(w, (*err)->message);
    sg_fleet_demand_changed(d);
    return NULL;
  }
  sg_launch_volume_t *vols = NULL;
  /* A failure here is a start that failed (below, without rt->start). */
  int n_vols = sg_daemon_volumes_for_start(d, spec, rt->remote, &vols, err);
  char **argv = xcalloc(spec->n_command + 1, sizeof(char *));
  for (size_t i = 0; i < spec->n_command; i++)
    argv[i] = rt->remote ? xstrdup(spec->command[i]) : subst_port(spec->command[i], w->port);
  char **envp = rt->remote ? remote_env(w, spec, values, vols) : build_env(w, spec, values, vols);
  for (size_t i = 0; i < spec->n_env; i++)
    sg_unsealed_free(values[i]);
  free(values);
  sg_launch_t launch = {.id = w->id,
                        .argv = argv,
                        .envp = envp,
                        .image = spec->image,
                        .volumes = vols,
                        .n_volumes = n_vols > 0 ? n_vols : 0,
                        .private_dir = d->cfg.data_dir};
  if (rt->remote) {
    launch.endpoint = ep->name;
    launch.version = ep->version;
    launch.gpu_type = spec->gpu.count ? spec->gpu.type : NULL;
    launch.gpu_count = spec->gpu.count;
  } else {
    launch.gpus = w->gpus;
    launch.n_gpus = w->n_gpus;
    launch.flags = SG_LAUNCH_AS_USER;
  }
  if (own_gpus) {
    launch.partition = spec->slurm.partition;
    launch.account = spec->slurm.account;
    launch.time_limit = spec->slurm.time_limit;
  }
  sg_instance_callbacks_t cbs = {on_line, on_exit_cb, on_running, on_fail, rt->remote ? NULL : on_started};
  w->started_mono = sg_now_ms();
  w->started_wall = sg_wall_ms();
  sg_registry_auth_t *auth = NULL;
  bool need_auth = spec->registry_auth && spec->image && (rt->caps & SG_RUNTIME_IMAGES);
  if (need_auth && n_vols >= 0) {
    auth = sg_daemon_registry_auth(d, spec->registry_auth, err);
    launch.auth = auth;
  }
  if (n_vols >= 0 && (!need_auth || auth))
    w->inst = rt->start(d->base, &launch, &cbs, w, err);
  sg_registry_auth_free(auth);
  sg_launch_volumes_free(vols, n_vols > 0 ? n_vols : 0);
  sg_strv_free(argv);
  strv_wipe_free(envp);
  TAILQ_INSERT_TAIL(&ep->workers, w, link);
  if (!w->inst) {
    start_failed(w, (*err)->message);
    sg_fleet_demand_changed(d); /* what waits fails now if the endpoint cannot start workers */
    return NULL;
  }
  if (rt->remote) {
    if (spec->image)
      sg_logs_event(d, ep->name, w->id, "worker starting through Slurm: image %s", spec->image);
    else
      sg_logs_event(d, ep->name, w->id, "worker submitted to Slurm: %d %s GPU(s)", spec->gpu.count,
                    spec->gpu.count ? spec->gpu.type : "");
    return w;
  }
  w->pid = rt->pid(w->inst);
  sg_fleet_worker_started(w, SG_FLEET_START_LOCAL, w->started_wall);
  if (rt->async_start) {
    sg_logs_event(d, ep->name, w->id, "worker starting: image %s, port %d", spec->image, w->port);
    return w;
  }
  w->running_mono = sg_now_ms();
  sg_worker_record_t rec = {w->id, ep->name, rt->name, w->pid, w->started_wall};
  sg_store_thread_worker_add(d->store_thread, &rec);
  char gpus[SG_SPEC_MAX_GPUS * 6 + 1] = "";
  gpu_list(w, gpus, sizeof(gpus));
  sg_logs_event(d, ep->name, w->id, "worker started: pid %d, port %d, GPUs [%s]", (int)w->pid, w->port,
                w->n_gpus ? gpus : "none");
  sg_health_start(w);
  return w;
}

static void kill_cb(evutil_socket_t fd, short what, void *arg) {
  sg_worker_t *w = arg;
  if (!w->exited && w->inst) {
    sg_logs_event(w->d, w->ep->name, w->id, "worker did not stop within the grace period: SIGKILL");
    w->rt->signal(w->inst, SIGKILL);
  }
}

/* SIGTERM now, SIGKILL after the grace period. */
static void send_term(sg_worker_t *w) {
  w->term_sent = true;
  if (w->drain_timer) {
    event_free(w->drain_timer);
    w->drain_timer = NULL;
  }
  w->rt->signal(w->inst, SIGTERM);
  w->kill_timer = evtimer_new(w->d->base, kill_cb, w);
  double grace = w->d->cfg.stop_grace_s;
  struct timeval tv = {(time_t)grace, (suseconds_t)((grace - (double)(time_t)grace) * 1e6)};
  evtimer_add(w->kill_timer, &tv);
}

/* Out of rotation: no new requests or jobs, no more probes. */
static void leave_rotation(sg_worker_t *w) {
  w->stopping = true;
  if (w->state == SG_W_STARTING || w->state == SG_W_READY)
    w->state = SG_W_DRAINING;
  sg_health_stop(w);
}

void sg_worker_stop(sg_worker_t *w, const char *why) {
  if (w->exited || w->term_sent)
    return;
  leave_rotation(w);
  sg_logs_event(w->d, w->ep->name, w->id, "stopping worker: %s", why);
  send_term(w);
}

static void drain_timeout_cb(evutil_socket_t fd, short what, void *arg) {
  sg_worker_t *w = arg;
  sg_logs_event(w->d, w->ep->name, w->id, "worker still had %d in flight after request_timeout_s: stopping it",
                w->in_flight);
  send_term(w);
}

void sg_worker_drain(sg_worker_t *w, const char *why) {
  if (w->exited || w->stopping)
    return;
  leave_rotation(w);
  if (w->in_flight == 0) {
    sg_logs_event(w->d, w->ep->name, w->id, "stopping worker: %s", why);
    send_term(w);
    return;
  }
  sg_logs_event(w->d, w->ep->name, w->id, "draining worker: %s; %d in flight", why, w->in_flight);
  w->drain_timer = evtimer_new(w->d->base, drain_timeout_cb, w);
  double limit = w->ep->spec->workers.request_timeout_s;
  struct timeval tv = {(time_t)limit, (suseconds_t)((limit - (double)(time_t)limit) * 1e6)};
  evtimer_add(w->drain_timer, &tv);
}

static void release(sg_worker_t *w, bool request_ended) {
  w->in_flight--;
  w->ep->in_flight--;
  w->last_used_mono = sg_now_ms();
  if (w->in_flight == 0 && sg_worker_draining(w)) {
    sg_logs_event(w->d, w->ep->name, w->id, "worker drained: stopping it");
    send_term(w);
  }
  sg_fleet_worker_load(w, -1);
  if (request_ended)
    sg_fleet_request_ended(w);
  sg_fleet_worker_released(w);
  sg_fleet_demand_changed(w->d);
}

void sg_worker_release_request(sg_worker_t *w) { release(w, true); }
void sg_worker_release_attempt(sg_worker_t *w) { release(w, false); }

void sg_worker_prune(sg_endpoint_t *ep) {
  int ended = 0;
  sg_worker_t *w, *tmp;
  /* Newest last: count from the end, drop the older ended ones. */
  for (w = TAILQ_LAST(&ep->workers, sg_worker_list); w; w = tmp) {
    tmp = TAILQ_PREV(w, sg_worker_list, link);
    if (!w->exited || w->in_flight > 0)
      continue;
    if (ep->deleted || ++ended > KEEP_ENDED) {
      TAILQ_REMOVE(&ep->workers, w, link);
      free_worker(w);
    }
  }
}

json_t *sg_worker_to_json(const sg_worker_t *w) {
  char t1[32], t2[32], t3[32];
  json_t *gpus = json_array();
  for (int i = 0; i < w->n_gpus; i++)
    json_array_append_new(gpus, json_integer(w->gpus[i]));
  json_t *exit_status = json_null();
  if (w->exited && w->inst && !w->never_ran) {
    if (WIFEXITED(w->exit_status))
      exit_status = json_pack("{s:i}", "code", WEXITSTATUS(w->exit_status));
    else if (WIFSIGNALED(w->exit_status))
      exit_status = json_pack("{s:i}", "signal", WTERMSIG(w->exit_status));
  }
  pid_t pid = w->inst && !w->exited ? w->rt->pid(w->inst) : w->pid;
  json_t *j = json_pack(
      "{s:s, s:s, s:i, s:s, s:i, s:i, s:o, s:o, s:s, s:o, s:o, s:o, s:i, s:I, s:o, s:o}", "id", w->id, "endpoint",
      w->ep->name, "version", w->version, "state", sg_worker_state_name(w->state), "port", w->port, "pid", (int)pid,
      "gpus", gpus, "gpu_type", w->n_gpus ? json_string(w->ep->spec->gpu.type) : json_null(), "started_at",
      sg_format_time(w->started_wall, t1, sizeof(t1)), "ready_at",
      w->ready_wall ? json_string(sg_format_time(w->ready_wall, t2, sizeof(t2))) : json_null(), "ended_at",
      w->ended_wall ? json_string(sg_format_time(w->ended_wall, t3, sizeof(t3))) : json_null(), "cold_start_ms",
      w->ready_mono && !w->adopted ? json_integer(w->ready_mono - w->started_mono) : json_null(), "in_flight",
      w->in_flight, "served", (json_int_t)w->served, "exit_status", exit_status, "last_error",
      w->last_error ? json_string(w->last_error) : json_null());
  json_object_set_new(j, "runtime", json_string(w->rt->name));
  json_object_set_new(j, "adopted", json_boolean(w->adopted));
  json_object_set_new(j, "host", json_string(w->host ? w->host : "127.0.0.1"));
  if (w->rt->placement && w->inst) {
    sg_placement_t pl;
    w->rt->placement(w->inst, &pl);
    json_t *s = json_pack("{s:o, s:o, s:o, s:o}", "job_id", pl.job_id ? json_string(pl.job_id) : json_null(), "state",
                          pl.state ? json_string(pl.state) : json_null(), "reason",
                          pl.reason ? json_string(pl.reason) : json_null(), "node",
                          pl.node ? json_string(pl.node) : json_null());
    char t[32];
    json_object_set_new(s, "start_time",
                        pl.start_wall ? json_string(sg_format_time(pl.start_wall, t, sizeof(t))) : json_null());
    json_object_set_new(
        s, "end_time", pl.end_wall && w->exited ? json_string(sg_format_time(pl.end_wall, t, sizeof(t))) : json_null());
    json_object_set_new(j, w->rt->name, s); /* the placement, under the runtime's name */
    if (w->state == SG_W_STARTING && !w->last_error && pl.state && !strcmp(pl.state, "PENDING")) {
      cleanup_free char *msg = xasprintf("pending in Slurm: %s", pl.reason ? pl.reason : "waiting");
      json_object_set_new(j, "last_error", json_string(msg));
    }
  }
  json_object_set_new(j, "cold_start", cold_start_json(w));
  return j;
}

void sg_worker_became_ready(sg_worker_t *w) {
  sg_endpoint_t *ep = w->ep;
  if (w->state != SG_W_STARTING || w->exited || w->stopping)
    return;
  w->state = SG_W_READY;
  w->ready_mono = sg_now_ms();
  w->ready_wall = sg_wall_ms();
  w->last_used_mono = w->ready_mono;
  if (!w->adopted)
    ep->metrics.cold_starts++;
  if (w->version == ep->version) {
    ep->consecutive_failures = 0;
    ep->backoff_until_mono = 0;
    ep->image_failed = false;
    set_error(&ep->last_error, NULL);
  }
  sg_logs_event(w->d, ep->name, w->id, "worker ready: %s after %lld ms",
                ep->spec->health.path ? "healthy" : "first job take", (long long)(w->ready_mono - w->started_mono));
  sg_fleet_worker_ready(w);
  sg_fleet_demand_changed(w->d);
}

void sg_worker_unhealthy(sg_worker_t *w, const char *why) {
  cleanup_free char *msg = xasprintf("worker %s %s", w->id, why);
  set_error(&w->last_error, msg);
  w->unhealthy = true;
  if (w->state == SG_W_STARTING)
    note_start_failure(w, msg);
  else
    set_error(&w->ep->last_error, msg);
  sg_worker_stop(w, why);
  sg_fleet_demand_changed(w->d);
}
