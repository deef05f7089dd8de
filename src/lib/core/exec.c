/* Helper commands and child watches (see sgpu/exec.h). */
#include "sgpu/exec.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/queue.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

#include "sgpu/log.h"
#include "sgpu/util.h"

/* Where a child failed before exec. */
enum { STAGE_SETUP = 1, STAGE_EXEC };

static int pidfd_open_(pid_t pid) {
#ifdef SYS_pidfd_open
  return (int)syscall(SYS_pidfd_open, pid, 0);
#else
  (void)pid;
  errno = ENOSYS;
  return -1;
#endif
}

bool sg_exec_status_ok(int status) { return status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0; }

/* The file argv0 names, looked up in PATH as execvp would; NULL if none. */
static char *find_program(const char *argv0) {
  if (strchr(argv0, '/'))
    return xstrdup(argv0);
  const char *path = getenv("PATH");
  if (!path || !*path)
    path = "/usr/local/bin:/usr/bin:/bin";
  for (const char *p = path; *p;) {
    size_t n = strcspn(p, ":");
    char *cand = xasprintf("%.*s/%s", (int)n, p, argv0);
    if (n > 0 && access(cand, X_OK) == 0)
      return cand;
    free(cand);
    p += n;
    if (*p == ':')
      p++;
  }
  return NULL;
}

/* fd onto target, without CLOEXEC; async-signal-safe. */
static int move_fd(int fd, int target) {
  if (fd == target)
    return fcntl(fd, F_SETFD, 0);
  return dup2(fd, target) < 0 ? -1 : 0;
}

typedef struct child_args {
  const char *prog;
  char *const *argv, *const *envp;
  const sg_exec_opts_t *opts;
  int in, out, err, errp;
} child_args_t;

/* The child after fork: only async-signal-safe calls. A failure writes
 * {stage, errno} to the errno pipe. */
__attribute__((noreturn)) static void run_child(const child_args_t *c) {
  sigset_t none;
  sigemptyset(&none);
  for (int s = 1; s < NSIG; s++)
    if (s != SIGKILL && s != SIGSTOP)
      signal(s, SIG_DFL);
  sigprocmask(SIG_SETMASK, &none, NULL);
  setpgid(0, 0);
  int failure[2] = {STAGE_SETUP, 0};
  if (c->opts->child_setup) {
    int r = c->opts->child_setup(c->opts->child_arg);
    if (r < 0) {
      errno = -r;
      goto fail;
    }
  }
  int in = c->in;
  if (in < 0 && (in = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0)
    goto fail;
  if (move_fd(in, 0) < 0 || move_fd(c->out, 1) < 0 || move_fd(c->err, 2) < 0)
    goto fail;
  failure[0] = STAGE_EXEC;
  execve(c->prog, c->argv, c->envp);
fail:
  failure[1] = errno;
  sg_write_all(c->errp, failure, sizeof(failure));
  _exit(127);
}

typedef struct capture {
  int fd;
  char *buf;
  size_t len, cap, max, dropped;
} capture_t;

/* Reads what fd holds now; closes it at eof or on an error. */
static void capture_read(capture_t *c) {
  for (;;) {
    char sink[8192];
    if (c->len == c->cap && c->cap < c->max) {
      c->cap = c->cap * 2 < c->max ? c->cap * 2 : c->max;
      c->buf = xrealloc(c->buf, c->cap + 1);
    }
    bool full = c->len >= c->max;
    ssize_t r = full ? read(c->fd, sink, sizeof(sink)) : read(c->fd, c->buf + c->len, c->cap - c->len);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0 && errno == EAGAIN)
      return;
    if (r <= 0) {
      close(c->fd);
      c->fd = -1;
      return;
    }
    if (full)
      c->dropped += (size_t)r;
    else
      c->len += (size_t)r;
  }
}

/* Writes what the pipe takes now of the stdin bytes; false when done (all
 * written, or the reader went away). SIGPIPE is blocked on this thread
 * around the write and a pending one consumed, so it never reaches the
 * process. */
static bool feed_stdin(int fd, const char *data, size_t len, size_t *off) {
  sigset_t pipe_set, old;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  bool more = true;
  while (*off < len) {
    ssize_t w = write(fd, data + *off, len - *off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && errno == EAGAIN)
      break;
    if (w < 0) {
      if (errno == EPIPE) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
          ;
      }
      more = false;
      break;
    }
    *off += (size_t)w;
  }
  if (*off >= len)
    more = false;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return more;
}

