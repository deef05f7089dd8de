/* /v1/nodes: this node's GPU inventory and who holds what, and with the
 * slurm runtime configured, the cluster's nodes and free GPUs as Slurm
 * reports them. */

#include "api-internal.h"
#include "sgpu/util.h"

static json_t *str_or_null(const char *s) { return s ? json_string(s) : json_null(); }

void sg_api_nodes(sg_daemon_t *d, sg_http_req_t *req) {
  char host[256] = "localhost";
  if (gethostname(host, sizeof(host) - 1) < 0)
    snprintf(host, sizeof(host), "localhost");
  json_t *gpus = json_array();
  int free_n = 0;
  for (size_t i = 0; i < d->gpus->n; i++) {
    const sg_gpu_t *g = &d->gpus->gpus[i];
    if (!g->holder)
      free_n++;
    json_array_append_new(gpus,
                          json_pack("{s:i, s:s, s:o, s:o, s:o, s:s, s:o, s:o}", "index", g->index, "type", g->type,
                                    "name", str_or_null(g->name), "uuid", str_or_null(g->uuid), "memory_bytes",
                                    g->memory ? json_integer((json_int_t)g->memory) : json_null(), "source", g->source,
                                    "worker", str_or_null(g->holder), "endpoint", str_or_null(g->endpoint)));
  }
  json_t *node = json_pack("{s:s, s:s, s:i, s:i, s:o}", "name", host, "runtime", sg_runtime_local()->name, "gpus_total",
                           (int)d->gpus->n, "gpus_free", free_n, "gpus", gpus);
  json_t *nodes = json_pack("[o]", node);
  json_t *cluster = sg_daemon_cluster_nodes(d);
  if (cluster)
    json_array_extend(nodes, cluster);
  json_decref(cluster);
  sg_http_send_json(req, 200, json_pack("{s:o}", "nodes", nodes));
}
