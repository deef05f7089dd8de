/* JSON answers: the one place the error body of every route is written
 * ({"error":{"code","message"[,"field"]}} and a newline). See http.h. */
#include <jansson.h>
#include <string.h>

#include "http/http.h"
#include "sgpu/util.h"

void sg_http_send_json(sg_http_req_t *req, int status, json_t *body) {
  char *text = json_dumps(body, JSON_COMPACT);
  json_decref(body);
  size_t len = strlen(text);
  text = xrealloc(text, len + 2);
  text[len++] = '\n';
  sg_http_reply(req, status, "application/json", text, len);
  free(text);
}

void sg_http_send_error(sg_http_req_t *req, int status, const char *code, const char *message, const char *field) {
  json_t *e = json_pack("{s:s, s:s}", "code", code, "message", message);
  if (!e) /* message not valid UTF-8 */
    e = json_pack("{s:s, s:s}", "code", code, "message", "(unprintable message)");
  if (field)
    json_object_set_new(e, "field", json_string(field));
  sg_http_send_json(req, status, json_pack("{s:o}", "error", e));
}

void sg_http_send_sg_error(sg_http_req_t *req, const sg_error_t *err) {
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
  sg_http_send_error(req, status, code, err->message, err->field);
}

void sg_http_method_not_allowed(sg_http_req_t *req, const char *allow) {
  sg_http_add_header(req, "Allow", allow);
  cleanup_free char *msg = xasprintf("method not allowed here; allowed: %s", allow);
  sg_http_send_error(req, 405, "method_not_allowed", msg, NULL);
}
