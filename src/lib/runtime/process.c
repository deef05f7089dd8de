/* The process runtime: a worker is a direct child of sgpud, run with execve
 * (no shell) in its own session so that its whole process group can be
 * signalled, as an unprivileged user when sgpud runs as root (see
 * sg_process_runtime_set_user). Failures between fork and exec come back
 * through a CLOEXEC pipe. Each worker is watched by its own pidfd
 * (sg_child_watch), so only workers are reaped here: helper commands run by
 * sg_exec_run on pool threads keep their exit statuses. */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <ctype.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/queue.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sgpu/daemon.h"
#include "sgpu/exec.h"
#include "sgpu/log.h"
#include "sgpu/runtime.h"
#include "sgpu/util.h"

#define MAX_LINE 16384
#define EXIT_EOF_WAIT_MS 1000

/* Where a child failed before exec. */
enum { STAGE_SETUP = 1, STAGE_USER, STAGE_EXEC };

struct sg_instance {
  LIST_ENTRY(sg_instance) link;
  pid_t pid;
  bool exited;    /* reaped */
  bool exit_told; /* on_exit called */
  bool eof[2];    /* its stdout, stderr reached end of file */
  int status;
  struct event *exit_timer; /* bounds the wait for end of file after the exit */
  struct bufferevent *out[2];
  sg_child_watch_t *watch;
  sg_instance_callbacks_t cbs;
  void *ud;
};

/* The runtime's context: one per process. Loop thread (run_as also read by
 * the forked child before exec). */
static struct {
  LIST_HEAD(, sg_instance) instances;
  sg_run_as_t run_as;
  bool have_user; /* run_as is set */
} rt;

static void clear_user(void) {
  free(rt.run_as.name);
  free(rt.run_as.groups);
  free(rt.run_as.home);
  memset(&rt.run_as, 0, sizeof(rt.run_as));
  rt.have_user = false;
}

const sg_run_as_t *sg_process_runtime_user(void) { return rt.have_user ? &rt.run_as : NULL; }

/* "UID" or "UID:GID": true with the ids set. */
static bool numeric_user(const char *spec, uid_t *uid, gid_t *gid, bool *has_gid) {
  char *end;
  errno = 0;
  unsigned long u = strtoul(spec, &end, 10);
  if (end == spec || errno || u >= (uid_t)-1 || (*end && *end != ':'))
    return false;
  *uid = (uid_t)u;
  *has_gid = false;
  if (*end == ':') {
    const char *g = end + 1;
    unsigned long v = strtoul(g, &end, 10);
    if (end == g || *end || errno || v >= (gid_t)-1)
      return false;
    *gid = (gid_t)v;
    *has_gid = true;
  }
  return true;
}

