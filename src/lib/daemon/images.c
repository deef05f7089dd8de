/* The daemon's side of the image store: the thread pool and the image cache
 * are set up here (and the runtimes stopped before they go); pulls start as soon as an endpoint names
 * an image it does not have yet, and their failures become the endpoint's
 * last_error. Loop thread. */
#include <errno.h>

#include "daemon/fleet.h"
#include "logs/logs.h"
#include "sgpu/image.h"
#include "sgpu/images-store.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define POOL_THREADS 4

static void prepull(void *ud, sg_endpoint_t *ep);
static const sg_fleet_subscriber_t subscriber = {.endpoint_created = prepull, .endpoint_updated = prepull};
static void load_auth(void *ud, const sg_registry_auth_record_t *r);
static void auths_free(sg_daemon_t *d);

int sg_daemon_images_init(sg_daemon_t *d, sg_error_t **err) {
  sg_fleet_subscribe(d, &subscriber, NULL);
  d->pool = sg_pool_new(d->base, POOL_THREADS, err);
  if (!d->pool)
    return -1;
  cleanup_free char *dir = xasprintf("%s/images", d->cfg.data_dir);
  sg_images_config_t ic = {dir, d->cfg.image_cache_max_bytes, d->cfg.insecure_registries, d->cfg.image_max_layer_bytes,
                           d->cfg.image_max_unpacked_bytes};
  /* Passwords an sgpud before sealing stored in clear: sealed once, here. */
  int sealed = sg_store_auth_seal_clear(d->store, err);
  if (sealed < 0)
    return -1;
  if (sealed > 0)
    sg_info("sealed %d registry password(s) stored in clear by an earlier sgpud (DATA_DIR/secret.key)", sealed);
  if (sg_store_auth_load(d->store, load_auth, d, err) < 0)
    return -1;
  d->images = sg_images_new(d->pool, d->store, &ic, err);
  if (!d->images)
    return -1;
  sg_images_set_store_thread(d->images, d->store_thread);
  return 0;
}

void sg_daemon_images_free(sg_daemon_t *d) {
  sg_daemon_runtimes_stop(d);
  sg_registry_abort_all();
  sg_pool_free(d->pool);
  sg_images_free(d->images);
  auths_free(d);
  d->pool = NULL;
  d->images = NULL;
}

/* The registry credentials as stored, kept on the loop so that neither the
 * API nor a worker start reads SQLite there: loaded before the loop serves,
 * then changed only by sg_daemon_auth_set/forget after the store thread
 * wrote the same change. */
typedef struct auth_entry {
  char *name, *registry, *username, *secret;
  int64_t created_ms, updated_ms;
} auth_entry_t;

struct sg_auth_cache {
  auth_entry_t *v;
  size_t n, cap;
};

static void entry_clear(auth_entry_t *e) {
  if (e->secret)
    explicit_bzero(e->secret, strlen(e->secret));
  free(e->name);
  free(e->registry);
  free(e->username);
  free(e->secret);
}

static auth_entry_t *auth_find(sg_daemon_t *d, const char *name) {
  struct sg_auth_cache *c = d->auths;
  for (size_t i = 0; c && i < c->n; i++)
    if (!strcmp(c->v[i].name, name))
      return &c->v[i];
  return NULL;
}

static sg_registry_auth_record_t entry_record(const auth_entry_t *e) {
  sg_registry_auth_record_t r = {e->name, e->registry, e->username, e->secret, e->created_ms, e->updated_ms};
  return r;
}

void sg_daemon_auth_set(sg_daemon_t *d, const sg_registry_auth_record_t *rec) {
  if (!d->auths)
    d->auths = xcalloc(1, sizeof(*d->auths));
  struct sg_auth_cache *c = d->auths;
  auth_entry_t *e = auth_find(d, rec->name);
  int64_t created = rec->created_ms;
  if (e) {
    created = e->created_ms;
    entry_clear(e);
  } else {
    if (c->n == c->cap) {
      c->cap = c->cap ? 2 * c->cap : 8;
      c->v = xrealloc(c->v, c->cap * sizeof(*c->v));
    }
    size_t i = c->n++;
    /* In name order, as the store lists them. */
    while (i > 0 && strcmp(c->v[i - 1].name, rec->name) > 0) {
      c->v[i] = c->v[i - 1];
      i--;
    }
    e = &c->v[i];
  }
  e->name = xstrdup(rec->name);
  e->registry = xstrdup(rec->registry);
  e->username = xstrdup(rec->username);
  e->secret = xstrdup(rec->secret);
  e->created_ms = created;
  e->updated_ms = rec->updated_ms;
}

