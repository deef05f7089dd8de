/* The process runtime: a worker is a direct child of sgpud, run with execve
 * (no shell) in its own session so that its whole process group can be
 * signalled. Exec failures come back through a CLOEXEC pipe. */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/queue.h>
#include <sys/wait.h>

#include "sgpu/log.h"
#include "sgpu/runtime.h"
#include "sgpu/util.h"

#define MAX_LINE 16384

struct sg_instance {
  LIST_ENTRY(sg_instance) link;
  pid_t pid;
  bool exited;
  int status;
  struct bufferevent *out[2];
  sg_instance_callbacks_t cbs;
  void *ud;
};

static LIST_HEAD(, sg_instance) instances = LIST_HEAD_INITIALIZER(instances);
static struct event *sigchld_ev;

static const char *stream_name(const sg_instance_t *inst, struct bufferevent *bev) {
  return bev == inst->out[0] ? "stdout" : "stderr";
}

/* Delivers complete lines, and at eof whatever is left. Overlong lines are cut. */
static void drain_lines(sg_instance_t *inst, struct bufferevent *bev, bool eof) {
  struct evbuffer *in = bufferevent_get_input(bev);
  const char *stream = stream_name(inst, bev);
  for (;;) {
    size_t len;
    char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_LF);
    if (line) {
      if (len > 0 && line[len - 1] == '\r')
        line[--len] = '\0';
      inst->cbs.on_line(inst->ud, stream, line, len);
      free(line);
      continue;
    }
    size_t avail = evbuffer_get_length(in);
    if (avail == 0 || (avail < MAX_LINE && !eof))
      return;
    size_t take = avail < MAX_LINE ? avail : MAX_LINE;
    char *buf = xmalloc(take + 1);
    evbuffer_remove(in, buf, take);
    buf[take] = '\0';
    inst->cbs.on_line(inst->ud, stream, buf, take);
    free(buf);
  }
}

static void read_cb(struct bufferevent *bev, void *arg) { drain_lines(arg, bev, false); }

static void event_cb(struct bufferevent *bev, short what, void *arg) {
  sg_instance_t *inst = arg;
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
    drain_lines(inst, bev, true);
    bufferevent_disable(bev, EV_READ);
  }
}

/* Reads whatever the pipes hold right now, so the lines a worker wrote just
 * before it died are delivered before its exit. */
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
  }
}

static void reap(evutil_socket_t sig, short what, void *arg) {
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid < 0 && errno == EINTR)
      continue;
    if (pid <= 0)
      return;
    sg_instance_t *inst;
    LIST_FOREACH(inst, &instances, link) {
      if (inst->pid == pid && !inst->exited)
        break;
    }
    if (!inst)
      continue;
    /* The group may outlive its leader; nothing of it may stay behind. */
    kill(-pid, SIGKILL);
    inst->exited = true;
    inst->status = status;
    flush_pipes(inst);
    inst->cbs.on_exit(inst->ud, status);
  }
}

int sg_process_runtime_init(struct event_base *base, sg_error_t **err) {
  sigchld_ev = evsignal_new(base, SIGCHLD, reap, NULL);
  if (!sigchld_ev || evsignal_add(sigchld_ev, NULL) < 0)
    return sg_make_error(err, EINVAL, "cannot watch SIGCHLD");
  return 0;
}

void sg_process_runtime_shutdown(void) {
  if (sigchld_ev)
    event_free(sigchld_ev);
  sigchld_ev = NULL;
}

static int write_all(int fd, const void *buf, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, buf, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    buf = (const char *)buf + w;
    n -= (size_t)w;
  }
  return 0;
}

static sg_instance_t *start(struct event_base *base, const sg_launch_t *launch, const sg_instance_callbacks_t *cbs,
                            void *ud, sg_error_t **err) {
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
    /* Child: only async-signal-safe calls from here on. */
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int s = 1; s < NSIG; s++)
      if (s != SIGKILL && s != SIGSTOP)
        signal(s, SIG_DFL);
    setsid();
    /* A worker must not outlive sgpud unnoticed. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (launch->flags & SG_LAUNCH_HIDE_CGROUP2) {
      if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
        int e = errno;
        write_all(execp[1], &e, sizeof(e));
        _exit(127);
      }
      umount2("/sys/fs/cgroup/unified", MNT_DETACH);
    }
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(outp[1], 1) < 0 || dup2(errp[1], 2) < 0) {
      int e = errno;
      write_all(execp[1], &e, sizeof(e));
      _exit(127);
    }
    execve(launch->argv[0], launch->argv, launch->envp);
    int e = errno;
    write_all(execp[1], &e, sizeof(e));
    _exit(127);
  }
  close(outp[1]);
  close(errp[1]);
  close(execp[1]);
  int child_errno = 0;
  ssize_t r;
  do
    r = read(execp[0], &child_errno, sizeof(child_errno));
  while (r < 0 && errno == EINTR);
  close(execp[0]);
  if (r > 0) {
    /* exec failed: the child exits at once; reap it here so no zombie stays. */
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
      ;
    close(outp[0]);
    close(errp[0]);
    sg_make_error(err, child_errno, "cannot execute %s: %s", launch->argv[0], strerror(child_errno));
    return NULL;
  }
  sg_instance_t *inst = xcalloc(1, sizeof(*inst));
  inst->pid = pid;
  inst->cbs = *cbs;
  inst->ud = ud;
  int fds[2] = {outp[0], errp[0]};
  for (int i = 0; i < 2; i++) {
    evutil_make_socket_nonblocking(fds[i]);
    inst->out[i] = bufferevent_socket_new(base, fds[i], BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(inst->out[i], read_cb, NULL, event_cb, inst);
    bufferevent_enable(inst->out[i], EV_READ);
  }
  LIST_INSERT_HEAD(&instances, inst, link);
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

static void cleanup_orphan(const char *id, pid_t pid) {
  if (pid > 0 && is_our_worker(pid, id)) {
    sg_info("killing worker %s (pid %d) left by an earlier sgpud", id, (int)pid);
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
  }
}

const sg_runtime_ops_t sg_process_runtime = {
    .name = "process",
    .start = start,
    .signal = signal_instance,
    .pid = instance_pid,
    .release = release,
    .cleanup_orphan = cleanup_orphan,
};