int sg_process_runtime_set_user(const char *spec, sg_error_t **err) {
  clear_user();
  bool dflt = !spec || !*spec;
  if (geteuid() != 0) {
    if (!dflt && strcmp(spec, "root"))
      sg_info("run_as \"%s\" ignored: sgpud does not run as root, so process workers run as its own user", spec);
    return 0;
  }
  if (!dflt && !strcmp(spec, "root")) {
    sg_warn("run_as is \"root\": process workers run as root and can read everything sgpud keeps");
    return 0;
  }
  const char *name = dflt ? SG_RUN_AS_DEFAULT : spec;
  struct passwd pwd, *pw = NULL;
  char buf[16384];
  uid_t uid = 0;
  gid_t gid = 0;
  bool has_gid = false;
  if (numeric_user(name, &uid, &gid, &has_gid)) {
    if (getpwuid_r(uid, &pwd, buf, sizeof(buf), &pw) != 0)
      pw = NULL;
    if (!has_gid)
      gid = pw ? pw->pw_gid : (gid_t)uid;
  } else {
    if (getpwnam_r(name, &pwd, buf, sizeof(buf), &pw) != 0)
      pw = NULL;
    if (!pw && dflt) {
      name = "nobody";
      if (getpwnam_r(name, &pwd, buf, sizeof(buf), &pw) != 0)
        pw = NULL;
    }
    if (!pw)
      return sg_make_error(err, SG_EINVAL,
                           dflt ? "run_as: neither user " SG_RUN_AS_DEFAULT " nor nobody exists; create one "
                                  "(scripts/install-deps.sh does) or set run_as"
                                : "run_as: no user \"%s\"",
                           name);
    uid = pw->pw_uid;
    gid = pw->pw_gid;
  }
  if (uid == 0 || gid == 0)
    return sg_make_error(err, SG_EINVAL, "run_as \"%s\" is root's uid or gid; say \"root\" to run workers as root",
                         name);
  rt.run_as.name = xstrdup(pw && !isdigit((unsigned char)name[0]) ? pw->pw_name : name);
  rt.run_as.uid = uid;
  rt.run_as.gid = gid;
  rt.run_as.home = xstrdup(pw && pw->pw_dir && *pw->pw_dir ? pw->pw_dir : "/");
  /* The user's own supplementary groups (a GPU's device group, say), never root's. */
  int n = 1;
  rt.run_as.groups = xcalloc(1, sizeof(gid_t));
  rt.run_as.groups[0] = gid;
  if (pw) {
    int want = 32;
    for (int tries = 0; tries < 8; tries++) {
      gid_t *g = xcalloc((size_t)want, sizeof(gid_t));
      int got = want;
      if (getgrouplist(pw->pw_name, gid, g, &got) >= 0) {
        free(rt.run_as.groups);
        rt.run_as.groups = g;
        n = got;
        break;
      }
      free(g);
      if (got <= want || got > 65536)
        break;
      want = got;
    }
  }
  int kept = 0;
  for (int i = 0; i < n; i++)
    if (rt.run_as.groups[i] != 0)
      rt.run_as.groups[kept++] = rt.run_as.groups[i];
  rt.run_as.n_groups = kept;
  rt.have_user = true;
  sg_info("process workers run as user %s (uid %u, gid %u)", rt.run_as.name, (unsigned)uid, (unsigned)gid);
  return 0;
}

static const char *stream_name(const sg_instance_t *inst, struct bufferevent *bev) {
  return bev == inst->out[0] ? "stdout" : "stderr";
}

/* Delivers complete lines, and at eof whatever is left, each at most
 * MAX_LINE bytes: a longer line arrives as several, cut where a UTF-8
 * sequence starts. Holds at most MAX_LINE bytes of a line between reads. */
static void drain_lines(sg_instance_t *inst, struct bufferevent *bev, bool eof) {
  struct evbuffer *in = bufferevent_get_input(bev);
  const char *stream = stream_name(inst, bev);
  char *buf = NULL;
  for (;;) {
    size_t avail = evbuffer_get_length(in);
    if (avail == 0)
      break;
    size_t peek = avail < MAX_LINE + 1 ? avail : MAX_LINE + 1;
    struct evbuffer_ptr end;
    evbuffer_ptr_set(in, &end, peek, EVBUFFER_PTR_SET);
    struct evbuffer_ptr nl = evbuffer_search_range(in, "\n", 1, NULL, &end);
    size_t len, consume;
    if (nl.pos >= 0) {
      len = (size_t)nl.pos;
      consume = len + 1;
    } else if (peek > MAX_LINE || eof) {
      len = consume = peek > MAX_LINE ? MAX_LINE : peek;
    } else {
      break; /* an incomplete line: wait for the rest */
    }
    if (!buf)
      buf = xmalloc(MAX_LINE + 2);
    evbuffer_copyout(in, buf, len < peek ? len + 1 : len);
    if (nl.pos < 0 && len == MAX_LINE && peek > MAX_LINE) {
      /* Cut before a UTF-8 continuation byte, so both pieces stay valid. */
      size_t cut = len;
      while (cut > MAX_LINE - 4 && ((unsigned char)buf[cut] & 0xc0) == 0x80)
        cut--;
      if (((unsigned char)buf[cut] & 0xc0) != 0x80 && cut > 0)
        len = consume = cut;
    }
    evbuffer_drain(in, consume);
    if (nl.pos >= 0 && len > 0 && buf[len - 1] == '\r')
      len--;
    buf[len] = '\0';
    inst->cbs.on_line(inst->ud, stream, buf, len);
  }
  free(buf);
}

static void read_cb(struct bufferevent *bev, void *arg) { drain_lines(arg, bev, false); }

static void event_cb(struct bufferevent *bev, short what, void *arg) {
  sg_instance_t *inst = arg;
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
    drain_lines(inst, bev, true);
    bufferevent_disable(bev, EV_READ);
    inst->eof[bev == inst->out[0] ? 0 : 1] = true;
    /* The exit waits for both: tell it from the timer's callback, so that
     * no owner frees this bufferevent from inside its own callback. */
    if (inst->exit_timer && inst->eof[0] && inst->eof[1])
      event_active(inst->exit_timer, EV_TIMEOUT, 1);
  }
}

