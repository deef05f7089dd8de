/* The daemon's side of the image store: the thread pool, the image cache and
 * the oci runtime are set up here; pulls start as soon as an endpoint names
 * an image it does not have yet, and their failures become the endpoint's
 * last_error. Loop thread. */
#include <errno.h>

#include "daemon-internal.h"
#include "sgpu/image.h"
#include "sgpu/images-store.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define POOL_THREADS 4

int sg_daemon_images_init(sg_daemon_t *d, sg_error_t **err) {
  d->pool = sg_pool_new(d->base, POOL_THREADS, err);
  if (!d->pool)
    return -1;
  cleanup_free char *dir = xasprintf("%s/images", d->cfg.data_dir);
  sg_images_config_t ic = {dir, d->cfg.image_cache_max_bytes, d->cfg.insecure_registries, d->cfg.image_max_layer_bytes,
                           d->cfg.image_max_unpacked_bytes};
  d->images = sg_images_new(d->pool, d->store, &ic, err);
  if (!d->images)
    return -1;
  sg_images_set_store_thread(d->images, d->store_thread);
  cleanup_free char *odir = xasprintf("%s/oci", d->cfg.data_dir);
  sg_oci_config_t oc = {d->cfg.oci_runtime, odir, d->cfg.cdi_dir, d->cfg.oci_userns};
  return sg_oci_runtime_init(d->base, d->pool, d->images, &oc, err);
}

void sg_daemon_images_free(sg_daemon_t *d) {
  sg_slurm_runtime_drop_images();
  sg_oci_runtime_shutdown();
  sg_registry_abort_all();
  sg_pool_free(d->pool);
  sg_images_free(d->images);
  d->pool = NULL;
  d->images = NULL;
}

static void copy_auth(void *ud, const sg_registry_auth_record_t *r) {
  sg_registry_auth_t *a = ud;
  a->username = xstrdup(r->username);
  a->password = xstrdup(r->secret);
}

sg_registry_auth_t *sg_daemon_registry_auth(sg_daemon_t *d, const char *name, sg_error_t **err) {
  sg_registry_auth_t *a = xcalloc(1, sizeof(*a));
  if (sg_store_auth_get(d->store, name, copy_auth, a, err) < 0 || !a->username) {
    sg_registry_auth_free(a);
    return NULL;
  }
  return a;
}

void sg_registry_auth_free(sg_registry_auth_t *a) {
  if (!a)
    return;
  if (a->password)
    explicit_bzero(a->password, strlen(a->password));
  free(a->username);
  free(a->password);
  free(a);
}

typedef struct prepull {
  sg_daemon_t *d;
  char *endpoint; /* NULL for a preheat */
  int version;
} prepull_t;

static void pulled(void *ud, sg_image_t *img, const sg_error_t *err) {
  prepull_t *p = ud;
  sg_endpoint_t *ep = p->endpoint ? sg_daemon_find_endpoint(p->d, p->endpoint) : NULL;
  if (ep && ep->version == p->version) {
    if (img) {
      sg_logs_event(p->d, ep->name, NULL, "image %s pulled in %lld ms", img->ref, (long long)img->pull_ms);
    } else {
      cleanup_free char *msg =
          xasprintf("image %s could not be pulled: %s", ep->spec->image, err ? err->message : "unknown error");
      free(ep->last_error);
      ep->last_error = xstrdup(msg);
      sg_logs_event(p->d, ep->name, NULL, "%s", msg);
    }
  }
  free(p->endpoint);
  free(p);
}

void sg_daemon_pull(sg_daemon_t *d, const char *ref, const sg_registry_auth_t *auth) {
  prepull_t *p = xcalloc(1, sizeof(*p));
  p->d = d;
  if (!sg_images_pull(d->images, ref, auth, pulled, p))
    free(p);
}

bool sg_daemon_recheck(sg_daemon_t *d, const char *ref, const sg_registry_auth_t *auth) {
  prepull_t *p = xcalloc(1, sizeof(*p));
  p->d = d;
  if (!sg_images_recheck(d->images, ref, auth, pulled, p)) {
    free(p);
    return false;
  }
  return true;
}

void sg_endpoint_prepull(sg_endpoint_t *ep) {
  sg_daemon_t *d = ep->d;
  const sg_spec_t *spec = ep->spec;
  const sg_runtime_ops_t *rt = sg_runtime_find(spec->runtime);
  if (!d->images || !spec->image || !rt || !(rt->caps & SG_RUNTIME_IMAGES) || sg_images_lookup(d->images, spec->image))
    return;
  cleanup_error sg_error_t *err = NULL;
  sg_registry_auth_t *auth = NULL;
  if (spec->registry_auth && !(auth = sg_daemon_registry_auth(d, spec->registry_auth, &err))) {
    cleanup_free char *msg = xasprintf("image %s: %s", spec->image, err->message);
    free(ep->last_error);
    ep->last_error = xstrdup(msg);
    return;
  }
  prepull_t *p = xcalloc(1, sizeof(*p));
  p->d = d;
  p->endpoint = xstrdup(ep->name);
  p->version = ep->version;
  if (!sg_images_pull(d->images, spec->image, auth, pulled, p)) {
    free(p->endpoint);
    free(p);
  }
  sg_registry_auth_free(auth);
}
