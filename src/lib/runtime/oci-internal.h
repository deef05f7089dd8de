/* The OCI config generator shared by the oci and slurm runtimes, and the oci
 * runtime's typed setup (called by its init and stop ops). */
#ifndef SGPU_OCI_INTERNAL_H
#define SGPU_OCI_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>

#include "sgpu/error.h"
#include "sgpu/image.h"
#include "sgpu/runtime.h"

struct event_base;
struct sg_pool;
struct sg_images;

typedef struct sg_oci_config {
  const char *runtime; /* binary name or path: "crun" (default), "runc" */
  const char *dir;     /* bundles and runtime state */
  const char *cdi_dir; /* CDI specs ("/etc/cdi") */
  int userns;          /* containers in a user namespace: 1 on, 0 off, -1 when the host allows it */
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

extern const char sg_seccomp_default_json[]; /* data/seccomp-default.json */
extern const size_t sg_seccomp_default_json_len;

typedef struct sg_oci_bundle_spec {
  const char *id; /* container hostname and sgpu.worker annotation */
  const sg_image_t *img;
  char *const *argv;  /* NULL or empty: the image's entrypoint and cmd */
  char *const *envp;  /* laid over the image's environment; may be NULL */
  const char *rootfs; /* root.path: absolute, or relative to the bundle */
  bool userns;        /* in a user namespace: ids 0..SG_OCI_USERNS_SIZE-1 are
                         SG_OCI_USERNS_BASE.. on the host */
  /* Bound at their path in the container after the standard mounts
   * ("rbind", "nosuid", "nodev", and "ro" or "rw"); the runtime (crun,
   * runc) resolves each destination inside the root, never through a link
   * out of it. */
  const sg_launch_volume_t *volumes;
  int n_volumes;
} sg_oci_bundle_spec_t;

/* The host ids a user namespace maps the container's 0..65535 to. */
#define SG_OCI_USERNS_BASE 1000000000u
#define SG_OCI_USERNS_SIZE 65536u

/* The container's config: host network, pid/ipc/uts/mount namespaces,
 * Docker's default capabilities less CAP_MKNOD and CAP_NET_RAW, the default
 * seccomp profile, Docker's masked and read-only paths, the device cgroup
 * limited to the standard nodes, uid 0 until sg_oci_resolve_user(); with
 * b->userns, a user namespace too (and /sys bound from the host, which a
 * user namespace without its own network cannot mount). New reference. */
json_t *sg_oci_config_new(const sg_oci_bundle_spec_t *b);
/* The default seccomp profile (data/seccomp-default.json, built in): an
 * allow-list in the form of config.json's linux.seccomp. New reference. */
json_t *sg_oci_seccomp_profile(void);
/* Sets process.user of c from the image's user ("name", "uid", "name:group"),
 * looked up in etc/passwd and etc/group of the first of roots (top first,
 * NULL-terminated) that has them. Blocks on file reads. */
int sg_oci_resolve_user(json_t *c, char *const *roots, const char *user, sg_error_t **err);

#endif
