/* The daemon's side of the runtimes: every registered runtime's init, stop
 * and shutdown ops (sg_runtime_all), adoption of what an earlier sgpud left,
 * the cluster's nodes for GET /v1/nodes, the daemon-wide default runtime,
 * and the parsers of the config keys default_runtime and slurm. Loop
 * thread. */
#include <errno.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "daemon/fleet.h"
#include "logs/logs.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

static int opt_str(json_t *obj, const char *key, char **out, sg_error_t **err) {
  json_t *v = json_object_get(obj, key);
  if (!v || json_is_null(v))
    return 0;
  if (!json_is_string(v) || !*json_string_value(v) || strlen(json_string_value(v)) > 255)
    return sg_make_error(err, SG_EINVAL, "config: slurm.%s must be a non-empty string", key);
  free(*out);
  *out = xstrdup(json_string_value(v));
  return 0;
}

/* default_runtime: one of the registry's runtimes; the slurm runtime also sets Slurm up. */
int sg_daemon_config_parse_default_runtime(sg_daemon_config_t *cfg, const char *key, json_t *v, sg_error_t **err) {
  const char *s = json_is_string(v) ? json_string_value(v) : "";
  const sg_runtime_ops_t *rt = sg_runtime_find(s);
  if (!rt) {
    cleanup_free char *names = sg_runtime_names_text();
    return sg_make_error(err, SG_EINVAL, "config: %s must be %s", key, names);
  }
  free(cfg->default_runtime);
  cfg->default_runtime = xstrdup(s);
  if (rt == &sg_slurm_runtime)
    cfg->slurm.configured = true;
  return 0;
}

void sg_daemon_config_clear_default_runtime(sg_daemon_config_t *cfg) {
  free(cfg->default_runtime);
  cfg->default_runtime = NULL;
}

/* slurm: {dir, partition, account, time_limit, image_dir, rest_*}, each optional. */
int sg_daemon_config_parse_slurm(sg_daemon_config_t *cfg, const char *key, json_t *v, sg_error_t **err) {
  (void)key;
  if (!json_is_object(v))
    return sg_make_error(err, SG_EINVAL,
                         "config: slurm must be an object {dir, partition, "
                         "account, time_limit, image_dir, rest_*}");
  const char *k;
  json_t *x;
  json_object_foreach(v, k, x) {
    static const char *const keys[] = {"dir",           "partition", "account",    "time_limit",
                                       "image_dir",     "rest_url",  "rest_user",  "rest_token",
                                       "rest_key_file", "rest_api",  "volume_dir", NULL};
    bool known = false;
    for (const char *const *kk = keys; *kk && !known; kk++)
      known = !strcmp(k, *kk);
    if (!known)
      return sg_make_error(err, SG_EINVAL,
                           "config: slurm.%s is not dir, partition, account, time_limit, image_dir, "
                           "rest_url, rest_user, rest_token, rest_key_file, rest_api or volume_dir",
                           k);
  }
  if (opt_str(v, "dir", &cfg->slurm.dir, err) < 0 || opt_str(v, "partition", &cfg->slurm.partition, err) < 0 ||
      opt_str(v, "account", &cfg->slurm.account, err) < 0 ||
      opt_str(v, "time_limit", &cfg->slurm.time_limit, err) < 0 ||
      opt_str(v, "image_dir", &cfg->slurm.image_dir, err) < 0 ||
      opt_str(v, "rest_url", &cfg->slurm.rest_url, err) < 0 ||
      opt_str(v, "rest_user", &cfg->slurm.rest_user, err) < 0 ||
      opt_str(v, "rest_key_file", &cfg->slurm.rest_key_file, err) < 0 ||
      opt_str(v, "rest_api", &cfg->slurm.rest_api, err) < 0 ||
      opt_str(v, "volume_dir", &cfg->slurm.volume_dir, err) < 0)
    return -SG_EINVAL;
  json_t *tok = json_object_get(v, "rest_token");
  if (tok && !json_is_null(tok)) {
    if (!json_is_string(tok) || !*json_string_value(tok) || strlen(json_string_value(tok)) > 8192)
      return sg_make_error(err, SG_EINVAL, "config: slurm.rest_token must be a JWT string");
    free(cfg->slurm.rest_token);
    cfg->slurm.rest_token = xstrdup(json_string_value(tok));
  }
  if (cfg->slurm.rest_url && !cfg->slurm.rest_token && !cfg->slurm.rest_key_file)
    return sg_make_error(err, SG_EINVAL, "config: slurm.rest_url needs slurm.rest_token or slurm.rest_key_file");
  if (cfg->slurm.rest_url && strncmp(cfg->slurm.rest_url, "http://", 7) && strncmp(cfg->slurm.rest_url, "https://", 8))
    return sg_make_error(err, SG_EINVAL, "config: slurm.rest_url must be an http:// or https:// URL");
  cfg->slurm.configured = true;
  return 0;
}

