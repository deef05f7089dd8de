/* The HTTP front door: routing, authentication and the JSON answer helpers
 * every handler uses. Every route but /healthz and the console's static
 * files (/, /console/...) needs the admin key as "Authorization: Bearer
 * <key>"; invocations (/e/...) are handed to the gateway after the same
 * check. */
#include <event2/buffer.h>
#include <strings.h>

#include "api-internal.h"
#include "gateway/jobs.h"
#include "sgpu/pool.h"
#include "sgpu/util.h"

void sg_api_send_json(sg_http_req_t *req, int status, json_t *body) {
  char *text = json_dumps(body, JSON_COMPACT);
  json_decref(body);
  size_t len = strlen(text);
  text = xrealloc(text, len + 2);
  text[len++] = '\n';
  sg_http_reply(req, status, "application/json", text, len);
  free(text);
}

void sg_api_send_error(sg_http_req_t *req, int status, const char *code, const char *message,
                       const char *field) {
  json_t *e = json_pack("{s:s, s:s}", "code", code, "message", message);
  if (!e) /* message not valid UTF-8 */
    e = json_pack("{s:s, s:s}", "code", code, "message", "(unprintable message)");
  if (field)
    json_object_set_new(e, "field", json_string(field));
  sg_api_send_json(req, status, json_pack("{s:o}", "error", e));
}

bool sg_api_queries_busy(sg_daemon_t *d, sg_http_req_t *req) {
  if (sg_pool_pending(d->query_pool) < SG_QUERY_QUEUE_MAX)
    return false;
  sg_http_add_header(req, "Retry-After", "1");
  sg_api_send_error(req, 503, "busy", "too many log and usage queries are in progress; retry later", NULL);
  return true;
}

void sg_api_send_sg_error(sg_http_req_t *req, const sg_error_t *err) {
  int status = 500;
  const char *code = "internal";
  switch (err->status) {
  case SG_EINVAL:
    status = 422, code = "invalid_field";
    break;
  case SG_EJSON:
    status = 400, code = "invalid_json";
    break;
  case SG_ENOTFOUND:
    status = 404, code = "not_found";
    break;
  case SG_EEXIST:
    status = 409, code = "conflict";
    break;
  case SG_ETOOLARGE:
    status = 413, code = "too_large";
    break;
  case SG_EUNAVAIL:
    status = 422, code = "unavailable";
    break;
  case SG_ESTORE:
    status = 500, code = "store_error";
    break;
  }
  sg_api_send_error(req, status, code, err->message, err->field);
}

void sg_api_method_not_allowed(sg_http_req_t *req, const char *allow) {
  sg_http_add_header(req, "Allow", allow);
  cleanup_free char *msg = xasprintf("method not allowed here; allowed: %s", allow);
  sg_api_send_error(req, 405, "method_not_allowed", msg, NULL);
}

json_t *sg_api_read_json(sg_http_req_t *req) {
  struct evbuffer *buf = sg_http_body(req);
  size_t len = evbuffer_get_length(buf);
  if (len > SG_API_MAX_BODY) {
    sg_api_send_error(req, 413, "too_large", "request body is over the 1 MiB limit of the control API", NULL);
    return NULL;
  }
  if (len == 0) {
    sg_api_send_error(req, 400, "invalid_json", "request body is empty; a JSON object is expected", NULL);
    return NULL;
  }
  const char *data = (const char *)evbuffer_pullup(buf, -1);
  json_error_t jerr;
  json_t *j = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!j) {
    cleanup_free char *msg = xasprintf("body is not valid JSON: line %d, column %d: %s", jerr.line, jerr.column,
                                       jerr.text);
    sg_api_send_error(req, 400, "invalid_json", msg, NULL);
    return NULL;
  }
  if (!json_is_object(j)) {
    json_decref(j);
    sg_api_send_error(req, 400, "invalid_json", "body must be a JSON object", NULL);
    return NULL;
  }
  return j;
}

