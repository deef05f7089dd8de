/* The image store: image references, a registry v2 client, layer unpacking
 * and a cache of pulled images (layers unpacked once, shared read-only by
 * every worker's overlay root). */
#ifndef SGPU_IMAGE_H
#define SGPU_IMAGE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sgpu/error.h"
#include "sgpu/pool.h"
#include "sgpu/store.h"

struct event_base;

/* ---- references (ref.c) ---------------------------------------------------- */

/* A parsed reference, normalized the way Docker does: "busybox" is
 * docker.io/library/busybox:latest. */
typedef struct sg_image_ref {
  char *domain;     /* "docker.io", "127.0.0.1:5000" */
  char *repository; /* "library/busybox", "ns/name" */
  char *tag;        /* NULL when only a digest was given */
  char *digest;     /* "sha256:<64 hex>" or NULL */
} sg_image_ref_t;

/* Parses s; SG_EINVAL with a message saying what is wrong. */
int sg_image_ref_parse(const char *s, sg_image_ref_t *ref, sg_error_t **err);
void sg_image_ref_clear(sg_image_ref_t *ref);
/* "domain/repository[:tag][@digest]". Caller frees. */
char *sg_image_ref_string(const sg_image_ref_t *ref);
/* The host serving the registry API ("registry-1.docker.io" for docker.io). */
const char *sg_image_ref_api_host(const sg_image_ref_t *ref);
/* True when s is "sha256:" and 64 lowercase hex digits. */
bool sg_digest_valid(const char *s);

/* ---- registry client (registry.c); blocking, for pool threads ---------------- */

typedef struct sg_registry_auth {
  char *username;
  char *password;
  char *registry; /* the registry they are for ("ghcr.io"); NULL: not known */
} sg_registry_auth_t;

/* What one pull learnt about authenticating: the bearer token, or that the
 * registry asked for basic auth. Shared by the requests of that pull so that
 * the 401 challenge is answered once; zero-initialized, then
 * sg_registry_session_clear(). Never shown anywhere. */
typedef struct sg_registry_session {
  char *bearer; /* "Authorization: Bearer ..." */
  bool basic;
} sg_registry_session_t;

void sg_registry_session_clear(sg_registry_session_t *s);

typedef struct sg_registry_opts {
  bool insecure;                  /* plain HTTP */
  const sg_registry_auth_t *auth; /* NULL: anonymous */
  double timeout_s;               /* per stalled transfer */
  sg_registry_session_t *session; /* optional: carries authentication between calls */
} sg_registry_opts_t;

typedef struct sg_layer_desc {
  char *digest;
  char *media_type;
  int64_t size;
} sg_layer_desc_t;

/* What a pull resolved: the platform manifest's digest, its config blob and layers. */
/* The most a manifest, an index or an image config may hold. */
#define SG_REGISTRY_MAX_CONFIG (4 << 20)

typedef struct sg_manifest {
  char *digest;
  char *config_digest;
  int64_t config_size; /* from its descriptor, at most SG_REGISTRY_MAX_CONFIG */
  sg_layer_desc_t *layers;
  size_t n_layers;
} sg_manifest_t;

/* Parses a manifest or an image index (body of len bytes, at most
 * SG_REGISTRY_MAX_CONFIG; content_type, the answer's Content-Type or NULL,
 * gives the media type when the body names none; name, e.g. "host/repo",
 * goes into errors). An image manifest fills out (out->digest is the body's
 * sha256) and returns 0; an index sets *index_pick (caller frees) to its
 * linux/amd64 manifest's digest and returns 1; anything else (not JSON, an
 * unsupported type, invalid descriptors, a config over
 * SG_REGISTRY_MAX_CONFIG) returns a negative error. No I/O. */
int sg_manifest_parse(const char *body, size_t len, const char *content_type, const char *name, sg_manifest_t *out,
                      char **index_pick, sg_error_t **err);
