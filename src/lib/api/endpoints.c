/* /v1/endpoints: create, list, get, replace and delete endpoint specs.
 * The store is written first; live state changes only once it succeeded, so
 * a rejected or failed request leaves both as they were. */

#include "api-internal.h"
#include "logs/logs.h"
#include "sgpu/util.h"

static char *spec_text(const sg_spec_t *spec) {
  json_t *j = sg_spec_to_json(spec);
  char *text = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(j);
  return text;
}

static void create(sg_daemon_t *d, sg_http_req_t *req) {
  cleanup_json json_t *body = sg_api_read_json(req);
  if (!body)
    return;
  cleanup_error sg_error_t *err = NULL;
  sg_daemon_default_runtime(d, body);
  cleanup_spec sg_spec_t *spec = sg_spec_from_json(body, &err);
  if (!spec)
    return sg_http_send_sg_error(req, err);
  if (sg_daemon_find_endpoint(d, spec->name)) {
    cleanup_free char *msg = xasprintf("an endpoint named \"%s\" exists already", spec->name);
    return sg_http_send_error(req, 409, "conflict", msg, "name");
  }
  cleanup_free char *text = spec_text(spec);
  int64_t now = sg_wall_ms();
  sg_endpoint_record_t rec = {spec->name, text, 1, now, now};
  if (sg_store_endpoint_insert(d->store, &rec, &err) < 0)
    return sg_http_send_sg_error(req, err);
  sg_endpoint_t *ep = sg_endpoint_new(d, steal_pointer(&spec), 1, now, now);
  sg_logs_event(d, ep->name, NULL, "endpoint created (version 1)");
  sg_http_send_json(req, 201, sg_endpoint_to_json(ep));
}

static void list(sg_daemon_t *d, sg_http_req_t *req) {
  json_t *arr = json_array();
  sg_endpoint_t *ep;
  TAILQ_FOREACH(ep, &d->endpoints, link) json_array_append_new(arr, sg_endpoint_to_json(ep));
  sg_http_send_json(req, 200, json_pack("{s:o}", "endpoints", arr));
}

void sg_api_endpoints(sg_daemon_t *d, sg_http_req_t *req) {
  if (sg_http_method_is(req, "GET"))
    return list(d, req);
  if (sg_http_method_is(req, "POST"))
    return create(d, req);
  sg_http_method_not_allowed(req, "GET, POST");
}

static void replace(sg_daemon_t *d, sg_http_req_t *req, sg_endpoint_t *ep) {
  cleanup_json json_t *body = sg_api_read_json(req);
  if (!body)
    return;
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
  if (!spec)
    return sg_http_send_sg_error(req, err);
  cleanup_free char *text = spec_text(spec);
  int64_t now = sg_wall_ms();
  sg_endpoint_record_t rec = {spec->name, text, ep->version + 1, ep->created_wall, now};
  if (sg_store_endpoint_update(d->store, &rec, &err) < 0)
    return sg_http_send_sg_error(req, err);
  sg_endpoint_update(ep, steal_pointer(&spec), ep->version + 1, now);
  sg_http_send_json(req, 200, sg_endpoint_to_json(ep));
}

static void delete (sg_daemon_t *d, sg_http_req_t *req, sg_endpoint_t *ep) {
  cleanup_error sg_error_t *err = NULL;
  if (sg_store_endpoint_delete(d->store, ep->name, &err) < 0)
    return sg_http_send_sg_error(req, err);
  sg_logs_event(d, ep->name, NULL, "endpoint deleted");
  json_t *answer = json_pack("{s:s, s:b}", "name", ep->name, "deleted", 1);
  sg_endpoint_delete(ep);
  sg_http_send_json(req, 200, answer);
}

void sg_api_endpoint(sg_daemon_t *d, sg_http_req_t *req, const char *name) {
  bool get = sg_http_method_is(req, "GET"), put = sg_http_method_is(req, "PUT");
  if (!get && !put && !sg_http_method_is(req, "DELETE"))
    return sg_http_method_not_allowed(req, "GET, PUT, DELETE");
  sg_endpoint_t *ep = sg_daemon_find_endpoint(d, name);
  if (!ep) {
    cleanup_free char *msg = xasprintf("no endpoint named \"%s\"", name);
    return sg_http_send_error(req, 404, "not_found", msg, NULL);
  }
  if (get)
    return sg_http_send_json(req, 200, sg_endpoint_to_json(ep));
  if (put)
    return replace(d, req, ep);
  delete (d, req, ep);
}
