/* /v1/endpoints: create, list, get, replace and delete endpoint specs.
 *
 * A write is checked on the loop, runs on the store thread and is applied to
 * live state on the loop once the store took it (then answered): a rejected
 * or failed request leaves both as they were. The store thread runs writes in
 * the order they were accepted and their completions come back in that order,
 * so live state follows the store write by write. Writes in flight are
 * counted per name (`d->ep_writes`): a second create of a name whose create
 * is in flight is a conflict, and each update takes the next version after
 * the last one queued, so versions stay unique and in order. A client that
 * leaves before the answer is forgotten; its write still applies. */

#include "auth/keys.h"
#include "api-internal.h"
#include "logs/logs.h"
#include "sgpu/util.h"

/* The writes in flight for one endpoint name. */
struct sg_ep_write {
  LIST_ENTRY(sg_ep_write) link;
  char *name;
  int writes;    /* queued or running */
  bool creating; /* a create is among them */
  int version;   /* what the last queued create or update makes the version */
};

static struct sg_ep_write *writes_hold(sg_daemon_t *d, const char *name, int version) {
  struct sg_ep_write *w;
  LIST_FOREACH(w, &d->ep_writes, link) {
    if (!strcmp(w->name, name)) {
      w->writes++;
      return w;
    }
  }
  w = xcalloc(1, sizeof(*w));
  w->name = xstrdup(name);
  w->writes = 1;
  w->version = version;
  LIST_INSERT_HEAD(&d->ep_writes, w, link);
  return w;
}

static bool creating(sg_daemon_t *d, const char *name) {
  struct sg_ep_write *w;
  LIST_FOREACH(w, &d->ep_writes, link) {
    if (!strcmp(w->name, name))
      return w->creating;
  }
  return false;
}

static void writes_release(struct sg_ep_write *w) {
  if (--w->writes > 0)
    return;
  LIST_REMOVE(w, link);
  free(w->name);
  free(w);
}

/* OP_ROLLBACK writes nothing: the store thread reads the kept version
 * `from`, and the loop then puts it as a PUT would (update_to): the same
 * checks against this daemon, and a new version. */
enum op { OP_CREATE, OP_UPDATE, OP_DELETE, OP_ROLLBACK };

typedef struct ep_job {
  sg_daemon_t *d;
  sg_http_req_t *req; /* NULL once the client went away */
  struct sg_ep_write *w;
  enum op op;
  char *name;
  sg_spec_t *spec; /* create, update */
  char *text;      /* the spec as stored */
  int version;
  int from; /* rollback: the version whose spec it takes */
  int64_t created, updated;
  sg_error_t *err; /* from the store thread */
} ep_job_t;

static void job_free(ep_job_t *j) {
  sg_spec_free(j->spec);
  free(j->text);
  free(j->name);
  sg_error_free(j->err);
  free(j);
}

static char *spec_text(const sg_spec_t *spec) {
  json_t *j = sg_spec_to_json(spec);
  char *text = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(j);
  return text;
}

/* Store thread: the secrets and named volumes the spec names are stored.
 * The loop checked them against its copies, which a delete changes only once
 * it is done; here, in the order of the store's writes, a delete accepted
 * before this write has run. */
static bool names_stored(sg_store_t *store, ep_job_t *j) {
  const sg_spec_t *spec = j->spec;
  for (size_t i = 0; i < spec->n_env; i++) {
    const char *secret = spec->env_secrets[i];
    int r = secret ? sg_store_named_exists(store, SG_STORE_SECRETS, secret, &j->err) : 1;
    if (r < 0)
      return false;
    if (r == 0) {
      cleanup_free char *field = xasprintf("env.%s", spec->env_keys[i]);
      sg_make_field_error(&j->err, field, "no secret named \"%s\" (it was deleted meanwhile)", secret);
      return false;
    }
  }
  for (size_t i = 0; i < spec->n_volumes; i++) {
    const char *volume = spec->volumes[i].name;
    int r = volume ? sg_store_named_exists(store, SG_STORE_VOLUMES, volume, &j->err) : 1;
    if (r < 0)
      return false;
    if (r == 0) {
      cleanup_free char *field = xasprintf("volumes[%zu].name", i);
      sg_make_field_error(&j->err, field, "no volume named \"%s\" (it was deleted meanwhile)", volume);
      return false;
    }
  }
  return true;
}

/* Store thread. */
static void job_work(sg_store_t *store, void *data) {
  ep_job_t *j = data;
  if (j->op == OP_ROLLBACK) {
    j->text = sg_store_endpoint_version(store, j->name, j->from, &j->err);
    return;
  }
  if ((j->op == OP_CREATE || j->op == OP_UPDATE) && !names_stored(store, j))
    return;
  sg_endpoint_record_t rec = {j->name, j->text, j->version, j->created, j->updated};
  if (j->op == OP_CREATE)
    sg_store_endpoint_insert(store, &rec, &j->err);
  else if (j->op == OP_UPDATE || j->op == OP_ROLLBACK)
    sg_store_endpoint_update(store, &rec, &j->err);
  else
    sg_store_endpoint_delete(store, j->name, &j->err);
}

