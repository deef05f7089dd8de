/* /v1/secrets and /v1/secrets/{name}: values go in (PUT) and never come
 * out; every answer carries the name and dates only. A value is sealed here
 * on the loop (one AES-GCM pass over at most SG_SECRET_MAX_VALUE bytes),
 * written by the store thread, and the loop's copy (daemon/secrets.c)
 * changes in done() when the write succeeded, so both change in the same
 * order. */
#include "api-internal.h"
#include "sgpu/log.h"
#include "sgpu/secrets-store.h"
#include "sgpu/util.h"

/* The most bytes a secret's value may hold. */
#define SG_SECRET_MAX_VALUE (64 * 1024)

static json_t *secret_json(const sg_secret_record_t *r) {
  char t1[32], t2[32];
  return json_pack("{s:s, s:s, s:s}", "name", r->name, "created_at", sg_format_time(r->created_ms, t1, sizeof(t1)),
                   "updated_at", sg_format_time(r->updated_ms, t2, sizeof(t2)));
}

static void add_secret(void *ud, const sg_secret_record_t *r) { json_array_append_new(ud, secret_json(r)); }

typedef struct secret_job {
  sg_daemon_t *d;
  sg_http_req_t *req; /* NULL once the client went away */
  bool put, created;
  char *name;
  unsigned char *sealed;
  size_t sealed_len;
  int64_t now;
  sg_error_t *err;
} secret_job_t;

static void job_free(secret_job_t *j) {
  free(j->name);
  free(j->sealed);
  sg_error_free(j->err);
  free(j);
}

static void job_work(sg_store_t *store, void *data) {
  secret_job_t *j = data;
  if (!j->put) {
    sg_store_secret_delete(store, j->name, &j->err);
    return;
  }
  sg_secret_record_t rec = {j->name, j->sealed, j->sealed_len, j->now, j->now};
  sg_store_secret_put(store, &rec, &j->err);
}

static void job_done(void *data) {
  secret_job_t *j = data;
  sg_http_req_t *req = j->req;
  if (req)
    sg_http_set_close_cb(req, NULL, NULL);
  if (j->err) {
    if (req && j->err->status == SG_EEXIST) /* an endpoint write before it referenced it */
      sg_http_send_error(req, 409, "in_use", j->err->message, NULL);
    else if (req)
      sg_http_send_sg_error(req, j->err);
  } else if (j->put) {
    sg_secret_record_t rec = {j->name, j->sealed, j->sealed_len, j->now, j->now}, now;
    sg_daemon_secret_set(j->d, &rec);
    sg_info("secret %s %s", j->name, j->created ? "created" : "replaced");
    if (req && sg_daemon_secret_get(j->d, j->name, &now, NULL) == 0)
      sg_http_send_json(req, j->created ? 201 : 200, secret_json(&now));
  } else {
    sg_daemon_secret_forget(j->d, j->name);
    sg_info("secret %s deleted", j->name);
    if (req)
      sg_http_send_json(req, 200, json_pack("{s:s, s:b}", "name", j->name, "deleted", 1));
  }
  job_free(j);
}

static void req_closed(sg_http_req_t *req, void *arg) { ((secret_job_t *)arg)->req = NULL; }

static void submit(sg_daemon_t *d, sg_http_req_t *req, secret_job_t *j) {
  j->d = d;
  j->req = req;
  sg_http_set_close_cb(req, req_closed, j);
  sg_store_thread_submit(d->store_thread, job_work, job_done, j);
}

static void put(sg_daemon_t *d, sg_http_req_t *req, const char *name) {
  cleanup_json json_t *j = sg_api_read_json(req);
  if (!j)
    return;
  const char *key;
  json_t *v;
  json_object_foreach(j, key, v) {
    if (strcmp(key, "value"))
      return sg_http_send_error(req, 422, "invalid_field", "unknown field (a secret has only \"value\")", key);
  }
  json_t *value = json_object_get(j, "value");
  if (!json_is_string(value) || strlen(json_string_value(value)) != json_string_length(value))
    return sg_http_send_error(req, 422, "invalid_field", "is required: a string without NUL bytes", "value");
  if (json_string_length(value) > SG_SECRET_MAX_VALUE)
    return sg_http_send_error(req, 422, "invalid_field", "must be at most 65536 bytes", "value");
  cleanup_error sg_error_t *err = NULL;
  cleanup_free char *ad = sg_secret_ad(name);
  secret_job_t *job = xcalloc(1, sizeof(*job));
  if (sg_seal(d->secret_key, ad, json_string_value(value), json_string_length(value), &job->sealed, &job->sealed_len,
              &err) < 0) {
    job_free(job);
    return sg_http_send_sg_error(req, err);
  }
  sg_secret_record_t rec;
  job->put = true;
  job->created = sg_daemon_secret_get(d, name, &rec, NULL) < 0;
  job->name = xstrdup(name);
  job->now = sg_wall_ms();
  submit(d, req, job);
}

/* The endpoints whose spec's env names secret `name`, as "\"a\", \"b\""
 * (a new string), or NULL when none does. */
static char *users(sg_daemon_t *d, const char *name) {
  sg_strbuf_t b = SG_STRBUF_INIT;
  bool any = false;
  sg_endpoint_t *ep;
  TAILQ_FOREACH(ep, &d->endpoints, link) {
    for (size_t i = 0; i < ep->spec->n_env; i++) {
      if (ep->spec->env_secrets[i] && !strcmp(ep->spec->env_secrets[i], name)) {
        sg_strbuf_appendf(&b, "%s\"%s\" (env.%s)", any ? ", " : "", ep->name, ep->spec->env_keys[i]);
        any = true;
        break;
      }
    }
  }
  if (!any)
    return NULL;
  return sg_strbuf_steal(&b);
}

void sg_api_secrets(sg_daemon_t *d, sg_http_req_t *req, const char *name) {
  cleanup_error sg_error_t *err = NULL;
  if (!name) {
    if (!sg_http_method_is(req, "GET"))
      return sg_http_method_not_allowed(req, "GET");
    json_t *arr = json_array();
    sg_daemon_secret_each(d, add_secret, arr);
    return sg_http_send_json(req, 200, json_pack("{s:o}", "secrets", arr));
  }
  if (!sg_name_valid(name))
    return sg_http_send_error(req, 422, "invalid_field", "must be a DNS label: 1-63 of [a-z0-9-]", "name");
  if (sg_http_method_is(req, "PUT"))
    return put(d, req, name);
  if (sg_http_method_is(req, "DELETE")) {
    sg_secret_record_t rec;
    if (sg_daemon_secret_get(d, name, &rec, &err) < 0)
      return sg_http_send_sg_error(req, err);
    cleanup_free char *who = users(d, name);
    if (who) {
      cleanup_free char *msg =
          xasprintf("secret \"%s\" is used by endpoint(s) %s: change or delete them first", name, who);
      return sg_http_send_error(req, 409, "in_use", msg, NULL);
    }
    secret_job_t *job = xcalloc(1, sizeof(*job));
    job->name = xstrdup(name);
    return submit(d, req, job);
  }
  if (!sg_http_method_is(req, "GET"))
    return sg_http_method_not_allowed(req, "GET, PUT, DELETE");
  sg_secret_record_t rec;
  if (sg_daemon_secret_get(d, name, &rec, &err) < 0)
    return sg_http_send_sg_error(req, err);
  sg_http_send_json(req, 200, secret_json(&rec));
}
