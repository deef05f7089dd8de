/* /v1/volumes: named volumes (create, list, show, delete) and their preload,
 * POST /v1/volumes/{name}/files with a tarball.
 *
 * Writes to the table go through the store thread; the loop's copy
 * (daemon/volumes.c) changes in their done(). Bytes used are measured on the
 * pool before a list or show is answered. An upload is streamed to a file in
 * DATA_DIR/volumes/.uploads (bounded: the volume's room, else
 * UPLOAD_MAX_BYTES) by writes on the pool, then unpacked on the pool by
 * sg_volume_unpack into the volume. An upload is refused while another one into the same volume, a
 * delete, or a worker of an endpoint that mounts the volume read-write is
 * running, and no such worker starts while it runs
 * (sg_daemon_volumes_for_start): the unpacker is then the only writer of the
 * directory, so what it checked (no symbolic link on the way) stays true
 * while it writes. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>

#include "api-internal.h"
#include "sgpu/image.h"
#include "sgpu/log.h"
#include "sgpu/pool.h"
#include "sgpu/util.h"
#include "sgpu/volumes-store.h"

#define UPLOAD_MAX_BYTES (256ll << 30) /* an upload into a volume without size_bytes */
#define SIZE_MAX_BYTES (1ll << 50)
/* What a tarball may hold besides its files' bytes (headers, padding). */
#define TAR_SLACK_BYTES (1ll << 20)

static json_t *volume_json(sg_daemon_t *d, const sg_volume_t *v) {
  char t[32];
  json_t *o = json_pack("{s:s, s:o, s:I, s:s, s:o}", "name", v->name, "size_bytes",
                        v->size_bytes > 0 ? json_integer(v->size_bytes) : json_null(), "used_bytes",
                        (json_int_t)(v->used_bytes < 0 ? 0 : v->used_bytes), "created",
                        sg_format_time(v->created_ms, t, sizeof(t)), "mounted_by", sg_daemon_volume_users(d, v->name));
  return o;
}

/* ---- list and show, once measured ---------------------------------------------------------- */

typedef struct show {
  sg_http_req_t *req; /* NULL once the client went away */
  char *name;         /* NULL: the list */
} show_t;

static void show_closed(sg_http_req_t *req, void *arg) {
  (void)req;
  ((show_t *)arg)->req = NULL;
}

static void show_measured(sg_daemon_t *d, void *arg) {
  show_t *s = arg;
  if (s->req) {
    sg_http_set_close_cb(s->req, NULL, NULL);
    sg_volume_t *v = d && s->name ? sg_daemon_volume_find(d, s->name) : NULL;
    if (!d)
      sg_http_send_error(s->req, 503, "shutting_down", "sgpud is shutting down", NULL);
    else if (!s->name) {
      json_t *arr = json_array();
      for (size_t i = 0; i < sg_daemon_volume_count(d); i++)
        json_array_append_new(arr, volume_json(d, sg_daemon_volume_at(d, i)));
      sg_http_send_json(s->req, 200, json_pack("{s:o}", "volumes", arr));
    } else if (!v)
      sg_http_send_error(s->req, 404, "not_found", "no such volume", NULL);
    else
      sg_http_send_json(s->req, 200, volume_json(d, v));
  }
  free(s->name);
  free(s);
}

static void show(sg_daemon_t *d, sg_http_req_t *req, const char *name) {
  show_t *s = xcalloc(1, sizeof(*s));
  s->req = req;
  s->name = name ? xstrdup(name) : NULL;
  sg_http_set_close_cb(req, show_closed, s);
  sg_daemon_volumes_measure(d, name, show_measured, s);
}

/* ---- create and delete, through the store thread ------------------------------------------- */

typedef struct vol_job {
  sg_daemon_t *d;
  sg_http_req_t *req; /* NULL once the client went away */
  bool create;
  char *name, *dir, *remote_dir, *trash;
  int64_t size_bytes, now;
  sg_error_t *err;
} vol_job_t;

static void vol_job_free(vol_job_t *j) {
  free(j->name);
  free(j->dir);
  free(j->remote_dir);
  free(j->trash);
  sg_error_free(j->err);
  free(j);
}

