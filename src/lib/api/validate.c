/* What an endpoint spec needs from this daemon, checked on the loop before a
 * create or replace is written: a spec that can never run is refused with
 * 422 naming the field instead of waiting for a worker that never comes.
 *
 * - gpu.type and gpu.count: a runtime that takes GPUs from this host's
 *   inventory needs gpu.count GPUs of gpu.type there; a runtime that
 *   schedules its own GPUs (SG_RUNTIME_OWN_GPUS) is checked against the
 *   nodes its last refresh listed, and not at all when it lists none or a
 *   node whose GPUs have no type (it cannot tell).
 * - registry_auth: must name stored credentials (the loop's cache) when the
 *   runtime pulls the spec's image with them.
 * - env.NAME: {"secret": S} must name a stored secret (the loop's cache).
 * - volumes: a named volume must exist; a host_path must resolve (links
 *   followed) to a directory beneath a directory of volume_host_paths.
 * - command[0] of a worker this host runs itself (not remote, not an image's
 *   command): a bare name is looked up in the worker's PATH (the spec's env
 *   PATH, else sgpud's, which the worker inherits) and replaced by the path
 *   found; the file must exist, be a regular file and be executable by
 *   the user the runtime runs workers as (the kernel's answer for that user
 *   about the file itself, which the runtime opens before it takes the
 *   user's ids: its directories need not be searchable). A remote runtime's
 *   command runs on another node: it must be an absolute path there, which
 *   is not checked here.
 * - async.protocol "runpod" on a remote runtime: its workers run on other
 *   nodes and must reach sgpud, which a loopback or wildcard listen address
 *   without config advertise_url does not give them. */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "api-internal.h"
#include "sgpu/images-store.h"
#include "sgpu/secrets-store.h"
#include "sgpu/util.h"

#define DEFAULT_PATH "/usr/local/bin:/usr/bin:/bin"

static bool gpu_node_known(const sg_runtime_ops_t *rt, const sg_spec_t *spec, int *most, bool *can_tell) {
  size_t n = 0;
  int64_t age = -1;
  const sg_runtime_node_t *nodes = rt->nodes ? rt->nodes(&n, &age) : NULL;
  *most = 0;
  *can_tell = nodes && n > 0;
  bool known = false;
  for (size_t i = 0; *can_tell && i < n; i++) {
    if (nodes[i].gpus_total > 0 && !nodes[i].gpu_type[0])
      *can_tell = false; /* GPUs of no stated type: any spec may fit */
    if (strcmp(nodes[i].gpu_type, spec->gpu.type))
      continue;
    known = true;
    if (nodes[i].gpus_total > *most)
      *most = nodes[i].gpus_total;
  }
  return known;
}

static int check_gpus(sg_daemon_t *d, const sg_runtime_ops_t *rt, const sg_spec_t *spec, sg_error_t **err) {
  if (spec->gpu.count <= 0 || !spec->gpu.type)
    return 0;
  int most;
  const char *where;
  if (rt->caps & SG_RUNTIME_OWN_GPUS) {
    bool can_tell;
    bool known = gpu_node_known(rt, spec, &most, &can_tell);
    if (!can_tell)
      return 0;
    if (!known)
      return sg_make_field_error(err, "gpu.type", "no node of the %s runtime has GPUs of type \"%s\"", rt->name,
                                 spec->gpu.type);
    where = "a node of that runtime";
  } else {
    most = d->gpus ? sg_gpu_total_count(d->gpus, spec->gpu.type) : 0;
    if (most == 0)
      return sg_make_field_error(err, "gpu.type",
                                 "this host has no GPUs of type \"%s\" (see GET /v1/nodes; sgpud --gpus declares them)",
                                 spec->gpu.type);
    where = "this host";
  }
  if (spec->gpu.count > most)
    return sg_make_field_error(err, "gpu.count", "is %d, but %s has at most %d GPUs of type \"%s\"", spec->gpu.count,
                               where, most, spec->gpu.type);
  return 0;
}