/* Compares in time independent of where the strings differ. */
static bool key_equal(const char *a, size_t alen, const char *b) {
  size_t blen = strlen(b);
  unsigned char diff = alen != blen;
  for (size_t i = 0; i < alen; i++)
    diff |= (unsigned char)a[i] ^ (unsigned char)b[i % (blen ? blen : 1)];
  return diff == 0;
}

static bool authorized(sg_daemon_t *d, sg_http_req_t *req) {
  const char *h = sg_http_header(req, "Authorization");
  if (!h || strncasecmp(h, "Bearer ", 7))
    return false;
  const char *key = h + 7;
  while (*key == ' ')
    key++;
  size_t len = strlen(key);
  while (len > 0 && key[len - 1] == ' ')
    len--;
  return len > 0 && key_equal(key, len, d->api_key);
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

static void not_found(sg_http_req_t *req, const char *what) {
  sg_api_send_error(req, 404, "not_found", what, NULL);
}

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
      return sg_api_method_not_allowed(req, "GET");
    return sg_api_nodes(d, req);
  }
  if (n == 1 && !strcmp(seg[0], "images"))
    return sg_api_images(d, req);
  if ((n == 1 || n == 2) && !strcmp(seg[0], "registry-auths"))
    return sg_api_registry_auths(d, req, n == 2 ? seg[1] : NULL);
  if (n == 1 && !strcmp(seg[0], "usage")) {
    if (!get)
      return sg_api_method_not_allowed(req, "GET");
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
      return sg_api_method_not_allowed(req, "GET");
    if (!ep)
      return not_found(req, "no such endpoint");
    return sg_logs_handle(d, req, ep);
  }
  if (n == 3 && !strcmp(seg[2], "series")) {
    if (!get)
      return sg_api_method_not_allowed(req, "GET");
    if (!ep)
      return not_found(req, "no such endpoint");
    return sg_api_send_json(req, 200, sg_series_to_json(ep, 0));
  }
  if ((n == 3 || n == 4) && !strcmp(seg[2], "workers")) {
    if (!ep)
      return not_found(req, "no such endpoint");
    return sg_api_workers(d, req, ep, n == 4 ? seg[3] : NULL);
  }
  not_found(req, "no such route");
}

sg_http_head_action_t sg_api_on_head(void *ud, sg_http_req_t *req) {
  sg_daemon_t *d = ud;
  const char *path = sg_http_path(req);
  if (!strcmp(path, "/healthz")) {
    sg_api_send_json(req, 200, json_pack("{s:s}", "status", "ok"));
    return SG_HTTP_DONE;
  }
  if (sg_console_handle(d, req))
    return SG_HTTP_DONE;
  if (!authorized(d, req)) {
    sg_http_add_header(req, "WWW-Authenticate", "Bearer realm=\"sgpu\"");
    sg_api_send_error(req, 401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)", NULL);
    return SG_HTTP_DONE;
  }
  if (!strcmp(path, "/metrics")) {
    if (!sg_http_method_is(req, "GET"))
      sg_api_method_not_allowed(req, "GET");
    else
      sg_metrics_handle(d, req);
    return SG_HTTP_DONE;
  }
  if (sg_str_has_prefix(path, "/e/")) {
    const char *name = path + 3;
    cleanup_free char *ename = xstrndup(name, strcspn(name, "/"));
    if (!sg_name_valid(ename)) {
      not_found(req, "no such endpoint");
      return SG_HTTP_DONE;
    }
    return sg_gateway_handle(d, req, ename);
  }
  if (sg_str_has_prefix(path, "/v2/"))
    return sg_jobs_handle(d, req, path + 4);
  if (!sg_str_has_prefix(path, "/v1/")) {
    not_found(req, "no such route");
    return SG_HTTP_DONE;
  }
  return SG_HTTP_BUFFER;
}

void sg_api_on_request(void *ud, sg_http_req_t *req) { route_v1(ud, req, sg_http_path(req) + 4); }
