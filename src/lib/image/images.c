/* The image cache. Loop-thread state: the pulled images (also in the store)
 * and the pulls in flight, each a pool job that fetches the manifest and the
 * config, then every layer not yet on disk: downloaded (digest verified as
 * it streams), unpacked into a temporary directory and renamed into
 * DIR/layers/<hex> once whole, so a layer directory is always complete.
 * Eviction removes the least recently used images not in use while the
 * layers on disk exceed max_bytes; it waits while pulls run so that a layer a
 * pull just found is never removed under it.
 *
 * An image pulled with registry credentials may be private: it is recorded
 * with with_auth, and a start whose credentials are not for its registry
 * (or that has none) does not take it from the cache (sg_images_get): the
 * registry is asked again with that start's own credentials, or none, and
 * what it answers decides. An anonymous check that passes shows the image is
 * public, and clears with_auth. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/stat.h>

#include "sgpu/image.h"
#include "sgpu/images-store.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define MAX_IMAGES 4096

typedef struct pull pull_t;

struct sg_image_wait {
  LIST_ENTRY(sg_image_wait) link;
  pull_t *pull;
  sg_image_cb cb;
  void *ud;
  bool ran;            /* its credentials (or none) are the ones the pull runs with */
  char *auth_registry; /* the registry its credentials are for; NULL: none or unknown */
};

struct pull {
  LIST_ENTRY(pull) link;
  sg_images_t *images;
  char *ref;
  bool running;
  char *error; /* last failure, kept for display until the next pull */
  int64_t started_wall;
  LIST_HEAD(, sg_image_wait) waits;
};

struct sg_images {
  sg_pool_t *pool;
  sg_store_t *store;
  sg_store_thread_t *store_thread; /* writes once the loop serves; NULL: on the caller's thread */
  char *dir;
  int64_t max_bytes;
  int64_t max_layer_bytes, max_unpacked_bytes; /* 0: no limit */
  char **insecure;
  sg_image_t **imgs;
  size_t n;
  sg_image_t **retired; /* replaced while in use; freed when unused */
  size_t n_retired;
  LIST_HEAD(, pull) pulls;
  int running;
};

/* ---- images ----------------------------------------------------------------- */

static void image_free(sg_image_t *img) {
  if (!img)
    return;
  free(img->ref);
  free(img->digest);
  sg_strv_free(img->entrypoint);
  sg_strv_free(img->cmd);
  sg_strv_free(img->env);
  free(img->workdir);
  free(img->user);
  sg_strv_free(img->layer_dirs);
  sg_strv_free(img->layer_digests);
  free(img->layer_bytes);
  free(img);
}

static char **strv_from_json(json_t *a) {
  if (!json_is_array(a))
    return NULL;
  char **v = xcalloc(json_array_size(a) + 1, sizeof(char *));
  size_t i, n = 0;
  json_t *x;
  json_array_foreach(a, i, x) if (json_is_string(x)) v[n++] = xstrdup(json_string_value(x));
  return v;
}

static json_t *strv_to_json(char **v) {
  if (!v)
    return json_null();
  json_t *a = json_array();
  for (char **p = v; *p; p++)
    json_array_append_new(a, json_string(*p));
  return a;
}

static const char *hex_of(const char *digest) { return digest + 7; }

/* Fills img's config fields from {"entrypoint","cmd","env","workdir","user"}. */
static void image_set_config(sg_image_t *img, json_t *c) {
  img->entrypoint = strv_from_json(json_object_get(c, "entrypoint"));
  img->cmd = strv_from_json(json_object_get(c, "cmd"));
  img->env = strv_from_json(json_object_get(c, "env"));
  const char *wd = json_string_value(json_object_get(c, "workdir"));
  const char *user = json_string_value(json_object_get(c, "user"));
  img->workdir = wd && *wd ? xstrdup(wd) : NULL;
  img->user = user && *user ? xstrdup(user) : NULL;
}

static json_t *image_config_json(const sg_image_t *img) {
  return json_pack("{s:o, s:o, s:o, s:s?, s:s?}", "entrypoint", strv_to_json(img->entrypoint), "cmd",
                   strv_to_json(img->cmd), "env", strv_to_json(img->env), "workdir", img->workdir, "user", img->user);
}

static void image_set_layers(sg_images_t *im, sg_image_t *img, size_t n, char **digests, int64_t *bytes) {
  img->n_layers = n;
  img->layer_digests = digests;
  img->layer_bytes = bytes;
  img->layer_dirs = xcalloc(n + 1, sizeof(char *));
  img->size_bytes = 0;
  for (size_t i = 0; i < n; i++) {
    img->layer_dirs[i] = xasprintf("%s/layers/%s", im->dir, hex_of(digests[i]));
    img->size_bytes += bytes[i];
  }
}