static void vol_work(sg_store_t *store, void *data) {
  vol_job_t *j = data;
  if (j->create) {
    sg_volume_record_t rec = {j->name, j->size_bytes, j->now};
    if (sg_volume_make_dir(j->dir, &j->err) < 0 || (j->remote_dir && sg_volume_make_dir(j->remote_dir, &j->err) < 0))
      return;
    sg_store_volume_add(store, &rec, &j->err);
    return;
  }
  if (sg_store_volume_delete(store, j->name, &j->err) < 0)
    return;
  /* Out of the way at once (a volume of the same name may follow); its
   * files go on the pool, in done(). */
  if (rename(j->dir, j->trash) < 0 && errno != ENOENT)
    sg_warn("volume %s deleted, but its directory %s stays: %s", j->name, j->dir, strerror(errno));
}

typedef struct rm_job {
  char *path;
} rm_job_t;

static void rm_work(void *data) { sg_rm_rf(((rm_job_t *)data)->path); }

static void rm_done(void *data, bool cancelled) {
  (void)cancelled;
  rm_job_t *r = data;
  free(r->path);
  free(r);
}

static const sg_pool_job_ops_t rm_ops = {rm_work, rm_done};

static void vol_done(void *data) {
  vol_job_t *j = data;
  sg_http_req_t *req = j->req;
  if (req)
    sg_http_set_close_cb(req, NULL, NULL);
  if (j->create) {
    if (j->err) {
      if (req)
        sg_http_send_sg_error(req, j->err);
    } else {
      sg_volume_t *v = sg_daemon_volume_add(j->d, j->name, j->size_bytes, j->now);
      v->used_bytes = 0;
      sg_info("volume %s created (size_bytes %lld)", j->name, (long long)j->size_bytes);
      if (req)
        sg_http_send_json(req, 201, volume_json(j->d, v));
    }
  } else {
    sg_volume_t *v = sg_daemon_volume_find(j->d, j->name);
    if (j->err) {
      if (v)
        v->deleting = false;
      if (req && j->err->status == SG_EEXIST) /* an endpoint write before it mounts it */
        sg_http_send_error(req, 409, "in_use", j->err->message, NULL);
      else if (req)
        sg_http_send_sg_error(req, j->err);
    } else {
      sg_daemon_volume_forget(j->d, j->name);
      sg_info("volume %s deleted", j->name);
      rm_job_t *r = xcalloc(1, sizeof(*r));
      r->path = steal_pointer(&j->trash);
      sg_pool_submit(j->d->pool, &rm_ops, r);
      if (req)
        sg_http_send_json(req, 200, json_pack("{s:s, s:b}", "name", j->name, "deleted", 1));
    }
  }
  vol_job_free(j);
}

static void vol_req_closed(sg_http_req_t *req, void *arg) {
  (void)req;
  ((vol_job_t *)arg)->req = NULL;
}

static void vol_submit(sg_daemon_t *d, sg_http_req_t *req, vol_job_t *j) {
  j->d = d;
  j->req = req;
  sg_http_set_close_cb(req, vol_req_closed, j);
  sg_store_thread_submit(d->store_thread, vol_work, vol_done, j);
}

static void create(sg_daemon_t *d, sg_http_req_t *req) {
  cleanup_json json_t *j = sg_api_read_json(req);
  if (!j)
    return;
  const char *key;
  json_t *v;
  json_object_foreach(j, key, v) {
    if (strcmp(key, "name") && strcmp(key, "size_bytes"))
      return sg_http_send_error(req, 422, "invalid_field", "unknown field", key);
  }
  json_t *name = json_object_get(j, "name");
  if (!json_is_string(name) || !sg_name_valid(json_string_value(name)))
    return sg_http_send_error(req, 422, "invalid_field", "is required: a DNS label, 1-63 of [a-z0-9-]", "name");
  json_t *size = json_object_get(j, "size_bytes");
  if (size && !json_is_null(size) &&
      (!json_is_integer(size) || json_integer_value(size) < 1 || json_integer_value(size) > SIZE_MAX_BYTES)) {
    cleanup_free char *msg = xasprintf("must be an integer between 1 and %lld (or null: no limit)", SIZE_MAX_BYTES);
    return sg_http_send_error(req, 422, "invalid_field", msg, "size_bytes");
  }
  const char *n = json_string_value(name);
  if (sg_daemon_volume_find(d, n))
    return sg_http_send_error(req, 409, "conflict", "a volume of that name exists", "name");
  vol_job_t *job = xcalloc(1, sizeof(*job));
  job->create = true;
  job->name = xstrdup(n);
  job->size_bytes = size && json_is_integer(size) ? json_integer_value(size) : 0;
  job->now = sg_wall_ms();
  job->dir = sg_daemon_volume_dir(d, n);
  if (d->cfg.slurm.configured)
    job->remote_dir = sg_daemon_volume_remote_dir(d, n);
  vol_submit(d, req, job);
}