bool sg_daemon_auth_forget(sg_daemon_t *d, const char *name) {
  auth_entry_t *e = auth_find(d, name);
  if (!e)
    return false;
  struct sg_auth_cache *c = d->auths;
  size_t i = (size_t)(e - c->v);
  entry_clear(e);
  memmove(&c->v[i], &c->v[i + 1], (c->n - i - 1) * sizeof(*c->v));
  c->n--;
  return true;
}

int sg_daemon_auth_get(sg_daemon_t *d, const char *name, sg_registry_auth_record_t *out, sg_error_t **err) {
  auth_entry_t *e = auth_find(d, name);
  if (!e)
    return sg_make_error(err, SG_ENOTFOUND, "registry auth %s not found", name);
  *out = entry_record(e);
  return 0;
}

void sg_daemon_auth_each(sg_daemon_t *d, void (*cb)(void *ud, const sg_registry_auth_record_t *rec), void *ud) {
  struct sg_auth_cache *c = d->auths;
  for (size_t i = 0; c && i < c->n; i++) {
    sg_registry_auth_record_t r = entry_record(&c->v[i]);
    r.secret = NULL;
    cb(ud, &r);
  }
}

static void load_auth(void *ud, const sg_registry_auth_record_t *r) { sg_daemon_auth_set(ud, r); }

static void auths_free(sg_daemon_t *d) {
  struct sg_auth_cache *c = d->auths;
  if (!c)
    return;
  for (size_t i = 0; i < c->n; i++)
    entry_clear(&c->v[i]);
  free(c->v);
  free(c);
  d->auths = NULL;
}

sg_registry_auth_t *sg_daemon_registry_auth(sg_daemon_t *d, const char *name, sg_error_t **err) {
  sg_registry_auth_record_t r;
  if (sg_daemon_auth_get(d, name, &r, err) < 0)
    return NULL;
  sg_registry_auth_t *a = xcalloc(1, sizeof(*a));
  a->username = xstrdup(r.username);
  a->password = xstrdup(r.secret);
  a->registry = xstrdup(r.registry);
  return a;
}

void sg_registry_auth_free(sg_registry_auth_t *a) {
  if (!a)
    return;
  if (a->password)
    explicit_bzero(a->password, strlen(a->password));
  free(a->username);
  free(a->password);
  free(a->registry);
  free(a);
}

/* After an endpoint's image failed to pull, no worker starts (and requests
 * get 503 image_pull_failed) for this long; then a start pulls again. */
#define PULL_RETRY_MS 5000

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
      ep->image_failed = false;
    } else {
      cleanup_free char *msg =
          xasprintf("image %s could not be pulled: %s", ep->spec->image, err ? err->message : "unknown error");
      free(ep->last_error);
      ep->last_error = xstrdup(msg);
      ep->image_failed = true;
      int64_t retry = sg_now_ms() + PULL_RETRY_MS;
      if (ep->backoff_until_mono < retry)
        ep->backoff_until_mono = retry;
      sg_logs_event(p->d, ep->name, NULL, "%s", msg);
      sg_fleet_demand_changed(p->d); /* what waits for it fails now (gateway) */
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

/* Starts pulling ep's image when it is not cached, or not as ep may use it
 * (sg_images_get: cached with credentials ep does not hold); a failure
 * becomes ep's last_error. */
static void prepull(void *ud, sg_endpoint_t *ep) {
  sg_daemon_t *d = ep->d;
  const sg_spec_t *spec = ep->spec;
  const sg_runtime_ops_t *rt = sg_runtime_find(spec->runtime);
  if (!d->images || !spec->image || !rt || !(rt->caps & SG_RUNTIME_IMAGES))
    return;
  cleanup_error sg_error_t *err = NULL;
  sg_registry_auth_t *auth = NULL;
  if (spec->registry_auth && !(auth = sg_daemon_registry_auth(d, spec->registry_auth, &err))) {
    if (sg_images_lookup(d->images, spec->image))
      return; /* as before: the worker start says what is missing */
    cleanup_free char *msg = xasprintf("image %s: %s", spec->image, err->message);
    free(ep->last_error);
    ep->last_error = xstrdup(msg);
    ep->image_failed = true;
    return;
  }
  prepull_t *p = xcalloc(1, sizeof(*p));
  p->d = d;
  p->endpoint = xstrdup(ep->name);
  p->version = ep->version;
  sg_image_wait_t *wait = NULL;
  if (sg_images_get(d->images, spec->image, auth, pulled, p, &wait) || !wait) {
    free(p->endpoint);
    free(p);
  }
  sg_registry_auth_free(auth);
}
