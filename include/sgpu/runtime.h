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
struct sg_daemon_config;
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
  /* Optional, after on_running: the worker's own process is about to run
   * (its container was created); a good moment to probe it. */
  void (*on_started)(void *ud);
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
  /* The process runtime runs the worker as the user set by
   * sg_process_runtime_set_user() (none set: as sgpud's own). */
  SG_LAUNCH_AS_USER = 1 << 1,
};

/* A volume a worker gets (sg_launch_t.volumes). */
typedef struct sg_launch_volume {
  const char *source; /* the host directory (a remote runtime: as its nodes see it) */
  const char *path;   /* where a container sees it (absolute, normalized) */
  bool read_only;
} sg_launch_volume_t;

typedef struct sg_launch {
  const char *id;    /* worker id, exported as SGPU_WORKER_ID */
  char *const *argv; /* argv[0] is an absolute path */
  char *const *envp; /* complete environment */
  unsigned flags;    /* SG_LAUNCH_* */
  /* oci: argv may be empty (the image's entrypoint and cmd run); envp is
   * laid over the image's environment. */
  const char *image;                   /* image reference */
  const struct sg_registry_auth *auth; /* NULL: anonymous */
  const int *gpus;                     /* GPU indexes held, for CDI */
  int n_gpus;
  /* Remote runtimes (ops.remote, slurm): argv still holds "$PORT", which is
   * replaced on the node by the port chosen there; envp holds only what the
   * spec adds (PORT and the GPU variables are set on the node). */
  const char *endpoint;
  int version;          /* the endpoint's version the worker runs */
  const char *gpu_type; /* NULL when gpu_count == 0 */
  int gpu_count;
  const char *partition;  /* NULL: the runtime's default */
  const char *account;    /* NULL: the runtime's default */
  const char *time_limit; /* Slurm's time format; NULL: the runtime's default */
  /* The spec's volumes, resolved: oci binds each source at path in the
   * container (read-only when read_only); process gives the worker a
   * mount namespace where each read-only source is a read-only bind of
   * itself (when sgpud runs as root); slurm only passes the environment
   * (SGPU_VOLUME_* in envp, set by the daemon for every runtime). */
  const sg_launch_volume_t *volumes;
  int n_volumes;
  /* process: sgpud's data directory. For a worker run as another user, the
   * highest directory on the way to it that the user cannot search becomes
   * an empty tmpfs with only the worker's volumes beneath it bound back. */
  const char *private_dir;
} sg_launch_t;

/* Where a worker of a remote runtime runs, as its scheduler reports it. The
 * strings belong to the instance and change on the loop thread only. */
typedef struct sg_placement {
  const char *job_id; /* the scheduler's id, NULL until submitted */
  const char *state;  /* the scheduler's job state ("PENDING", "RUNNING", ...) */
  const char *reason; /* why it waits or ended ("Resources"), or NULL */
  const char *node;   /* the node it runs on, or NULL */
  const char *addr;   /* numeric address of the node, NULL until known */
  int port;           /* chosen on the node, 0 until known */
  int gpus[16];       /* GPU indexes on the node */
  int n_gpus;
  int64_t start_wall; /* ms since the epoch as the scheduler reports them; 0: unknown */
  int64_t end_wall;
} sg_placement_t;

/* A worker an earlier sgpud of the same data dir left running, as its
 * runtime finds it (slurm: from the job's name and comment, "sgpu.WORKER"
 * and "sgpu:TAG:ENDPOINT:VERSION"). */
typedef struct sg_leftover {
  const char *job_id;
  const char *worker_id;
  const char *endpoint;
  int version;
  int64_t start_wall; /* when it started, ms since the epoch; 0: unknown */
} sg_leftover_t;

/* One node of a cluster as its scheduler reports it. */
typedef struct sg_runtime_node {
  char name[128];
  char state[64];
  char partitions[128];
  char gpu_type[64];
  int gpus_total;
  int gpus_used;
} sg_runtime_node_t;