static void delete (sg_daemon_t *d, sg_http_req_t *req, sg_volume_t *v) {
  cleanup_json json_t *users = sg_daemon_volume_users(d, v->name);
  if (json_array_size(users) > 0) {
    cleanup_free char *list = json_dumps(users, JSON_COMPACT);
    cleanup_free char *msg =
        xasprintf("volume \"%s\" is mounted by endpoint(s) %s: change or delete them first", v->name, list);
    return sg_http_send_error(req, 409, "in_use", msg, NULL);
  }
  if (v->uploads > 0 || v->deleting)
    return sg_http_send_error(req, 409, "busy", "an upload into the volume, or its delete, is under way", NULL);
  v->deleting = true;
  vol_job_t *job = xcalloc(1, sizeof(*job));
  job->name = xstrdup(v->name);
  job->dir = sg_daemon_volume_dir(d, v->name);
  cleanup_free char *root = sg_daemon_volumes_root(d);
  cleanup_free char *id = sg_new_id("");
  job->trash = xasprintf("%s/.deleted-%s-%s", root, v->name, id);
  vol_submit(d, req, job);
}

/* ---- uploads -------------------------------------------------------------------------------------- */

/* An upload's life: RECEIVING (the body arrives; writes to the temporary
 * file run on the pool, one at a time, the body paused while more than
 * PENDING_MAX bytes wait), then UNPACKING (on the pool), then answered and
 * freed. `gone`: the request ended (the client left, or it was answered
 * early) while a write ran; that write's done() frees the upload. */
#define PENDING_MAX (8u << 20)

typedef struct upload {
  sg_daemon_t *d;
  sg_http_req_t *req; /* NULL once the client went away */
  char *name, *tmp, *dir;
  int fd;
  int64_t received, max_bytes, unpacked;
  int64_t max_stream;      /* max_bytes and the tar format's own bytes */
  struct evbuffer *queued; /* received, not yet handed to a write */
  bool writing, ended, gone, unpacking, paused;
  sg_error_t *err;
} upload_t;

typedef struct write_job {
  upload_t *u;
  struct evbuffer *buf; /* owned by the job while it runs */
  int error;            /* errno of a failed write, or 0 */
} write_job_t;

static void upload_free(upload_t *u) {
  if (u->fd >= 0)
    close(u->fd);
  if (u->tmp)
    unlink(u->tmp);
  sg_volume_t *v = sg_daemon_volume_find(u->d, u->name);
  if (v)
    v->uploads--;
  if (u->queued)
    evbuffer_free(u->queued);
  free(u->name);
  free(u->tmp);
  free(u->dir);
  sg_error_free(u->err);
  free(u);
}

static void unpack_work(void *data) {
  upload_t *u = data;
  sg_volume_unpack(u->tmp, u->dir, u->max_bytes, &u->unpacked, &u->err);
}

static void upload_measured(sg_daemon_t *d, void *arg) {
  upload_t *u = arg;
  sg_volume_t *v = d ? sg_daemon_volume_find(d, u->name) : NULL;
  if (u->req) {
    sg_http_set_close_cb(u->req, NULL, NULL);
    if (u->err)
      sg_http_send_error(u->req, u->err->status == EFBIG ? 413 : 422,
                         u->err->status == EFBIG ? "too_large" : "invalid_archive", u->err->message, NULL);
    else
      sg_http_send_json(u->req, 200,
                        json_pack("{s:s, s:I, s:I}", "name", u->name, "unpacked_bytes", (json_int_t)u->unpacked,
                                  "used_bytes", (json_int_t)(v && v->used_bytes > 0 ? v->used_bytes : 0)));
  }
  if (u->err)
    sg_warn("upload into volume %s refused: %s", u->name, u->err->message);
  else
    sg_info("volume %s: upload of %lld bytes unpacked", u->name, (long long)u->unpacked);
  upload_free(u);
}