static void persist(sg_images_t *im, const sg_image_t *img) {
  json_t *layers = json_array();
  for (size_t i = 0; i < img->n_layers; i++)
    json_array_append_new(
        layers, json_pack("{s:s, s:I}", "digest", img->layer_digests[i], "bytes", (json_int_t)img->layer_bytes[i]));
  json_t *cfg = image_config_json(img);
  cleanup_free char *lt = json_dumps(layers, JSON_COMPACT);
  cleanup_free char *ct = json_dumps(cfg, JSON_COMPACT);
  json_decref(layers);
  json_decref(cfg);
  sg_image_record_t rec = {img->ref,
                           img->digest,
                           ct,
                           lt,
                           img->size_bytes,
                           img->compressed_bytes,
                           img->pulled_wall,
                           img->pull_ms,
                           img->last_used_wall,
                           img->with_auth};
  if (im->store_thread) {
    sg_store_thread_image_put(im->store_thread, &rec);
    return;
  }
  cleanup_error sg_error_t *err = NULL;
  if (sg_store_image_put(im->store, &rec, &err) < 0)
    sg_warn("image %s not recorded: %s", img->ref, err->message);
}

static void load_one(void *ud, const sg_image_record_t *rec) {
  sg_images_t *im = ud;
  json_t *layers = json_loads(rec->layers_json, 0, NULL);
  json_t *cfg = json_loads(rec->config_json, 0, NULL);
  size_t n = json_array_size(layers);
  bool ok = json_is_array(layers) && json_is_object(cfg) && im->n < MAX_IMAGES;
  char **digests = xcalloc(n + 1, sizeof(char *));
  int64_t *bytes = xcalloc(n + 1, sizeof(int64_t));
  for (size_t i = 0; ok && i < n; i++) {
    const char *d = json_string_value(json_object_get(json_array_get(layers, i), "digest"));
    ok = d && sg_digest_valid(d);
    if (!ok)
      break;
    digests[i] = xstrdup(d);
    bytes[i] = json_integer_value(json_object_get(json_array_get(layers, i), "bytes"));
    cleanup_free char *dir = xasprintf("%s/layers/%s", im->dir, hex_of(d));
    struct stat st;
    ok = stat(dir, &st) == 0 && S_ISDIR(st.st_mode);
  }
  if (!ok) {
    sg_warn("image %s: cached layers are missing; it will be pulled again", rec->ref);
    sg_store_image_delete(im->store, rec->ref, NULL);
    sg_strv_free(digests);
    free(bytes);
  } else {
    sg_image_t *img = xcalloc(1, sizeof(*img));
    img->ref = xstrdup(rec->ref);
    img->digest = xstrdup(rec->digest);
    image_set_config(img, cfg);
    image_set_layers(im, img, n, digests, bytes);
    img->compressed_bytes = rec->compressed_bytes;
    img->pulled_wall = rec->pulled_ms;
    img->pull_ms = rec->pull_ms;
    img->last_used_wall = rec->last_used_ms;
    img->with_auth = rec->with_auth;
    im->imgs = xrealloc(im->imgs, (im->n + 1) * sizeof(*im->imgs));
    im->imgs[im->n++] = img;
  }
  json_decref(layers);
  json_decref(cfg);
}

void sg_images_set_store_thread(sg_images_t *im, sg_store_thread_t *t) { im->store_thread = t; }

sg_images_t *sg_images_new(sg_pool_t *pool, sg_store_t *store, const sg_images_config_t *cfg, sg_error_t **err) {
  sg_images_t *im = xcalloc(1, sizeof(*im));
  im->pool = pool;
  im->store = store;
  im->dir = xstrdup(cfg->dir);
  im->max_bytes = cfg->max_bytes;
  im->max_layer_bytes = cfg->max_layer_bytes;
  im->max_unpacked_bytes = cfg->max_unpacked_bytes;
  size_t n = 0;
  while (cfg->insecure && cfg->insecure[n])
    n++;
  im->insecure = xcalloc(n + 1, sizeof(char *));
  for (size_t i = 0; i < n; i++)
    im->insecure[i] = xstrdup(cfg->insecure[i]);
  LIST_INIT(&im->pulls);
  const char *subs[] = {"layers", "blobs", "tmp"};
  for (size_t i = 0; i < SG_ARRAY_SIZE(subs); i++) {
    cleanup_free char *d = xasprintf("%s/%s", im->dir, subs[i]);
    int r = sg_mkdir_p(d, 0700);
    if (r < 0) {
      sg_make_error(err, -r, "cannot create %s: %s", d, strerror(-r));
      sg_images_free(im);
      return NULL;
    }
  }
  /* Leftovers of pulls interrupted by a crash are never used. */
  cleanup_free char *tmp = xasprintf("%s/tmp", im->dir);
  cleanup_free char *blobs = xasprintf("%s/blobs", im->dir);
  sg_rm_rf(tmp);
  sg_rm_rf(blobs);
  sg_mkdir_p(tmp, 0700);
  sg_mkdir_p(blobs, 0700);
  if (sg_store_image_each(store, load_one, im, err) < 0) {
    sg_images_free(im);
    return NULL;
  }
  return im;
}