static bool executable_file(const char *path, int *why) {
  struct stat st;
  if (stat(path, &st) < 0) {
    *why = errno;
    return false;
  }
  if (!S_ISREG(st.st_mode) || !(st.st_mode & 0111)) {
    *why = S_ISDIR(st.st_mode) ? EISDIR : EACCES;
    return false;
  }
  return true;
}

/* The PATH the worker gets: its spec's, else sgpud's (daemon/worker.c). */
static const char *worker_path(const sg_spec_t *spec) {
  for (size_t i = 0; i < spec->n_env; i++)
    if (!strcmp(spec->env_keys[i], "PATH") && !spec->env_secrets[i])
      return spec->env_values[i];
  const char *path = getenv("PATH");
  return path && *path ? path : DEFAULT_PATH;
}

/* The first executable file called name in the directories of path (a new
 * string), or NULL. */
static char *path_lookup(const char *name, const char *path) {
  for (const char *p = path;;) {
    size_t len = strcspn(p, ":");
    if (len > 0 && p[0] == '/') { /* relative entries depend on a cwd: skipped */
      cleanup_free char *cand = xasprintf("%.*s/%s", (int)len, p, name);
      int why;
      if (strlen(cand) < PATH_MAX && executable_file(cand, &why))
        return steal_pointer(&cand);
    }
    if (!p[len])
      return NULL;
    p += len + 1;
  }
}

struct exec_probe {
  const sg_run_as_t *user;
  int fd;     /* the command, opened O_PATH by sgpud's own user */
  int result; /* 0, the errno of the user's access, or -1: not known */
};

/* Thread: takes the user's ids and asks the kernel whether it may execute
 * the file p->fd is. Raw system calls change the calling thread's
 * credentials only (glibc's wrappers would change every thread's), and the
 * thread ends with them. */
static void *exec_probe(void *arg) {
  struct exec_probe *p = arg;
  if (syscall(SYS_setgroups, (size_t)p->user->n_groups, p->user->groups) != 0 ||
      syscall(SYS_setresgid, p->user->gid, p->user->gid, p->user->gid) != 0 ||
      syscall(SYS_setresuid, p->user->uid, p->user->uid, p->user->uid) != 0)
    return NULL;
  if (syscall(SYS_faccessat2, p->fd, "", X_OK, AT_EMPTY_PATH) == 0)
    p->result = 0;
  else if (errno != ENOSYS && errno != EINVAL) /* an older kernel: not known */
    p->result = errno;
  return NULL;
}

/* Whether the runtime's worker user may execute path: 0, or a field error.
 * As the process runtime does, the file is opened with sgpud's ids and only
 * the file itself is checked with the user's. Checked only when workers run
 * as another user than sgpud's. */
static int check_user_may_run(const sg_runtime_ops_t *rt, const char *path, sg_error_t **err) {
  const sg_run_as_t *user = rt->user ? rt->user() : NULL;
  if (!user || user->uid == geteuid())
    return 0;
  struct exec_probe p = {user, open(path, O_PATH | O_CLOEXEC), -1};
  pthread_t t;
  if (p.fd >= 0 && pthread_create(&t, NULL, exec_probe, &p) == 0)
    pthread_join(t, NULL);
  if (p.fd >= 0)
    close(p.fd);
  if (p.result <= 0)
    return 0;
  return sg_make_field_error(err, "command[0]", "\"%s\" cannot be run by the workers' user %s (uid %u): %s", path,
                             user->name, (unsigned)user->uid,
                             p.result == EACCES ? "it has no execute permission for that user" : strerror(p.result));
}

