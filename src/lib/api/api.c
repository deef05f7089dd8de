/* The HTTP front door: routing, authentication and the JSON answer helpers
 * every handler uses. Every route but /healthz needs the admin key as
 * "Authorization: Bearer <key>"; invocations (/e/...) are handed to the
 * gateway after the same check. */
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <strings.h>

#include "api-internal.h"
#include "sgpu/util.h"

void sg_api_send_json(struct evhttp_request *req, int status, json_t *body) {
  struct evbuffer *buf = evbuffer_new();
  char *text = json_dumps(body, JSON_COMPACT);
  json_decref(body);
  evbuffer_add(buf, text, strlen(text));
  evbuffer_add(buf, "\n", 1);
  free(text);
  struct evkeyvalq *h = evhttp_request_get_output_headers(req);
  evhttp_remove_header(h, "Content-Type");
  evhttp_add_header(h, "Content-Type", "application/json");
  evhttp_send_reply(req, status, NULL, buf);
  evbuffer_free(buf);
}

void sg_api_send_error(struct evhttp_request *req, int status, const char *code, const char *message,
                       const char *field) {
  json_t *e = json_pack("{s:s, s:s}", "code", code, "message", message);
  if (!e) /* message not valid UTF-8 */
    e = json_pack("{s:s, s:s}", "code", code, "message", "(unprintable message)");
  if (field)
    json_object_set_new(e, "field", json_string(field));
  sg_api_send_json(req, status, json_pack("{s:o}", "error", e));
}

void sg_api_send_sg_error(struct evhttp_request *req, const sg_error_t *err) {
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

void sg_api_method_not_allowed(struct evhttp_request *req, const char *allow) {
  evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
  cleanup_free char *msg = xasprintf("method not allowed here; allowed: %s", allow);
  sg_api_send_error(req, 405, "method_not_allowed", msg, NULL);
}

json_t *sg_api_read_json(struct evhttp_request *req) {
  struct evbuffer *buf = evhttp_request_get_input_buffer(req);
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

static bool authorized(sg_daemon_t *d, struct evhttp_request *req) {
  const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
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

static void not_found(struct evhttp_request *req, const char *what) {
  sg_api_send_error(req, 404, "not_found", what, NULL);
}

static void route_v1(sg_daemon_t *d, struct evhttp_request *req, const char *rest) {
  char storage[1024];
  char *seg[4];
  if (strlen(rest) >= sizeof(storage)) {
    not_found(req, "no such route");
    return;
  }
  int n = split(rest, seg, 4, storage, sizeof(storage));
  enum evhttp_cmd_type m = evhttp_request_get_command(req);
  if (n == 1 && !strcmp(seg[0], "nodes")) {
    if (m != EVHTTP_REQ_GET)
      return sg_api_method_not_allowed(req, "GET");
    return sg_api_nodes(d, req);
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
    if (m != EVHTTP_REQ_GET)
      return sg_api_method_not_allowed(req, "GET");
    if (!ep)
      return not_found(req, "no such endpoint");
    return sg_logs_handle(d, req, ep);
  }
  if ((n == 3 || n == 4) && !strcmp(seg[2], "workers")) {
    if (!ep)
      return not_found(req, "no such endpoint");
    return sg_api_workers(d, req, ep, n == 4 ? seg[3] : NULL);
  }
  not_found(req, "no such route");
}

void sg_api_handle(sg_daemon_t *d, struct evhttp_request *req, const char *path) {
  if (!strcmp(path, "/healthz")) {
    sg_api_send_json(req, 200, json_pack("{s:s}", "status", "ok"));
    return;
  }
  if (!authorized(d, req)) {
    evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer realm=\"sgpu\"");
    sg_api_send_error(req, 401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)", NULL);
    return;
  }
  if (sg_str_has_prefix(path, "/v1/")) {
    route_v1(d, req, path + 4);
    return;
  }
  if (sg_str_has_prefix(path, "/e/")) {
    const char *name = path + 3;
    size_t len = strcspn(name, "/");
    cleanup_free char *ename = xstrndup(name, len);
    if (!sg_name_valid(ename)) {
      not_found(req, "no such endpoint");
      return;
    }
    sg_gateway_handle(d, req, ename, name + len);
    return;
  }
  not_found(req, "no such route");
}
