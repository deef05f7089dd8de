/* The request router. See router.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http/router.h"
#include "sgpu/util.h"

struct sg_router {
  char *key;
  sg_router_auth_fn check;
  void *check_ud;
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

static const struct {
  unsigned bit;
  const char *name;
} scopes[] = {
    {SG_SCOPE_ADMIN, "admin"}, {SG_SCOPE_DEPLOY, "deploy"}, {SG_SCOPE_INVOKE, "invoke"},
    {SG_SCOPE_READ, "read"},   {SG_SCOPE_PUBLIC, "public"},
};

/* A match of a path against a route: pieces of the path (not terminated). */
typedef struct match {
  const char *rest;
  struct {
    const char *s;
    size_t len;
  } param[SG_ROUTE_MAX_PARAMS];
  size_t n_params;
  int endpoint; /* index into param, or -1 */
} match_t;

/* Compares in time independent of where the strings differ. */
static bool key_equal(const char *a, size_t alen, const char *b) {
  size_t blen = strlen(b);
  unsigned char diff = alen != blen;
  for (size_t i = 0; i < alen; i++)
    diff |= (unsigned char)a[i] ^ (unsigned char)b[i % (blen ? blen : 1)];
  return diff == 0;
}

void sg_router_unauthorized(sg_http_req_t *req) {
  sg_http_add_header(req, "WWW-Authenticate", "Bearer realm=\"sgpu\"");
  sg_http_send_error(req, 401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)", NULL);
}

/* The built-in check: the router's one key, holding every scope. */
static bool check_key(void *ud, sg_http_req_t *req, const sg_route_t *rt, const char *endpoint) {
  const sg_router_t *r = ud;
  (void)rt, (void)endpoint;
  const char *h = sg_http_header(req, "Authorization");
  if (h && !strncasecmp(h, "Bearer ", 7)) {
    const char *key = h + 7;
    while (*key == ' ')
      key++;
    size_t len = strlen(key);
    while (len > 0 && key[len - 1] == ' ')
      len--;
    if (len > 0 && key_equal(key, len, r->key))
      return true;
  }
  sg_router_unauthorized(req);
  return false;
}

sg_router_t *sg_router_new(const char *key) {
  sg_router_t *r = xcalloc(1, sizeof(*r));
  r->key = xstrdup(key);
  r->check = check_key;
  r->check_ud = r;
  return r;
}

void sg_router_set_auth(sg_router_t *r, sg_router_auth_fn check, void *ud) {
  r->check = check;
  r->check_ud = ud;
}

void sg_router_free(sg_router_t *r) {
  if (!r)
    return;
  free(r->key);
  free(r->routes);
  free(r);
}

void sg_router_add(sg_router_t *r, const sg_route_t *route) {
  sg_route_t rt = *route;
  if (rt.public_route)
    rt.scope |= SG_SCOPE_PUBLIC;
  if (!rt.scope || ((rt.scope & SG_SCOPE_PUBLIC) && rt.scope != SG_SCOPE_PUBLIC) ||
      (rt.scope & ~(SG_SCOPE_KEYS | SG_SCOPE_PUBLIC))) {
    fprintf(stderr, "route %s: no scope decided (or public with other scopes)\n", rt.path);
    abort();
  }
  rt.public_route = rt.scope == SG_SCOPE_PUBLIC;
  if (r->n == r->cap) {
    r->cap = r->cap ? r->cap * 2 : 16;
    r->routes = xrealloc(r->routes, r->cap * sizeof(*r->routes));
  }
  r->routes[r->n++] = rt;
}

void sg_router_each(const sg_router_t *r, void (*cb)(void *ud, const sg_route_t *rt), void *ud) {
  for (size_t i = 0; i < r->n; i++)
    cb(ud, &r->routes[i]);
}

static bool pattern_match(const sg_route_t *rt, const char *path, match_t *m) {
  m->n_params = 0;
  m->endpoint = -1;
  if (rt->prefix) {
    size_t len = strlen(rt->path);
    if (strncmp(path, rt->path, len))
      return false;
    m->rest = path + len;
    return true;
  }
  m->rest = path + strcspn(rt->path, "{*");
  const char *p = rt->path, *s = path;
  while (*p) {
    if (p[0] == '/' && p[1] == '*' && !p[2]) { /* nothing, or "/..." */
      if (*s && *s != '/')
        return false;
      return true;
    }
    if (*p == '{') {
      const char *close = strchr(p, '}');
      if (!close || m->n_params == SG_ROUTE_MAX_PARAMS)
        return false;
      bool many = close[-1] == '*';
      size_t len = many ? strlen(s) : strcspn(s, "/");
      if (many && len > 0 && s[len - 1] == '/')
        len--; /* one trailing slash */
      if (len == 0 || (many && strstr(s, "//")))
        return false;
      if (!strncmp(p, "{endpoint}", 10))
        m->endpoint = (int)m->n_params;
      m->param[m->n_params].s = s;
      m->param[m->n_params++].len = len;
      s += len;
      p = close + 1;
      continue;
    }
    if (*p != *s)
      return false;
    p++, s++;
  }
  if (s[0] == '/' && !s[1])
    s++;
  return !*s;
}