/* Reads whatever the pipes hold right now and delivers it, the rest of a
 * line included. */
static void flush_pipes(sg_instance_t *inst) {
  for (int i = 0; i < 2; i++) {
    struct bufferevent *bev = inst->out[i];
    if (!bev || !(bufferevent_get_enabled(bev) & EV_READ))
      continue;
    evutil_socket_t fd = bufferevent_getfd(bev);
    struct evbuffer *in = bufferevent_get_input(bev);
    int r;
    while ((r = evbuffer_read(in, fd, 65536)) > 0)
      drain_lines(inst, bev, false);
    drain_lines(inst, bev, true);
    if (r == 0) {
      bufferevent_disable(bev, EV_READ);
      inst->eof[i] = true;
    }
  }
}

/* Calls on_exit once, after every line the worker wrote was delivered. */
static void tell_exit(sg_instance_t *inst) {
  if (inst->exit_told)
    return;
  inst->exit_told = true;
  if (inst->exit_timer) {
    event_free(inst->exit_timer);
    inst->exit_timer = NULL;
  }
  inst->cbs.on_exit(inst->ud, inst->status);
}

static void exit_timeout_cb(evutil_socket_t fd, short what, void *arg) {
  sg_instance_t *inst = arg;
  /* Something outside the worker's group still holds its pipes. */
  flush_pipes(inst);
  tell_exit(inst);
}

/* The worker's pidfd said it ended, and it has been reaped. Its exit is told
 * once both pipes reach end of file (so the lines it wrote last come first),
 * or after EXIT_EOF_WAIT_MS when a process that left its group holds them. */
static void child_exited(void *arg, pid_t pid, int status) {
  sg_instance_t *inst = arg;
  /* The group may outlive its leader; nothing of it may stay behind. */
  kill(-pid, SIGKILL);
  inst->exited = true;
  inst->status = status;
  flush_pipes(inst);
  if (inst->eof[0] && inst->eof[1]) {
    tell_exit(inst);
    return;
  }
  struct timeval tv = {EXIT_EOF_WAIT_MS / 1000, (EXIT_EOF_WAIT_MS % 1000) * 1000};
  inst->exit_timer = evtimer_new(bufferevent_get_base(inst->out[0]), exit_timeout_cb, inst);
  evtimer_add(inst->exit_timer, &tv);
}

int sg_process_runtime_init(struct event_base *base, sg_error_t **err) {
  (void)base;
  (void)err;
  return 0;
}

void sg_process_runtime_shutdown(void) { clear_user(); }

/* What a worker's child does with its volumes in a mount namespace of its
 * own, all prepared before fork (the child only makes system calls): with
 * `cover` (the highest directory on the way to sgpud's data directory that
 * a worker run as another user cannot search: the data directory itself, or
 * /root above a data directory in it), an empty tmpfs over it with `dirs`
 * made in it and every volume beneath it bound back at its own path (from a descriptor opened in
 * the new namespace before the tmpfs hid it); every read-only volume a
 * read-only, nosuid, nodev bind of itself. Only when sgpud runs as root. */
#define FD_PATH_LEN 32

typedef struct mount_plan {
  bool active;
  char *cover;
  char **dirs;   /* made in the tmpfs, parents first */
  char **target; /* each volume's real path */
  char **from;   /* FD_PATH_LEN bytes each: "/proc/self/fd/N", written by the child */
  bool *under, *ro;
  int n;
} mount_plan_t;

static void plan_free(mount_plan_t *p) {
  free(p->cover);
  sg_strv_free(p->dirs);
  sg_strv_free(p->target);
  sg_strv_free(p->from);
  free(p->under);
  free(p->ro);
  memset(p, 0, sizeof(*p));
}

static bool beneath(const char *path, const char *dir) {
  size_t n = strlen(dir);
  return !strncmp(path, dir, n) && path[n] == '/';
}

/* Whether user may search (x) a directory of this mode and owner. */
static bool searchable(const struct stat *st, const sg_run_as_t *user) {
  if (st->st_uid == user->uid)
    return st->st_mode & S_IXUSR;
  bool in_group = st->st_gid == user->gid;
  for (int i = 0; i < user->n_groups && !in_group; i++)
    in_group = user->groups[i] == st->st_gid;
  return in_group ? (st->st_mode & S_IXGRP) : (st->st_mode & S_IXOTH);
}