/* Fetches the manifest of ref, resolving an image index to linux/amd64. */
int sg_registry_manifest(const sg_image_ref_t *ref, const sg_registry_opts_t *o, sg_manifest_t *out, sg_error_t **err);
void sg_manifest_clear(sg_manifest_t *m);
/* HEAD of ref's manifest by tag: *digest (caller frees) gets the digest the
 * registry names for it (of an image index when the tag names one). */
int sg_registry_head_digest(const sg_image_ref_t *ref, const sg_registry_opts_t *o, char **digest, sg_error_t **err);
/* Downloads blob `digest` of `size` bytes (its descriptor's; >= 0) to path,
 * through path.partial: the transfer stops as soon as more than size bytes
 * arrive, the digest is computed as it streams and the file appears only when
 * size and digest matched. */
int sg_registry_blob(const sg_image_ref_t *ref, const sg_registry_opts_t *o, const char *digest, int64_t size,
                     const char *path, sg_error_t **err);

/* Makes transfers in progress fail at once (shutdown). */
void sg_registry_abort_all(void);

/* ---- layers (unpack.c) ------------------------------------------------------ */

typedef enum { SG_WH_NONE, SG_WH_FILE, SG_WH_OPAQUE } sg_whiteout_t;

/* Classifies a layer entry path: ".wh..wh..opq" marks its directory opaque;
 * ".wh.NAME" deletes NAME (*target gets "dir/NAME", caller frees). NAME is
 * not checked: ".wh.." and ".wh..." give "." and "..", which unpacking refuses. */
sg_whiteout_t sg_whiteout_classify(const char *path, char **target);

/* Unpacks a layer archive (tar, any compression) into the existing directory
 * dest, converting OCI whiteouts to overlayfs ones (0/0 character devices and
 * the trusted.overlay.opaque xattr). Nothing is created, changed or removed
 * outside dest: entries named with "..", hard links to paths outside, and
 * entries (whiteouts included) below a symbolic link are refused with
 * EBADMSG; absolute names are taken relative to dest. When max_bytes > 0, an
 * archive whose regular files plus 512 bytes per entry exceed it fails with
 * EFBIG as soon as the entry that crosses it is read. *bytes (may be NULL)
 * gets the size of the regular files written. On failure dest holds a partial
 * layer that the caller removes. */
int sg_layer_unpack_bounded(const char *archive, const char *dest, int64_t max_bytes, int64_t *bytes, sg_error_t **err);
/* Unpacks a tarball (any compression) into the volume directory dest, with
 * the confinement of sg_layer_unpack_bounded() (no "..", nothing below a
 * symbolic link, links never followed out) and more: absolute names,
 * devices, FIFOs and sockets are refused (EBADMSG); no owner, xattr or
 * setuid/setgid/sticky bit is kept (directories 0777, files 0666, or 0777
 * when executable); ".wh." names are plain files. max_bytes > 0 bounds the
 * unpacked size as there (EFBIG). What was written before a failure stays. */
int sg_volume_unpack(const char *archive, const char *dest, int64_t max_bytes, int64_t *bytes, sg_error_t **err);
/* sg_layer_unpack_bounded() without a size bound. */
int sg_layer_unpack(const char *archive, const char *dest, int64_t *bytes, sg_error_t **err);

/* Removes path and everything under it (no symlink is followed). */
int sg_rm_rf(const char *path);

/* ---- image cache (images.c); loop thread ---------------------------------- */

typedef struct sg_image {
  char *ref;                       /* normalized reference */
  char *digest;                    /* manifest digest */
  char **entrypoint, **cmd, **env; /* NULL-terminated, may be NULL */
  char *workdir, *user;
  char **layer_dirs; /* lowest first, NULL-terminated */
  size_t n_layers;
  char **layer_digests;
  int64_t *layer_bytes;
  int64_t size_bytes, compressed_bytes;
  int64_t pulled_wall, pull_ms, last_used_wall;
  int in_use;
  bool with_auth; /* pulled with registry credentials: maybe private (sg_images_usable) */
} sg_image_t;

typedef struct sg_images sg_images_t;

