/* Runtimes start, signal and watch workers. A runtime reports each line a
 * worker writes and its exit through callbacks on the loop thread. */
#ifndef SGPU_RUNTIME_H
#define SGPU_RUNTIME_H

#include <stddef.h>
#include <sys/types.h>

#include "sgpu/error.h"

struct event_base;

typedef struct sg_instance sg_instance_t;

typedef struct sg_instance_callbacks {
  /* One line (without its newline) from "stdout" or "stderr". */
  void (*on_line)(void *ud, const char *stream, const char *line, size_t len);
  /* The worker exited; status is as from waitpid(). Called once, after every
   * line it wrote has been delivered. */
  void (*on_exit)(void *ud, int status);
} sg_instance_callbacks_t;

typedef struct sg_launch {
  const char *id;       /* worker id, exported as SGPU_WORKER_ID */
  char *const *argv;    /* argv[0] is an absolute path */
  char *const *envp;    /* complete environment */
} sg_launch_t;

typedef struct sg_runtime_ops {
  const char *name;
  /* Starts a worker; NULL with *err set when it could not be started (exec
   * failures included). */
  sg_instance_t *(*start)(struct event_base *base, const sg_launch_t *launch, const sg_instance_callbacks_t *cbs,
                          void *ud, sg_error_t **err);
  void (*signal)(sg_instance_t *inst, int sig);
  pid_t (*pid)(const sg_instance_t *inst);
  /* Releases the handle; only after on_exit was called. */
  void (*release)(sg_instance_t *inst);
  /* Kills a worker left by an earlier sgpud (found in the store) if it still runs. */
  void (*cleanup_orphan)(const char *id, pid_t pid);
} sg_runtime_ops_t;

extern const sg_runtime_ops_t sg_process_runtime;

/* Installs the SIGCHLD handler that reaps children of every runtime. */
int sg_process_runtime_init(struct event_base *base, sg_error_t **err);
void sg_process_runtime_shutdown(void);

#endif