static void close_pair(int p[2]) {
  for (int i = 0; i < 2; i++)
    if (p[i] >= 0) {
      close(p[i]);
      p[i] = -1;
    }
}

static void wait_pid(pid_t pid, int *status) {
  while (waitpid(pid, status, 0) < 0) {
    if (errno != EINTR) {
      *status = -1;
      return;
    }
  }
}

void sg_exec_result_clear(sg_exec_result_t *res) {
  free(res->out);
  free(res->err);
  memset(res, 0, sizeof(*res));
  res->status = -1;
}

int sg_exec_run(char *const argv[], const sg_exec_opts_t *opts, sg_exec_result_t *res, sg_error_t **err) {
  static const sg_exec_opts_t defaults;
  if (!opts)
    opts = &defaults;
  memset(res, 0, sizeof(*res));
  res->status = -1;
  if (!argv || !argv[0])
    return sg_make_error(err, EINVAL, "no command to run");
  cleanup_free char *prog = find_program(argv[0]);
  if (!prog)
    return sg_make_error(err, ENOENT, "cannot execute %s: not found in PATH", argv[0]);
  bool merge = opts->flags & SG_EXEC_MERGE_STDERR;
  int execp[2] = {-1, -1}, outp[2] = {-1, -1}, errp[2] = {-1, -1}, inp[2] = {-1, -1};
  if (pipe2(execp, O_CLOEXEC) < 0 || pipe2(outp, O_CLOEXEC) < 0 || (!merge && pipe2(errp, O_CLOEXEC) < 0) ||
      (opts->stdin_data && pipe2(inp, O_CLOEXEC) < 0)) {
    int e = errno;
    close_pair(execp);
    close_pair(outp);
    close_pair(errp);
    close_pair(inp);
    return sg_make_error(err, e, "cannot run %s: pipe: %s", argv[0], strerror(e));
  }
  extern char **environ;
  child_args_t c = {prog,   argv,    opts->envp ? opts->envp : environ, opts,
                    inp[0], outp[1], merge ? outp[1] : errp[1],         execp[1]};
  pid_t pid = fork();
  if (pid == 0)
    run_child(&c);
  int fork_errno = errno;
  close(execp[1]);
  close(outp[1]);
  if (errp[1] >= 0)
    close(errp[1]);
  if (inp[0] >= 0)
    close(inp[0]);
  execp[1] = outp[1] = errp[1] = inp[0] = -1;
  if (pid < 0) {
    close_pair(execp);
    close_pair(outp);
    close_pair(errp);
    close_pair(inp);
    return sg_make_error(err, fork_errno, "cannot run %s: fork: %s", argv[0], strerror(fork_errno));
  }
  /* The group exists once the child has called setpgid; set it from here
   * too, so that a timeout can never signal a group that is not yet made. */
  setpgid(pid, pid);
  int failure[2] = {0, 0};
  ssize_t r;
  while ((r = read(execp[0], failure, sizeof(failure))) < 0 && errno == EINTR)
    ;
  close(execp[0]);
  if (r > 0) {
    int st;
    wait_pid(pid, &st);
    close_pair(outp);
    close_pair(errp);
    close_pair(inp);
    int e = failure[1] ? failure[1] : EIO;
    if (failure[0] == STAGE_EXEC)
      return sg_make_error(err, e, "cannot execute %s: %s", argv[0], strerror(e));
    return sg_make_error(err, e, "cannot prepare %s: %s", argv[0], strerror(e));
  }

  int pidfd = pidfd_open_(pid);
  capture_t cap[2] = {{.fd = outp[0], .max = opts->out_cap}, {.fd = errp[0], .max = opts->out_cap}};
  for (int i = 0; i < 2; i++) {
    cap[i].cap = cap[i].max < 4096 ? cap[i].max : 4096;
    cap[i].buf = xmalloc(cap[i].cap + 1);
    if (cap[i].fd >= 0)
      fcntl(cap[i].fd, F_SETFL, O_NONBLOCK);
  }
  int infd = inp[1];
  size_t in_off = 0;
  if (infd >= 0) {
    fcntl(infd, F_SETFL, O_NONBLOCK);
    if (opts->stdin_len == 0) {
      close(infd);
      infd = -1;
    }
  }
  int64_t deadline = opts->timeout_ms > 0 ? sg_now_ms() + opts->timeout_ms : -1;
  bool exited = false;
  int status = -1;
  for (;;) {
    if (!exited && pidfd < 0) {
      pid_t w;
      while ((w = waitpid(pid, &status, WNOHANG)) < 0 && errno == EINTR)
        ;
      if (w != 0)
        exited = true;
    }
    if (exited && cap[0].fd < 0 && cap[1].fd < 0)
      break;
    int wait_ms = -1;
    if (deadline >= 0) {
      int64_t left = deadline - sg_now_ms();
      if (left <= 0) {
        res->timed_out = true;
        break;
      }
      wait_ms = left > 60000 ? 60000 : (int)left;
    }
    if (!exited && pidfd < 0 && (wait_ms < 0 || wait_ms > 50))
      wait_ms = 50;
    struct pollfd pfd[4];
    int n = 0, i_cap[2] = {-1, -1}, i_in = -1, i_pid = -1;
    for (int i = 0; i < 2; i++)
      if (cap[i].fd >= 0) {
        i_cap[i] = n;
        pfd[n++] = (struct pollfd){cap[i].fd, POLLIN, 0};
      }
    if (infd >= 0) {
      i_in = n;
      pfd[n++] = (struct pollfd){infd, POLLOUT, 0};
    }
    if (!exited && pidfd >= 0) {
      i_pid = n;
      pfd[n++] = (struct pollfd){pidfd, POLLIN, 0};
    }
    int pr = poll(pfd, (nfds_t)n, wait_ms);
    if (pr < 0 && errno == EINTR)
      continue;
    if (pr < 0) {
      sg_warn("exec %s: poll: %s", argv[0], strerror(errno));
      res->timed_out = deadline >= 0;
      break;
    }
    for (int i = 0; i < 2; i++)
      if (i_cap[i] >= 0 && pfd[i_cap[i]].revents)
        capture_read(&cap[i]);
    if (i_in >= 0 && pfd[i_in].revents && !feed_stdin(infd, opts->stdin_data, opts->stdin_len, &in_off)) {
      close(infd);
      infd = -1;
    }
    if (i_pid >= 0 && pfd[i_pid].revents) {
      wait_pid(pid, &status);
      exited = true;
    }
  }
  if (res->timed_out && !exited) {
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
  } else if (res->timed_out) {
    kill(-pid, SIGKILL); /* what of the group still holds the pipes */
  }
  if (!exited)
    wait_pid(pid, &status);
  if (pidfd >= 0)
    close(pidfd);
  if (infd >= 0)
    close(infd);
  for (int i = 0; i < 2; i++) {
    if (cap[i].fd >= 0) {
      capture_read(&cap[i]); /* what was written before the kill */
      if (cap[i].fd >= 0)
        close(cap[i].fd);
    }
    cap[i].buf[cap[i].len] = '\0';
  }
  res->status = status;
  res->out = cap[0].buf;
  res->out_len = cap[0].len;
  res->out_dropped = cap[0].dropped;
  if (merge) {
    free(cap[1].buf);
  } else {
    res->err = cap[1].buf;
    res->err_len = cap[1].len;
    res->err_dropped = cap[1].dropped;
  }
  if (res->timed_out)
    return sg_make_error(err, ETIMEDOUT, "%s did not finish within %d ms and was killed", argv[0], opts->timeout_ms);
  return 0;
}

