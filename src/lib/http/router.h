/* The request router: a table of routes, each a method set, a path pattern,
 * the scopes that may call it, and a handler with its context. Modules
 * register their routes (the daemon owns the router and hands it to each
 * module's *_routes function); the server calls sg_router_on_head and
 * sg_router_on_request. Loop-thread only.
 *
 * A path pattern is literal text with, as whole segments:
 *   {name}      any one non-empty segment (a parameter; {endpoint} is the
 *               endpoint the request is about, checked against a key's list),
 *   {name*}     one or more segments, the rest of the path (last only),
 *   / *         at the end (written without the space): nothing, or "/" and
 *               anything after it.
 * One trailing slash after a whole match is tolerated. A route with prefix
 * set matches every path that starts with its (literal) path instead.
 *
 * Every route declares who may call it (sg_router_add aborts on a route
 * without scope): SG_SCOPE_PUBLIC (no key: the route serves no data, or checks
 * its own token), or the scopes of a key that grant it (admin always does).
 * Several routes may share a pattern with different methods (and scopes).
 *
 * For each request:
 *   1. the routes whose pattern matches the path are found; one whose method
 *      set holds the request's method is taken;
 *   2. unless it is public, the auth hook decides (once, before any handler):
 *      no or an unknown key is answered 401 with WWW-Authenticate, a key
 *      without the scope 403, ...; a path no route matches, or a method no
 *      matching route allows, needs a valid key too;
 *   3. no route matched: 404 "no such route"; no method: 405 with Allow;
 *   4. the route's on_head runs with the rest of the path after the
 *      pattern's literal part; a route without on_head has its body
 *      buffered, then on_request gets the pattern's parameters.
 * Every error answer is sg_http_send_error's. */
#ifndef SGPU_HTTP_ROUTER_H
#define SGPU_HTTP_ROUTER_H

#include <stdbool.h>
#include <stddef.h>

#include "http/http.h"

typedef struct sg_router sg_router_t;

/* Method sets; SG_HTTP_ANY lets the handler check the method itself. */
enum {
  SG_HTTP_GET = 1u << 0,
  SG_HTTP_HEAD = 1u << 1,
  SG_HTTP_POST = 1u << 2,
  SG_HTTP_PUT = 1u << 3,
  SG_HTTP_DELETE = 1u << 4,
  SG_HTTP_PATCH = 1u << 5,
  SG_HTTP_OPTIONS = 1u << 6,
  SG_HTTP_ANY = 0,
};

/* Scopes: who may call a route. A key holds a set; a route names the
 * scopes that grant it, and admin grants every route. */
enum {
  SG_SCOPE_ADMIN = 1u << 0,  /* everything, keys included */
  SG_SCOPE_DEPLOY = 1u << 1, /* endpoints, images, registry auths: write; logs, usage: read */
  SG_SCOPE_INVOKE = 1u << 2, /* /e/... and the job API /v2/... */
  SG_SCOPE_READ = 1u << 3,   /* GET of endpoints, workers, logs, usage, metrics, series, nodes, images */
  SG_SCOPE_PUBLIC = 1u << 4, /* no key at all */
  SG_SCOPE_KEYS = SG_SCOPE_ADMIN | SG_SCOPE_DEPLOY | SG_SCOPE_INVOKE | SG_SCOPE_READ,
};

/* Route flags. */
enum {
  /* A list its handler filters to the endpoints the caller may see: open to
   * keys limited to endpoints (other routes without {endpoint} are not). */
  SG_ROUTE_LISTS_ENDPOINTS = 1u << 0,
};

#define SG_ROUTE_MAX_PARAMS 4

/* What a buffered route's handler gets: NUL-terminated copies, valid during the call. */
typedef struct sg_route_args {
  const char *rest;                       /* the path after the pattern's literal part */
  const char *param[SG_ROUTE_MAX_PARAMS]; /* the {name} and {name*} segments, in order */
  size_t n_params;
  const char *endpoint; /* the {endpoint} segment, or NULL */
  const void *data;     /* the route's data */
} sg_route_args_t;

typedef struct sg_route {
  const char *path;  /* a pattern (above), or a prefix when prefix is set */
  bool prefix;       /* match every path that starts with path */
  unsigned methods;  /* SG_HTTP_* set, or SG_HTTP_ANY */
  bool public_route; /* the same as scope SG_SCOPE_PUBLIC */
  unsigned scope;    /* SG_SCOPE_* that grant it; required */
  unsigned flags;    /* SG_ROUTE_* */
  /* The head arrived; rest is the path after the pattern's literal part.
   * Returns as the server's on_head does. NULL: buffer the body, then on_request. */
  sg_http_head_action_t (*on_head)(void *ctx, sg_http_req_t *req, const char *rest);
  /* A buffered request is whole. */
  void (*on_request)(void *ctx, sg_http_req_t *req, const sg_route_args_t *args);
  void *ctx;
  const void *data; /* constant of this route (a row of its module's table), in args->data */
} sg_route_t;

/* The auth hook: whether req may go on to route rt (NULL: no route matched
 * the path, or none allows the method; any valid key may learn that).
 * endpoint: rt's {endpoint} segment, or NULL. Returns true, or false after
 * answering the request (401, 403, 429). */
typedef bool (*sg_router_auth_fn)(void *ud, sg_http_req_t *req, const sg_route_t *rt, const char *endpoint);

/* key: the one bearer key that the built-in check accepts, with every scope
 * (copied); sg_router_set_auth replaces that check. */
sg_router_t *sg_router_new(const char *key);
void sg_router_set_auth(sg_router_t *r, sg_router_auth_fn check, void *ud);
void sg_router_free(sg_router_t *r);
/* Adds a route (copied; path must outlive the router). Aborts on a route
 * without scope, or public with other scopes: no route exists undecided. */
void sg_router_add(sg_router_t *r, const sg_route_t *route);
/* Calls cb for each route, in the order they were added. */
void sg_router_each(const sg_router_t *r, void (*cb)(void *ud, const sg_route_t *rt), void *ud);

/* The 401 answer every private route gives without a valid key. */
void sg_router_unauthorized(sg_http_req_t *req);

/* "GET|POST" ("ANY" for SG_HTTP_ANY) into buf. Returns buf. */
const char *sg_route_methods_str(unsigned methods, char *buf, size_t len);
/* "read|deploy" ("public") into buf. Returns buf. */
const char *sg_scope_str(unsigned scopes, char *buf, size_t len);
/* The scope named name ("read"), or 0. */
unsigned sg_scope_parse(const char *name);
/* Whether a key holding scopes may call a route granted to route_scopes. */
bool sg_scope_grants(unsigned scopes, unsigned route_scopes);

/* The server's callbacks (sg_http_server_config_t.on_head/on_request, ud: the router). */
sg_http_head_action_t sg_router_on_head(void *router, sg_http_req_t *req);
void sg_router_on_request(void *router, sg_http_req_t *req);

#endif