static void not_found(sg_http_req_t *req, const char *name) {
  cleanup_free char *msg = xasprintf("no endpoint named \"%s\"", name);
  sg_http_send_error(req, 404, "not_found", msg, NULL);
}

static void update_to(sg_daemon_t *d, sg_http_req_t *req, sg_endpoint_t *ep, json_t *body);

/* Loop: the kept spec of a rollback is read; it is put as a PUT would be. */
static void rollback_to(ep_job_t *j, sg_endpoint_t *ep) {
  sg_http_req_t *req = j->req;
  if (!req) {
    job_free(j);
    return;
  }
  if (!ep) {
    not_found(req, j->name);
    job_free(j);
    return;
  }
  cleanup_json json_t *body = json_loads(j->text, 0, NULL);
  if (!json_is_object(body))
    sg_http_send_error(req, 500, "store_error", "the kept spec is not a JSON object", NULL);
  else
    update_to(j->d, req, ep, body);
  job_free(j);
}

/* Loop: applies a stored write to live state and answers. */
static void job_done(void *data) {
  ep_job_t *j = data;
  sg_daemon_t *d = j->d;
  sg_http_req_t *req = j->req;
  if (req)
    sg_http_set_close_cb(req, NULL, NULL);
  if (j->op == OP_CREATE)
    j->w->creating = false;
  if (j->w)
    writes_release(j->w);
  sg_endpoint_t *ep = j->op == OP_CREATE ? NULL : sg_daemon_find_endpoint(d, j->name);
  if (j->op == OP_ROLLBACK && !j->err)
    return rollback_to(j, ep);
  if (j->err && j->err->status == SG_ENOTFOUND && req && !(j->op == OP_ROLLBACK && ep))
    not_found(req, j->name);
  else if (j->err && req)
    sg_http_send_sg_error(req, j->err);
  if (j->err) {
    job_free(j);
    return;
  }
  if (j->op == OP_CREATE) {
    ep = sg_endpoint_new(d, steal_pointer(&j->spec), j->version, j->created, j->updated);
    sg_logs_event(d, ep->name, NULL, "endpoint created (version 1)");
    if (req)
      sg_http_send_json(req, 201, sg_endpoint_to_json(ep));
  } else if (!ep) {
    /* Not reached: live state follows the store, which had the row. */
    if (req)
      not_found(req, j->name);
  } else if (j->op == OP_UPDATE || j->op == OP_ROLLBACK) {
    bool restart = sg_endpoint_update(ep, steal_pointer(&j->spec), j->version, j->updated);
    if (req) {
      json_t *answer = sg_endpoint_to_json(ep);
      json_object_set_new(answer, "workers_restart", json_boolean(restart));
      sg_http_send_json(req, 200, answer);
    }
  } else {
    sg_logs_event(d, ep->name, NULL, "endpoint deleted");
    json_t *answer = json_pack("{s:s, s:b}", "name", ep->name, "deleted", 1);
    sg_endpoint_delete(ep);
    if (req)
      sg_http_send_json(req, 200, answer);
    else
      json_decref(answer);
  }
  job_free(j);
}

static void job_req_closed(sg_http_req_t *req, void *arg) { ((ep_job_t *)arg)->req = NULL; }

/* Queues the write j (its op, name and fields set) behind the others. */
static void submit(sg_daemon_t *d, sg_http_req_t *req, ep_job_t *j) {
  j->d = d;
  j->req = req;
  sg_http_set_close_cb(req, job_req_closed, j);
  sg_store_thread_submit(d->store_thread, job_work, job_done, j);
}

static void create(sg_daemon_t *d, sg_http_req_t *req) {
  cleanup_json json_t *body = sg_api_read_json(req);
  if (!body)
    return;
  cleanup_error sg_error_t *err = NULL;
  sg_daemon_default_runtime(d, body);
  cleanup_spec sg_spec_t *spec = sg_spec_from_json(body, &err);
  if (!spec || sg_api_validate_spec(d, spec, &err) < 0)
    return sg_http_send_sg_error(req, err);
  if (sg_daemon_find_endpoint(d, spec->name) || creating(d, spec->name)) {
    cleanup_free char *msg = xasprintf("an endpoint named \"%s\" exists already", spec->name);
    return sg_http_send_error(req, 409, "conflict", msg, "name");
  }
  ep_job_t *j = xcalloc(1, sizeof(*j));
  j->op = OP_CREATE;
  j->name = xstrdup(spec->name);
  j->text = spec_text(spec);
  j->version = 1;
  j->created = j->updated = sg_wall_ms();
  j->w = writes_hold(d, spec->name, 1);
  j->w->creating = true;
  j->spec = steal_pointer(&spec);
  submit(d, req, j);
}