/* The directory to cover for a worker run as user: the highest one on the way
 * to dir (realpath) that the user cannot search. Nothing beneath it was
 * within the worker's reach, so an empty tmpfs there takes nothing from it.
 * NULL when the user can search them all, dir included. */
static char *cover_for(const char *dir, const sg_run_as_t *user) {
  char *path = xstrdup(dir);
  for (char *c = path + 1;; c++) {
    if (*c != '/' && *c)
      continue;
    char saved = *c;
    *c = '\0';
    struct stat st;
    if (stat(path, &st) == 0 && !searchable(&st, user))
      return path;
    *c = saved;
    if (!saved)
      break;
  }
  free(path);
  return NULL;
}

static int plan_mounts(const sg_launch_t *launch, const sg_run_as_t *user, mount_plan_t *p, sg_error_t **err) {
  memset(p, 0, sizeof(*p));
  if (launch->n_volumes == 0 || geteuid() != 0)
    return 0;
  p->active = true;
  int n = launch->n_volumes;
  p->target = xcalloc((size_t)n + 1, sizeof(char *));
  p->from = xcalloc((size_t)n + 1, sizeof(char *));
  p->under = xcalloc((size_t)n, sizeof(bool));
  p->ro = xcalloc((size_t)n, sizeof(bool));
  p->n = n;
  char real[PATH_MAX];
  if (user && launch->private_dir && realpath(launch->private_dir, real))
    p->cover = cover_for(real, user);
  size_t ndirs = 0, capdirs = 8;
  p->dirs = xcalloc(capdirs, sizeof(char *));
  for (int i = 0; i < n; i++) {
    const char *src = launch->volumes[i].source;
    struct stat st;
    if (!realpath(src, real) || stat(real, &st) < 0)
      return sg_make_error(err, errno, "volume %s: %s", src, strerror(errno));
    if (!S_ISDIR(st.st_mode))
      return sg_make_error(err, ENOTDIR, "volume %s is not a directory", src);
    p->target[i] = xstrdup(real);
    p->from[i] = xcalloc(FD_PATH_LEN, 1);
    p->ro[i] = launch->volumes[i].read_only;
    p->under[i] = p->cover && beneath(real, p->cover);
    /* The directories between the cover and the volume, parents first. */
    for (char *c = p->under[i] ? real + strlen(p->cover) + 1 : NULL; c && *c; c++) {
      bool end = !c[1];
      if (*c != '/' && !end)
        continue;
      if (ndirs + 2 > capdirs) {
        capdirs *= 2;
        p->dirs = xrealloc(p->dirs, capdirs * sizeof(char *));
      }
      p->dirs[ndirs++] = xstrndup(real, (size_t)(c - real) + (end ? 1 : 0));
      p->dirs[ndirs] = NULL;
    }
  }
  return 0;
}

/* "/proc/self/fd/FD" into out (FD_PATH_LEN bytes), async-signal-safe. */
static void fd_path(char *out, int fd) {
  static const char prefix[] = "/proc/self/fd/";
  memcpy(out, prefix, sizeof(prefix) - 1);
  char digits[12];
  int n = 0;
  do
    digits[n++] = (char)('0' + fd % 10);
  while ((fd /= 10) > 0 && n < (int)sizeof(digits));
  char *o = out + sizeof(prefix) - 1;
  while (n > 0)
    *o++ = digits[--n];
  *o = '\0';
}

