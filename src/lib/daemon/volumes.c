/* Named volumes on the daemon's side: the loop's copy of the volumes table,
 * their directories (DATA_DIR/volumes/NAME, and SLURM_VOLUME_DIR/NAME for
 * slurm workers), the bytes they use (measured on the thread pool), the
 * host_path rule (volume_host_paths) and what a worker start is given.
 *
 * The table is loaded before the loop serves, then changed only after the
 * store thread wrote the same change (api/volumes.c), as registry auths are.
 *
 * Ownership: DATA_DIR stays private (0700, or 0710 to the containers' group
 * in a user namespace); DATA_DIR/volumes is 0711 and each volume directory
 * 0777, so that whoever can reach it (root, a container of the user
 * namespace, a process worker through the bind its runtime makes) can write
 * in it, while DATA_DIR keeps every other host user out. Loop thread, but
 * for the measuring done on the pool. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "daemon/fleet.h"
#include "sgpu/pool.h"
#include "sgpu/util.h"
#include "sgpu/volumes-store.h"

#define MEASURE_MAX_DEPTH 64

struct sg_volumes {
  sg_volume_t **v;
  size_t n, cap;
};

static void worker_ended(void *ud, sg_worker_t *w, bool scheduled, int64_t end_wall);
static const sg_fleet_subscriber_t subscriber = {.worker_ended = worker_ended};

char *sg_daemon_volumes_root(const sg_daemon_t *d) { return xasprintf("%s/volumes", d->cfg.data_dir); }

char *sg_daemon_volume_dir(const sg_daemon_t *d, const char *name) {
  return xasprintf("%s/volumes/%s", d->cfg.data_dir, name);
}

char *sg_daemon_volume_remote_dir(const sg_daemon_t *d, const char *name) {
  if (d->cfg.slurm.volume_dir)
    return xasprintf("%s/%s", d->cfg.slurm.volume_dir, name);
  if (d->cfg.slurm.dir)
    return xasprintf("%s/volumes/%s", d->cfg.slurm.dir, name);
  return xasprintf("%s/slurm/volumes/%s", d->cfg.data_dir, name);
}

int sg_volume_make_dir(const char *dir, sg_error_t **err) {
  int r = sg_mkdir_p(dir, 0777);
  if (r < 0)
    return sg_make_error(err, -r, "cannot create volume directory %s: %s", dir, strerror(-r));
  if (chmod(dir, 0777) < 0)
    return sg_make_error(err, errno, "cannot open volume directory %s to workers: %s", dir, strerror(errno));
  return 0;
}

sg_volume_t *sg_daemon_volume_find(sg_daemon_t *d, const char *name) {
  struct sg_volumes *c = d->volumes;
  for (size_t i = 0; c && i < c->n; i++)
    if (!strcmp(c->v[i]->name, name))
      return c->v[i];
  return NULL;
}

sg_volume_t *sg_daemon_volume_add(sg_daemon_t *d, const char *name, int64_t size_bytes, int64_t created_ms) {
  if (!d->volumes)
    d->volumes = xcalloc(1, sizeof(*d->volumes));
  struct sg_volumes *c = d->volumes;
  if (c->n == c->cap) {
    c->cap = c->cap ? 2 * c->cap : 8;
    c->v = xrealloc(c->v, c->cap * sizeof(*c->v));
  }
  sg_volume_t *v = xcalloc(1, sizeof(*v));
  v->name = xstrdup(name);
  v->size_bytes = size_bytes;
  v->created_ms = created_ms;
  v->used_bytes = -1;
  size_t i = c->n++;
  while (i > 0 && strcmp(c->v[i - 1]->name, name) > 0) { /* name order */
    c->v[i] = c->v[i - 1];
    i--;
  }
  c->v[i] = v;
  return v;
}

void sg_daemon_volume_forget(sg_daemon_t *d, const char *name) {
  struct sg_volumes *c = d->volumes;
  for (size_t i = 0; c && i < c->n; i++) {
    if (strcmp(c->v[i]->name, name))
      continue;
    free(c->v[i]->name);
    free(c->v[i]);
    memmove(&c->v[i], &c->v[i + 1], (c->n - i - 1) * sizeof(*c->v));
    c->n--;
    return;
  }
}

size_t sg_daemon_volume_count(const sg_daemon_t *d) { return d->volumes ? d->volumes->n : 0; }

sg_volume_t *sg_daemon_volume_at(sg_daemon_t *d, size_t i) { return d->volumes->v[i]; }

static bool mounts(const sg_spec_t *spec, const char *name) {
  for (size_t i = 0; i < spec->n_volumes; i++)
    if (spec->volumes[i].name && !strcmp(spec->volumes[i].name, name))
      return true;
  return false;
}

