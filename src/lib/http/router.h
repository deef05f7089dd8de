/* The request router: a table of routes, each a method set, a path (exact
 * or a prefix), whether it needs the key, and a handler with its context.
 * Modules register their routes (the daemon owns the router and hands it to
 * each module's *_routes function); the server calls sg_router_on_head and
 * sg_router_on_request. Loop-thread only.
 *
 * For each request the first route whose path matches is taken (routes'
 * paths do not overlap, so the order of registration does not matter):
 *   1. a route that is not public needs "Authorization: Bearer <key>" with
 *      the router's key (constant-time compare); without it the answer is
 *      401 with WWW-Authenticate, before any handler runs;
 *   2. a method outside the route's set is answered 405 with Allow;
 *   3. the route's on_head runs with the rest of the path after the route's
 *      path; a route without on_head has its body buffered, then on_request.
 * A path no route matches needs the key like any private route, then gets
 * 404 "no such route". Every error answer is sg_http_send_error's. */
#ifndef SGPU_HTTP_ROUTER_H
#define SGPU_HTTP_ROUTER_H

#include <stdbool.h>

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

typedef struct sg_route {
  const char *path;  /* "/metrics", or a prefix "/e/" when prefix is set */
  bool prefix;       /* match every path that starts with path */
  unsigned methods;  /* SG_HTTP_* set, or SG_HTTP_ANY */
  bool public_route; /* served without the key */
  /* The head arrived; rest is the path after the route's path. Returns as
   * the server's on_head does. NULL: buffer the body, then on_request. */
  sg_http_head_action_t (*on_head)(void *ctx, sg_http_req_t *req, const char *rest);
  /* A buffered request is whole. */
  void (*on_request)(void *ctx, sg_http_req_t *req, const char *rest);
  void *ctx;
} sg_route_t;

/* key: the bearer key private routes need (copied). */
sg_router_t *sg_router_new(const char *key);
void sg_router_free(sg_router_t *r);
/* Adds a route (copied; path must outlive the router). */
void sg_router_add(sg_router_t *r, const sg_route_t *route);

/* The server's callbacks (sg_http_server_config_t.on_head/on_request, ud: the router). */
sg_http_head_action_t sg_router_on_head(void *router, sg_http_req_t *req);
void sg_router_on_request(void *router, sg_http_req_t *req);

#endif
