/* core/exec: helper commands (status, exec failures, output cap, timeout of a
 * whole process group, stdin, no fd leaks) and child watches that reap only
 * the child they watch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "sgpu/exec.h"
#include "sgpu/runtime.h"
#include "sgpu/util.h"

static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  assert_non_null(d);
  int n = 0;
  struct dirent *de;
  while ((de = readdir(d)))
    if (de->d_name[0] != '.')
      n++;
  closedir(d);
  return n;
}

static int run_sh(const char *script, const sg_exec_opts_t *opts, sg_exec_result_t *res, sg_error_t **err) {
  char *argv[] = {"sh", "-c", (char *)script, NULL};
  return sg_exec_run(argv, opts, res, err);
}

static void test_exit_status_and_output(void **state) {
  (void)state;
  sg_exec_result_t res;
  cleanup_error sg_error_t *err = NULL;
  sg_exec_opts_t opts = {.timeout_ms = 30000, .out_cap = 4096};
  assert_int_equal(run_sh("echo out; echo err >&2; exit 3", &opts, &res, &err), 0);
  assert_null(err);
  assert_true(WIFEXITED(res.status));
  assert_int_equal(WEXITSTATUS(res.status), 3);
  assert_false(sg_exec_status_ok(res.status));
  assert_string_equal(res.out, "out\n");
  assert_string_equal(res.err, "err\n");
  assert_false(res.timed_out);
  sg_exec_result_clear(&res);

  opts.flags = SG_EXEC_MERGE_STDERR;
  assert_int_equal(run_sh("echo out; echo err >&2", &opts, &res, &err), 0);
  assert_true(sg_exec_status_ok(res.status));
  assert_string_equal(res.out, "out\nerr\n");
  assert_null(res.err);
  sg_exec_result_clear(&res);

  /* The environment given, and only it. */
  char *envp[] = {"SGPU_EXEC_TEST=yes", NULL};
  opts.envp = envp;
  opts.flags = 0;
  char *argv[] = {"/usr/bin/env", NULL};
  assert_int_equal(sg_exec_run(argv, &opts, &res, &err), 0);
  assert_string_equal(res.out, "SGPU_EXEC_TEST=yes\n");
  sg_exec_result_clear(&res);
}

static void test_exec_failure_names_the_binary(void **state) {
  (void)state;
  sg_exec_result_t res;
  {
    cleanup_error sg_error_t *err = NULL;
    char *argv[] = {"/nonexistent/sgpu-no-such-binary", NULL};
    assert_int_equal(sg_exec_run(argv, NULL, &res, &err), -ENOENT);
    assert_non_null(err);
    assert_int_equal(err->status, ENOENT);
    assert_non_null(strstr(err->message, "/nonexistent/sgpu-no-such-binary"));
    assert_int_equal(res.status, -1);
    sg_exec_result_clear(&res);
  }
  {
    cleanup_error sg_error_t *err = NULL;
    char *argv[] = {"sgpu-no-such-binary-in-path", NULL};
    assert_int_equal(sg_exec_run(argv, NULL, &res, &err), -ENOENT);
    assert_non_null(strstr(err->message, "sgpu-no-such-binary-in-path"));
    sg_exec_result_clear(&res);
  }
  {
    /* Found, but exec itself fails: the errno comes back through the pipe. */
    char path[] = "/tmp/sgpu-exec-test-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    chmod(path, 0600);
    cleanup_error sg_error_t *err = NULL;
    char *argv[] = {path, NULL};
    int r = sg_exec_run(argv, NULL, &res, &err);
    unlink(path);
    assert_int_equal(r, -EACCES);
    assert_non_null(strstr(err->message, "cannot execute"));
    assert_non_null(strstr(err->message, path));
    sg_exec_result_clear(&res);
  }
}

static void test_output_cap(void **state) {
  (void)state;
  sg_exec_result_t res;
  cleanup_error sg_error_t *err = NULL;
  sg_exec_opts_t opts = {.timeout_ms = 60000, .out_cap = 65536};
  /* 10 MiB on stdout and a last word on stderr after it: the writer is never
   * blocked by the cap, so it finishes and exits 0. */
  assert_int_equal(run_sh("head -c 10485760 /dev/zero && echo done >&2", &opts, &res, &err), 0);
  assert_null(err);
  assert_true(sg_exec_status_ok(res.status));
  assert_int_equal(res.out_len, 65536);
  assert_int_equal(res.out_dropped, 10485760 - 65536);
  assert_string_equal(res.err, "done\n");
  sg_exec_result_clear(&res);
}