json_t *sg_daemon_volume_users(sg_daemon_t *d, const char *name) {
  json_t *arr = json_array();
  sg_endpoint_t *ep;
  TAILQ_FOREACH(ep, &d->endpoints, link) {
    if (mounts(ep->spec, name))
      json_array_append_new(arr, json_string(ep->name));
  }
  return arr;
}

/* ---- bytes used, measured on the pool -------------------------------------------------------- */

/* The sizes of the regular files beneath the directory fd (closed here),
 * symbolic links not followed, at most MEASURE_MAX_DEPTH levels. */
static int64_t tree_bytes(int fd, int depth) {
  DIR *dir = fdopendir(fd);
  if (!dir) {
    close(fd);
    return 0;
  }
  int64_t total = 0;
  struct dirent *e;
  while ((e = readdir(dir))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
      continue;
    struct stat st;
    if (fstatat(dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
      continue;
    if (S_ISREG(st.st_mode))
      total += st.st_size;
    else if (S_ISDIR(st.st_mode) && depth < MEASURE_MAX_DEPTH) {
      int sub = openat(dirfd(dir), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub >= 0)
        total += tree_bytes(sub, depth + 1);
    }
  }
  closedir(dir);
  return total;
}

int64_t sg_volume_measure(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  return fd < 0 ? 0 : tree_bytes(fd, 0);
}

typedef struct measure_job {
  sg_daemon_t *d;
  size_t n;
  char **names, **dirs;
  int64_t *bytes;
  void (*cb)(sg_daemon_t *d, void *arg);
  void *arg;
} measure_job_t;

static void measure_work(void *data) {
  measure_job_t *j = data;
  for (size_t i = 0; i < j->n; i++)
    j->bytes[i] = sg_volume_measure(j->dirs[i]);
}

static void measure_done(void *data, bool cancelled) {
  measure_job_t *j = data;
  for (size_t i = 0; !cancelled && i < j->n; i++) {
    sg_volume_t *v = sg_daemon_volume_find(j->d, j->names[i]);
    if (v)
      v->used_bytes = j->bytes[i];
  }
  if (j->cb)
    j->cb(cancelled ? NULL : j->d, j->arg);
  sg_strv_free(j->names);
  sg_strv_free(j->dirs);
  free(j->bytes);
  free(j);
}

static const sg_pool_job_ops_t measure_ops = {measure_work, measure_done};

void sg_daemon_volumes_measure(sg_daemon_t *d, const char *only, void (*cb)(sg_daemon_t *d, void *arg), void *arg) {
  measure_job_t *j = xcalloc(1, sizeof(*j));
  j->d = d;
  j->cb = cb;
  j->arg = arg;
  size_t n = sg_daemon_volume_count(d);
  j->names = xcalloc(n + 1, sizeof(char *));
  j->dirs = xcalloc(n + 1, sizeof(char *));
  j->bytes = xcalloc(n + 1, sizeof(int64_t));
  for (size_t i = 0; i < n; i++) {
    sg_volume_t *v = d->volumes->v[i];
    if (only && strcmp(v->name, only))
      continue;
    j->names[j->n] = xstrdup(v->name);
    j->dirs[j->n] = sg_daemon_volume_dir(d, v->name);
    j->n++;
  }
  sg_pool_submit(d->pool, &measure_ops, j);
}

/* A worker of an endpoint that mounts a volume with a size may have written
 * to it: measured again, so that the next start sees what it left. */
static void worker_ended(void *ud, sg_worker_t *w, bool scheduled, int64_t end_wall) {
  (void)ud, (void)scheduled, (void)end_wall;
  sg_daemon_t *d = w->d;
  if (d->shutting_down || !d->pool)
    return;
  const sg_spec_t *spec = w->ep->spec;
  for (size_t i = 0; i < spec->n_volumes; i++) {
    sg_volume_t *v = spec->volumes[i].name ? sg_daemon_volume_find(d, spec->volumes[i].name) : NULL;
    if (v && v->size_bytes > 0)
      sg_daemon_volumes_measure(d, v->name, NULL, NULL);
  }
}

/* ---- host paths --------------------------------------------------------------------------------- */

int sg_daemon_volume_host_path(const sg_daemon_t *d, const char *host_path, char **resolved, sg_error_t **err) {
  *resolved = NULL;
  char real[PATH_MAX];
  if (!d->cfg.volume_host_paths || !d->cfg.volume_host_paths[0])
    return sg_make_error(err, EACCES, "host paths are not allowed here (the daemon's volume_host_paths lists none)");
  if (!realpath(host_path, real))
    return sg_make_error(err, errno, "%s: %s", host_path, strerror(errno));
  struct stat st;
  if (stat(real, &st) < 0 || !S_ISDIR(st.st_mode))
    return sg_make_error(err, ENOTDIR, "%s is not a directory", host_path);
  for (char **a = d->cfg.volume_host_paths; *a; a++) {
    char allowed[PATH_MAX];
    if (!realpath(*a, allowed))
      continue;
    size_t n = strlen(allowed);
    if (!strcmp(allowed, "/") || (!strncmp(real, allowed, n) && (real[n] == '/' || real[n] == '\0'))) {
      *resolved = xstrdup(real);
      return 0;
    }
  }
  if (strcmp(real, host_path))
    return sg_make_error(err, EACCES, "%s (resolved: %s) is not beneath a directory of the daemon's volume_host_paths",
                         host_path, real);
  return sg_make_error(err, EACCES, "%s is not beneath a directory of the daemon's volume_host_paths", host_path);
}

/* ---- a worker's volumes ------------------------------------------------------------------------ */

void sg_launch_volumes_free(sg_launch_volume_t *v, int n) {
  for (int i = 0; v && i < n; i++)
    free((char *)v[i].source);
  free(v);
}

int sg_daemon_volumes_for_start(sg_daemon_t *d, const sg_spec_t *spec, bool remote, sg_launch_volume_t **out,
                                sg_error_t **err) {
  *out = NULL;
  if (spec->n_volumes == 0)
    return 0;
  sg_launch_volume_t *v = xcalloc(spec->n_volumes, sizeof(*v));
  for (size_t i = 0; i < spec->n_volumes; i++) {
    const sg_spec_volume_t *sv = &spec->volumes[i];
    v[i].path = sv->path;
    v[i].read_only = sv->read_only;
    if (sv->name) {
      sg_volume_t *vol = sg_daemon_volume_find(d, sv->name);
      if (!vol || vol->deleting) {
        sg_launch_volumes_free(v, (int)i);
        return sg_make_error(err, SG_ENOTFOUND, "volume %s does not exist", sv->name);
      }
      if (vol->size_bytes > 0 && vol->used_bytes > vol->size_bytes) {
        sg_launch_volumes_free(v, (int)i);
        return sg_make_error(err, EDQUOT, "volume %s holds %lld bytes, over its size_bytes %lld: no new workers",
                             sv->name, (long long)vol->used_bytes, (long long)vol->size_bytes);
      }
      if (vol->uploads > 0 && !sv->read_only && !remote) {
        sg_launch_volumes_free(v, (int)i);
        return sg_make_error(err, EBUSY, "an upload into volume %s is under way: it is mounted read-write once it ends",
                             sv->name);
      }
      v[i].source = remote ? sg_daemon_volume_remote_dir(d, sv->name) : sg_daemon_volume_dir(d, sv->name);
    } else {
      char *real = NULL;
      /* Checked again at each start: a link changed since the spec was
       * accepted does not lead out of volume_host_paths. */
      if (sg_daemon_volume_host_path(d, sv->host_path, &real, err) < 0) {
        sg_launch_volumes_free(v, (int)i);
        return -1;
      }
      v[i].source = real;
    }
  }
  *out = v;
  return (int)spec->n_volumes;
}

/* ---- start and end ---------------------------------------------------------------------------- */

static void load_volume(void *ud, const sg_volume_record_t *r) {
  sg_daemon_volume_add(ud, r->name, r->size_bytes, r->created_ms);
}

int sg_daemon_volumes_init(sg_daemon_t *d, sg_error_t **err) {
  cleanup_free char *root = sg_daemon_volumes_root(d);
  int r = sg_mkdir_p(root, 0711);
  if (r < 0)
    return sg_make_error(err, -r, "cannot create %s: %s", root, strerror(-r));
  if (chmod(root, 0711) < 0)
    return sg_make_error(err, errno, "cannot chmod %s: %s", root, strerror(errno));
  if (sg_store_volume_each(d->store, load_volume, d, err) < 0)
    return -1;
  sg_fleet_subscribe(d, &subscriber, NULL);
  if (sg_daemon_volume_count(d) > 0)
    sg_daemon_volumes_measure(d, NULL, NULL, NULL);
  return 0;
}

void sg_daemon_volumes_free(sg_daemon_t *d) {
  struct sg_volumes *c = d->volumes;
  if (!c)
    return;
  for (size_t i = 0; i < c->n; i++) {
    free(c->v[i]->name);
    free(c->v[i]);
  }
  free(c->v);
  free(c);
  d->volumes = NULL;
}