/* ---- child watcher ---------------------------------------------------------- */

struct sg_child_watch {
  LIST_ENTRY(sg_child_watch) link; /* fallback list */
  pid_t pid;
  int pidfd; /* -1 in fallback mode */
  struct event *ev;
  struct event_base *base;
  sg_child_exit_cb cb;
  void *ud;
  bool done;
  bool detached;
};

static bool force_fallback;
static LIST_HEAD(, sg_child_watch) fallback_watches = LIST_HEAD_INITIALIZER(fallback_watches);
static struct event *sigchld_ev;
static bool in_sigchld;
/* Detached pidfd watches, reachable until their children end. */
static LIST_HEAD(, sg_child_watch) detached_watches = LIST_HEAD_INITIALIZER(detached_watches);

void sg_child_watch_force_fallback(bool on) { force_fallback = on; }

/* Reaps w's child if it has ended; true when it was delivered. */
static bool try_reap(sg_child_watch_t *w) {
  int status = -1;
  pid_t r;
  while ((r = waitpid(w->pid, &status, WNOHANG)) < 0 && errno == EINTR)
    ;
  if (r == 0)
    return false;
  if (r < 0) {
    sg_warn("child %d: %s; it was reaped elsewhere", (int)w->pid, strerror(errno));
    status = -1;
  }
  w->done = true;
  if (w->detached)
    sg_child_watch_free(w);
  else
    w->cb(w->ud, w->pid, status); /* may free w */
  return true;
}

