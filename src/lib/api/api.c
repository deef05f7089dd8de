/* The control API's routes: /healthz and the console's static files
 * (/, /console/..., public), and the /v1 table (the key and its scope are
 * checked by the router, http/router.c, before any of these run), with the
 * JSON body reader its handlers use. */
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "api-internal.h"
#include "gateway/jobs.h"
#include "logs/logs.h"
#include "meter/meter-internal.h"
#include "sgpu/pool.h"
#include "sgpu/util.h"

json_t *sg_api_read_json(sg_http_req_t *req) {
  struct evbuffer *buf = sg_http_body(req);
  size_t len = evbuffer_get_length(buf);
  if (len > SG_API_MAX_BODY) {
    sg_http_send_error(req, 413, "too_large", "request body is over the 1 MiB limit of the control API", NULL);
    return NULL;
  }
  if (len == 0) {
    sg_http_send_error(req, 400, "invalid_json", "request body is empty; a JSON object is expected", NULL);
    return NULL;
  }
  const char *data = (const char *)evbuffer_pullup(buf, -1);
  json_error_t jerr;
  json_t *j = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!j) {
    cleanup_free char *msg =
        xasprintf("body is not valid JSON: line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
    sg_http_send_error(req, 400, "invalid_json", msg, NULL);
    return NULL;
  }
  if (!json_is_object(j)) {
    json_decref(j);
    sg_http_send_error(req, 400, "invalid_json", "body must be a JSON object", NULL);
    return NULL;
  }
  return j;
}

static void not_found(sg_http_req_t *req, const char *what) { sg_http_send_error(req, 404, "not_found", what, NULL); }

/* ---- the /v1 routes: one row per (methods, pattern), each with its scope ---- */

typedef void (*v1_fn)(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a);

static void endpoints(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) { sg_api_endpoints(d, req); }
static void endpoint(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) {
  sg_api_endpoint(d, req, a->endpoint);
}

/* The endpoint of a /v1/endpoints/{endpoint}/... route, or NULL after 404. */
static sg_endpoint_t *endpoint_of(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) {
  sg_endpoint_t *ep = sg_daemon_find_endpoint(d, a->endpoint);
  if (!ep)
    not_found(req, "no such endpoint");
  return ep;
}

static void logs(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) {
  sg_endpoint_t *ep = endpoint_of(d, req, a);
  if (ep)
    sg_logs_handle(d, req, ep->name);
}

#define SERIES_FINE_MS 3600000LL       /* the 5 s ring: one hour */
#define SERIES_MAX_MS (7 * 86400000LL) /* the 10 min ring: seven days */

/* ?range=DURATION (default 1h, 1s..7d): up to an hour from the 5 s ring,
 * longer from the 10 min one. */
static void series(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) {
  sg_endpoint_t *ep = endpoint_of(d, req, a);
  if (!ep)
    return;
  int64_t range = SERIES_FINE_MS;
  const char *query = sg_http_query(req);
  if (query && *query) {
    struct evkeyvalq params;
    TAILQ_INIT(&params);
    if (evhttp_parse_query_str(query, &params) < 0)
      return sg_http_send_error(req, 400, "invalid_query", "the query string is malformed", NULL);
    const char *v = evhttp_find_header(&params, "range");
    if (v)
      range = sg_parse_duration_ms(v);
    evhttp_clear_headers(&params);
  }
  if (range < 1000 || range > SERIES_MAX_MS)
    return sg_http_send_error(req, 400, "invalid_query", "range: a duration from 1s to 7d, such as 15m, 1h, 24h or 7d",
                              "range");
  sg_http_send_json(req, 200, sg_series_to_json(ep, sg_wall_ms() - range, range > SERIES_FINE_MS));
}

static void versions(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) {
  sg_endpoint_t *ep = endpoint_of(d, req, a);
  if (ep)
    sg_api_endpoint_versions(d, req, ep);
}