static void pull_free(pull_t *p) {
  free(p->ref);
  free(p->error);
  free(p);
}

void sg_images_free(sg_images_t *im) {
  if (!im)
    return;
  pull_t *p;
  while ((p = LIST_FIRST(&im->pulls))) {
    LIST_REMOVE(p, link);
    sg_image_wait_t *w;
    while ((w = LIST_FIRST(&p->waits))) {
      LIST_REMOVE(w, link);
      free(w);
    }
    if (p->running)
      p->images = NULL; /* the job's done() frees it */
    else
      pull_free(p);
  }
  for (size_t i = 0; i < im->n; i++)
    image_free(im->imgs[i]);
  for (size_t i = 0; i < im->n_retired; i++)
    image_free(im->retired[i]);
  free(im->imgs);
  free(im->retired);
  sg_strv_free(im->insecure);
  free(im->dir);
  free(im);
}

sg_image_t *sg_images_lookup(sg_images_t *im, const char *ref) {
  sg_image_ref_t r;
  if (sg_image_ref_parse(ref, &r, NULL) < 0)
    return NULL;
  cleanup_free char *norm = sg_image_ref_string(&r);
  sg_image_ref_clear(&r);
  for (size_t i = 0; i < im->n; i++)
    if (!strcmp(im->imgs[i]->ref, norm))
      return im->imgs[i];
  return NULL;
}

/* ---- eviction --------------------------------------------------------------- */

static bool layer_referenced(sg_images_t *im, const char *digest) {
  for (size_t i = 0; i < im->n; i++)
    for (size_t j = 0; j < im->imgs[i]->n_layers; j++)
      if (!strcmp(im->imgs[i]->layer_digests[j], digest))
        return true;
  for (size_t i = 0; i < im->n_retired; i++)
    for (size_t j = 0; j < im->retired[i]->n_layers; j++)
      if (!strcmp(im->retired[i]->layer_digests[j], digest))
        return true;
  return false;
}

static int64_t disk_bytes(sg_images_t *im) {
  int64_t total = 0;
  for (size_t i = 0; i < im->n; i++)
    for (size_t j = 0; j < im->imgs[i]->n_layers; j++) {
      bool seen = false;
      for (size_t a = 0; a <= i && !seen; a++)
        for (size_t b = 0; b < (a == i ? j : im->imgs[a]->n_layers) && !seen; b++)
          seen = !strcmp(im->imgs[a]->layer_digests[b], im->imgs[i]->layer_digests[j]);
      if (!seen)
        total += im->imgs[i]->layer_bytes[j];
    }
  return total;
}

typedef struct rm_job {
  char **paths;
} rm_job_t;

static void rm_work(void *data) {
  rm_job_t *j = data;
  for (char **p = j->paths; *p; p++)
    sg_rm_rf(*p);
}

static void rm_done(void *data, bool cancelled) {
  rm_job_t *j = data;
  if (cancelled)
    rm_work(j);
  sg_strv_free(j->paths);
  free(j);
}

static const sg_pool_job_ops_t rm_ops = {rm_work, rm_done};

/* Drops img from the cache and removes the layers no other image uses. */
static void drop_image(sg_images_t *im, size_t idx) {
  sg_image_t *img = im->imgs[idx];
  im->imgs[idx] = im->imgs[--im->n];
  if (im->store_thread)
    sg_store_thread_image_delete(im->store_thread, img->ref);
  else
    sg_store_image_delete(im->store, img->ref, NULL);
  char **paths = xcalloc(img->n_layers + 1, sizeof(char *));
  size_t n = 0;
  for (size_t j = 0; j < img->n_layers; j++)
    if (!layer_referenced(im, img->layer_digests[j]))
      paths[n++] = xstrdup(img->layer_dirs[j]);
  rm_job_t *job = xcalloc(1, sizeof(*job));
  job->paths = paths;
  sg_pool_submit(im->pool, &rm_ops, job);
  image_free(img);
}