static void unpack_done(void *data, bool cancelled) {
  upload_t *u = data;
  if (cancelled) {
    if (u->req) {
      sg_http_set_close_cb(u->req, NULL, NULL);
      sg_http_send_error(u->req, 503, "shutting_down", "sgpud is shutting down", NULL);
    }
    upload_free(u);
    return;
  }
  /* Measured whether it failed or not: what was written before the
   * failure stays in the volume. */
  sg_daemon_volumes_measure(u->d, u->name, upload_measured, u);
}

static const sg_pool_job_ops_t unpack_ops = {unpack_work, unpack_done};

static void start_unpack(upload_t *u) {
  close(u->fd);
  u->fd = -1;
  u->unpacking = true;
  sg_pool_submit(u->d->pool, &unpack_ops, u);
}

/* On a pool thread: the temporary file is this job's alone while it runs. */
static void write_work(void *data) {
  write_job_t *j = data;
  while (evbuffer_get_length(j->buf) > 0) {
    int n = evbuffer_write(j->buf, j->u->fd);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      j->error = n < 0 ? errno : EIO;
      return;
    }
  }
}

static void write_done(void *data, bool cancelled);
static const sg_pool_job_ops_t write_ops = {write_work, write_done};

static void start_write(upload_t *u) {
  write_job_t *j = xcalloc(1, sizeof(*j));
  j->u = u;
  j->buf = evbuffer_new();
  evbuffer_add_buffer(j->buf, u->queued);
  u->writing = true;
  sg_pool_submit(u->d->pool, &write_ops, j);
}

/* Answers an upload still receiving with an error and lets it go. */
static void upload_fail(upload_t *u, int status, const char *code, const char *msg) {
  if (u->req) {
    sg_http_set_close_cb(u->req, NULL, NULL);
    sg_http_send_error(u->req, status, code, msg, NULL);
    u->req = NULL;
  }
  if (u->writing)
    u->gone = true;
  else
    upload_free(u);
}

static void write_done(void *data, bool cancelled) {
  write_job_t *j = data;
  upload_t *u = j->u;
  int error = cancelled ? ECANCELED : j->error;
  evbuffer_free(j->buf);
  free(j);
  u->writing = false;
  if (u->gone) {
    upload_free(u);
    return;
  }
  if (error) {
    cleanup_free char *msg = xasprintf("cannot write the upload: %s", strerror(error));
    return upload_fail(u, 500, "internal", msg);
  }
  if (evbuffer_get_length(u->queued) > 0)
    start_write(u);
  else if (u->ended)
    return start_unpack(u);
  if (u->paused && u->req) {
    u->paused = false;
    sg_http_pause_body(u->req, false);
  }
}

static void upload_closed(sg_http_req_t *req, void *arg) {
  (void)req;
  upload_t *u = arg;
  u->req = NULL;
  /* While unpacking, the answer is dropped when it comes; before, nothing
   * more comes for it. */
  if (u->unpacking)
    return;
  if (u->writing)
    u->gone = true;
  else
    upload_free(u);
}

static void upload_data(sg_http_req_t *req, struct evbuffer *data, void *arg) {
  upload_t *u = arg;
  size_t len = evbuffer_get_length(data);
  u->received += (int64_t)len;
  if (u->received > u->max_stream) {
    evbuffer_drain(data, len);
    cleanup_free char *msg =
        xasprintf("the tarball is over the %lld bytes the volume has room for", (long long)u->max_bytes);
    return upload_fail(u, 413, "too_large", msg);
  }
  evbuffer_add_buffer(u->queued, data);
  if (!u->writing)
    start_write(u);
  else if (evbuffer_get_length(u->queued) > PENDING_MAX && !u->paused) {
    u->paused = true;
    sg_http_pause_body(req, true);
  }
}

static void upload_end(sg_http_req_t *req, void *arg) {
  (void)req;
  upload_t *u = arg;
  u->ended = true;
  if (!u->writing && evbuffer_get_length(u->queued) == 0)
    start_unpack(u);
  else if (!u->writing)
    start_write(u);
}

