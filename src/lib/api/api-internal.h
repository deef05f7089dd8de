/* Control-plane handlers, one file per resource. Loop-thread only. */
#ifndef SGPU_API_INTERNAL_H
#define SGPU_API_INTERNAL_H

#include "daemon/fleet.h"
#include "http/http.h"
#include "http/router.h"

/* api.c */
/* Registers /healthz, the console's files and /v1. */
void sg_api_routes(sg_router_t *r, sg_daemon_t *d);

/* Largest control-plane request body accepted (413 above). */
#define SG_API_MAX_BODY (1u << 20)

/* Parses the request body as a JSON object. NULL after answering the
 * request with 400/413 when it is missing, too large or not an object. */
json_t *sg_api_read_json(sg_http_req_t *req);

/* endpoints.c: /v1/endpoints and /v1/endpoints/{name} */
void sg_api_endpoints(sg_daemon_t *d, sg_http_req_t *req);
void sg_api_endpoint(sg_daemon_t *d, sg_http_req_t *req, const char *name);
/* POST /v1/endpoints/{name}/rollback */
void sg_api_endpoint_rollback(sg_daemon_t *d, sg_http_req_t *req, sg_endpoint_t *ep);

/* versions.c: GET /v1/endpoints/{name}/versions (read on the query pool) */
void sg_api_endpoint_versions(sg_daemon_t *d, sg_http_req_t *req, sg_endpoint_t *ep);

/* validate.c: what a parsed spec needs from this daemon (GPUs of its type
 * and count, its registry_auth, an executable command[0]), checked before a
 * create or replace is written. Resolves a bare command[0] to the path found
 * in the worker's PATH (spec changed). SG_EINVAL naming the field (422). */
int sg_api_validate_spec(sg_daemon_t *d, sg_spec_t *spec, sg_error_t **err);

/* workers.c: /v1/endpoints/{name}/workers[/{id}] (id NULL for the list) */
void sg_api_workers(sg_daemon_t *d, sg_http_req_t *req, sg_endpoint_t *ep, const char *id);

/* images.c: /v1/images, /v1/registry-auths[/{name}] (name NULL for the list) */
void sg_api_images(sg_daemon_t *d, sg_http_req_t *req);
/* DELETE /v1/images/{ref}; ref is the rest of the path, not yet decoded. */
void sg_api_image(sg_daemon_t *d, sg_http_req_t *req, const char *ref);
void sg_api_registry_auths(sg_daemon_t *d, sg_http_req_t *req, const char *name);

/* secrets.c: /v1/secrets, /v1/secrets/{name} (name NULL for the list) */
void sg_api_secrets(sg_daemon_t *d, sg_http_req_t *req, const char *name);

/* volumes.c: /v1/volumes[/{name}] (name NULL for the list), and the head of
 * POST /v1/volumes/{name}/files, whose body it streams (or answers). */
void sg_api_volumes(sg_daemon_t *d, sg_http_req_t *req, const char *name);
sg_http_head_action_t sg_api_volume_upload(sg_daemon_t *d, sg_http_req_t *req, const char *name);
/* nodes.c: /v1/nodes */
void sg_api_nodes(sg_daemon_t *d, sg_http_req_t *req);

/* usage.c: GET /v1/usage */
void sg_api_usage(sg_daemon_t *d, sg_http_req_t *req);

/* keys.c: GET and POST /v1/api-keys, DELETE /v1/api-keys/{name} */
void sg_api_keys_list(sg_daemon_t *d, sg_http_req_t *req);
void sg_api_keys_create(sg_daemon_t *d, sg_http_req_t *req);
void sg_api_keys_revoke(sg_daemon_t *d, sg_http_req_t *req, const char *name);

/* console.c: answers a request for a console file (/, /console/...) and
 * returns true; false when the path is not the console's. */
bool sg_console_handle(sg_daemon_t *d, sg_http_req_t *req);

#endif