static void evict(sg_images_t *im) {
  if (im->max_bytes <= 0 || im->running > 0)
    return;
  for (;;) {
    int64_t total = disk_bytes(im);
    if (total <= im->max_bytes)
      return;
    ssize_t victim = -1;
    for (size_t i = 0; i < im->n; i++)
      if (im->imgs[i]->in_use == 0 && (victim < 0 || im->imgs[i]->last_used_wall < im->imgs[victim]->last_used_wall))
        victim = (ssize_t)i;
    if (victim < 0) {
      sg_warn("image cache holds %lld bytes over its limit of %lld, all of it in use", (long long)total,
              (long long)im->max_bytes);
      return;
    }
    sg_info("image cache: evicting %s (%lld bytes; least recently used)", im->imgs[victim]->ref,
            (long long)im->imgs[victim]->size_bytes);
    drop_image(im, (size_t)victim);
  }
}

void sg_images_use(sg_images_t *im, sg_image_t *img) {
  img->in_use++;
  img->last_used_wall = sg_wall_ms();
}

void sg_images_unuse(sg_images_t *im, sg_image_t *img) {
  img->in_use--;
  /* Recorded when a use ends, off the path of a start. */
  img->last_used_wall = sg_wall_ms();
  if (im->store_thread)
    sg_store_thread_image_touch(im->store_thread, img->ref, img->last_used_wall);
  else
    sg_store_image_touch(im->store, img->ref, img->last_used_wall, NULL);
  for (size_t i = 0; i < im->n_retired; i++) {
    if (im->retired[i] == img && img->in_use == 0) {
      im->retired[i] = im->retired[--im->n_retired];
      image_free(img);
      return;
    }
  }
  evict(im);
}

/* ---- pulls ------------------------------------------------------------------ */

typedef struct pull_job {
  pull_t *pull;
  char *ref;
  char *dir;
  bool insecure;
  int64_t max_layer_bytes, max_unpacked_bytes; /* 0: no limit */
  sg_registry_auth_t auth;
  bool has_auth;
  int64_t started_mono;
  char *known_digest; /* a re-check: the cached image's manifest digest */
  /* results */
  sg_error_t *err;
  sg_image_t *img;
  bool unchanged; /* a re-check found the cached manifest */
} pull_job_t;

static int fetch_config(pull_job_t *j, const sg_image_ref_t *ref, const sg_registry_opts_t *o, const char *digest,
                        int64_t size, sg_image_t *img, sg_error_t **err) {
  cleanup_free char *path = xasprintf("%s/tmp/config-%s-%p", j->dir, hex_of(digest), (void *)j);
  if (size > SG_REGISTRY_MAX_CONFIG)
    return sg_make_error(err, EFBIG, "image %s: its config blob has %lld bytes, over the bound of %d: refused", j->ref,
                         (long long)size, SG_REGISTRY_MAX_CONFIG);
  if (sg_registry_blob(ref, o, digest, size, path, err) < 0)
    return -1;
  json_error_t jerr;
  json_t *c = json_load_file(path, 0, &jerr);
  unlink(path);
  if (!json_is_object(c)) {
    json_decref(c);
    return sg_make_error(err, EBADMSG, "image %s: its config is not a JSON object", j->ref);
  }
  json_t *cc = json_object_get(c, "config");
  json_t *norm = json_pack("{s:O?, s:O?, s:O?, s:O?, s:O?}", "entrypoint", json_object_get(cc, "Entrypoint"), "cmd",
                           json_object_get(cc, "Cmd"), "env", json_object_get(cc, "Env"), "workdir",
                           json_object_get(cc, "WorkingDir"), "user", json_object_get(cc, "User"));
  const char *os = json_string_value(json_object_get(c, "os"));
  int r = 0;
  if (os && strcmp(os, "linux"))
    r = sg_make_error(err, EINVAL, "image %s is for %s, not linux", j->ref, os);
  else
    image_set_config(img, norm);
  json_decref(norm);
  json_decref(c);
  return r;
}

static int64_t read_bytes_file(const char *path) {
  cleanup_free char *s = sg_read_file(path, 64, NULL);
  return s ? strtoll(s, NULL, 10) : 0;
}

/* Slack allowed between a layer's compressed size and the unpacked bound it
 * is checked against: tar headers and padding, and compression of data that
 * does not compress. */
static int64_t with_slack(int64_t bound) { return bound + bound / 32 + (1 << 20); }

/* Makes DIR/layers/<hex> exist and whole; *bytes gets its unpacked size.
 * image_left: what the image's other layers leave of max_unpacked_bytes
 * (< 0: no limit). A layer over a bound leaves nothing behind. */