static void rollback(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) {
  sg_endpoint_t *ep = endpoint_of(d, req, a);
  if (ep)
    sg_api_endpoint_rollback(d, req, ep);
}

static void workers(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) {
  sg_endpoint_t *ep = endpoint_of(d, req, a);
  if (ep)
    sg_api_workers(d, req, ep, a->n_params > 1 ? a->param[1] : NULL);
}

static void jobs(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) {
  sg_endpoint_t *ep = endpoint_of(d, req, a);
  if (ep)
    sg_jobs_list(d, req, ep);
}

static void images(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) { sg_api_images(d, req); }
static void image(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) { sg_api_image(d, req, a->param[0]); }
static void registry_auths(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) {
  sg_api_registry_auths(d, req, a->n_params ? a->param[0] : NULL);
}
static void secrets(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) {
  sg_api_secrets(d, req, a->n_params ? a->param[0] : NULL);
}
static void volumes(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) {
  sg_api_volumes(d, req, a->n_params ? a->param[0] : NULL);
}
static void nodes(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) { sg_api_nodes(d, req); }
static void usage(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) { sg_api_usage(d, req); }
static void keys_list(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) { sg_api_keys_list(d, req); }
static void keys_create(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) { sg_api_keys_create(d, req); }
static void keys_revoke(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) {
  sg_api_keys_revoke(d, req, a->param[0]);
}

/* docs/openapi.yaml, built into sgpud (scripts/embed-data.py). */
extern const char sg_openapi_yaml[];
extern const size_t sg_openapi_yaml_len;

static void openapi(sg_daemon_t *d, sg_http_req_t *req, const sg_route_args_t *a) {
  sg_http_reply(req, 200, "application/yaml", sg_openapi_yaml, sg_openapi_yaml_len);
}

#define GET SG_HTTP_GET
#define POST SG_HTTP_POST
#define PUT SG_HTTP_PUT
#define PATCH SG_HTTP_PATCH
#define DELETE SG_HTTP_DELETE
#define ADMIN SG_SCOPE_ADMIN
#define DEPLOY SG_SCOPE_DEPLOY
#define READ SG_SCOPE_READ
#define INVOKE SG_SCOPE_INVOKE
#define LISTS SG_ROUTE_LISTS_ENDPOINTS

/* Every /v1 route. A new route is a row here (methods, pattern, the scopes
 * that grant it besides admin, flags, handler) and a row in the route x
 * scope table of tests/integration/test_keys.py. Bodies are buffered
 * (SG_API_MAX_BODY). */
static const struct v1_route {
  unsigned methods;
  const char *path;
  unsigned scope;
  unsigned flags;
  v1_fn fn;
} v1_routes[] = {
    {GET, "/v1/endpoints", READ | DEPLOY, LISTS, endpoints},
    {POST, "/v1/endpoints", DEPLOY, 0, endpoints},
    {GET, "/v1/endpoints/{endpoint}", READ | DEPLOY, 0, endpoint},
    {PUT | PATCH | DELETE, "/v1/endpoints/{endpoint}", DEPLOY, 0, endpoint},
    {GET, "/v1/endpoints/{endpoint}/logs", READ | DEPLOY, 0, logs},
    {GET, "/v1/endpoints/{endpoint}/series", READ | DEPLOY, 0, series},
    {GET, "/v1/endpoints/{endpoint}/versions", READ | DEPLOY, 0, versions},
    {POST, "/v1/endpoints/{endpoint}/rollback", DEPLOY, 0, rollback},
    {GET, "/v1/endpoints/{endpoint}/workers", READ | DEPLOY, 0, workers},
    {DELETE, "/v1/endpoints/{endpoint}/workers/{id}", DEPLOY, 0, workers},
    {GET, "/v1/endpoints/{endpoint}/jobs", READ | DEPLOY, 0, jobs},
    {GET, "/v1/images", READ | DEPLOY, 0, images},
    {POST, "/v1/images", DEPLOY, 0, images},
    {DELETE, "/v1/images/{ref*}", DEPLOY, 0, image},
    {GET | POST, "/v1/registry-auths", DEPLOY, 0, registry_auths},
    {GET | PUT | DELETE, "/v1/registry-auths/{name}", DEPLOY, 0, registry_auths},
    {GET, "/v1/secrets", DEPLOY, 0, secrets},
    {GET | PUT | DELETE, "/v1/secrets/{name}", DEPLOY, 0, secrets},
    {GET, "/v1/volumes", READ | DEPLOY, 0, volumes},
    {POST, "/v1/volumes", DEPLOY, 0, volumes},
    {GET, "/v1/volumes/{name}", READ | DEPLOY, 0, volumes},
    {DELETE, "/v1/volumes/{name}", DEPLOY, 0, volumes},
    {GET, "/v1/nodes", READ, 0, nodes},
    {GET, "/v1/usage", READ | DEPLOY, 0, usage},
    {GET, "/v1/api-keys", ADMIN, 0, keys_list},
    {POST, "/v1/api-keys", ADMIN, 0, keys_create},
    {DELETE, "/v1/api-keys/{name}", ADMIN, 0, keys_revoke},
    {GET, "/v1/openapi.yaml", READ | DEPLOY | INVOKE, 0, openapi},
};