static void pidfd_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  sg_child_watch_t *w = arg;
  if (!w->done && !try_reap(w))
    event_add(w->ev, NULL); /* not ended yet: a spurious wakeup */
}

static void sigchld_cb(evutil_socket_t sig, short what, void *arg) {
  (void)sig;
  (void)what;
  (void)arg;
  in_sigchld = true;
  bool again = true;
  while (again) {
    again = false;
    sg_child_watch_t *w;
    LIST_FOREACH(w, &fallback_watches, link) {
      if (!w->done && try_reap(w)) {
        again = true; /* the callback may have changed the list */
        break;
      }
    }
  }
  in_sigchld = false;
  if (LIST_EMPTY(&fallback_watches) && sigchld_ev) {
    event_free(sigchld_ev);
    sigchld_ev = NULL;
  }
}

sg_child_watch_t *sg_child_watch(struct event_base *base, pid_t pid, sg_child_exit_cb cb, void *ud, sg_error_t **err) {
  sg_child_watch_t *w = xcalloc(1, sizeof(*w));
  w->pid = pid;
  w->cb = cb;
  w->ud = ud;
  w->base = base;
  w->pidfd = force_fallback ? -1 : pidfd_open_(pid);
  if (w->pidfd >= 0) {
    w->ev = event_new(base, w->pidfd, EV_READ, pidfd_cb, w);
    if (!w->ev || event_add(w->ev, NULL) < 0) {
      if (w->ev)
        event_free(w->ev);
      close(w->pidfd);
      free(w);
      sg_make_error(err, EINVAL, "cannot watch child %d", (int)pid);
      return NULL;
    }
    return w;
  }
  if (!force_fallback && errno != ENOSYS) {
    int e = errno;
    free(w);
    sg_make_error(err, e, "pidfd_open(%d): %s", (int)pid, strerror(e));
    return NULL;
  }
  if (sigchld_ev && event_get_base(sigchld_ev) != base) {
    free(w);
    sg_make_error(err, EINVAL, "child watches without pidfd_open serve one event loop only");
    return NULL;
  }
  if (!sigchld_ev) {
    sigchld_ev = evsignal_new(base, SIGCHLD, sigchld_cb, NULL);
    if (!sigchld_ev || evsignal_add(sigchld_ev, NULL) < 0) {
      if (sigchld_ev)
        event_free(sigchld_ev);
      sigchld_ev = NULL;
      free(w);
      sg_make_error(err, EINVAL, "cannot watch SIGCHLD");
      return NULL;
    }
  }
  LIST_INSERT_HEAD(&fallback_watches, w, link);
  /* The child may have ended before SIGCHLD was watched: look once. */
  event_active(sigchld_ev, EV_SIGNAL, 1);
  return w;
}

void sg_child_watch_free(sg_child_watch_t *w) {
  if (!w)
    return;
  if (w->pidfd >= 0) {
    if (w->detached)
      LIST_REMOVE(w, link);
    event_free(w->ev);
    close(w->pidfd);
    free(w);
    return;
  }
  LIST_REMOVE(w, link);
  free(w);
  if (LIST_EMPTY(&fallback_watches) && sigchld_ev && !in_sigchld) {
    event_free(sigchld_ev);
    sigchld_ev = NULL;
  }
}

void sg_child_watch_detach(sg_child_watch_t *w) {
  if (!w)
    return;
  if (w->done) {
    sg_child_watch_free(w);
    return;
  }
  w->detached = true;
  w->cb = NULL;
  w->ud = NULL;
  if (w->pidfd >= 0)
    LIST_INSERT_HEAD(&detached_watches, w, link);
}