static int ensure_layer(pull_job_t *j, const sg_image_ref_t *ref, const sg_registry_opts_t *o, const sg_layer_desc_t *l,
                        int64_t image_left, int64_t *bytes, sg_error_t **err) {
  const char *hex = hex_of(l->digest);
  cleanup_free char *final = xasprintf("%s/layers/%s", j->dir, hex);
  cleanup_free char *size_path = xasprintf("%s/layers/%s.bytes", j->dir, hex);
  struct stat st;
  if (stat(final, &st) == 0 && S_ISDIR(st.st_mode)) {
    *bytes = read_bytes_file(size_path);
    return 0;
  }
  /* The tighter of the two bounds, and the key that sets it. */
  int64_t bound = j->max_layer_bytes;
  bool by_image = image_left >= 0 && (bound <= 0 || image_left < bound);
  const char *key = by_image ? "image_max_unpacked_bytes" : "image_max_layer_bytes";
  if (by_image)
    bound = image_left > 0 ? image_left : 1;
  if (bound > 0 && l->size > with_slack(bound))
    return sg_make_error(err, EFBIG,
                         "image %s: layer %s has %lld compressed bytes, more than %s allows (%lld): refused", j->ref,
                         l->digest, (long long)l->size, key, (long long)bound);
  cleanup_free char *blob = xasprintf("%s/blobs/%s-%p", j->dir, hex, (void *)j);
  if (sg_registry_blob(ref, o, l->digest, l->size, blob, err) < 0)
    return -1;
  cleanup_free char *tmp = xasprintf("%s/tmp/%s-%p", j->dir, hex, (void *)j);
  int r = mkdir(tmp, 0755) < 0 ? sg_make_error(err, errno, "cannot create %s: %s", tmp, strerror(errno)) : 0;
  if (r == 0) {
    cleanup_error sg_error_t *uerr = NULL;
    r = sg_layer_unpack_bounded(blob, tmp, bound, bytes, &uerr);
    if (r == -EFBIG && !by_image)
      sg_make_error(err, EFBIG, "image %s: layer %s unpacks to more than %s allows (%lld bytes): refused", j->ref,
                    l->digest, key, (long long)bound);
    else if (r == -EFBIG)
      sg_make_error(err, EFBIG,
                    "image %s: layer %s unpacks to more than the %lld bytes that %s (%lld) leaves for it: refused",
                    j->ref, l->digest, (long long)bound, key, (long long)j->max_unpacked_bytes);
    else if (r < 0)
      sg_make_error(err, uerr->status, "image %s: layer %s: %s", j->ref, l->digest, uerr->message);
  }
  unlink(blob);
  if (r == 0) {
    char num[32];
    snprintf(num, sizeof(num), "%lld\n", (long long)*bytes);
    sg_write_file_atomic(size_path, num, strlen(num), 0600);
    if (rename(tmp, final) < 0 && errno != EEXIST && errno != ENOTEMPTY)
      r = sg_make_error(err, errno, "cannot move layer %s into place: %s", hex, strerror(errno));
  }
  sg_rm_rf(tmp);
  return r;
}

static void pull_work(void *data) {
  pull_job_t *j = data;
  sg_image_ref_t ref;
  if (sg_image_ref_parse(j->ref, &ref, &j->err) < 0)
    return;
  sg_registry_session_t session = {0};
  sg_registry_opts_t o = {j->insecure, j->has_auth ? &j->auth : NULL, 60, &session};
  if (j->known_digest) {
    cleanup_free char *head = NULL;
    if (sg_registry_head_digest(&ref, &o, &head, &j->err) < 0) {
      sg_registry_session_clear(&session);
      sg_image_ref_clear(&ref);
      return;
    }
    if (!strcmp(head, j->known_digest)) {
      j->unchanged = true;
      sg_registry_session_clear(&session);
      sg_image_ref_clear(&ref);
      return;
    }
  }
  sg_manifest_t m;
  sg_image_t *img = xcalloc(1, sizeof(*img));
  int r = sg_registry_manifest(&ref, &o, &m, &j->err);
  if (r == 0 && j->known_digest && !strcmp(m.digest, j->known_digest)) {
    /* The tag names an index whose linux/amd64 manifest is the cached one. */
    j->unchanged = true;
    sg_manifest_clear(&m);
    image_free(img);
    sg_registry_session_clear(&session);
    sg_image_ref_clear(&ref);
    return;
  }
  if (r == 0) {
    r = fetch_config(j, &ref, &o, m.config_digest, m.config_size, img, &j->err);
    char **digests = xcalloc(m.n_layers + 1, sizeof(char *));
    int64_t *bytes = xcalloc(m.n_layers + 1, sizeof(int64_t));
    int64_t unpacked = 0;
    for (size_t i = 0; r == 0 && i < m.n_layers; i++) {
      int64_t left = j->max_unpacked_bytes > 0 ? j->max_unpacked_bytes - unpacked : -1;
      r = ensure_layer(j, &ref, &o, &m.layers[i], left, &bytes[i], &j->err);
      img->compressed_bytes += m.layers[i].size;
      unpacked += bytes[i];
      if (r == 0 && j->max_unpacked_bytes > 0 && unpacked > j->max_unpacked_bytes)
        r = sg_make_error(&j->err, EFBIG,
                          "image %s unpacks to more than image_max_unpacked_bytes allows (%lld bytes): refused", j->ref,
                          (long long)j->max_unpacked_bytes);
    }
    for (size_t i = 0; i < m.n_layers; i++)
      digests[i] = xstrdup(m.layers[i].digest);
    img->n_layers = m.n_layers;
    img->layer_digests = digests;
    img->layer_bytes = bytes;
    img->digest = xstrdup(m.digest);
    sg_manifest_clear(&m);
  }
  sg_registry_session_clear(&session);
  sg_image_ref_clear(&ref);
  if (r < 0) {
    image_free(img);
    return;
  }
  j->img = img;
}

