/* /v1/images (preheat, list) and /v1/registry-auths (registry credentials,
 * stored by name, never returned: answers carry the name, registry and
 * username only). */
#include <ctype.h>
#include <errno.h>

#include "api-internal.h"
#include "sgpu/image.h"
#include "sgpu/images-store.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define MAX_SECRET 8192

static void images_post(sg_daemon_t *d, sg_http_req_t *req) {
  cleanup_json json_t *j = sg_api_read_json(req);
  if (!j)
    return;
  const char *key;
  json_t *v;
  json_object_foreach(j, key, v) {
    if (strcmp(key, "image") && strcmp(key, "registry_auth"))
      return sg_http_send_error(req, 422, "invalid_field", "unknown field", key);
  }
  const char *ref = json_string_value(json_object_get(j, "image"));
  if (!ref)
    return sg_http_send_error(req, 422, "invalid_field", "is required (an image reference)", "image");
  sg_image_ref_t r;
  cleanup_error sg_error_t *err = NULL;
  if (sg_image_ref_parse(ref, &r, &err) < 0)
    return sg_http_send_error(req, 422, "invalid_field", err->message, "image");
  cleanup_free char *norm = sg_image_ref_string(&r);
  sg_image_ref_clear(&r);
  json_t *auth_name = json_object_get(j, "registry_auth");
  if (auth_name && !json_is_string(auth_name))
    return sg_http_send_error(req, 422, "invalid_field", "must be a string", "registry_auth");
  sg_registry_auth_t *auth = NULL;
  if (auth_name) {
    auth = sg_daemon_registry_auth(d, json_string_value(auth_name), &err);
    if (!auth)
      return sg_http_send_sg_error(req, err);
  }
  sg_image_t *img = sg_images_lookup(d->images, norm);
  if (img) {
    /* Cached: usable now; a tag is checked against the registry, and pulled
     * again when it names a newer manifest. */
    bool checking = sg_daemon_recheck(d, norm, auth);
    json_t *out = json_pack("{s:s, s:s, s:s, s:b}", "image", norm, "state", "cached", "digest", img->digest, "checking",
                            checking);
    sg_registry_auth_free(auth);
    sg_http_send_json(req, 200, out);
    return;
  }
  sg_daemon_pull(d, norm, auth);
  sg_registry_auth_free(auth);
  sg_http_send_json(req, 202, json_pack("{s:s, s:s}", "image", norm, "state", "pulling"));
}

/* DELETE /v1/images/{ref}: ref as written in the path (percent-decoded). */
static void image_delete(sg_daemon_t *d, sg_http_req_t *req, const char *raw) {
  char ref[1024];
  size_t n = 0;
  for (const char *p = raw; *p && n + 1 < sizeof(ref); p++) {
    if (p[0] == '%' && isxdigit((unsigned char)p[1]) && isxdigit((unsigned char)p[2])) {
      char hex[3] = {p[1], p[2], 0};
      ref[n++] = (char)strtol(hex, NULL, 16);
      p += 2;
    } else {
      ref[n++] = *p;
    }
  }
  ref[n] = '\0';
  sg_image_ref_t r;
  cleanup_error sg_error_t *err = NULL;
  if (sg_image_ref_parse(ref, &r, &err) < 0)
    return sg_http_send_error(req, 422, "invalid_field", err->message, "image");
  cleanup_free char *norm = sg_image_ref_string(&r);
  sg_image_ref_clear(&r);
  int rc = sg_images_remove(d->images, norm);
  if (rc == -ENOENT)
    return sg_http_send_error(req, 404, "not_found", "no such image in the cache", NULL);
  if (rc == -EBUSY)
    return sg_http_send_error(req, 409, "conflict", "the image is in use by a worker, or a pull is running", NULL);
  sg_http_send_json(req, 200, json_pack("{s:s, s:b}", "image", norm, "deleted", 1));
}