typedef struct sg_images_config {
  const char *dir;            /* cache root */
  int64_t max_bytes;          /* 0: no limit */
  char *const *insecure;      /* registries reached over HTTP ("127.0.0.1:5000"); NULL-terminated */
  int64_t max_layer_bytes;    /* unpacked size of one layer; 0: no limit */
  int64_t max_unpacked_bytes; /* unpacked size of one image's layers together; 0: no limit */
} sg_images_config_t;

sg_images_t *sg_images_new(sg_pool_t *pool, sg_store_t *store, const sg_images_config_t *cfg, sg_error_t **err);
/* From now on the cache's records are written on the store thread t, never
 * on the caller's (the loop's) thread. */
void sg_images_set_store_thread(sg_images_t *images, sg_store_thread_t *t);
void sg_images_free(sg_images_t *images);

/* The cached image for a reference string, or NULL. */
sg_image_t *sg_images_lookup(sg_images_t *images, const char *ref);

/* Called once on the loop thread: img (valid until unused) or err. */
typedef void (*sg_image_cb)(void *ud, sg_image_t *img, const sg_error_t *err);
typedef struct sg_image_wait sg_image_wait_t;

/* Makes ref available: starts (or joins) its pull. cb runs later on the loop
 * thread, never from inside this call. auth may be NULL and is copied.
 * Returns a handle for sg_images_cancel(), valid until cb ran. */
sg_image_wait_t *sg_images_pull(sg_images_t *images, const char *ref, const sg_registry_auth_t *auth, sg_image_cb cb,
                                void *ud);
/* The callback will not be called. */
void sg_images_cancel(sg_image_wait_t *wait);

/* Whether a start with credentials for auth_registry (NULL: none) may use
 * the cached img: always when it was pulled without credentials; when it
 * was pulled with some (it may be private), only with credentials for its
 * registry (the reference's domain, or the host serving its API). */
bool sg_images_usable(const sg_image_t *img, const char *auth_registry);

/* What a worker start calls: the cached image for ref when auth (may be
 * NULL) may use it (sg_images_usable; cb never runs); otherwise NULL with
 * *wait set: a pull (not cached), or, for an image cached with credentials
 * auth is not for, the registry asked again with auth's credentials or none
 * (sg_images_recheck for a tag, a pull for a digest), so a private image
 * fails for a start without them. A start that joins a pull run with other
 * credentials gets the image only when it may use it, else an error (EACCES)
 * and checks with its own at its next start. */
sg_image_t *sg_images_get(sg_images_t *images, const char *ref, const sg_registry_auth_t *auth, sg_image_cb cb,
                          void *ud, sg_image_wait_t **wait);

/* For a cached image named by tag: asks the registry whether the tag still
 * names the cached manifest (a HEAD, then the manifest when the tag names an
 * index) and pulls it again when it changed; the cached image serves starts
 * meanwhile. cb as for sg_images_pull() (with the cached image when nothing
 * changed). Returns NULL when ref is not cached or names a digest. */
sg_image_wait_t *sg_images_recheck(sg_images_t *images, const char *ref, const sg_registry_auth_t *auth, sg_image_cb cb,
                                   void *ud);

/* Removes ref from the cache with the layers no other image uses. Returns 0,
 * -ENOENT when it is not cached, or -EBUSY while a worker uses it or any
 * pull runs (one may have just found a layer on disk that this would remove). */
int sg_images_remove(sg_images_t *images, const char *ref);

/* Pins img against eviction while a worker uses it; marks it recently used. */
void sg_images_use(sg_images_t *images, sg_image_t *img);
void sg_images_unuse(sg_images_t *images, sg_image_t *img);

/* {"images": [...], "pulls": [...], "total_bytes", "max_bytes"}. New reference. */
json_t *sg_images_to_json(sg_images_t *images);
/* The state of ref's last pull: NULL when none; "pulling", "failed". */
const char *sg_images_pull_state(sg_images_t *images, const char *ref, const char **error);

#endif