static void pull_job_free(pull_job_t *j) {
  free(j->ref);
  free(j->known_digest);
  free(j->dir);
  if (j->has_auth) {
    explicit_bzero(j->auth.password, strlen(j->auth.password));
    free(j->auth.username);
    free(j->auth.password);
  }
  if (j->err)
    sg_error_free(j->err);
  image_free(j->img);
  free(j);
}

static void add_image(sg_images_t *im, sg_image_t *img) {
  for (size_t i = 0; i < im->n; i++) {
    if (strcmp(im->imgs[i]->ref, img->ref))
      continue;
    sg_image_t *old = im->imgs[i];
    im->imgs[i] = img;
    if (old->in_use > 0) {
      im->retired = xrealloc(im->retired, (im->n_retired + 1) * sizeof(*im->retired));
      im->retired[im->n_retired++] = old;
    } else {
      image_free(old);
    }
    return;
  }
  im->imgs = xrealloc(im->imgs, (im->n + 1) * sizeof(*im->imgs));
  im->imgs[im->n++] = img;
}

static void pull_done(void *data, bool cancelled) {
  pull_job_t *j = data;
  pull_t *p = j->pull;
  sg_images_t *im = p->images;
  if (!im || cancelled) {
    if (!im)
      pull_free(p);
    pull_job_free(j);
    return;
  }
  im->running--;
  p->running = false;
  sg_image_t *img = steal_pointer(&j->img);
  if (j->unchanged) {
    img = sg_images_lookup(im, p->ref);
    if (img) {
      sg_info("image %s: the registry still names %s; the cached image is current", p->ref, img->digest);
      free(p->error);
      p->error = NULL;
    } else {
      sg_make_error(&j->err, ENOENT, "image %s left the cache while it was checked", p->ref);
    }
  }
  if (img && j->unchanged) {
    if (img->with_auth && !j->has_auth) {
      /* The registry answered without credentials: the image is public. */
      img->with_auth = false;
      persist(im, img);
    }
  } else if (img) {
    img->with_auth = j->has_auth;
    /* Layer sizes from the pull; directories from the cache's layout. */
    char **digests = steal_pointer(&img->layer_digests);
    int64_t *bytes = steal_pointer(&img->layer_bytes);
    image_set_layers(im, img, img->n_layers, digests, bytes);
    img->ref = xstrdup(p->ref);
    img->pulled_wall = img->last_used_wall = sg_wall_ms();
    img->pull_ms = sg_now_ms() - j->started_mono;
    add_image(im, img);
    persist(im, img);
    sg_info("image %s pulled in %lld ms (%s, %zu layers, %lld bytes)", img->ref, (long long)img->pull_ms, img->digest,
            img->n_layers, (long long)img->size_bytes);
    free(p->error);
    p->error = NULL;
  } else {
    free(p->error);
    p->error = xstrdup(j->err ? j->err->message : "pull failed");
    sg_warn("image %s: pull failed: %s", p->ref, p->error);
  }
  sg_image_wait_t *w;
  cleanup_error sg_error_t *refused = NULL;
  if (img && img->with_auth)
    sg_make_error(&refused, EACCES,
                  "image %s was being pulled with another endpoint's registry credentials, which this one has "
                  "no share in; it checks with its own at its next start",
                  p->ref);
  while ((w = LIST_FIRST(&p->waits))) {
    LIST_REMOVE(w, link);
    sg_image_cb cb = w->cb;
    void *ud = w->ud;
    bool usable = !img || w->ran || sg_images_usable(img, w->auth_registry);
    free(w->auth_registry);
    free(w);
    /* A callback may pin the image before eviction runs below. */
    if (usable)
      cb(ud, img, img ? NULL : j->err);
    else
      cb(ud, NULL, refused);
  }
  if (img) {
    LIST_REMOVE(p, link);
    pull_free(p);
  }
  pull_job_free(j);
  evict(im);
}