static void test_stdin(void **state) {
  (void)state;
  size_t n = 1 << 20;
  char *in = xmalloc(n);
  for (size_t i = 0; i < n; i++)
    in[i] = (char)('a' + i % 26);
  sg_exec_result_t res;
  cleanup_error sg_error_t *err = NULL;
  sg_exec_opts_t opts = {.timeout_ms = 60000, .out_cap = 2 << 20, .stdin_data = in, .stdin_len = n};
  char *argv[] = {"cat", NULL};
  assert_int_equal(sg_exec_run(argv, &opts, &res, &err), 0);
  assert_true(sg_exec_status_ok(res.status));
  assert_int_equal(res.out_len, n);
  assert_memory_equal(res.out, in, n);
  sg_exec_result_clear(&res);
  /* A reader that stops early: no SIGPIPE for us, its status for the caller. */
  char *head[] = {"head", "-c", "10", NULL};
  assert_int_equal(sg_exec_run(head, &opts, &res, &err), 0);
  assert_true(sg_exec_status_ok(res.status));
  assert_int_equal(res.out_len, 10);
  sg_exec_result_clear(&res);
  free(in);
}

static void test_timeout_kills_the_group(void **state) {
  (void)state;
  /* Orphans come to us, so the grandchild's end can be waited for. */
  assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  sg_exec_result_t res;
  cleanup_error sg_error_t *err = NULL;
  /* The shell must have started its background child before the timeout;
   * on a loaded machine it may not have: try again with a longer one. */
  for (int timeout_ms = 300;; timeout_ms *= 4) {
    sg_exec_opts_t opts = {.timeout_ms = timeout_ms, .out_cap = 4096};
    assert_int_equal(run_sh("sleep 100 & echo $!; sleep 100; exit 0", &opts, &res, &err), -ETIMEDOUT);
    if (res.out_len > 0 || timeout_ms > 20000)
      break;
    sg_exec_result_clear(&res);
    sg_error_free(err);
    err = NULL;
  }
  assert_non_null(err);
  assert_int_equal(err->status, ETIMEDOUT);
  assert_non_null(strstr(err->message, "sh"));
  assert_true(res.timed_out);
  assert_true(WIFSIGNALED(res.status));
  assert_int_equal(WTERMSIG(res.status), SIGKILL);
  pid_t g = (pid_t)atoi(res.out);
  assert_true(g > 0);
  int st = 0;
  pid_t w = waitpid(g, &st, 0);
  if (w == g) {
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGKILL);
  } else {
    /* The kill reaches the group's members one by one: the background
     * sleep may die first and be reaped by the shell, which waits for any
     * child, before the shell dies. Either way it must be gone. */
    assert_int_equal(w, -1);
    assert_int_equal(errno, ECHILD);
    assert_int_equal(kill(g, 0), -1);
    assert_int_equal(errno, ESRCH);
  }
  sg_exec_result_clear(&res);
  prctl(PR_SET_CHILD_SUBREAPER, 0);
}

static void test_no_fd_leak(void **state) {
  (void)state;
  int before = count_fds();
  for (int i = 0; i < 3; i++) {
    sg_exec_result_t res;
    sg_error_t *err = NULL;
    sg_exec_opts_t opts = {.timeout_ms = 200, .out_cap = 16, .stdin_data = "x", .stdin_len = 1};
    run_sh("cat; echo 0123456789abcdefghij", &opts, &res, &err);
    sg_exec_result_clear(&res);
    run_sh("sleep 100", &opts, &res, &err);
    sg_exec_result_clear(&res);
    sg_error_free(err);
    err = NULL;
    char *missing[] = {"/nonexistent/x", NULL};
    sg_exec_run(missing, &opts, &res, &err);
    sg_exec_result_clear(&res);
    sg_error_free(err);
  }
  assert_int_equal(count_fds(), before);
}

/* Signals arriving all along (handlers without SA_RESTART) change nothing. */
static atomic_int interrupting;
static void on_usr1(int sig) { (void)sig; }
static void *interrupter(void *arg) {
  pthread_t target = *(pthread_t *)arg;
  while (atomic_load(&interrupting)) {
    pthread_kill(target, SIGUSR1);
    usleep(500);
  }
  return NULL;
}