typedef struct sg_run_as sg_run_as_t;

/* sg_runtime_ops_t.caps: what a runtime does, so that callers never branch
 * on its name. */
enum {
  /* Its scheduler allocates the GPUs (and the node); sgpud's own inventory
   * is not used and a spec's scheduler options ("slurm") apply. */
  SG_RUNTIME_OWN_GPUS = 1 << 0,
  /* Runs OCI images: spec images are pulled ahead and registry auth is
   * passed to start(). */
  SG_RUNTIME_IMAGES = 1 << 1,
  /* A spec must name an image. */
  SG_RUNTIME_NEEDS_IMAGE = 1 << 2,
  /* Workers get this host's PATH and HOME (not an image's). */
  SG_RUNTIME_HOST_ENV = 1 << 3,
};

/* What sgpud hands every runtime's init: its loop, the thread pool (for
 * blocking work), the image store, and the daemon's configuration, of which
 * each runtime reads its own keys. All outlive the runtime's stop op. */
typedef struct sg_runtime_host {
  struct event_base *base;
  struct sg_pool *pool;
  struct sg_images *images;
  const struct sg_daemon_config *cfg;
} sg_runtime_host_t;

/* A runtime is a context (file-static state in its own source file) and
 * these ops, found by name with sg_runtime_find(). Ops marked optional may
 * be NULL; the default is stated with each. */
typedef struct sg_runtime_ops {
  const char *name;
  unsigned caps; /* SG_RUNTIME_* */
  /* Optional: sets the runtime up from host (blocks; once, at startup, in
   * registry order, after the pool and the image store exist and before
   * the endpoints are loaded). A runtime that cannot run here (its tools
   * are missing) still returns 0 and says why through unavailable; an error
   * stops sgpud. NULL: nothing to set up. */
  int (*init)(const sg_runtime_host_t *host, sg_error_t **err);
  /* Optional: sgpud is stopping (workers were stopped or detached): let go
   * of the pool and the image store, which are freed next (may block).
   * Called even when init was not, or failed. NULL: nothing held. */
  void (*stop)(void);
  /* Optional: frees what remains, after the pool is freed (may block: jobs
   * are cancelled). Called even when init was not, or failed. NULL:
   * nothing to free. */
  void (*shutdown)(void);
  /* Optional: why workers of this runtime cannot start here (its tools are
   * missing, it was not set up), or NULL when they can. NULL op: always. */
  const char *(*unavailable)(void);
  /* Starts a worker; NULL with *err set when it could not be started (exec
   * failures included). */
  sg_instance_t *(*start)(struct event_base *base, const sg_launch_t *launch, const sg_instance_callbacks_t *cbs,
                          void *ud, sg_error_t **err);
  void (*signal)(sg_instance_t *inst, int sig);
  pid_t (*pid)(const sg_instance_t *inst);
  /* Releases the handle; only after on_exit was called. */
  void (*release)(sg_instance_t *inst);
  /* Optional: kills a worker left by an earlier sgpud (found in the store)
   * if it still runs. NULL: the runtime finds what it left by other means
   * (at init, or through adopt). */
  void (*reconcile)(const char *id, pid_t pid);
  /* true: start() returns at once and reports on_running or on_fail later. */
  bool async_start;
  /* Optional: the start's steps so far. */
  void (*phases)(const sg_instance_t *inst, sg_start_phases_t *out);
  /* true: the worker runs on a node the runtime chooses; its address, port
   * and GPUs come from placement() once on_running was called. */
  bool remote;
  void (*placement)(const sg_instance_t *inst, sg_placement_t *out);
  /* Optional: leaves a running worker to the next sgpud of the same data
   * dir, which adopts it (sgpud is stopping). Returns false when the worker
   * cannot be left (it is then stopped as usual). After true, signal() does
   * nothing and release() frees the handle without stopping the worker. */
  bool (*detach)(sg_instance_t *inst);
  /* Optional: offers every worker an earlier sgpud left (found at init) to
   * take(), which returns the instance adopt_instance() made for it, or
   * NULL; those not taken are stopped (blocks). Once, at startup, after the
   * endpoints are loaded. NULL: nothing is ever left running. */
  void (*adopt)(sg_instance_t *(*take)(void *ctx, const sg_leftover_t *job), void *ctx);
  /* With adopt: takes over a leftover as a worker reporting to cbs and ud,
   * as start() would. */
  sg_instance_t *(*adopt_instance)(const sg_leftover_t *job, const sg_instance_callbacks_t *cbs, void *ud);
  /* Optional: the cluster's nodes from the last refresh; *n gets their
   * count, *age_ms how old they are (-1: never refreshed). The array lives
   * until the next refresh; loop thread. NULL: no nodes of its own. */
  const sg_runtime_node_t *(*nodes)(size_t *n, int64_t *age_ms);
  /* Optional: the user SG_LAUNCH_AS_USER launches run as, or NULL
   * (sgpud's own). NULL op: sgpud's own. */
  const sg_run_as_t *(*user)(void);
} sg_runtime_ops_t;

