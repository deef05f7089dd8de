/* Running helper commands and watching children: the one way libsgpu forks.
 *
 * sg_exec_run() runs a helper to completion on the calling (pool) thread:
 * exec failures come back through a CLOEXEC errno pipe, output is kept up to
 * a cap and the rest drained, a timeout kills the helper's whole process
 * group, and only the helper's own pid is waited for.
 *
 * sg_child_watch() watches a child on the event loop with a pidfd and reaps
 * that child only. Nothing in libsgpu waits for "any child", so a status is
 * always delivered to whoever started the process. */
#ifndef SGPU_EXEC_H
#define SGPU_EXEC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "sgpu/error.h"

struct event_base;

enum {
  SG_EXEC_MERGE_STDERR = 1 << 0, /* stderr goes to the stdout capture */
};

typedef struct sg_exec_opts {
  char *const *envp;      /* NULL: the caller's environment */
  const void *stdin_data; /* NULL: stdin is /dev/null */
  size_t stdin_len;
  int timeout_ms; /* <= 0: no timeout */
  size_t out_cap; /* bytes kept of stdout and of stderr, each */
  unsigned flags; /* SG_EXEC_* */
  /* Runs in the child after fork, before exec; must be async-signal-safe.
   * A negative errno return fails the run with that error. */
  int (*child_setup)(void *arg);
  void *child_arg;
} sg_exec_opts_t;

typedef struct sg_exec_result {
  int status;      /* wait status (WIFEXITED...), -1 when not waited */
  bool timed_out;  /* killed at the timeout */
  char *out, *err; /* NUL-terminated captures (err NULL when merged) */
  size_t out_len, err_len;
  size_t out_dropped, err_dropped; /* bytes beyond the cap, read and dropped */
} sg_exec_result_t;

/* Runs argv (argv[0] looked up in PATH when it has no '/') with opts and
 * waits for it; blocks, so pool threads and startup only. The child runs in
 * its own process group with default signal dispositions and an empty mask.
 * Returns 0 when the command ran and was waited for (whatever its exit
 * status); a negative errno when it could not be started (the error names
 * argv[0]) or -ETIMEDOUT when it ran past opts->timeout_ms (its group was
 * killed with SIGKILL; *res still holds its status and output). *res is
 * always initialised and owned by the caller: sg_exec_result_clear(). */
int sg_exec_run(char *const argv[], const sg_exec_opts_t *opts, sg_exec_result_t *res, sg_error_t **err);
void sg_exec_result_clear(sg_exec_result_t *res);

/* True when a wait status is a normal exit with code 0. */
bool sg_exec_status_ok(int status);

/* ---- child watcher (event loop) ---- */

typedef struct sg_child_watch sg_child_watch_t;
/* Called once on the loop when the child has ended and has been reaped;
 * status is its wait status. The watch stays valid until freed. */
typedef void (*sg_child_exit_cb)(void *ud, pid_t pid, int status);

/* Watches pid, a child of this process, on base. On kernels without
 * pidfd_open the watch falls back to SIGCHLD plus waitpid(pid, WNOHANG) for
 * each watched pid. NULL with *err on failure (the child is then not
 * watched and the caller must reap it). */
sg_child_watch_t *sg_child_watch(struct event_base *base, pid_t pid, sg_child_exit_cb cb, void *ud, sg_error_t **err);
/* Stops watching. A child not yet reaped stays the caller's to reap. */
void sg_child_watch_free(sg_child_watch_t *w);
/* Stops notifying but still reaps the child when it ends, then frees the
 * watch: for an owner that goes away before its child does. */
void sg_child_watch_detach(sg_child_watch_t *w);

/* Forces the SIGCHLD fallback for watches made afterwards (tests). */
void sg_child_watch_force_fallback(bool on);

#endif