static int check_command(const sg_runtime_ops_t *rt, sg_spec_t *spec, sg_error_t **err) {
  if (spec->n_command == 0 || (spec->image && (rt->caps & SG_RUNTIME_IMAGES)))
    return 0; /* the image's entrypoint, or a command inside the image */
  const char *arg0 = spec->command[0];
  if (rt->remote) {
    if (arg0[0] != '/')
      return sg_make_field_error(err, "command[0]",
                                 "must be an absolute path: the %s runtime runs it on another node, whose PATH "
                                 "sgpud does not know",
                                 rt->name);
    return 0;
  }
  if (arg0[0] != '/') {
    const char *path = worker_path(spec);
    char *found = path_lookup(arg0, path);
    if (!found)
      return sg_make_field_error(err, "command[0]", "\"%s\" is not an executable file in any directory of PATH (%s)",
                                 arg0, path);
    free(spec->command[0]);
    spec->command[0] = found;
    return check_user_may_run(rt, found, err);
  }
  int why;
  if (!executable_file(arg0, &why))
    return sg_make_field_error(err, "command[0]", "\"%s\" %s", arg0,
                               why == ENOENT    ? "does not exist"
                               : why == EACCES  ? "is not an executable file"
                               : why == EISDIR  ? "is a directory"
                               : why == ENOTDIR ? "does not exist (a component of its path is not a directory)"
                                                : strerror(why));
  return check_user_may_run(rt, arg0, err);
}

static int check_protocol(sg_daemon_t *d, const sg_runtime_ops_t *rt, const sg_spec_t *spec, sg_error_t **err) {
  if (!sg_spec_is_runpod(spec) || !rt->remote)
    return 0;
  bool local_only;
  cleanup_free char *base = sg_worker_base_url(d, &local_only);
  if (!local_only)
    return 0;
  return sg_make_field_error(err, "async.protocol",
                             "\"runpod\" workers of the %s runtime run on other nodes and could not reach sgpud at "
                             "%s: set advertise_url in sgpud's config to a URL they can reach",
                             rt->name, base);
}

/* A named volume must exist (and not be going); a host path must resolve
 * (symbolic links followed) to a directory beneath one of volume_host_paths. */
static int check_volumes(sg_daemon_t *d, const sg_spec_t *spec, sg_error_t **err) {
  for (size_t i = 0; i < spec->n_volumes; i++) {
    const sg_spec_volume_t *v = &spec->volumes[i];
    if (v->name) {
      sg_volume_t *vol = sg_daemon_volume_find(d, v->name);
      if (!vol || vol->deleting) {
        cleanup_free char *f = xasprintf("volumes[%zu].name", i);
        return sg_make_field_error(err, f, "no volume named \"%s\" (create it with POST /v1/volumes first)", v->name);
      }
      continue;
    }
    cleanup_free char *real = NULL;
    cleanup_error sg_error_t *e = NULL;
    if (sg_daemon_volume_host_path(d, v->host_path, &real, &e) < 0) {
      cleanup_free char *f = xasprintf("volumes[%zu].host_path", i);
      return sg_make_field_error(err, f, "%s", e->message);
    }
  }
  return 0;
}

int sg_api_validate_spec(sg_daemon_t *d, sg_spec_t *spec, sg_error_t **err) {
  const sg_runtime_ops_t *rt = sg_runtime_find(spec->runtime);
  if (!rt)
    return 0; /* the spec parser refused it already */
  if (check_gpus(d, rt, spec, err) < 0 || check_volumes(d, spec, err) < 0)
    return -1;
  if (check_protocol(d, rt, spec, err) < 0)
    return -1;
  /* Credentials are used to pull an image: a spec that runs none (the
   * process runtime) may name any. */
  if (spec->registry_auth && spec->image && (rt->caps & SG_RUNTIME_IMAGES)) {
    sg_registry_auth_record_t rec;
    cleanup_error sg_error_t *e = NULL;
    if (sg_daemon_auth_get(d, spec->registry_auth, &rec, &e) < 0)
      return sg_make_field_error(err, "registry_auth",
                                 "no registry auth named \"%s\" (create it with POST /v1/registry-auths first)",
                                 spec->registry_auth);
  }
  for (size_t i = 0; i < spec->n_env; i++) {
    sg_secret_record_t rec;
    if (spec->env_secrets[i] && sg_daemon_secret_get(d, spec->env_secrets[i], &rec, NULL) < 0) {
      cleanup_free char *field = xasprintf("env.%s", spec->env_keys[i]);
      return sg_make_field_error(err, field, "no secret named \"%s\" (create it with PUT /v1/secrets/%s first)",
                                 spec->env_secrets[i], spec->env_secrets[i]);
    }
  }
  return check_command(rt, spec, err);
}
