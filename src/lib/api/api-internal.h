/* Control-plane handlers, one file per resource. Loop-thread only. */
#ifndef SGPU_API_INTERNAL_H
#define SGPU_API_INTERNAL_H

#include "daemon/daemon-internal.h"

/* Largest control-plane request body accepted (413 above). */
#define SG_API_MAX_BODY (1u << 20)

/* Parses the request body as a JSON object. NULL after answering the
 * request with 400/413 when it is missing, too large or not an object. */
json_t *sg_api_read_json(sg_http_req_t *req);

/* Answers 405 naming the methods the route allows. */
void sg_api_method_not_allowed(sg_http_req_t *req, const char *allow);

/* endpoints.c: /v1/endpoints and /v1/endpoints/{name} */
void sg_api_endpoints(sg_daemon_t *d, sg_http_req_t *req);
void sg_api_endpoint(sg_daemon_t *d, sg_http_req_t *req, const char *name);

/* workers.c: /v1/endpoints/{name}/workers[/{id}] (id NULL for the list) */
void sg_api_workers(sg_daemon_t *d, sg_http_req_t *req, sg_endpoint_t *ep, const char *id);

/* nodes.c: /v1/nodes */
void sg_api_nodes(sg_daemon_t *d, sg_http_req_t *req);

#endif