static const sg_pool_job_ops_t pull_ops = {pull_work, pull_done};

/* True for a loopback registry: "localhost", 127.0.0.0/8 or ::1 ("[::1]"),
 * with or without a port. Like Docker, these are reached over plain HTTP
 * without an insecure_registries entry: the traffic never leaves the host. */
static bool is_loopback(const char *domain) {
  char host[256];
  size_t n;
  if (domain[0] == '[') {
    n = strcspn(domain + 1, "]");
    if (domain[1 + n] != ']' || n >= sizeof(host))
      return false;
    memcpy(host, domain + 1, n);
  } else {
    n = strcspn(domain, ":");
    if (n >= sizeof(host))
      return false;
    memcpy(host, domain, n);
  }
  host[n] = '\0';
  if (!strcasecmp(host, "localhost"))
    return true;
  struct in_addr a4;
  if (inet_pton(AF_INET, host, &a4) == 1)
    return (ntohl(a4.s_addr) >> 24) == 127;
  struct in6_addr a6;
  return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

static bool is_insecure(sg_images_t *im, const char *domain) {
  if (is_loopback(domain))
    return true;
  for (char **p = im->insecure; p && *p; p++)
    if (!strcmp(*p, domain))
      return true;
  return false;
}

static sg_image_wait_t *start_pull(sg_images_t *im, const char *refstr, const sg_registry_auth_t *auth,
                                   const char *known_digest, sg_image_cb cb, void *ud) {
  sg_image_ref_t ref;
  if (sg_image_ref_parse(refstr, &ref, NULL) < 0)
    return NULL;
  cleanup_free char *norm = sg_image_ref_string(&ref);
  bool insecure = is_insecure(im, ref.domain);
  sg_image_ref_clear(&ref);
  pull_t *p;
  LIST_FOREACH(p, &im->pulls, link) {
    if (!strcmp(p->ref, norm))
      break;
  }
  if (!p) {
    p = xcalloc(1, sizeof(*p));
    p->images = im;
    p->ref = xstrdup(norm);
    LIST_INIT(&p->waits);
    LIST_INSERT_HEAD(&im->pulls, p, link);
  }
  bool started = !p->running;
  if (!p->running) {
    p->running = true;
    p->started_wall = sg_wall_ms();
    im->running++;
    pull_job_t *j = xcalloc(1, sizeof(*j));
    j->pull = p;
    j->ref = xstrdup(norm);
    j->dir = xstrdup(im->dir);
    j->insecure = insecure;
    j->max_layer_bytes = im->max_layer_bytes;
    j->max_unpacked_bytes = im->max_unpacked_bytes;
    j->started_mono = sg_now_ms();
    j->known_digest = known_digest ? xstrdup(known_digest) : NULL;
    if (auth) {
      j->has_auth = true;
      j->auth.username = xstrdup(auth->username);
      j->auth.password = xstrdup(auth->password);
    }
    sg_info("image %s: %s%s", norm, known_digest ? "checking the registry for a newer manifest" : "pulling",
            insecure ? " over plain HTTP (insecure_registries)" : "");
    sg_pool_submit(im->pool, &pull_ops, j);
  }
  sg_image_wait_t *w = xcalloc(1, sizeof(*w));
  w->pull = p;
  w->cb = cb;
  w->ud = ud;
  w->ran = started;
  w->auth_registry = auth && auth->registry ? xstrdup(auth->registry) : NULL;
  LIST_INSERT_HEAD(&p->waits, w, link);
  return w;
}

sg_image_wait_t *sg_images_pull(sg_images_t *im, const char *ref, const sg_registry_auth_t *auth, sg_image_cb cb,
                                void *ud) {
  return start_pull(im, ref, auth, NULL, cb, ud);
}

sg_image_wait_t *sg_images_recheck(sg_images_t *im, const char *refstr, const sg_registry_auth_t *auth, sg_image_cb cb,
                                   void *ud) {
  sg_image_ref_t ref;
  if (sg_image_ref_parse(refstr, &ref, NULL) < 0)
    return NULL;
  bool by_digest = ref.digest != NULL;
  sg_image_ref_clear(&ref);
  sg_image_t *img = sg_images_lookup(im, refstr);
  if (!img || by_digest)
    return NULL;
  cleanup_free char *known = xstrdup(img->digest);
  return start_pull(im, refstr, auth, known, cb, ud);
}

int sg_images_remove(sg_images_t *im, const char *refstr) {
  sg_image_t *img = sg_images_lookup(im, refstr);
  if (!img)
    return -ENOENT;
  /* A running pull may have just found a layer on disk that this would remove. */
  if (img->in_use > 0 || im->running > 0)
    return -EBUSY;
  for (size_t i = 0; i < im->n; i++) {
    if (im->imgs[i] == img) {
      sg_info("image %s removed from the cache", img->ref);
      drop_image(im, i);
      break;
    }
  }
  return 0;
}

void sg_images_cancel(sg_image_wait_t *w) {
  if (!w)
    return;
  LIST_REMOVE(w, link);
  free(w->auth_registry);
  free(w);
}

bool sg_images_usable(const sg_image_t *img, const char *auth_registry) {
  if (!img->with_auth)
    return true;
  if (!auth_registry)
    return false;
  sg_image_ref_t r;
  if (sg_image_ref_parse(img->ref, &r, NULL) < 0)
    return false;
  bool ok = !strcasecmp(auth_registry, r.domain) || !strcasecmp(auth_registry, sg_image_ref_api_host(&r));
  sg_image_ref_clear(&r);
  return ok;
}

sg_image_t *sg_images_get(sg_images_t *im, const char *refstr, const sg_registry_auth_t *auth, sg_image_cb cb, void *ud,
                          sg_image_wait_t **wait) {
  *wait = NULL;
  sg_image_t *img = sg_images_lookup(im, refstr);
  if (img && sg_images_usable(img, auth ? auth->registry : NULL))
    return img;
  if (img) {
    /* Cached with credentials this start does not hold: the registry
     * decides, asked with this start's own (a tag: HEAD, the cached image
     * when it still names it; a digest: the manifest again). */
    *wait = sg_images_recheck(im, refstr, auth, cb, ud);
    if (*wait)
      return NULL;
  }
  *wait = sg_images_pull(im, refstr, auth, cb, ud);
  return NULL;
}

const char *sg_images_pull_state(sg_images_t *im, const char *refstr, const char **error) {
  sg_image_ref_t ref;
  *error = NULL;
  if (sg_image_ref_parse(refstr, &ref, NULL) < 0)
    return NULL;
  cleanup_free char *norm = sg_image_ref_string(&ref);
  sg_image_ref_clear(&ref);
  pull_t *p;
  LIST_FOREACH(p, &im->pulls, link) {
    if (!strcmp(p->ref, norm)) {
      *error = p->error;
      return p->running ? "pulling" : p->error ? "failed" : NULL;
    }
  }
  return NULL;
}

json_t *sg_images_to_json(sg_images_t *im) {
  json_t *arr = json_array();
  for (size_t i = 0; i < im->n; i++) {
    sg_image_t *img = im->imgs[i];
    char t1[32], t2[32];
    json_array_append_new(arr, json_pack("{s:s, s:s, s:I, s:I, s:i, s:s, s:I, s:s, s:i}", "image", img->ref, "digest",
                                         img->digest, "size_bytes", (json_int_t)img->size_bytes, "compressed_bytes",
                                         (json_int_t)img->compressed_bytes, "layers", (int)img->n_layers, "pulled_at",
                                         sg_format_time(img->pulled_wall, t1, sizeof(t1)), "pull_ms",
                                         (json_int_t)img->pull_ms, "last_used_at",
                                         sg_format_time(img->last_used_wall, t2, sizeof(t2)), "in_use", img->in_use));
  }
  json_t *pulls = json_array();
  pull_t *p;
  LIST_FOREACH(p, &im->pulls, link) {
    char t[32];
    json_array_append_new(pulls, json_pack("{s:s, s:s, s:s, s:s?}", "image", p->ref, "state",
                                           p->running ? "pulling" : "failed", "started_at",
                                           sg_format_time(p->started_wall, t, sizeof(t)), "error",
                                           p->running ? NULL : p->error));
  }
  return json_pack("{s:o, s:o, s:I, s:I}", "images", arr, "pulls", pulls, "total_bytes", (json_int_t)disk_bytes(im),
                   "max_bytes", (json_int_t)im->max_bytes);
}