void sg_daemon_config_clear_slurm(sg_daemon_config_t *cfg) {
  free(cfg->slurm.dir);
  free(cfg->slurm.partition);
  free(cfg->slurm.account);
  free(cfg->slurm.time_limit);
  free(cfg->slurm.image_dir);
  free(cfg->slurm.rest_url);
  free(cfg->slurm.rest_user);
  if (cfg->slurm.rest_token)
    explicit_bzero(cfg->slurm.rest_token, strlen(cfg->slurm.rest_token));
  free(cfg->slurm.rest_token);
  free(cfg->slurm.rest_key_file);
  free(cfg->slurm.rest_api);
  free(cfg->slurm.volume_dir);
  memset(&cfg->slurm, 0, sizeof(cfg->slurm));
}

int sg_daemon_runtimes_init(sg_daemon_t *d, sg_error_t **err) {
  sg_runtime_host_t host = {d->base, d->pool, d->images, &d->cfg};
  for (const sg_runtime_ops_t *const *rt = sg_runtime_all(); *rt; rt++)
    if ((*rt)->init && (*rt)->init(&host, err) < 0)
      return -1;
  return 0;
}

void sg_daemon_runtimes_stop(sg_daemon_t *d) {
  (void)d;
  for (const sg_runtime_ops_t *const *rt = sg_runtime_all(); *rt; rt++)
    if ((*rt)->stop)
      (*rt)->stop();
}

void sg_daemon_runtimes_free(sg_daemon_t *d) {
  (void)d;
  const sg_runtime_ops_t *const *all = sg_runtime_all();
  size_t n = 0;
  while (all[n])
    n++;
  while (n-- > 0)
    if (all[n]->shutdown)
      all[n]->shutdown();
}

typedef struct adopt_ctx {
  sg_daemon_t *d;
  const sg_runtime_ops_t *rt;
} adopt_ctx_t;

static sg_instance_t *adopt_one(void *ctx, const sg_leftover_t *job) {
  adopt_ctx_t *a = ctx;
  sg_endpoint_t *ep = sg_daemon_find_endpoint(a->d, job->endpoint);
  if (!ep || sg_runtime_find(ep->spec->runtime) != a->rt || ep->version != job->version)
    return NULL;
  return sg_worker_adopt(ep, a->rt, job);
}

void sg_daemon_cluster_adopt(sg_daemon_t *d) {
  for (const char *const *name = sg_runtime_names(); *name; name++) {
    adopt_ctx_t a = {d, sg_runtime_find(*name)};
    if (a.rt->adopt)
      a.rt->adopt(adopt_one, &a);
  }
}

void sg_daemon_default_runtime(sg_daemon_t *d, json_t *spec) {
  json_t *r = json_object_get(spec, "runtime");
  if (d->cfg.default_runtime && json_is_object(spec) && (!r || json_is_null(r)))
    json_object_set_new(spec, "runtime", json_string(d->cfg.default_runtime));
}

json_t *sg_daemon_cluster_nodes(sg_daemon_t *d) {
  (void)d;
  json_t *arr = json_array();
  for (const char *const *name = sg_runtime_names(); *name; name++) {
    const sg_runtime_ops_t *rt = sg_runtime_find(*name);
    if (!rt->nodes)
      continue;
    size_t n;
    int64_t age;
    const sg_runtime_node_t *nodes = rt->nodes(&n, &age);
    for (size_t i = 0; i < n; i++) {
      const sg_runtime_node_t *x = &nodes[i];
      int free_n = x->gpus_total - x->gpus_used;
      json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:s, s:o, s:i, s:i, s:s, s:I}", "name", x->name, "runtime",
                                           rt->name, "state", x->state, "partitions", x->partitions, "gpu_type",
                                           *x->gpu_type ? json_string(x->gpu_type) : json_null(), "gpus_total",
                                           x->gpus_total, "gpus_free", free_n < 0 ? 0 : free_n, "source", rt->name,
                                           "age_ms", (json_int_t)age));
    }
  }
  return arr;
}
