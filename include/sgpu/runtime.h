/* Runtimes start, signal and watch workers. A runtime reports each line a
 * worker writes and its exit through callbacks on the loop thread. */
#ifndef SGPU_RUNTIME_H
#define SGPU_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "sgpu/error.h"

struct event_base;
struct sg_registry_auth;
struct sg_pool;
struct sg_images;

typedef struct sg_instance sg_instance_t;

typedef struct sg_instance_callbacks {
  /* One line (without its newline) from "stdout" or "stderr". */
  void (*on_line)(void *ud, const char *stream, const char *line, size_t len);
  /* The worker exited; status is as from waitpid(). Called once, after every
   * line it wrote has been delivered. */
  void (*on_exit)(void *ud, int status);
  /* Runtimes whose start goes on after start() returned (ops.async_start):
   * on_running once the worker's process runs and may be probed, or instead
   * on_fail with the reason it could not be started (then nothing else). */
  void (*on_running)(void *ud);
  void (*on_fail)(void *ud, const char *message);
} sg_instance_callbacks_t;

/* How long each step of a start took, in ms; -1 for a step not reached. */
typedef struct sg_start_phases {
  int64_t pull_ms;      /* waiting for the image (0 when cached) */
  int64_t rootfs_ms;    /* preparing the root filesystem and bundle */
  int64_t container_ms; /* the runtime creating the container */
} sg_start_phases_t;

/* sg_launch_t.flags */
enum {
  /* The child unshares its mount namespace and detaches the cgroup v2 mount
   * of a hybrid cgroup layout before exec (for crun, see oci.c). */
  SG_LAUNCH_HIDE_CGROUP2 = 1 << 0,
};

typedef struct sg_launch {
  const char *id;       /* worker id, exported as SGPU_WORKER_ID */
  char *const *argv;    /* argv[0] is an absolute path */
  char *const *envp;    /* complete environment */
  unsigned flags;       /* SG_LAUNCH_* */
  /* oci: argv may be empty (the image's entrypoint and cmd run); envp is
   * laid over the image's environment. */
  const char *image;                   /* image reference */
  const struct sg_registry_auth *auth; /* NULL: anonymous */
  const int *gpus;                     /* GPU indexes held, for CDI */
  int n_gpus;
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
  /* true: start() returns at once and reports on_running or on_fail later. */
  bool async_start;
  /* Optional: the start's steps so far. */
  void (*phases)(const sg_instance_t *inst, sg_start_phases_t *out);
} sg_runtime_ops_t;

extern const sg_runtime_ops_t sg_process_runtime;

/* Installs the SIGCHLD handler that reaps children of every runtime. */
int sg_process_runtime_init(struct event_base *base, sg_error_t **err);
void sg_process_runtime_shutdown(void);

/* The oci runtime: workers are containers of an OCI runtime (crun, runc). */
extern const sg_runtime_ops_t sg_oci_runtime;

typedef struct sg_oci_config {
  const char *runtime;  /* binary name or path: "crun" (default), "runc" */
  const char *dir;      /* bundles and runtime state */
  const char *cdi_dir;  /* CDI specs ("/etc/cdi") */
} sg_oci_config_t;

/* Finds the runtime binary and the host's cgroup layout, loads CDI specs and
 * removes containers, mounts and bundles left by an earlier sgpud (blocks;
 * at startup). Without a usable runtime it logs why and returns 0: starting
 * an oci worker then fails with that reason. */
int sg_oci_runtime_init(struct event_base *base, struct sg_pool *pool, struct sg_images *images,
                        const sg_oci_config_t *cfg, sg_error_t **err);
/* Synchronously removes what running containers remain (shutdown). */
void sg_oci_runtime_shutdown(void);
/* Why oci workers cannot start here, or NULL when they can. */
const char *sg_oci_unavailable(void);

#endif