/* An endpoint that mounts the volume read-write and has a live worker, or NULL. */
static const char *rw_user(sg_daemon_t *d, const char *name) {
  sg_endpoint_t *ep;
  TAILQ_FOREACH(ep, &d->endpoints, link) {
    bool rw = false;
    for (size_t i = 0; i < ep->spec->n_volumes; i++)
      if (ep->spec->volumes[i].name && !strcmp(ep->spec->volumes[i].name, name) && !ep->spec->volumes[i].read_only)
        rw = true;
    if (!rw)
      continue;
    sg_worker_t *w;
    TAILQ_FOREACH(w, &ep->workers, link) {
      if (sg_worker_live(w))
        return ep->name;
    }
  }
  return NULL;
}

sg_http_head_action_t sg_api_volume_upload(sg_daemon_t *d, sg_http_req_t *req, const char *name) {
  sg_volume_t *v = sg_daemon_volume_find(d, name);
  if (!v || v->deleting) {
    sg_http_send_error(req, 404, "not_found", "no such volume", NULL);
    return SG_HTTP_DONE;
  }
  if (v->uploads > 0) {
    sg_http_send_error(req, 409, "busy", "an upload into this volume is under way", NULL);
    return SG_HTTP_DONE;
  }
  const char *user = rw_user(d, name);
  if (user) {
    cleanup_free char *msg = xasprintf(
        "endpoint \"%s\" mounts the volume read-write and has workers: scale it to zero (or mount read-only) first",
        user);
    sg_http_send_error(req, 409, "in_use", msg, NULL);
    return SG_HTTP_DONE;
  }
  int64_t room = UPLOAD_MAX_BYTES;
  if (v->size_bytes > 0)
    room = v->size_bytes - (v->used_bytes > 0 ? v->used_bytes : 0);
  if (room <= 0) {
    sg_http_send_error(req, 413, "too_large", "the volume is full (used_bytes >= size_bytes)", NULL);
    return SG_HTTP_DONE;
  }
  int64_t cl = sg_http_content_length(req);
  if (cl > room + TAR_SLACK_BYTES) {
    cleanup_free char *msg = xasprintf("the tarball is over the %lld bytes the volume has room for", (long long)room);
    sg_http_send_error(req, 413, "too_large", msg, NULL);
    return SG_HTTP_DONE;
  }
  cleanup_free char *root = sg_daemon_volumes_root(d);
  cleanup_free char *updir = xasprintf("%s/.uploads", root);
  if (mkdir(updir, 0700) < 0 && errno != EEXIST) {
    cleanup_free char *msg = xasprintf("cannot create %s: %s", updir, strerror(errno));
    sg_http_send_error(req, 500, "internal", msg, NULL);
    return SG_HTTP_DONE;
  }
  upload_t *u = xcalloc(1, sizeof(*u));
  u->d = d;
  u->req = req;
  u->name = xstrdup(name);
  u->dir = sg_daemon_volume_dir(d, name);
  u->tmp = xasprintf("%s/%s-XXXXXX", updir, name);
  u->max_bytes = room;
  u->queued = evbuffer_new();
  u->max_stream = room + TAR_SLACK_BYTES;
  u->fd = mkostemp(u->tmp, O_CLOEXEC);
  v->uploads++;
  if (u->fd < 0) {
    cleanup_free char *msg = xasprintf("cannot create a file in %s: %s", updir, strerror(errno));
    free(u->tmp);
    u->tmp = NULL;
    sg_http_send_error(req, 500, "internal", msg, NULL);
    upload_free(u);
    return SG_HTTP_DONE;
  }
  sg_http_set_close_cb(req, upload_closed, u);
  sg_http_stream_body(req, upload_data, upload_end, u);
  return SG_HTTP_STREAM;
}

void sg_api_volumes(sg_daemon_t *d, sg_http_req_t *req, const char *name) {
  if (!name) {
    if (sg_http_method_is(req, "POST"))
      return create(d, req);
    if (!sg_http_method_is(req, "GET"))
      return sg_http_method_not_allowed(req, "GET, POST");
    return show(d, req, NULL);
  }
  sg_volume_t *v = sg_daemon_volume_find(d, name);
  if (!v)
    return sg_http_send_error(req, 404, "not_found", "no such volume", NULL);
  if (sg_http_method_is(req, "DELETE"))
    return delete (d, req, v);
  if (!sg_http_method_is(req, "GET"))
    return sg_http_method_not_allowed(req, "GET, DELETE");
  show(d, req, name);
}