/* POST /v1/volumes/{name}/files: the body (a tarball) is streamed, not
 * buffered; rest is "NAME/files". */
static sg_http_head_action_t volume_upload(void *d, sg_http_req_t *req, const char *rest) {
  char name[64];
  size_t n = strcspn(rest, "/");
  if (n == 0 || n >= sizeof(name)) {
    not_found(req, "no such volume");
    return SG_HTTP_DONE;
  }
  memcpy(name, rest, n);
  name[n] = '\0';
  return sg_api_volume_upload(d, req, name);
}

static void v1(void *d, sg_http_req_t *req, const sg_route_args_t *a) {
  const struct v1_route *row = a->data;
  row->fn(d, req, a);
}

static sg_http_head_action_t healthz(void *ctx, sg_http_req_t *req, const char *rest) {
  (void)ctx, (void)rest;
  sg_http_send_json(req, 200, json_pack("{s:s}", "status", "ok"));
  return SG_HTTP_DONE;
}

static sg_http_head_action_t console(void *d, sg_http_req_t *req, const char *rest) {
  (void)rest;
  sg_console_handle(d, req); /* always true on the console's routes */
  return SG_HTTP_DONE;
}

void sg_api_routes(sg_router_t *r, sg_daemon_t *d) {
  /* Public: the health check and the console's files (they hold no data). */
  sg_router_add(r, &(sg_route_t){.path = "/healthz", .scope = SG_SCOPE_PUBLIC, .on_head = healthz, .ctx = d});
  sg_router_add(r, &(sg_route_t){.path = "/", .scope = SG_SCOPE_PUBLIC, .on_head = console, .ctx = d});
  sg_router_add(r, &(sg_route_t){.path = "/index.html", .scope = SG_SCOPE_PUBLIC, .on_head = console, .ctx = d});
  sg_router_add(
      r, &(sg_route_t){.path = "/console/", .prefix = true, .scope = SG_SCOPE_PUBLIC, .on_head = console, .ctx = d});
  for (size_t i = 0; i < SG_ARRAY_SIZE(v1_routes); i++) {
    const struct v1_route *row = &v1_routes[i];
    sg_router_add(r, &(sg_route_t){.path = row->path,
                                   .methods = row->methods,
                                   .scope = row->scope,
                                   .flags = row->flags,
                                   .on_request = v1,
                                   .ctx = d,
                                   .data = row});
  }
  /* The one /v1 route whose body is streamed (the route x scope test of
   * tests/integration/test_keys.py has its row too). */
  sg_router_add(r, &(sg_route_t){.path = "/v1/volumes/{name}/files",
                                 .methods = SG_HTTP_POST,
                                 .scope = SG_SCOPE_DEPLOY,
                                 .on_head = volume_upload,
                                 .ctx = d});
}
