/* The control API's routes: /healthz and the console's static files
 * (/, /console/..., public), and /v1 (the key is checked by the router,
 * http/router.c, before any of these run), with the /v1 dispatch and the
 * JSON body reader its handlers use. */
#include <event2/buffer.h>

#include "api-internal.h"
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

/* Splits path after prefix into at most n '/'-separated segments. Returns
 * the count, or -1 when there are more or one is empty. */
static int split(const char *path, char **seg, int n, char *storage, size_t cap) {
  snprintf(storage, cap, "%s", path);
  int count = 0;
  char *save = NULL;
  size_t len = strlen(storage);
  if (len > 0 && storage[len - 1] == '/')
    storage[len - 1] = '\0'; /* one trailing slash is tolerated */
  if (!*storage)
    return 0;
  if (strstr(storage, "//"))
    return -1;
  for (char *s = strtok_r(storage, "/", &save); s; s = strtok_r(NULL, "/", &save)) {
    if (count == n)
      return -1;
    seg[count++] = s;
  }
  return count;
}

static void not_found(sg_http_req_t *req, const char *what) { sg_http_send_error(req, 404, "not_found", what, NULL); }

static void route_v1(sg_daemon_t *d, sg_http_req_t *req, const char *rest) {
  char storage[1024];
  char *seg[4];
  if (!strncmp(rest, "images/", 7) && rest[7])
    return sg_api_image(d, req, rest + 7);
  if (strlen(rest) >= sizeof(storage)) {
    not_found(req, "no such route");
    return;
  }
  int n = split(rest, seg, 4, storage, sizeof(storage));
  bool get = sg_http_method_is(req, "GET");
  if (n == 1 && !strcmp(seg[0], "nodes")) {
    if (!get)
      return sg_http_method_not_allowed(req, "GET");
    return sg_api_nodes(d, req);
  }
  if (n == 1 && !strcmp(seg[0], "images"))
    return sg_api_images(d, req);
  if ((n == 1 || n == 2) && !strcmp(seg[0], "registry-auths"))
    return sg_api_registry_auths(d, req, n == 2 ? seg[1] : NULL);
  /* Volumes: POST volumes/{name}/files streams (v1_head), never buffered here. */
  if ((n == 1 || n == 2) && !strcmp(seg[0], "volumes"))
    return sg_api_volumes(d, req, n == 2 ? seg[1] : NULL);
  if (n == 3 && !strcmp(seg[0], "volumes") && !strcmp(seg[2], "files")) {
    if (sg_http_method_is(req, "POST")) /* a name v1_head did not take: no volume has it */
      return not_found(req, "no such volume");
    return sg_http_method_not_allowed(req, "POST");
  }
  if (n == 1 && !strcmp(seg[0], "usage")) {
    if (!get)
      return sg_http_method_not_allowed(req, "GET");
    return sg_api_usage(d, req);
  }
  if (n < 1 || strcmp(seg[0], "endpoints")) {
    not_found(req, "no such route");
    return;
  }
  if (n == 1)
    return sg_api_endpoints(d, req);
  if (n == 2)
    return sg_api_endpoint(d, req, seg[1]);
  sg_endpoint_t *ep = sg_daemon_find_endpoint(d, seg[1]);
  if (n == 3 && !strcmp(seg[2], "logs")) {
    if (!get)
      return sg_http_method_not_allowed(req, "GET");
    if (!ep)
      return not_found(req, "no such endpoint");
    return sg_logs_handle(d, req, ep->name);
  }
  if (n == 3 && !strcmp(seg[2], "series")) {
    if (!get)
      return sg_http_method_not_allowed(req, "GET");
    if (!ep)
      return not_found(req, "no such endpoint");
    return sg_http_send_json(req, 200, sg_series_to_json(ep, 0));
  }
  if (n == 3 && (!strcmp(seg[2], "versions") || !strcmp(seg[2], "rollback"))) {
    if (!ep)
      return not_found(req, "no such endpoint");
    if (!strcmp(seg[2], "versions"))
      return sg_api_endpoint_versions(d, req, ep);
    return sg_api_endpoint_rollback(d, req, ep);
  }
  if ((n == 3 || n == 4) && !strcmp(seg[2], "workers")) {
    if (!ep)
      return not_found(req, "no such endpoint");
    return sg_api_workers(d, req, ep, n == 4 ? seg[3] : NULL);
  }
  not_found(req, "no such route");
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

static void v1(void *d, sg_http_req_t *req, const char *rest) { route_v1(d, req, rest); }

/* The /v1 requests whose body is streamed rather than buffered: POST
 * volumes/{name}/files (a tarball). Every other is buffered for route_v1. */
static sg_http_head_action_t v1_head(void *d, sg_http_req_t *req, const char *rest) {
  const char *files = "/files";
  size_t len = strlen(rest);
  if (sg_http_method_is(req, "POST") && !strncmp(rest, "volumes/", 8) && len > 8 + strlen(files) &&
      !strcmp(rest + len - strlen(files), files)) {
    char name[64];
    size_t n = len - 8 - strlen(files);
    if (n < sizeof(name) && !memchr(rest + 8, '/', n)) {
      memcpy(name, rest + 8, n);
      name[n] = '\0';
      return sg_api_volume_upload(d, req, name);
    }
  }
  return SG_HTTP_BUFFER;
}

void sg_api_routes(sg_router_t *r, sg_daemon_t *d) {
  /* Public: the health check and the console's files (they hold no data). */
  sg_router_add(r, &(sg_route_t){.path = "/healthz", .public_route = true, .on_head = healthz, .ctx = d});
  sg_router_add(r, &(sg_route_t){.path = "/", .public_route = true, .on_head = console, .ctx = d});
  sg_router_add(r, &(sg_route_t){.path = "/index.html", .public_route = true, .on_head = console, .ctx = d});
  sg_router_add(r,
                &(sg_route_t){.path = "/console/", .prefix = true, .public_route = true, .on_head = console, .ctx = d});
  /* The control API: bodies buffered (SG_API_MAX_BODY), then route_v1, but
   * for the uploads v1_head streams. */
  sg_router_add(r, &(sg_route_t){.path = "/v1/", .prefix = true, .on_head = v1_head, .on_request = v1, .ctx = d});
}