static void list(sg_daemon_t *d, sg_http_req_t *req) {
  json_t *arr = json_array();
  sg_endpoint_t *ep;
  TAILQ_FOREACH(ep, &d->endpoints, link) {
    if (sg_keys_endpoint_visible(d, req, ep->name))
      json_array_append_new(arr, sg_endpoint_to_json(ep));
  }
  sg_http_send_json(req, 200, json_pack("{s:o}", "endpoints", arr));
}

void sg_api_endpoints(sg_daemon_t *d, sg_http_req_t *req) {
  if (sg_http_method_is(req, "GET"))
    return list(d, req);
  if (sg_http_method_is(req, "POST"))
    return create(d, req);
  sg_http_method_not_allowed(req, "GET, POST");
}

/* PUT and PATCH: body is the whole new spec. */
static void update_to(sg_daemon_t *d, sg_http_req_t *req, sg_endpoint_t *ep, json_t *body) {
  json_t *name = json_object_get(body, "name");
  if (!name)
    json_object_set_new(body, "name", json_string(ep->name));
  else if (json_is_string(name) && strcmp(json_string_value(name), ep->name)) {
    cleanup_free char *msg = xasprintf("the body names \"%s\", the path \"%s\"; an endpoint cannot be renamed",
                                       json_string_value(name), ep->name);
    return sg_http_send_error(req, 409, "conflict", msg, "name");
  }
  cleanup_error sg_error_t *err = NULL;
  sg_daemon_default_runtime(d, body);
  cleanup_spec sg_spec_t *spec = sg_spec_from_json(body, &err);
  if (!spec || sg_api_validate_spec(d, spec, &err) < 0)
    return sg_http_send_sg_error(req, err);
  ep_job_t *j = xcalloc(1, sizeof(*j));
  j->op = OP_UPDATE;
  j->name = xstrdup(ep->name);
  j->text = spec_text(spec);
  j->w = writes_hold(d, ep->name, ep->version);
  j->version = ++j->w->version;
  j->created = ep->created_wall;
  j->updated = sg_wall_ms();
  j->spec = steal_pointer(&spec);
  submit(d, req, j);
}

static void replace(sg_daemon_t *d, sg_http_req_t *req, sg_endpoint_t *ep) {
  cleanup_json json_t *body = sg_api_read_json(req);
  if (body)
    update_to(d, req, ep, body);
}

/* PATCH: a JSON merge patch (RFC 7386) over the spec as GET shows it (the
 * last one applied), then the same checks and write as PUT. */
static void patch(sg_daemon_t *d, sg_http_req_t *req, sg_endpoint_t *ep) {
  cleanup_json json_t *body = sg_api_read_json(req);
  if (!body)
    return;
  cleanup_json json_t *spec = sg_spec_to_json(ep->spec);
  sg_json_merge_patch(spec, body);
  update_to(d, req, ep, spec);
}

/* POST /v1/endpoints/{name}/rollback {"version": N}: a new version with
 * the spec of kept version N (read on the store thread, then put and
 * checked as a PUT is). */
void sg_api_endpoint_rollback(sg_daemon_t *d, sg_http_req_t *req, sg_endpoint_t *ep) {
  if (!sg_http_method_is(req, "POST"))
    return sg_http_method_not_allowed(req, "POST");
  cleanup_json json_t *body = sg_api_read_json(req);
  if (!body)
    return;
  json_t *v = json_object_get(body, "version");
  if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > INT32_MAX ||
      json_object_size(body) != 1)
    return sg_http_send_error(req, 422, "invalid_field", "the body must be {\"version\": N}, N a version number",
                              "version");
  ep_job_t *j = xcalloc(1, sizeof(*j));
  j->op = OP_ROLLBACK;
  j->from = (int)json_integer_value(v);
  j->name = xstrdup(ep->name);
  submit(d, req, j);
}

static void delete (sg_daemon_t *d, sg_http_req_t *req, sg_endpoint_t *ep) {
  ep_job_t *j = xcalloc(1, sizeof(*j));
  j->op = OP_DELETE;
  j->name = xstrdup(ep->name);
  j->w = writes_hold(d, ep->name, ep->version);
  submit(d, req, j);
}

void sg_api_endpoint(sg_daemon_t *d, sg_http_req_t *req, const char *name) {
  bool get = sg_http_method_is(req, "GET"), put = sg_http_method_is(req, "PUT");
  bool patching = sg_http_method_is(req, "PATCH");
  if (!get && !put && !patching && !sg_http_method_is(req, "DELETE"))
    return sg_http_method_not_allowed(req, "GET, PUT, PATCH, DELETE");
  sg_endpoint_t *ep = sg_daemon_find_endpoint(d, name);
  if (!ep)
    return not_found(req, name);
  if (get)
    return sg_http_send_json(req, 200, sg_endpoint_to_json(ep));
  if (put)
    return replace(d, req, ep);
  if (patching)
    return patch(d, req, ep);
  delete (d, req, ep);
}