static void test_eintr(void **state) {
  (void)state;
  struct sigaction sa = {0}, old;
  sa.sa_handler = on_usr1;
  sigaction(SIGUSR1, &sa, &old);
  pthread_t self = pthread_self(), t;
  atomic_store(&interrupting, 1);
  assert_int_equal(pthread_create(&t, NULL, interrupter, &self), 0);
  for (int i = 0; i < 5; i++) {
    sg_exec_result_t res;
    cleanup_error sg_error_t *err = NULL;
    sg_exec_opts_t opts = {.timeout_ms = 60000, .out_cap = 1 << 20, .stdin_data = "abc", .stdin_len = 3};
    assert_int_equal(run_sh("sleep 0.05; cat; head -c 100000 /dev/zero; exit 4", &opts, &res, &err), 0);
    assert_true(WIFEXITED(res.status));
    assert_int_equal(WEXITSTATUS(res.status), 4);
    assert_int_equal(res.out_len, 100003);
    assert_memory_equal(res.out, "abc", 3);
    sg_exec_result_clear(&res);
  }
  atomic_store(&interrupting, 0);
  pthread_join(t, NULL);
  sigaction(SIGUSR1, &old, NULL);
}

/* ---- child watches ---- */

struct seen {
  pid_t pid;
  int status;
  int calls;
  struct event_base *base;
};

static void on_exit_cb(void *ud, pid_t pid, int status) {
  struct seen *s = ud;
  s->pid = pid;
  s->status = status;
  s->calls++;
  event_base_loopbreak(s->base);
}

static pid_t child_exiting(int code) {
  pid_t pid = fork();
  if (pid == 0)
    _exit(code);
  assert_true(pid > 0);
  return pid;
}

static void watch_reaps_only_its_child(bool fallback) {
  sg_child_watch_force_fallback(fallback);
  struct event_base *base = event_base_new();
  pid_t other = child_exiting(3);
  pid_t mine = child_exiting(5);
  struct seen s = {.base = base};
  cleanup_error sg_error_t *err = NULL;
  sg_child_watch_t *w = sg_child_watch(base, mine, on_exit_cb, &s, &err);
  assert_non_null(w);
  while (s.calls == 0)
    assert_true(event_base_loop(base, EVLOOP_ONCE) >= 0);
  assert_int_equal(s.calls, 1);
  assert_int_equal(s.pid, mine);
  assert_true(WIFEXITED(s.status));
  assert_int_equal(WEXITSTATUS(s.status), 5);
  /* The other child has ended too and is still there for its owner. */
  siginfo_t info = {0};
  assert_int_equal(waitid(P_PID, (id_t)other, &info, WEXITED | WNOWAIT), 0);
  assert_int_equal(info.si_pid, other);
  int st = 0;
  assert_int_equal(waitpid(other, &st, 0), other);
  assert_int_equal(WEXITSTATUS(st), 3);
  sg_child_watch_free(w);
  event_base_free(base);
  sg_child_watch_force_fallback(false);
}

static void test_watch_reaps_only_its_child(void **state) {
  (void)state;
  watch_reaps_only_its_child(false);
}

static void test_watch_fallback_reaps_only_its_child(void **state) {
  (void)state;
  watch_reaps_only_its_child(true);
}

/* A detached watch still reaps its child. */
static void test_watch_detach_reaps(void **state) {
  (void)state;
  struct event_base *base = event_base_new();
  int p[2];
  assert_int_equal(pipe2(p, O_CLOEXEC), 0);
  pid_t pid = fork();
  if (pid == 0) {
    close(p[1]);
    char c;
    while (read(p[0], &c, 1) < 0 && errno == EINTR)
      ;
    _exit(0);
  }
  close(p[0]);
  struct seen s = {.base = base};
  cleanup_error sg_error_t *err = NULL;
  sg_child_watch_t *w = sg_child_watch(base, pid, on_exit_cb, &s, &err);
  assert_non_null(w);
  sg_child_watch_detach(w);
  close(p[1]); /* now it ends */
  /* Poll the loop until the child is gone: reaped by the detached watch. */
  for (int i = 0; i < 20000; i++) {
    event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    if (kill(pid, 0) < 0 && errno == ESRCH)
      break;
    usleep(1000);
  }
  assert_int_equal(kill(pid, 0), -1);
  assert_int_equal(s.calls, 0);
  assert_int_equal(waitpid(pid, NULL, WNOHANG), -1);
  assert_int_equal(errno, ECHILD);
  event_base_free(base);
}

/* Helper commands on another thread while the process runtime watches a
 * worker on the loop: every helper's status reaches its caller. */
static atomic_int helpers_done;
static atomic_int helpers_bad;

static void *helper_thread(void *arg) {
  (void)arg;
  for (int i = 0; i < 40; i++) {
    sg_exec_result_t res;
    sg_error_t *err = NULL;
    sg_exec_opts_t opts = {.timeout_ms = 30000, .out_cap = 64};
    char *argv[] = {"sh", "-c", "exit 7", NULL};
    int r = sg_exec_run(argv, &opts, &res, &err);
    if (r < 0 || !WIFEXITED(res.status) || WEXITSTATUS(res.status) != 7)
      atomic_fetch_add(&helpers_bad, 1);
    sg_exec_result_clear(&res);
    sg_error_free(err);
  }
  atomic_store(&helpers_done, 1);
  return NULL;
}