void sg_api_image(sg_daemon_t *d, sg_http_req_t *req, const char *ref) {
  if (sg_http_method_is(req, "DELETE"))
    return image_delete(d, req, ref);
  sg_http_method_not_allowed(req, "DELETE");
}

void sg_api_images(sg_daemon_t *d, sg_http_req_t *req) {
  if (sg_http_method_is(req, "GET"))
    return sg_http_send_json(req, 200, sg_images_to_json(d->images));
  if (sg_http_method_is(req, "POST"))
    return images_post(d, req);
  sg_http_method_not_allowed(req, "GET, POST");
}

static json_t *auth_json(const sg_registry_auth_record_t *r) {
  char t1[32], t2[32];
  return json_pack("{s:s, s:s, s:s, s:s, s:s}", "name", r->name, "registry", r->registry, "username", r->username,
                   "created_at", sg_format_time(r->created_ms, t1, sizeof(t1)), "updated_at",
                   sg_format_time(r->updated_ms, t2, sizeof(t2)));
}

static void add_auth(void *ud, const sg_registry_auth_record_t *r) { json_array_append_new(ud, auth_json(r)); }

static bool printable(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f)
      return false;
  return true;
}

/* A credential write on the store thread; the loop's copy of the
 * credentials (sg_daemon_auth_*) changes in done() when the write
 * succeeded, so both change in the same order. */
typedef struct auth_job {
  sg_daemon_t *d;
  sg_http_req_t *req; /* NULL once the client went away */
  bool put, replace;
  char *name, *registry, *user, *pass;
  int64_t now;
  sg_error_t *err;
} auth_job_t;

static void auth_job_free(auth_job_t *j) {
  if (j->pass)
    explicit_bzero(j->pass, strlen(j->pass));
  free(j->name);
  free(j->registry);
  free(j->user);
  free(j->pass);
  sg_error_free(j->err);
  free(j);
}

static void auth_work(sg_store_t *store, void *data) {
  auth_job_t *j = data;
  if (!j->put) {
    sg_store_auth_delete(store, j->name, &j->err);
    return;
  }
  sg_registry_auth_record_t rec = {j->name, j->registry, j->user, j->pass, j->now, j->now};
  sg_store_auth_put(store, &rec, j->replace, &j->err);
}

static void auth_done(void *data) {
  auth_job_t *j = data;
  sg_http_req_t *req = j->req;
  if (req)
    sg_http_set_close_cb(req, NULL, NULL);
  if (j->err) {
    if (req)
      sg_http_send_sg_error(req, j->err);
  } else if (j->put) {
    sg_registry_auth_record_t rec = {j->name, j->registry, j->user, j->pass, j->now, j->now}, now;
    sg_daemon_auth_set(j->d, &rec);
    sg_info("registry auth %s %s (registry %s, user %s)", j->name, j->replace ? "stored" : "created", j->registry,
            j->user);
    if (req && sg_daemon_auth_get(j->d, j->name, &now, NULL) == 0)
      sg_http_send_json(req, j->replace ? 200 : 201, auth_json(&now));
  } else {
    sg_daemon_auth_forget(j->d, j->name);
    if (req)
      sg_http_send_json(req, 200, json_pack("{s:s, s:b}", "name", j->name, "deleted", 1));
  }
  auth_job_free(j);
}

static void auth_req_closed(sg_http_req_t *req, void *arg) { ((auth_job_t *)arg)->req = NULL; }

static void auth_submit(sg_daemon_t *d, sg_http_req_t *req, auth_job_t *j) {
  j->d = d;
  j->req = req;
  sg_http_set_close_cb(req, auth_req_closed, j);
  sg_store_thread_submit(d->store_thread, auth_work, auth_done, j);
}

