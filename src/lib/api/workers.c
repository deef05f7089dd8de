/* /v1/endpoints/{name}/workers: list an endpoint's workers, stop one. */

#include "api-internal.h"
#include "sgpu/util.h"

static void list(sg_http_req_t *req, sg_endpoint_t *ep) {
  json_t *arr = json_array();
  sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) json_array_append_new(arr, sg_worker_to_json(w));
  sg_http_send_json(req, 200, json_pack("{s:o}", "workers", arr));
}

/* Stops one worker; the scaler starts a replacement when the spec needs one. */
static void stop(sg_http_req_t *req, sg_endpoint_t *ep, const char *id) {
  sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) {
    if (!strcmp(w->id, id))
      break;
  }
  if (!w || w->exited || w->stopping) {
    cleanup_free char *msg = xasprintf("endpoint %s has no running worker %s", ep->name, id);
    return sg_http_send_error(req, 404, "not_found", msg, NULL);
  }
  sg_worker_stop(w, "stopped through the API");
  sg_fleet_demand_changed(ep->d);
  sg_http_send_json(req, 202, sg_worker_to_json(w));
}

void sg_api_workers(sg_daemon_t *d, sg_http_req_t *req, sg_endpoint_t *ep, const char *id) {
  if (!id) {
    if (!sg_http_method_is(req, "GET"))
      return sg_http_method_not_allowed(req, "GET");
    return list(req, ep);
  }
  if (!sg_http_method_is(req, "DELETE"))
    return sg_http_method_not_allowed(req, "DELETE");
  stop(req, ep, id);
}