static void on_line(void *ud, const char *stream, const char *line, size_t len) {
  (void)ud, (void)stream, (void)line, (void)len;
}
static void on_worker_exit(void *ud, int status) {
  struct seen *s = ud;
  s->status = status;
  s->calls++;
}

static void check_done(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  if (atomic_load(&helpers_done))
    event_base_loopbreak(arg);
}

static void test_runtime_does_not_steal_helper_status(void **state) {
  (void)state;
  struct event_base *base = event_base_new();
  cleanup_error sg_error_t *err = NULL;
  assert_int_equal(sg_process_runtime_init(base, &err), 0);
  char *argv[] = {"/bin/sleep", "100", NULL};
  char *envp[] = {"PATH=/usr/bin:/bin", NULL};
  sg_launch_t launch = {.id = "w-exec-test", .argv = argv, .envp = envp};
  struct seen s = {.base = base};
  sg_instance_callbacks_t cbs = {.on_line = on_line, .on_exit = on_worker_exit};
  sg_instance_t *inst = sg_process_runtime.start(base, &launch, &cbs, &s, &err);
  assert_non_null(inst);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, helper_thread, NULL), 0);
  struct event *tick = event_new(base, -1, EV_PERSIST, check_done, base);
  struct timeval tv = {0, 10000};
  event_add(tick, &tv);
  event_base_dispatch(base);
  pthread_join(t, NULL);
  assert_int_equal(atomic_load(&helpers_bad), 0);
  /* The worker itself is still reaped by its watch. */
  sg_process_runtime.signal(inst, SIGKILL);
  while (s.calls == 0)
    assert_true(event_base_loop(base, EVLOOP_ONCE) >= 0);
  assert_true(WIFSIGNALED(s.status));
  sg_process_runtime.release(inst);
  event_free(tick);
  sg_process_runtime_shutdown();
  event_base_free(base);
}

/* What a worker wrote just before it ended is delivered before its exit. */
struct last_words {
  int lines_before_exit, lines_after_exit, exits;
};

static void count_line(void *ud, const char *stream, const char *line, size_t len) {
  struct last_words *lw = ud;
  (void)stream, (void)line, (void)len;
  if (lw->exits)
    lw->lines_after_exit++;
  else
    lw->lines_before_exit++;
}

static void count_exit(void *ud, int status) {
  struct last_words *lw = ud;
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 3);
  lw->exits++;
}

static void test_worker_lines_come_before_its_exit(void **state) {
  (void)state;
  struct event_base *base = event_base_new();
  cleanup_error sg_error_t *err = NULL;
  assert_int_equal(sg_process_runtime_init(base, &err), 0);
  char *argv[] = {"/bin/sh", "-c", "echo out; echo err >&2; exit 3", NULL};
  char *envp[] = {"PATH=/usr/bin:/bin", NULL};
  sg_launch_t launch = {.id = "w-exec-test", .argv = argv, .envp = envp};
  for (int round = 0; round < 300; round++) {
    struct last_words lw = {0};
    sg_instance_callbacks_t cbs = {.on_line = count_line, .on_exit = count_exit};
    sg_instance_t *inst = sg_process_runtime.start(base, &launch, &cbs, &lw, &err);
    assert_non_null(inst);
    while (lw.exits == 0)
      assert_true(event_base_loop(base, EVLOOP_ONCE) >= 0);
    assert_int_equal(lw.exits, 1);
    assert_int_equal(lw.lines_before_exit, 2);
    sg_process_runtime.release(inst);
  }
  sg_process_runtime_shutdown();
  event_base_free(base);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_exit_status_and_output),
      cmocka_unit_test(test_exec_failure_names_the_binary),
      cmocka_unit_test(test_output_cap),
      cmocka_unit_test(test_stdin),
      cmocka_unit_test(test_timeout_kills_the_group),
      cmocka_unit_test(test_no_fd_leak),
      cmocka_unit_test(test_eintr),
      cmocka_unit_test(test_watch_reaps_only_its_child),
      cmocka_unit_test(test_watch_fallback_reaps_only_its_child),
      cmocka_unit_test(test_watch_detach_reaps),
      cmocka_unit_test(test_runtime_does_not_steal_helper_status),
      cmocka_unit_test(test_worker_lines_come_before_its_exit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