/* In the child: async-signal-safe calls only. */
static int apply_mounts(const mount_plan_t *p, bool unshared) {
  if (!p->active)
    return 0;
  if (!unshared && (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0))
    return -1;
  /* In this namespace, before the tmpfs hides them: binds of the volumes
   * beneath the cover are made from these (O_CLOEXEC: gone at exec). */
  for (int i = 0; i < p->n; i++) {
    if (!p->under[i])
      continue;
    int fd = open(p->target[i], O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
      return -1;
    fd_path(p->from[i], fd);
  }
  if (p->cover && mount("tmpfs", p->cover, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=64k") < 0)
    return -1;
  for (char **d = p->dirs; p->cover && d && *d; d++)
    if (mkdir(*d, 0755) < 0 && errno != EEXIST)
      return -1;
  for (int i = 0; i < p->n; i++) {
    if (!p->under[i] && !p->ro[i])
      continue;
    if (mount(p->under[i] ? p->from[i] : p->target[i], p->target[i], NULL, MS_BIND | MS_REC, NULL) < 0)
      return -1;
    if (p->ro[i] && mount(NULL, p->target[i], NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
      return -1;
  }
  return 0;
}

static sg_instance_t *start_child(struct event_base *base, const sg_launch_t *launch, const sg_run_as_t *user,
                                  const mount_plan_t *plan, const sg_instance_callbacks_t *cbs, void *ud,
                                  sg_error_t **err);

static sg_instance_t *start(struct event_base *base, const sg_launch_t *launch, const sg_instance_callbacks_t *cbs,
                            void *ud, sg_error_t **err) {
  const sg_run_as_t *user = launch->flags & SG_LAUNCH_AS_USER ? sg_process_runtime_user() : NULL;
  mount_plan_t plan;
  if (plan_mounts(launch, user, &plan, err) < 0) {
    plan_free(&plan);
    return NULL;
  }
  sg_instance_t *inst = start_child(base, launch, user, &plan, cbs, ud, err);
  plan_free(&plan);
  return inst;
}

static sg_instance_t *start_child(struct event_base *base, const sg_launch_t *launch, const sg_run_as_t *user,
                                  const mount_plan_t *plan, const sg_instance_callbacks_t *cbs, void *ud,
                                  sg_error_t **err) {
  int outp[2] = {-1, -1}, errp[2] = {-1, -1}, execp[2] = {-1, -1};
  if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0 || pipe2(execp, O_CLOEXEC) < 0) {
    int e = errno;
    for (int i = 0; i < 2; i++) {
      if (outp[i] >= 0)
        close(outp[i]);
      if (errp[i] >= 0)
        close(errp[i]);
      if (execp[i] >= 0)
        close(execp[i]);
    }
    sg_make_error(err, e, "pipe: %s", strerror(e));
    return NULL;
  }
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    for (int i = 0; i < 2; i++) {
      close(outp[i]);
      close(errp[i]);
      close(execp[i]);
    }
    sg_make_error(err, e, "fork: %s", strerror(e));
    return NULL;
  }
  if (pid == 0) {
    /* Child: only async-signal-safe calls from here on. A failure writes
     * {stage, errno} to the pipe. */
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int s = 1; s < NSIG; s++)
      if (s != SIGKILL && s != SIGSTOP)
        signal(s, SIG_DFL);
    setsid();
    int failure[2] = {STAGE_SETUP, 0};
    if (launch->flags & SG_LAUNCH_HIDE_CGROUP2) {
      if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        goto child_fail;
      umount2("/sys/fs/cgroup/unified", MNT_DETACH);
    }
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(outp[1], 1) < 0 || dup2(errp[1], 2) < 0)
      goto child_fail;
    /* The command is opened while still root, so that one beneath a
     * directory the user cannot search (a checkout in /root) still runs;
     * the file itself must be executable by the user. */
    int exefd = -1;
    if (user)
      exefd = open(launch->argv[0], O_PATH | O_CLOEXEC);
    if (apply_mounts(plan, launch->flags & SG_LAUNCH_HIDE_CGROUP2) < 0)
      goto child_fail;
    if (user) {
      failure[0] = STAGE_USER;
      if (setgroups((size_t)user->n_groups, user->groups) < 0 || setresgid(user->gid, user->gid, user->gid) < 0 ||
          setresuid(user->uid, user->uid, user->uid) < 0)
        goto child_fail;
      /* A working directory the user cannot reach: start at /. */
      if (access(".", X_OK) < 0 && chdir("/") < 0)
        goto child_fail;
    }
    /* A worker must not outlive sgpud unnoticed (set after the user
     * changes, which clears it). */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    failure[0] = STAGE_EXEC;
    if (exefd >= 0) {
      syscall(SYS_execveat, exefd, "", launch->argv, launch->envp, AT_EMPTY_PATH);
      /* A script: its interpreter reads it through /dev/fd, so the
       * descriptor must stay open across exec. */
      if (errno == ENOENT && fcntl(exefd, F_SETFD, 0) == 0)
        syscall(SYS_execveat, exefd, "", launch->argv, launch->envp, AT_EMPTY_PATH);
      if (errno != ENOSYS)
        goto child_fail;
    }
    execve(launch->argv[0], launch->argv, launch->envp);
  child_fail:
    failure[1] = errno;
    sg_write_all(execp[1], failure, sizeof(failure));
    _exit(127);
  }
  close(outp[1]);
  close(errp[1]);
  close(execp[1]);
  int failure[2] = {0, 0};
  ssize_t r;
  do
    r = read(execp[0], failure, sizeof(failure));
  while (r < 0 && errno == EINTR);
  close(execp[0]);
  if (r > 0) {
    /* The child failed before exec and exits at once; reap it here so no zombie stays. */
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
      ;
    close(outp[0]);
    close(errp[0]);
    int e = failure[1];
    if (failure[0] == STAGE_USER)
      sg_make_error(err, e, "cannot switch to user %s (run_as) for %s: %s", user->name, launch->argv[0], strerror(e));
    else if (failure[0] == STAGE_EXEC && user)
      sg_make_error(err, e, "cannot execute %s as user %s (run_as): %s", launch->argv[0], user->name, strerror(e));
    else if (failure[0] == STAGE_EXEC)
      sg_make_error(err, e, "cannot execute %s: %s", launch->argv[0], strerror(e));
    else
      sg_make_error(err, e, "cannot prepare %s: %s", launch->argv[0], strerror(e));
    return NULL;
  }
  sg_instance_t *inst = xcalloc(1, sizeof(*inst));
  inst->pid = pid;
  inst->cbs = *cbs;
  inst->ud = ud;
  inst->watch = sg_child_watch(base, pid, child_exited, inst, err);
  if (!inst->watch) {
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
      ;
    close(outp[0]);
    close(errp[0]);
    free(inst);
    return NULL;
  }
  int fds[2] = {outp[0], errp[0]};
  for (int i = 0; i < 2; i++) {
    evutil_make_socket_nonblocking(fds[i]);
    inst->out[i] = bufferevent_socket_new(base, fds[i], BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(inst->out[i], read_cb, NULL, event_cb, inst);
    bufferevent_enable(inst->out[i], EV_READ);
  }
  LIST_INSERT_HEAD(&rt.instances, inst, link);
  return inst;
}

static void signal_instance(sg_instance_t *inst, int sig) {
  if (!inst->exited)
    kill(-inst->pid, sig);
}

static pid_t instance_pid(const sg_instance_t *inst) { return inst->pid; }

static void release(sg_instance_t *inst) {
  if (!inst)
    return;
  LIST_REMOVE(inst, link);
  /* A worker let go before it ended is still reaped when it does. */
  if (inst->exited)
    sg_child_watch_free(inst->watch);
  else
    sg_child_watch_detach(inst->watch);
  if (inst->exit_timer)
    event_free(inst->exit_timer);
  for (int i = 0; i < 2; i++)
    if (inst->out[i])
      bufferevent_free(inst->out[i]);
  free(inst);
}

/* True when pid runs with SGPU_WORKER_ID=id in its environment. */
static bool is_our_worker(pid_t pid, const char *id) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
  size_t len;
  cleanup_free char *env = sg_read_file(path, 1 << 20, &len);
  if (!env)
    return false;
  cleanup_free char *want = xasprintf("SGPU_WORKER_ID=%s", id);
  for (size_t off = 0; off < len; off += strlen(env + off) + 1)
    if (!strcmp(env + off, want))
      return true;
  return false;
}

static void reconcile(const char *id, pid_t pid) {
  if (pid > 0 && is_our_worker(pid, id)) {
    sg_info("killing worker %s (pid %d) left by an earlier sgpud", id, (int)pid);
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
  }
}

/* The init op: the loop and the user workers run as (run_as). */
static int init_op(const sg_runtime_host_t *host, sg_error_t **err) {
  if (sg_process_runtime_init(host->base, err) < 0)
    return -1;
  return sg_process_runtime_set_user(host->cfg->run_as, err);
}

const sg_runtime_ops_t sg_process_runtime = {
    .name = "process",
    .caps = SG_RUNTIME_HOST_ENV,
    .init = init_op,
    .shutdown = sg_process_runtime_shutdown,
    .start = start,
    .signal = signal_instance,
    .pid = instance_pid,
    .release = release,
    .reconcile = reconcile,
    .user = sg_process_runtime_user,
};