/* Creates (name NULL: from the body) or replaces (PUT) a credential. */
static void auth_put(sg_daemon_t *d, sg_http_req_t *req, const char *name, bool replace) {
  cleanup_json json_t *j = sg_api_read_json(req);
  if (!j)
    return;
  const char *key;
  json_t *v;
  json_object_foreach(j, key, v) {
    if (strcmp(key, "name") && strcmp(key, "registry") && strcmp(key, "username") && strcmp(key, "password"))
      return sg_http_send_error(req, 422, "invalid_field", "unknown field", key);
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v) ||
        !printable(json_string_value(v)) || json_string_length(v) > MAX_SECRET)
      return sg_http_send_error(req, 422, "invalid_field", "must be a string of printable characters", key);
  }
  const char *bname = json_string_value(json_object_get(j, "name"));
  if (name && bname && strcmp(name, bname))
    return sg_http_send_error(req, 422, "invalid_field", "does not match the name in the path", "name");
  if (!name)
    name = bname;
  if (!name || !sg_name_valid(name))
    return sg_http_send_error(req, 422, "invalid_field", "must be a DNS label: 1-63 of [a-z0-9-]", "name");
  const char *registry = json_string_value(json_object_get(j, "registry"));
  const char *user = json_string_value(json_object_get(j, "username"));
  const char *pass = json_string_value(json_object_get(j, "password"));
  if (!registry || !*registry || strchr(registry, '/'))
    return sg_http_send_error(req, 422, "invalid_field", "is required: the registry host[:port], e.g. \"ghcr.io\"",
                              "registry");
  if (!user || !*user)
    return sg_http_send_error(req, 422, "invalid_field", "is required", "username");
  if (!pass || !*pass)
    return sg_http_send_error(req, 422, "invalid_field", "is required (password or token)", "password");
  auth_job_t *job = xcalloc(1, sizeof(*job));
  job->put = true;
  job->replace = replace;
  job->name = xstrdup(name);
  job->registry = xstrdup(registry);
  job->user = xstrdup(user);
  job->pass = xstrdup(pass);
  job->now = sg_wall_ms();
  auth_submit(d, req, job);
}

/* The endpoints whose spec names registry auth `name`, as "\"a\", \"b\""
 * (a new string), or NULL when none does. */
static char *auth_users(sg_daemon_t *d, const char *name) {
  sg_strbuf_t b = SG_STRBUF_INIT;
  bool any = false;
  sg_endpoint_t *ep;
  TAILQ_FOREACH(ep, &d->endpoints, link) {
    if (ep->spec->registry_auth && !strcmp(ep->spec->registry_auth, name)) {
      sg_strbuf_appendf(&b, "%s\"%s\"", any ? ", " : "", ep->name);
      any = true;
    }
  }
  if (!any)
    return NULL;
  return sg_strbuf_steal(&b);
}

void sg_api_registry_auths(sg_daemon_t *d, sg_http_req_t *req, const char *name) {
  cleanup_error sg_error_t *err = NULL;
  if (!name) {
    if (sg_http_method_is(req, "POST"))
      return auth_put(d, req, NULL, false);
    if (!sg_http_method_is(req, "GET"))
      return sg_http_method_not_allowed(req, "GET, POST");
    json_t *arr = json_array();
    sg_daemon_auth_each(d, add_auth, arr);
    return sg_http_send_json(req, 200, json_pack("{s:o}", "registry_auths", arr));
  }
  if (sg_http_method_is(req, "PUT"))
    return auth_put(d, req, name, true);
  if (sg_http_method_is(req, "DELETE")) {
    cleanup_free char *users = auth_users(d, name);
    if (users) {
      cleanup_free char *msg =
          xasprintf("registry auth \"%s\" is used by endpoint(s) %s: change or delete them first", name, users);
      return sg_http_send_error(req, 409, "in_use", msg, NULL);
    }
    auth_job_t *job = xcalloc(1, sizeof(*job));
    job->name = xstrdup(name);
    return auth_submit(d, req, job);
  }
  if (!sg_http_method_is(req, "GET"))
    return sg_http_method_not_allowed(req, "GET, PUT, DELETE");
  sg_registry_auth_record_t rec;
  if (sg_daemon_auth_get(d, name, &rec, &err) < 0)
    return sg_http_send_sg_error(req, err);
  sg_http_send_json(req, 200, auth_json(&rec));
}
