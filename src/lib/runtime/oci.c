/* The oci runtime: a worker is a container run by an OCI runtime binary
 * (crun by default, runc accepted) in the foreground, so that its stdout and
 * stderr arrive on our pipes and its exit is the runtime's exit, both
 * through the process runtime. A start is asynchronous:
 *
 *   image   cached, or pulled through the image cache (pool)
 *   rootfs  a per-worker overlayfs root over the image's read-only layers
 *           and config.json written into the bundle (pool)
 *   run     `crun run` spawned; the pid file it writes marks the container
 *           created (one inotify instance for all workers: closing one
 *           waits for an RCU grace period, which would stall the loop), and
 *           the worker may be probed from the spawn on, at once when the pid
 *           file appears
 *
 * On exit the container is deleted and the overlay unmounted and removed
 * (pool) before the worker hears of it. Everything lives under DIR: bundles
 * in DIR/workers/<id>, runtime state in DIR/state, so that a restarted sgpud
 * finds and removes what an earlier one left.
 *
 * Hybrid cgroup hosts (cgroup v1 controllers plus a cgroup2 mount at
 * /sys/fs/cgroup/unified) make crun refuse to start; there crun runs in a
 * private mount namespace without that mount and with
 * --cgroup-manager=disabled. Helper invocations (delete, list) run to
 * completion on pool threads through sg_exec_run, each bounded by
 * CMD_TIMEOUT_MS so that a hung runtime cannot hold a pool thread. */
#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>

#include "oci-internal.h"
#include "sgpu/cdi.h"
#include "sgpu/daemon.h"
#include "sgpu/exec.h"
#include "sgpu/image.h"
#include "sgpu/log.h"
#include "sgpu/pool.h"
#include "sgpu/runtime.h"
#include "sgpu/json.h"
#include "sgpu/spec.h"
#include "sgpu/util.h"

/* A bound on each helper invocation of the OCI runtime (delete, list). */
#define CMD_TIMEOUT_MS 30000
#define CMD_OUTPUT_CAP 65536

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

enum oci_state { O_PULLING, O_PREPARING, O_RUNNING, O_CLEANING, O_DONE };

typedef struct oci {
  LIST_ENTRY(oci) link;
  char *id, *dir, *rootfs;
  sg_instance_callbacks_t cbs;
  void *ud;
  char **argv, **envp;
  sg_launch_volume_t *volumes; /* copies: source strings owned here */
  int n_volumes;
  int *gpus;
  int n_gpus;
  char *image_ref;
  sg_registry_auth_t auth;
  bool has_auth;
  sg_image_t *img;
  sg_image_wait_t *wait;
  sg_instance_t *proc; /* the runtime's foreground process */
  pid_t crun_pid, pid;
  int wd; /* inotify watch on dir while waiting for the pid file, or -1 */
  enum oci_state state;
  int stop_sig;  /* a signal asked for before the container ran */
  int jobs;      /* pool jobs holding this */
  bool released; /* the worker let go; free when jobs end */
  int exit_status;
  int64_t t0, t_image, t_rootfs, t_created;
} oci_t;

static struct {
  struct event_base *base;
  sg_pool_t *pool;
  sg_images_t *images;
  char *runtime; /* absolute path */
  bool is_crun;
  bool hide_cgroup2;
  char *dir, *state_dir, *workers_dir;
  char *unavailable;
  int ino_fd; /* watches bundles for their pid files */
  struct event *ino_ev;
  sg_cdi_t *cdi; /* nvidia.com/gpu CDI specs */
  bool userns;   /* containers run in a user namespace over idmapped layers */
  int userns_fd; /* a user namespace with the containers' id mapping, or -1 */
  LIST_HEAD(, oci) all;
} rt = {.ino_fd = -1, .userns_fd = -1};

const char *sg_oci_unavailable(void) { return rt.unavailable; }

/* ---- helper commands ------------------------------------------------------ */

/* Runs in the helper's child: the private mount namespace without the
 * cgroup2 mount that crun needs on hybrid hosts. Async-signal-safe. */
static int hide_cgroup2(void *arg) {
  (void)arg;
  if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
    return -errno;
  umount2("/sys/fs/cgroup/unified", MNT_DETACH);
  return 0;
}

/* Runs argv to completion (blocking, at most CMD_TIMEOUT_MS) and returns its
 * wait status, or -1 when it could not run; *out (optional) gets what it
 * printed, stdout and stderr together (at most CMD_OUTPUT_CAP bytes). A
 * command killed at the timeout returns the status of its kill. */
