/* GET /v1/endpoints/{name}/versions: the endpoint's kept specs, oldest
 * first, each with its version and when it was stored.
 *
 * The versions live in the store (endpoint_versions, written with each
 * endpoint write on the store thread); they are read on the query pool on a
 * read-only connection, and the answer is sent on the loop when the read
 * completes, or dropped when the client went away meanwhile. */
#include "api-internal.h"
#include "logs/logs.h"
#include "sgpu/pool.h"
#include "sgpu/util.h"

struct versions_job {
  sg_http_req_t *req; /* NULL once the client went away */
  sg_store_readers_t *readers;
  char *name;
  int current;   /* the endpoint's version when asked */
  json_t *items; /* filled on the pool thread */
  sg_error_t *err;
};

static void versions_job_free(struct versions_job *j) {
  json_decref(j->items);
  sg_error_free(j->err);
  free(j->name);
  free(j);
}

static void versions_req_closed(sg_http_req_t *req, void *arg) { ((struct versions_job *)arg)->req = NULL; }

/* Pool thread. */
static void on_version(void *ud, const sg_endpoint_record_t *rec) {
  struct versions_job *j = ud;
  json_error_t jerr;
  json_t *spec = json_loads(rec->spec_json, 0, &jerr);
  char t[32];
  json_array_append_new(j->items,
                        json_pack("{s:i, s:s, s:o}", "version", rec->version, "created",
                                  sg_format_time(rec->created_ms, t, sizeof(t)), "spec", spec ? spec : json_null()));
}

static void versions_work(void *data) {
  struct versions_job *j = data;
  sg_assert_not_loop_thread();
  j->items = json_array();
  sg_store_t *reader = sg_store_readers_take(j->readers, &j->err);
  if (!reader)
    return;
  sg_store_endpoint_versions(reader, j->name, on_version, j, &j->err);
  sg_store_readers_put(j->readers, reader);
}

/* Loop: answers, unless the client went away. */
static void versions_done(void *data, bool cancelled) {
  struct versions_job *j = data;
  sg_http_req_t *req = j->req;
  if (req) {
    sg_http_set_close_cb(req, NULL, NULL);
    if (cancelled)
      sg_http_send_error(req, 503, "shutting_down", "sgpud is stopping", NULL);
    else if (j->err)
      sg_http_send_sg_error(req, j->err);
    else
      sg_http_send_json(req, 200,
                        json_pack("{s:s, s:i, s:O}", "name", j->name, "version", j->current, "versions", j->items));
  }
  versions_job_free(j);
}

static const sg_pool_job_ops_t versions_ops = {versions_work, versions_done};

void sg_api_endpoint_versions(sg_daemon_t *d, sg_http_req_t *req, sg_endpoint_t *ep) {
  if (!sg_http_method_is(req, "GET"))
    return sg_http_method_not_allowed(req, "GET");
  if (sg_queries_busy(d, req))
    return;
  struct versions_job *j = xcalloc(1, sizeof(*j));
  j->req = req;
  j->readers = d->readers;
  j->name = xstrdup(ep->name);
  j->current = ep->version;
  sg_http_set_close_cb(req, versions_req_closed, j);
  sg_pool_submit(d->query_pool, &versions_ops, j);
}
