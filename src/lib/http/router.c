/* The request router. See router.h. */
#include <string.h>
#include <strings.h>

#include "http/router.h"
#include "sgpu/util.h"

struct sg_router {
  char *key;
  sg_route_t *routes;
  size_t n, cap;
};

static const struct {
  unsigned bit;
  const char *name;
} methods[] = {
    {SG_HTTP_GET, "GET"},       {SG_HTTP_HEAD, "HEAD"},   {SG_HTTP_POST, "POST"},       {SG_HTTP_PUT, "PUT"},
    {SG_HTTP_DELETE, "DELETE"}, {SG_HTTP_PATCH, "PATCH"}, {SG_HTTP_OPTIONS, "OPTIONS"},
};

sg_router_t *sg_router_new(const char *key) {
  sg_router_t *r = xcalloc(1, sizeof(*r));
  r->key = xstrdup(key);
  return r;
}

void sg_router_free(sg_router_t *r) {
  if (!r)
    return;
  free(r->key);
  free(r->routes);
  free(r);
}

void sg_router_add(sg_router_t *r, const sg_route_t *route) {
  if (r->n == r->cap) {
    r->cap = r->cap ? r->cap * 2 : 8;
    r->routes = xrealloc(r->routes, r->cap * sizeof(*r->routes));
  }
  r->routes[r->n++] = *route;
}

static const sg_route_t *match(const sg_router_t *r, const char *path, const char **rest) {
  for (size_t i = 0; i < r->n; i++) {
    const sg_route_t *rt = &r->routes[i];
    size_t len = strlen(rt->path);
    if (rt->prefix ? !strncmp(path, rt->path, len) : !strcmp(path, rt->path)) {
      *rest = path + len;
      return rt;
    }
  }
  return NULL;
}

/* Compares in time independent of where the strings differ. */
static bool key_equal(const char *a, size_t alen, const char *b) {
  size_t blen = strlen(b);
  unsigned char diff = alen != blen;
  for (size_t i = 0; i < alen; i++)
    diff |= (unsigned char)a[i] ^ (unsigned char)b[i % (blen ? blen : 1)];
  return diff == 0;
}

static bool authorized(const sg_router_t *r, const sg_http_req_t *req) {
  const char *h = sg_http_header(req, "Authorization");
  if (!h || strncasecmp(h, "Bearer ", 7))
    return false;
  const char *key = h + 7;
  while (*key == ' ')
    key++;
  size_t len = strlen(key);
  while (len > 0 && key[len - 1] == ' ')
    len--;
  return len > 0 && key_equal(key, len, r->key);
}

static bool method_in(const sg_http_req_t *req, unsigned set) {
  for (size_t i = 0; i < SG_ARRAY_SIZE(methods); i++)
    if ((set & methods[i].bit) && sg_http_method_is(req, methods[i].name))
      return true;
  return false;
}

static void method_not_allowed(sg_http_req_t *req, unsigned set) {
  char allow[64] = "";
  for (size_t i = 0; i < SG_ARRAY_SIZE(methods); i++)
    if (set & methods[i].bit)
      snprintf(allow + strlen(allow), sizeof(allow) - strlen(allow), "%s%s", *allow ? ", " : "", methods[i].name);
  sg_http_method_not_allowed(req, allow);
}

sg_http_head_action_t sg_router_on_head(void *router, sg_http_req_t *req) {
  sg_router_t *r = router;
  const char *rest = NULL;
  const sg_route_t *rt = match(r, sg_http_path(req), &rest);
  if (!(rt && rt->public_route) && !authorized(r, req)) {
    sg_http_add_header(req, "WWW-Authenticate", "Bearer realm=\"sgpu\"");
    sg_http_send_error(req, 401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)", NULL);
    return SG_HTTP_DONE;
  }
  if (!rt) {
    sg_http_send_error(req, 404, "not_found", "no such route", NULL);
    return SG_HTTP_DONE;
  }
  if (rt->methods != SG_HTTP_ANY && !method_in(req, rt->methods)) {
    method_not_allowed(req, rt->methods);
    return SG_HTTP_DONE;
  }
  if (!rt->on_head)
    return SG_HTTP_BUFFER;
  return rt->on_head(rt->ctx, req, rest);
}

void sg_router_on_request(void *router, sg_http_req_t *req) {
  sg_router_t *r = router;
  const char *rest = NULL;
  const sg_route_t *rt = match(r, sg_http_path(req), &rest);
  /* The path has not changed since on_head: rt is the route that buffered. */
  if (!rt || !rt->on_request) {
    sg_http_send_error(req, 500, "internal", "no handler for a buffered request", NULL);
    return;
  }
  rt->on_request(rt->ctx, req, rest);
}