static int run_cmd(char *const *argv, char **out) {
  static char *const envp[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", NULL};
  sg_exec_opts_t opts = {.envp = envp,
                         .timeout_ms = CMD_TIMEOUT_MS,
                         .out_cap = CMD_OUTPUT_CAP,
                         .flags = SG_EXEC_MERGE_STDERR,
                         .child_setup = rt.hide_cgroup2 && rt.is_crun ? hide_cgroup2 : NULL};
  sg_exec_result_t res;
  cleanup_error sg_error_t *err = NULL;
  int r = sg_exec_run(argv, &opts, &res, &err);
  if (r < 0)
    sg_warn("oci: %s", err->message);
  int status = r < 0 && !res.timed_out ? -1 : res.status;
  if (out)
    *out = res.out ? steal_pointer(&res.out) : xstrdup("");
  sg_exec_result_clear(&res);
  return status;
}

static int runtime_cmd(const char *verb, const char *a1, const char *a2, char **out) {
  char *argv[10];
  int n = 0;
  argv[n++] = rt.runtime;
  argv[n++] = "--root";
  argv[n++] = rt.state_dir;
  if (rt.hide_cgroup2 && rt.is_crun)
    argv[n++] = "--cgroup-manager=disabled";
  argv[n++] = (char *)verb;
  if (a1)
    argv[n++] = (char *)a1;
  if (a2)
    argv[n++] = (char *)a2;
  argv[n] = NULL;
  return run_cmd(argv, out);
}

/* ---- bundle ----------------------------------------------------------------- */

/* The OCI config for o (user resolved later, on the pool). New reference. */
static json_t *build_config(oci_t *o) {
  sg_oci_bundle_spec_t b = {o->id, o->img, o->argv, o->envp, o->rootfs, rt.userns, o->volumes, o->n_volumes};
  json_t *c = sg_oci_config_new(&b);
  json_t *env = json_object_get(json_object_get(c, "process"), "env");
  if (o->n_gpus > 0 && sg_cdi_count(rt.cdi) > 0) {
    json_t *edits = sg_cdi_edits(rt.cdi, o->gpus, o->n_gpus);
    if (json_array_size(edits) > 0) {
      json_object_set_new(c, "cdi", edits);
      /* Only the worker's devices are in the container: CUDA numbers them from 0. */
      char vis[SG_SPEC_MAX_GPUS * 4 + 32] = "CUDA_VISIBLE_DEVICES=";
      for (int g = 0; g < o->n_gpus; g++)
        snprintf(vis + strlen(vis), sizeof(vis) - strlen(vis), "%s%d", g ? "," : "", g);
      sg_json_env_set(env, vis);
    } else {
      json_decref(edits);
    }
  }
  return c;
}

/* Applies CDI edits (c["cdi"]) to the config. Pool thread. */
static int apply_cdi(json_t *c, sg_error_t **err) {
  json_t *edits = json_object_get(c, "cdi");
  if (!edits)
    return 0;
  if (sg_cdi_apply(c, edits, rt.userns, err) < 0)
    return -1;
  json_object_del(c, "cdi");
  return 0;
}

/* ---- jobs -------------------------------------------------------------------- */

typedef struct prep_job {
  oci_t *o;
  json_t *config;
  char *dir, *rootfs, *user;
  char **lower; /* top first */
  bool userns;
  sg_error_t *err;
} prep_job_t;

/* Mounts src at dst (an existing directory) read-only, nodev, nosuid, with
 * the ids of rt.userns_fd: files of host uid 0 appear as the container's 0. */
static int idmap_mount(const char *src, const char *dst) {
  cleanup_close int fd = open_tree(AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
  if (fd < 0)
    return -1;
  struct mount_attr a = {.attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID,
                         .userns_fd = (uint64_t)rt.userns_fd};
  if (mount_setattr(fd, "", AT_EMPTY_PATH, &a, sizeof(a)) < 0)
    return -1;
  return move_mount(fd, "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH);
}

/* Lets the containers' root (host gid SG_OCI_USERNS_BASE) traverse dir, as
 * crun does inside the user namespace on its way to the root: group
 * SG_OCI_USERNS_BASE, mode 0710. Nothing else of the data dir opens to it. */
static int share_with_userns(const char *dir, sg_error_t **err) {
  if (chown(dir, (uid_t)-1, SG_OCI_USERNS_BASE) < 0 || chmod(dir, 0710) < 0)
    return sg_make_error(err, errno, "cannot open %s to the containers' user namespace: %s", dir, strerror(errno));
  return 0;
}

/* In a user namespace the overlay's lower layers are idmapped mounts of the
 * image's layers under DIR/lower, and the upper directory (the root's
 * owner) belongs to the container's root. Replaces j->lower. */
static int idmap_layers(prep_job_t *j) {
  cleanup_free char *base = xasprintf("%s/lower", j->dir);
  cleanup_free char *upper = xasprintf("%s/upper", j->dir);
  if (mkdir(base, 0700) < 0 || chown(upper, SG_OCI_USERNS_BASE, SG_OCI_USERNS_BASE) < 0)
    return sg_make_error(&j->err, errno, "cannot prepare the bundle %s for a user namespace: %s", j->dir,
                         strerror(errno));
  for (size_t i = 0; j->lower[i]; i++) {
    char *m = xasprintf("%s/%zu", base, i);
    if (mkdir(m, 0700) < 0 || idmap_mount(j->lower[i], m) < 0) {
      int e = errno;
      free(m);
      return sg_make_error(&j->err, e, "cannot mount layer %s idmapped: %s", j->lower[i], strerror(e));
    }
    free(j->lower[i]);
    j->lower[i] = m;
  }
  return 0;
}

static void prep_work(void *data) {
  prep_job_t *j = data;
  cleanup_free char *upper = xasprintf("%s/upper", j->dir);
  cleanup_free char *work = xasprintf("%s/work", j->dir);
  if (mkdir(j->dir, 0700) < 0 || mkdir(upper, 0755) < 0 || mkdir(work, 0700) < 0 || mkdir(j->rootfs, 0755) < 0) {
    sg_make_error(&j->err, errno, "cannot create the bundle %s: %s", j->dir, strerror(errno));
    return;
  }
  if (j->userns && (idmap_layers(j) < 0 || share_with_userns(j->dir, &j->err) < 0))
    return;
  size_t cap = 256, len = 0;
  char *opts = xmalloc(cap);
  opts[0] = '\0';
  for (char **l = j->lower; *l; l++) {
    size_t need = len + strlen(*l) + 2;
    if (need >= cap)
      opts = xrealloc(opts, cap = need * 2);
    len += (size_t)snprintf(opts + len, cap - len, "%s%s", len ? ":" : "lowerdir=", *l);
  }
  cleanup_free char *data_opts = NULL;
  if (!j->lower[0]) {
    /* An image without layers: an empty lower directory. */
    cleanup_free char *empty = xasprintf("%s/empty", j->dir);
    mkdir(empty, 0755);
    data_opts = xasprintf("lowerdir=%s,upperdir=%s,workdir=%s", empty, upper, work);
  } else {
    data_opts = xasprintf("%s,upperdir=%s,workdir=%s", opts, upper, work);
  }
  free(opts);
  if (strlen(data_opts) >= 4096) {
    sg_make_error(&j->err, E2BIG, "the image has too many layers for one overlay mount");
    return;
  }
  /* No device node or set-id bit in an image takes effect. */
  if (mount("overlay", j->rootfs, "overlay", MS_NODEV | MS_NOSUID, data_opts) < 0) {
    sg_make_error(&j->err, errno, "cannot mount the overlay root %s: %s", j->rootfs, strerror(errno));
    return;
  }
  if (sg_oci_resolve_user(j->config, (char *const[]){j->rootfs, NULL}, j->user, &j->err) < 0 ||
      apply_cdi(j->config, &j->err) < 0)
    return;
  /* The bundle lives as long as the container: nothing to keep over a crash. */
  cleanup_free char *path = xasprintf("%s/config.json", j->dir);
  cleanup_free char *text = json_dumps(j->config, JSON_COMPACT);
  cleanup_close int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  size_t tlen = strlen(text), off = 0;
  while (fd >= 0 && off < tlen) {
    ssize_t w = write(fd, text + off, tlen - off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      break;
    off += (size_t)w;
  }
  if (off < tlen)
    sg_make_error(&j->err, errno, "cannot write %s: %s", path, strerror(errno));
}

/* Detaches every mount at or beneath dir (deepest first) and returns how
 * many are still there. */
static size_t unmount_beneath(const char *dir) {
  size_t left = 0, plen = strlen(dir);
  for (int pass = 0; pass < 2; pass++) {
    cleanup_fclose FILE *f = fopen("/proc/self/mountinfo", "re");
    char line[4096];
    char **mps = NULL;
    size_t nmp = 0;
    while (f && fgets(line, sizeof(line), f)) {
      char mp[PATH_MAX];
      if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1 && !strncmp(mp, dir, plen) &&
          (mp[plen] == '/' || mp[plen] == '\0')) {
        mps = xrealloc(mps, (nmp + 1) * sizeof(char *));
        mps[nmp++] = xstrdup(mp);
      }
    }
    if (!f)
      left = 1; /* cannot tell: keep everything */
    else
      left = nmp;
    for (size_t i = nmp; i-- > 0;) {
      if (pass == 0)
        umount2(mps[i], MNT_DETACH);
      free(mps[i]);
    }
    free(mps);
  }
  return left;
}

/* Removes a bundle: container, overlay and layer mounts, directories. Pool
 * thread or shutdown. A bundle with a mount left beneath it is kept: its
 * files would be the mounted layers'. */
static void remove_bundle(const char *id, const char *dir) {
  if (rt.runtime)
    runtime_cmd("delete", "--force", id, NULL);
  cleanup_free char *rootfs = xasprintf("%s/rootfs", dir);
  while (umount2(rootfs, MNT_DETACH) == 0)
    ;
  if (unmount_beneath(dir) > 0) {
    sg_warn("oci: %s still has mounts beneath it; not removed", dir);
    return;
  }
  sg_rm_rf(dir);
}

typedef struct clean_job {
  oci_t *o;
  char *id, *dir;
  bool silent; /* after a failed start: no exit to report */
} clean_job_t;

static void clean_work(void *data) {
  clean_job_t *j = data;
  remove_bundle(j->id, j->dir);
}

static void oci_free(oci_t *o);
static void spawn(oci_t *o);

static void fail_start(oci_t *o, const char *msg);

static void clean_done(void *data, bool cancelled) {
  clean_job_t *j = data;
  oci_t *o = j->o;
  if (cancelled)
    remove_bundle(j->id, j->dir);
  bool silent = j->silent;
  free(j->id);
  free(j->dir);
  free(j);
  o->jobs--;
  if (o->released || silent) {
    if (silent)
      o->state = O_DONE;
    if (o->released && o->jobs == 0)
      oci_free(o);
    return;
  }
  o->state = O_DONE;
  if (o->img) {
    sg_images_unuse(rt.images, o->img);
    o->img = NULL;
  }
  o->cbs.on_exit(o->ud, o->exit_status);
}

static const sg_pool_job_ops_t clean_ops = {clean_work, clean_done};

/* Removes the bundle on the pool, then reports status as the exit. */
static void cleanup_then_exit(oci_t *o, int status) {
  o->state = O_CLEANING;
  o->exit_status = status;
  clean_job_t *j = xcalloc(1, sizeof(*j));
  j->o = o;
  j->id = xstrdup(o->id);
  j->dir = xstrdup(o->dir);
  o->jobs++;
  sg_pool_submit(rt.pool, &clean_ops, j);
}

static void prep_done(void *data, bool cancelled) {
  prep_job_t *j = data;
  oci_t *o = j->o;
  o->jobs--;
  cleanup_error sg_error_t *err = steal_pointer(&j->err);
  json_decref(j->config);
  free(j->dir);
  free(j->rootfs);
  free(j->user);
  for (char **l = j->lower; *l; l++)
    free(*l);
  free(j->lower);
  free(j);
  if (o->released || cancelled) {
    if (cancelled)
      remove_bundle(o->id, o->dir);
    if (o->released && o->jobs == 0)
      oci_free(o);
    return;
  }
  o->t_rootfs = sg_now_ms();
  if (err) {
    cleanup_free char *msg = xasprintf("cannot prepare the container: %s", err->message);
    fail_start(o, msg);
    return;
  }
  if (o->stop_sig) {
    cleanup_then_exit(o, o->stop_sig);
    return;
  }
  spawn(o);
}

static const sg_pool_job_ops_t prep_ops = {prep_work, prep_done};

/* ---- the instance ------------------------------------------------------------ */

static void unwatch(oci_t *o) {
  if (o->wd >= 0 && rt.ino_fd >= 0)
    inotify_rm_watch(rt.ino_fd, o->wd);
  o->wd = -1;
}

static void oci_free(oci_t *o) {
  LIST_REMOVE(o, link);
  if (o->wait)
    sg_images_cancel(o->wait);
  unwatch(o);
  if (o->proc)
    sg_process_runtime.release(o->proc);
  if (o->img && rt.images)
    sg_images_unuse(rt.images, o->img);
  free(o->id);
  free(o->dir);
  free(o->rootfs);
  sg_strv_free(o->argv);
  sg_strv_free(o->envp);
  for (int i = 0; i < o->n_volumes; i++) {
    free((char *)o->volumes[i].source);
    free((char *)o->volumes[i].path);
  }
  free(o->volumes);
  free(o->gpus);
  free(o->image_ref);
  if (o->has_auth) {
    explicit_bzero(o->auth.password, strlen(o->auth.password));
    free(o->auth.username);
    free(o->auth.password);
    free(o->auth.registry);
  }
  free(o);
}

typedef struct deferred {
  oci_t *o;
  int status;
  char *msg;
} deferred_t;

static void deferred_cb(evutil_socket_t fd, short what, void *arg) {
  deferred_t *d = arg;
  oci_t *o = d->o;
  o->jobs--;
  if (o->released) {
    if (o->jobs == 0)
      oci_free(o);
  } else if (d->msg) {
    o->state = O_DONE;
    o->cbs.on_fail(o->ud, d->msg);
  } else {
    o->state = O_DONE;
    o->cbs.on_exit(o->ud, d->status);
  }
  free(d->msg);
  free(d);
}

/* Reports a failure or exit from a fresh stack frame. */
static void defer(oci_t *o, int status, const char *msg) {
  deferred_t *d = xcalloc(1, sizeof(*d));
  d->o = o;
  d->status = status;
  d->msg = msg ? xstrdup(msg) : NULL;
  o->jobs++;
  o->state = O_CLEANING;
  event_base_once(rt.base, -1, EV_TIMEOUT, deferred_cb, d, &(struct timeval){0, 0});
}

static void fail_start(oci_t *o, const char *msg) {
  if (o->img) {
    sg_images_unuse(rt.images, o->img);
    o->img = NULL;
  }
  /* The bundle may be half made: it is removed on the pool, silently. */
  clean_job_t *j = xcalloc(1, sizeof(*j));
  j->o = o;
  j->id = xstrdup(o->id);
  j->dir = xstrdup(o->dir);
  j->silent = true;
  o->jobs++;
  o->state = O_CLEANING;
  sg_pool_submit(rt.pool, &clean_ops, j);
  o->cbs.on_fail(o->ud, msg);
}

static void prepare(oci_t *o) {
  o->state = O_PREPARING;
  if (!o->t_image)
    o->t_image = sg_now_ms();
  prep_job_t *j = xcalloc(1, sizeof(*j));
  j->o = o;
  j->config = build_config(o);
  j->dir = xstrdup(o->dir);
  j->rootfs = xstrdup(o->rootfs);
  j->user = o->img->user ? xstrdup(o->img->user) : NULL;
  j->userns = rt.userns;
  j->lower = xcalloc(o->img->n_layers + 1, sizeof(char *));
  for (size_t i = 0; i < o->img->n_layers; i++)
    j->lower[i] = xstrdup(o->img->layer_dirs[o->img->n_layers - 1 - i]);
  o->jobs++;
  sg_pool_submit(rt.pool, &prep_ops, j);
}

static void pulled(void *ud, sg_image_t *img, const sg_error_t *err) {
  oci_t *o = ud;
  o->wait = NULL;
  if (o->stop_sig) {
    defer(o, o->stop_sig, NULL);
    return;
  }
  if (!img) {
    cleanup_free char *msg = xasprintf("image %s: %s", o->image_ref, err ? err->message : "pull failed");
    defer(o, 0, msg);
    return;
  }
  o->img = img;
  sg_images_use(rt.images, img);
  prepare(o);
}

static void proc_line(void *ud, const char *stream, const char *line, size_t len) {
  oci_t *o = ud;
  if (!o->released)
    o->cbs.on_line(o->ud, stream, line, len);
}

static void proc_exit(void *ud, int status) {
  oci_t *o = ud;
  unwatch(o);
  if (o->released)
    return;
  cleanup_then_exit(o, status);
}

/* The pid file of o appeared: the container exists and its process is
 * about to run. */
static void pid_file_seen(oci_t *o) {
  cleanup_free char *path = xasprintf("%s/pid", o->dir);
  cleanup_free char *text = sg_read_file(path, 64, NULL);
  if (!text || atoi(text) <= 0)
    return;
  o->pid = atoi(text);
  o->t_created = sg_now_ms();
  unwatch(o);
  if (!o->released && o->cbs.on_started)
    o->cbs.on_started(o->ud);
}

static oci_t *by_watch(int wd) {
  oci_t *o;
  LIST_FOREACH(o, &rt.all, link) {
    if (o->wd == wd)
      return o;
  }
  return NULL;
}

static void pid_file_cb(evutil_socket_t fd, short what, void *arg) {
  char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) {
    for (char *p = buf; p < buf + n;) {
      struct inotify_event *ev = (struct inotify_event *)p;
      p += sizeof(*ev) + ev->len;
      oci_t *o = by_watch(ev->wd);
      if (!o)
        continue;
      if (ev->mask & IN_IGNORED)
        o->wd = -1; /* the bundle went away */
      else if (ev->len && !strcmp(ev->name, "pid"))
        pid_file_seen(o);
    }
  }
}

static void spawn(oci_t *o) {
  cleanup_free char *pidfile = xasprintf("%s/pid", o->dir);
  char *argv[12];
  int n = 0;
  argv[n++] = rt.runtime;
  argv[n++] = "--root";
  argv[n++] = rt.state_dir;
  if (rt.hide_cgroup2 && rt.is_crun)
    argv[n++] = "--cgroup-manager=disabled";
  argv[n++] = "run";
  argv[n++] = "--bundle";
  argv[n++] = o->dir;
  argv[n++] = "--pid-file";
  argv[n++] = pidfile;
  argv[n++] = o->id;
  argv[n] = NULL;
  char *envp[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", NULL};
  sg_launch_t l = {
      .id = o->id, .argv = argv, .envp = envp, .flags = rt.hide_cgroup2 && rt.is_crun ? SG_LAUNCH_HIDE_CGROUP2 : 0};
  if (rt.ino_fd >= 0)
    o->wd = inotify_add_watch(rt.ino_fd, o->dir, IN_CLOSE_WRITE | IN_MOVED_TO);
  sg_instance_callbacks_t cbs = {proc_line, proc_exit, NULL, NULL};
  cleanup_error sg_error_t *err = NULL;
  o->proc = sg_process_runtime.start(rt.base, &l, &cbs, o, &err);
  if (!o->proc) {
    cleanup_free char *msg = xasprintf("cannot run %s: %s", rt.runtime, err->message);
    fail_start(o, msg);
    return;
  }
  o->crun_pid = sg_process_runtime.pid(o->proc);
  o->state = O_RUNNING;
  o->cbs.on_running(o->ud);
}

static sg_instance_t *start(struct event_base *base, const sg_launch_t *l, const sg_instance_callbacks_t *cbs, void *ud,
                            sg_error_t **err) {
  if (rt.unavailable) {
    sg_make_error(err, SG_EUNAVAIL, "the oci runtime is not available on this node: %s", rt.unavailable);
    return NULL;
  }
  if (!l->image) {
    sg_make_error(err, SG_EINVAL, "the oci runtime needs an image");
    return NULL;
  }
  oci_t *o = xcalloc(1, sizeof(*o));
  o->id = xstrdup(l->id);
  o->dir = xasprintf("%s/%s", rt.workers_dir, l->id);
  o->rootfs = xasprintf("%s/rootfs", o->dir);
  o->cbs = *cbs;
  o->ud = ud;
  o->argv = sg_strv_dup(l->argv);
  o->envp = sg_strv_dup(l->envp);
  o->volumes = xcalloc((size_t)l->n_volumes + 1, sizeof(*o->volumes));
  for (int i = 0; i < l->n_volumes; i++)
    o->volumes[i] =
        (sg_launch_volume_t){xstrdup(l->volumes[i].source), xstrdup(l->volumes[i].path), l->volumes[i].read_only};
  o->n_volumes = l->n_volumes;
  o->n_gpus = l->n_gpus;
  o->gpus = xcalloc((size_t)l->n_gpus + 1, sizeof(int));
  if (l->n_gpus)
    memcpy(o->gpus, l->gpus, (size_t)l->n_gpus * sizeof(int));
  o->image_ref = xstrdup(l->image);
  o->wd = -1;
  if (l->auth) {
    o->has_auth = true;
    o->auth.username = xstrdup(l->auth->username);
    o->auth.password = xstrdup(l->auth->password);
    o->auth.registry = l->auth->registry ? xstrdup(l->auth->registry) : NULL;
  }
  o->t0 = sg_now_ms();
  LIST_INSERT_HEAD(&rt.all, o, link);
  sg_image_wait_t *wait = NULL;
  sg_image_t *img = sg_images_get(rt.images, l->image, o->has_auth ? &o->auth : NULL, pulled, o, &wait);
  if (img) {
    o->img = img;
    o->t_image = o->t0; /* cached: no wait */
    sg_images_use(rt.images, img);
    prepare(o);
  } else {
    o->state = O_PULLING;
    o->wait = wait;
  }
  return (sg_instance_t *)o;
}

static void signal_instance(sg_instance_t *inst, int sig) {
  oci_t *o = (oci_t *)inst;
  switch (o->state) {
  case O_PULLING:
    if (o->wait) {
      sg_images_cancel(o->wait);
      o->wait = NULL;
      defer(o, sig, NULL);
    }
    break;
  case O_PREPARING:
    o->stop_sig = sig;
    break;
  case O_RUNNING:
    /* The runtime in the foreground forwards signals to the container;
     * SIGKILL cannot be forwarded: the runtime dies and the cleanup's
     * forced delete kills the container. */
    if (sig == SIGKILL)
      kill(-o->crun_pid, SIGKILL);
    else
      kill(o->crun_pid, sig);
    break;
  default:
    break;
  }
}

static pid_t instance_pid(const sg_instance_t *inst) {
  const oci_t *o = (const oci_t *)inst;
  return o->pid ? o->pid : o->crun_pid;
}

static void release(sg_instance_t *inst) {
  oci_t *o = (oci_t *)inst;
  if (!o)
    return;
  if (o->state != O_DONE) {
    /* Teardown with the container still there: remove it now (blocks). */
    if (o->crun_pid > 0 && o->state == O_RUNNING)
      kill(-o->crun_pid, SIGKILL);
    if (o->state == O_RUNNING || o->state == O_PREPARING)
      remove_bundle(o->id, o->dir);
  }
  o->released = true;
  if (o->jobs == 0)
    oci_free(o);
}

static void phases(const sg_instance_t *inst, sg_start_phases_t *out) {
  const oci_t *o = (const oci_t *)inst;
  out->pull_ms = o->t_image ? o->t_image - o->t0 : -1;
  out->rootfs_ms = o->t_rootfs && o->t_image ? o->t_rootfs - o->t_image : -1;
  out->container_ms = o->t_created && o->t_rootfs ? o->t_created - o->t_rootfs : -1;
}

/* Containers left by an earlier sgpud are found through the OCI runtime at
 * init and removed, not by pid: no reconcile op. */
static int init_op(const sg_runtime_host_t *host, sg_error_t **err);

const sg_runtime_ops_t sg_oci_runtime = {
    .name = "oci",
    .caps = SG_RUNTIME_IMAGES | SG_RUNTIME_NEEDS_IMAGE,
    .init = init_op,
    .stop = sg_oci_runtime_shutdown,
    .unavailable = sg_oci_unavailable,
    .start = start,
    .signal = signal_instance,
    .pid = instance_pid,
    .release = release,
    .async_start = true,
    .phases = phases,
};

/* ---- init -------------------------------------------------------------------- */

static char *find_binary(const char *name) {
  if (strchr(name, '/'))
    return access(name, X_OK) == 0 ? xstrdup(name) : NULL;
  const char *path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  cleanup_free char *copy = xstrdup(path);
  char *save = NULL;
  for (char *d = strtok_r(copy, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
    char *p = xasprintf("%s/%s", d, name);
    if (access(p, X_OK) == 0)
      return p;
    free(p);
  }
  return NULL;
}

static bool is_fs(const char *path, long magic) {
  struct statfs sf;
  return statfs(path, &sf) == 0 && (long)sf.f_type == magic;
}

/* Removes what an earlier sgpud left: containers, overlay mounts, bundles. */
static void reconcile(void) {
  int removed = 0;
  cleanup_free char *out = NULL;
  int st = runtime_cmd("list", "-q", NULL, &out);
  if (st != 0)
    sg_warn("oci: %s list failed (status %d): %s", rt.runtime, st, out ? out : "");
  if (st == 0 && out) {
    char *save = NULL;
    for (char *id = strtok_r(out, "\n", &save); id; id = strtok_r(NULL, "\n", &save)) {
      if (!sg_str_has_prefix(id, "w-"))
        continue;
      runtime_cmd("delete", "--force", id, NULL);
      removed++;
    }
  }
  /* Overlay roots still mounted under our bundles. */
  cleanup_fclose FILE *f = fopen("/proc/self/mountinfo", "re");
  char line[4096];
  size_t plen = strlen(rt.workers_dir);
  char **mps = NULL;
  size_t nmp = 0;
  while (f && fgets(line, sizeof(line), f)) {
    char mp[PATH_MAX];
    if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1 && !strncmp(mp, rt.workers_dir, plen) && mp[plen] == '/') {
      mps = xrealloc(mps, (nmp + 1) * sizeof(char *));
      mps[nmp++] = xstrdup(mp);
    }
  }
  for (size_t i = nmp; i-- > 0;) {
    umount2(mps[i], MNT_DETACH);
    free(mps[i]);
  }
  free(mps);
  DIR *d = opendir(rt.workers_dir);
  struct dirent *de;
  int bundles = 0;
  while (d && (de = readdir(d))) {
    if (de->d_name[0] == '.')
      continue;
    cleanup_free char *p = xasprintf("%s/%s", rt.workers_dir, de->d_name);
    if (unmount_beneath(p) == 0)
      sg_rm_rf(p);
    else
      sg_warn("oci: %s still has mounts beneath it; not removed", p);
    bundles++;
  }
  if (d)
    closedir(d);
  if (removed || nmp || bundles)
    sg_info("oci: removed %d container(s), %zu mount(s) and %d bundle(s) left by an earlier sgpud", removed, nmp,
            bundles);
}

/* A user namespace with the containers' id mapping, held by its fd (-1 with
 * *why set when it cannot be made). Blocks briefly. */
static int userns_open(char **why) {
  int p[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) < 0) {
    *why = xasprintf("socketpair: %s", strerror(errno));
    return -1;
  }
  pid_t pid = fork();
  if (pid == 0) {
    /* Child: enters a new user namespace, says so, and waits for the
     * parent to map it and close its end. */
    close(p[1]);
    char c = unshare(CLONE_NEWUSER) == 0 ? 0 : (char)(errno > 0 && errno < 128 ? errno : 127);
    if (write(p[0], &c, 1) != 1)
      _exit(1);
    while (read(p[0], &c, 1) > 0)
      ;
    _exit(0);
  }
  close(p[0]);
  if (pid < 0) {
    close(p[1]);
    *why = xasprintf("fork: %s", strerror(errno));
    return -1;
  }
  int fd = -1;
  char c = 0;
  ssize_t r;
  while ((r = read(p[1], &c, 1)) < 0 && errno == EINTR)
    ;
  if (r == 1 && c == 0) {
    char path[64], map[64];
    snprintf(map, sizeof(map), "0 %u %u\n", SG_OCI_USERNS_BASE, SG_OCI_USERNS_SIZE);
    const char *files[] = {"uid_map", "gid_map"};
    bool ok = true;
    for (int i = 0; i < 2 && ok; i++) {
      snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, files[i]);
      cleanup_close int mf = open(path, O_WRONLY | O_CLOEXEC);
      ok = mf >= 0 && write(mf, map, strlen(map)) == (ssize_t)strlen(map);
      if (!ok)
        *why = xasprintf("cannot write %s: %s", path, strerror(errno));
    }
    snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)pid);
    if (ok && (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
      *why = xasprintf("cannot open %s: %s", path, strerror(errno));
  } else {
    *why = xasprintf("cannot make a user namespace: %s", r == 1 ? strerror(c) : "no answer");
  }
  close(p[1]);
  while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
    ;
  return fd;
}

/* Whether an overlay over an idmapped layer mounts here: *why says why not. */
static bool userns_works(char **why) {
  cleanup_free char *d = xasprintf("%s/userns-check", rt.dir);
  cleanup_free char *l = xasprintf("%s/l", d), *m = xasprintf("%s/m", d), *u = xasprintf("%s/u", d);
  cleanup_free char *w = xasprintf("%s/w", d), *r = xasprintf("%s/r", d);
  unmount_beneath(d);
  sg_rm_rf(d);
  bool ok = false;
  if (mkdir(d, 0700) < 0 || mkdir(l, 0755) < 0 || mkdir(m, 0700) < 0 || mkdir(u, 0755) < 0 || mkdir(w, 0700) < 0 ||
      mkdir(r, 0755) < 0 || chown(u, SG_OCI_USERNS_BASE, SG_OCI_USERNS_BASE) < 0)
    *why = xasprintf("cannot create %s: %s", d, strerror(errno));
  else if (idmap_mount(l, m) < 0)
    *why = xasprintf("idmapped mounts of %s: %s", rt.dir, strerror(errno));
  else {
    cleanup_free char *opts = xasprintf("lowerdir=%s,upperdir=%s,workdir=%s", m, u, w);
    if (mount("overlay", r, "overlay", MS_NODEV | MS_NOSUID, opts) < 0)
      *why = xasprintf("overlay over an idmapped layer: %s", strerror(errno));
    else
      ok = true;
  }
  if (unmount_beneath(d) == 0)
    sg_rm_rf(d);
  if (!ok)
    return false;
  /* crun sets the root up from inside the namespace: the way to the
   * bundles must be open to its gid. */
  cleanup_free char *data_dir = xstrdup(rt.dir);
  char *slash = strrchr(data_dir, '/');
  if (slash && slash != data_dir)
    *slash = '\0';
  cleanup_error sg_error_t *e = NULL;
  if (share_with_userns(data_dir, &e) < 0 || share_with_userns(rt.dir, &e) < 0 ||
      share_with_userns(rt.workers_dir, &e) < 0) {
    *why = xstrdup(e->message);
    return false;
  }
  pid_t pid = fork();
  if (pid == 0) {
    if (setgroups(0, NULL) < 0 || setresgid(SG_OCI_USERNS_BASE, SG_OCI_USERNS_BASE, SG_OCI_USERNS_BASE) < 0 ||
        setresuid(SG_OCI_USERNS_BASE, SG_OCI_USERNS_BASE, SG_OCI_USERNS_BASE) < 0)
      _exit(2);
    _exit(access(rt.workers_dir, X_OK) == 0 ? 0 : 1);
  }
  int st = -1;
  while (pid > 0 && waitpid(pid, &st, 0) < 0 && errno == EINTR)
    ;
  if (pid < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    *why = xasprintf("%s is out of the containers' reach (a directory above it is private)", rt.workers_dir);
    chmod(rt.workers_dir, 0700);
    chmod(rt.dir, 0700);
    chmod(data_dir, 0700);
    return false;
  }
  return true;
}

int sg_oci_runtime_init(struct event_base *base, sg_pool_t *pool, sg_images_t *images, const sg_oci_config_t *cfg,
                        sg_error_t **err) {
  rt.base = base;
  rt.pool = pool;
  rt.images = images;
  LIST_INIT(&rt.all);
  rt.dir = xstrdup(cfg->dir);
  rt.state_dir = xasprintf("%s/state", cfg->dir);
  rt.workers_dir = xasprintf("%s/workers", cfg->dir);
  rt.ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (rt.ino_fd >= 0) {
    rt.ino_ev = event_new(base, rt.ino_fd, EV_READ | EV_PERSIST, pid_file_cb, NULL);
    event_add(rt.ino_ev, NULL);
  } else {
    sg_warn("oci: inotify: %s; container start times will lack their container step", strerror(errno));
  }
  int r;
  if ((r = sg_mkdir_p(rt.state_dir, 0700)) < 0 || (r = sg_mkdir_p(rt.workers_dir, 0700)) < 0)
    return sg_make_error(err, -r, "cannot create %s: %s", cfg->dir, strerror(-r));
  rt.cdi = sg_cdi_load(cfg->cdi_dir ? cfg->cdi_dir : "/etc/cdi");
  const char *name = cfg->runtime && *cfg->runtime ? cfg->runtime : "crun";
  rt.runtime = find_binary(name);
  if (!rt.runtime) {
    rt.unavailable = xasprintf("OCI runtime \"%s\" not found", name);
    sg_warn("oci: %s; oci workers cannot start", rt.unavailable);
    return 0;
  }
  const char *base_name = strrchr(rt.runtime, '/') ? strrchr(rt.runtime, '/') + 1 : rt.runtime;
  rt.is_crun = !strcmp(base_name, "crun");
  if (geteuid() != 0) {
    rt.unavailable = xstrdup("sgpud does not run as root (overlay mounts and containers need it)");
    sg_warn("oci: %s; oci workers cannot start", rt.unavailable);
    return 0;
  }
  const char *layout;
  if (is_fs("/sys/fs/cgroup", CGROUP2_SUPER_MAGIC))
    layout = "unified (cgroup v2)";
  else if (is_fs("/sys/fs/cgroup/unified", CGROUP2_SUPER_MAGIC)) {
    layout = "hybrid (cgroup v1 with a cgroup2 mount at /sys/fs/cgroup/unified)";
    rt.hide_cgroup2 = true;
  } else
    layout = "legacy (cgroup v1)";
  if (rt.hide_cgroup2 && rt.is_crun)
    sg_info("oci: runtime %s; cgroup layout %s: containers run in a private mount namespace without "
            "/sys/fs/cgroup/unified, with --cgroup-manager=disabled (no cgroup resource limits)",
            rt.runtime, layout);
  else
    sg_info("oci: runtime %s; cgroup layout %s", rt.runtime, layout);
  reconcile();
  if (cfg->userns != 0) {
    cleanup_free char *why = NULL;
    rt.userns_fd = userns_open(&why);
    rt.userns = rt.userns_fd >= 0 && userns_works(&why);
    if (rt.userns)
      sg_info("oci: containers run in a user namespace (ids 0-%u are %u-%u on the host)", SG_OCI_USERNS_SIZE - 1,
              SG_OCI_USERNS_BASE, SG_OCI_USERNS_BASE + SG_OCI_USERNS_SIZE - 1);
    else if (cfg->userns == 1)
      return sg_make_error(err, SG_EUNAVAIL, "oci_userns: containers cannot run in a user namespace here: %s",
                           why ? why : "unknown");
    else
      sg_info("oci: containers run without a user namespace (%s)", why ? why : "unavailable");
  } else {
    sg_info("oci: containers run without a user namespace (oci_userns is false)");
  }
  if (!rt.userns && (chmod(rt.dir, 0700) < 0 || chmod(rt.workers_dir, 0700) < 0))
    sg_warn("oci: cannot make %s private: %s", rt.dir, strerror(errno));
  return 0;
}

/* The init op: bundles and state under DATA_DIR/oci, the runtime binary,
 * CDI specs and user namespaces from the daemon's oci_* and cdi_dir keys. */
static int init_op(const sg_runtime_host_t *host, sg_error_t **err) {
  const sg_daemon_config_t *c = host->cfg;
  cleanup_free char *dir = xasprintf("%s/oci", c->data_dir);
  sg_oci_config_t oc = {c->oci_runtime, dir, c->cdi_dir, c->oci_userns};
  return sg_oci_runtime_init(host->base, host->pool, host->images, &oc, err);
}

void sg_oci_runtime_shutdown(void) {
  oci_t *o;
  LIST_FOREACH(o, &rt.all, link) {
    if (o->state == O_RUNNING || o->state == O_PREPARING) {
      if (o->crun_pid > 0)
        kill(-o->crun_pid, SIGKILL);
      remove_bundle(o->id, o->dir);
      o->state = O_CLEANING;
    }
  }
  sg_cdi_free(rt.cdi);
  rt.cdi = NULL;
  if (rt.userns_fd >= 0)
    close(rt.userns_fd);
  rt.userns_fd = -1;
  rt.userns = false;
  if (rt.ino_ev)
    event_free(rt.ino_ev);
  if (rt.ino_fd >= 0)
    close(rt.ino_fd);
  rt.ino_ev = NULL;
  rt.ino_fd = -1;
  free(rt.runtime);
  free(rt.dir);
  free(rt.state_dir);
  free(rt.workers_dir);
  free(rt.unavailable);
  rt.runtime = rt.dir = rt.state_dir = rt.workers_dir = rt.unavailable = NULL;
  rt.images = NULL;
}