static bool method_in(const sg_http_req_t *req, unsigned set) {
  if (set == SG_HTTP_ANY)
    return true;
  for (size_t i = 0; i < SG_ARRAY_SIZE(methods); i++)
    if ((set & methods[i].bit) && sg_http_method_is(req, methods[i].name))
      return true;
  return false;
}

const char *sg_route_methods_str(unsigned set, char *buf, size_t len) {
  if (len)
    *buf = '\0';
  if (set == SG_HTTP_ANY)
    return snprintf(buf, len, "ANY"), buf;
  for (size_t i = 0; i < SG_ARRAY_SIZE(methods); i++)
    if (set & methods[i].bit)
      snprintf(buf + strlen(buf), len - strlen(buf), "%s%s", *buf ? "|" : "", methods[i].name);
  return buf;
}

const char *sg_scope_str(unsigned set, char *buf, size_t len) {
  if (len)
    *buf = '\0';
  for (size_t i = 0; i < SG_ARRAY_SIZE(scopes); i++)
    if (set & scopes[i].bit)
      snprintf(buf + strlen(buf), len - strlen(buf), "%s%s", *buf ? "|" : "", scopes[i].name);
  return buf;
}

unsigned sg_scope_parse(const char *name) {
  for (size_t i = 0; i < SG_ARRAY_SIZE(scopes); i++)
    if (scopes[i].bit != SG_SCOPE_PUBLIC && !strcmp(name, scopes[i].name))
      return scopes[i].bit;
  return 0;
}

bool sg_scope_grants(unsigned held, unsigned route_scopes) {
  if (route_scopes & SG_SCOPE_PUBLIC)
    return true;
  return (held & SG_SCOPE_ADMIN) || (held & route_scopes & SG_SCOPE_KEYS);
}

/* The route for req: the first whose pattern matches and whose method set
 * holds the method. NULL when none; *allow then gets the methods of those
 * whose pattern matched (0 and *any_path false: no pattern matched). */
static const sg_route_t *find(const sg_router_t *r, const sg_http_req_t *req, match_t *m, unsigned *allow,
                              bool *any_path) {
  *allow = 0;
  *any_path = false;
  const char *path = sg_http_path(req);
  for (size_t i = 0; i < r->n; i++) {
    const sg_route_t *rt = &r->routes[i];
    if (!pattern_match(rt, path, m))
      continue;
    *any_path = true;
    if (method_in(req, rt->methods))
      return rt;
    *allow |= rt->methods;
  }
  return NULL;
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
  match_t m;
  unsigned allow;
  bool any_path;
  const sg_route_t *rt = find(r, req, &m, &allow, &any_path);
  if (!rt || !rt->public_route) {
    char endpoint[256] = "";
    bool has_ep = rt && m.endpoint >= 0 && m.param[m.endpoint].len < sizeof(endpoint);
    if (has_ep)
      memcpy(endpoint, m.param[m.endpoint].s, m.param[m.endpoint].len), endpoint[m.param[m.endpoint].len] = '\0';
    else if (rt && m.endpoint >= 0)
      snprintf(endpoint, sizeof(endpoint), "%s", "/"); /* too long: no key's endpoint */
    if (!r->check(r->check_ud, req, rt, rt && m.endpoint >= 0 ? endpoint : NULL))
      return SG_HTTP_DONE;
  }
  if (!rt && !any_path) {
    sg_http_send_error(req, 404, "not_found", "no such route", NULL);
    return SG_HTTP_DONE;
  }
  if (!rt) {
    method_not_allowed(req, allow);
    return SG_HTTP_DONE;
  }
  if (!rt->on_head)
    return SG_HTTP_BUFFER;
  return rt->on_head(rt->ctx, req, m.rest);
}

void sg_router_on_request(void *router, sg_http_req_t *req) {
  sg_router_t *r = router;
  match_t m;
  unsigned allow;
  bool any_path;
  /* The path and method have not changed since on_head: rt is the route
   * that buffered, and the key was checked there. */
  const sg_route_t *rt = find(r, req, &m, &allow, &any_path);
  if (!rt || !rt->on_request) {
    sg_http_send_error(req, 500, "internal", "no handler for a buffered request", NULL);
    return;
  }
  sg_route_args_t a = {.rest = m.rest, .n_params = m.n_params, .data = rt->data};
  char *copies[SG_ROUTE_MAX_PARAMS] = {0};
  for (size_t i = 0; i < m.n_params; i++)
    a.param[i] = copies[i] = xstrndup(m.param[i].s, m.param[i].len);
  if (m.endpoint >= 0)
    a.endpoint = a.param[m.endpoint];
  rt->on_request(rt->ctx, req, &a);
  for (size_t i = 0; i < m.n_params; i++)
    free(copies[i]);
}