/* The typed init and shutdown functions declared below (and in the
 * runtimes' internal headers) are what their init, stop and shutdown ops
 * call with their own config; tests call them directly. sgpud goes through
 * the ops only. */

/* The registry: every runtime built in, in a fixed order. */
/* Every runtime, NULL-terminated, in registry order. */
const sg_runtime_ops_t *const *sg_runtime_all(void);
/* The runtime called name, or NULL when there is none. */
const sg_runtime_ops_t *sg_runtime_find(const char *name);
/* The runtimes' names, NULL-terminated, in registry order. */
const char *const *sg_runtime_names(void);
/* The names for messages: "\"process\", \"oci\" or \"slurm\"" (caller frees). */
char *sg_runtime_names_text(void);
/* The runtime a spec that names none uses: the first with
 * SG_RUNTIME_NEEDS_IMAGE when it has an image, else the first with
 * SG_RUNTIME_HOST_ENV. Never NULL. */
const sg_runtime_ops_t *sg_runtime_default(bool has_image);
/* The runtime of this host's own GPUs (the first with SG_RUNTIME_HOST_ENV
 * and not SG_RUNTIME_OWN_GPUS), as GET /v1/nodes names it. */
const sg_runtime_ops_t *sg_runtime_local(void);

extern const sg_runtime_ops_t sg_process_runtime;

/* Prepares the process runtime. Each worker it starts is watched by its own
 * pidfd (sg_child_watch, sgpu/exec.h) and only workers are reaped: nothing
 * in libsgpu waits for any child, so helper commands keep their statuses. */
int sg_process_runtime_init(struct event_base *base, sg_error_t **err);
void sg_process_runtime_shutdown(void);

/* The unprivileged user that process workers run as. */
struct sg_run_as {
  char *name;
  uid_t uid;
  gid_t gid;
  gid_t *groups; /* supplementary groups: the user's own */
  int n_groups;
  char *home;
};

#define SG_RUN_AS_DEFAULT "sgpu-worker" /* falls back to "nobody" */

/* Chooses the user of SG_LAUNCH_AS_USER launches: run_as ("NAME",
 * "UID[:GID]", "root" to keep sgpud's, NULL or "" for the default
 * SG_RUN_AS_DEFAULT or nobody). Only when sgpud runs as root; otherwise
 * workers run as sgpud's user and run_as is ignored. Reads the user and
 * group databases (blocks). */
int sg_process_runtime_set_user(const char *run_as, sg_error_t **err);
/* The user launches with SG_LAUNCH_AS_USER run as, or NULL (sgpud's own). */
const sg_run_as_t *sg_process_runtime_user(void);

/* The oci runtime: workers are containers of an OCI runtime (crun, runc). */
extern const sg_runtime_ops_t sg_oci_runtime;

/* The slurm runtime: a worker is one Slurm batch job (see slurm.c). */
extern const sg_runtime_ops_t sg_slurm_runtime;

#endif
