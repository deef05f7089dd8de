#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "api/api-internal.h"
#include "gateway/jobs.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define TICK_MS 250

void sg_daemon_config_defaults(sg_daemon_config_t *cfg) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->listen = xstrdup("127.0.0.1:8080");
  cfg->data_dir = sg_default_data_dir();
  cfg->gpus_fallback = xstrdup("a100:4");
  cfg->log_level = SG_LOG_INFO;
  cfg->stop_grace_s = 10;
  cfg->max_body = 20u << 20;
  cfg->log_keep_lines = 100000;
  cfg->header_timeout_s = 10;
  cfg->idle_timeout_s = 75;
  cfg->io_timeout_s = 60;
  cfg->max_header_bytes = 64 * 1024;
  cfg->max_headers = 100;
  cfg->webhook_allow = xcalloc(2, sizeof(char *));
  cfg->webhook_allow[0] = xstrdup("public");
  cfg->n_webhook_allow = 1;
  cfg->webhook_retry_s = 10;
  cfg->prices = xstrdup("");
  cfg->meter_checkpoint_s = 2;
  cfg->log_max_bytes = 256ll << 20;
  cfg->log_max_age_s = 7 * 86400;
  cfg->log_trim_interval_s = 30;
  cfg->log_rate_lines_s = 2000;
  cfg->log_burst_lines = 10000;
  cfg->image_cache_max_bytes = 100ll << 30;
  cfg->image_max_layer_bytes = 64ll << 30;
  cfg->image_max_unpacked_bytes = 64ll << 30;
  cfg->oci_userns = -1;
}

static void free_allow(sg_daemon_config_t *cfg) {
  for (size_t i = 0; i < cfg->n_webhook_allow; i++)
    free(cfg->webhook_allow[i]);
  free(cfg->webhook_allow);
  cfg->webhook_allow = NULL;
  cfg->n_webhook_allow = 0;
}

/* webhook_allow: an array of "public", addresses and CIDR networks. */
static int set_allow(sg_daemon_config_t *cfg, json_t *v, sg_error_t **err) {
  if (!json_is_array(v) || json_array_size(v) > 256)
    return sg_make_error(err, SG_EINVAL, "config: webhook_allow must be an array of at most 256 strings");
  size_t i;
  json_t *e;
  json_array_foreach(v, i, e) {
    sg_addr_rule_t rule;
    if (!json_is_string(e))
      return sg_make_error(err, SG_EINVAL, "config: webhook_allow[%zu] must be a string", i);
    if (sg_addr_rule_parse(json_string_value(e), &rule, err) < 0)
      return -SG_EINVAL;
  }
  free_allow(cfg);
  cfg->webhook_allow = xcalloc(json_array_size(v) + 1, sizeof(char *));
  json_array_foreach(v, i, e) cfg->webhook_allow[cfg->n_webhook_allow++] = xstrdup(json_string_value(e));
  return 0;
}

/* The config keys of async jobs: 0, -1 (error), or 1 for a key not theirs. */
static int load_jobs_key(sg_daemon_config_t *cfg, const char *key, json_t *v, sg_error_t **err) {
  if (!strcmp(key, "webhook_allow"))
    return set_allow(cfg, v, err);
  if (!strcmp(key, "webhook_retry_s")) {
    if (!json_is_number(v) || json_number_value(v) < 0.01 || json_number_value(v) > 3600)
      return sg_make_error(err, SG_EINVAL, "config: webhook_retry_s must be a number of seconds 0.01..3600");
    cfg->webhook_retry_s = json_number_value(v);
    return 0;
  }
  if (!strcmp(key, "jobs_max_batch")) {
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1000000)
      return sg_make_error(err, SG_EINVAL, "config: jobs_max_batch must be an integer 0..1000000");
    cfg->jobs_max_batch = (int)json_integer_value(v);
    return 0;
  }
  return 1;
}

void sg_daemon_config_clear(sg_daemon_config_t *cfg) {
  free_allow(cfg);
  free(cfg->listen);
  free(cfg->data_dir);
  free(cfg->gpus);
  free(cfg->gpus_fallback);
  free(cfg->prices);
  for (size_t i = 0; i < cfg->n_log_retention; i++)
    free(cfg->log_retention[i].endpoint);
  free(cfg->log_retention);
  free(cfg->web_dir);
  free(cfg->run_as);
  sg_daemon_config_clear_oci(cfg);
  sg_daemon_config_clear_cluster(cfg);
  memset(cfg, 0, sizeof(*cfg));
}

static int set_str(json_t *v, const char *key, char **out, sg_error_t **err) {
  if (!json_is_string(v))
    return sg_make_error(err, SG_EINVAL, "config: %s must be a string", key);
  free(*out);
  *out = xstrdup(json_string_value(v));
  return 0;
}

static int number_in(json_t *v, const char *key, double lo, double hi, double *out, sg_error_t **err) {
  if (!json_is_number(v) || json_number_value(v) < lo || json_number_value(v) > hi)
    return sg_make_error(err, SG_EINVAL, "config: %s must be a number %g..%g", key, lo, hi);
  *out = json_number_value(v);
  return 0;
}

/* "prices": {"a100": 0.0004, ...} or the command line's text form. */
static int load_prices(sg_daemon_config_t *cfg, json_t *v, sg_error_t **err) {
  cleanup_free char *text = NULL;
  if (json_is_string(v)) {
    text = xstrdup(json_string_value(v));
  } else if (json_is_object(v)) {
    text = xstrdup("");
    const char *type;
    json_t *p;
    json_object_foreach(v, type, p) {
      if (!json_is_number(p))
        return sg_make_error(err, SG_EINVAL, "config: prices.%s must be a number (price per GPU-second)", type);
      char *next = xasprintf("%s%s%s=%.17g", text, *text ? "," : "", type, json_number_value(p));
      free(text);
      text = next;
    }
  } else {
    return sg_make_error(err, SG_EINVAL, "config: prices must be an object {\"TYPE\": price per GPU-second}");
  }
  sg_price_table_t t = {0};
  int r = sg_price_table_parse(&t, text, err);
  sg_price_table_clear(&t);
  if (r < 0)
    return r;
  free(cfg->prices);
  cfg->prices = steal_pointer(&text);
  return 0;
}

/* "log_retention": {"NAME": {"max_lines": N, "max_bytes": N, "max_age_s": S}, ...} */
static int load_retention(sg_daemon_config_t *cfg, json_t *v, sg_error_t **err) {
  if (!json_is_object(v))
    return sg_make_error(err, SG_EINVAL, "config: log_retention must be an object of endpoint names");
  const char *name;
  json_t *r;
  json_object_foreach(v, name, r) {
    if (!json_is_object(r))
      return sg_make_error(err, SG_EINVAL, "config: log_retention.%s must be an object", name);
    sg_log_retention_t ret = {NULL, -1, -1, -1}; /* -1: the default */
    const char *k;
    json_t *x;
    json_object_foreach(r, k, x) {
      bool integer = strcmp(k, "max_age_s") != 0;
      if (strcmp(k, "max_lines") && strcmp(k, "max_bytes") && strcmp(k, "max_age_s"))
        return sg_make_error(err, SG_EINVAL, "config: log_retention.%s.%s is not max_lines, max_bytes or max_age_s",
                             name, k);
      if ((integer ? !json_is_integer(x) : !json_is_number(x)) || json_number_value(x) < 0)
        return sg_make_error(err, SG_EINVAL, "config: log_retention.%s.%s must be a number >= 0", name, k);
      if (!strcmp(k, "max_lines"))
        ret.max_lines = json_integer_value(x);
      else if (!strcmp(k, "max_bytes"))
        ret.max_bytes = json_integer_value(x);
      else
        ret.max_age_s = json_number_value(x);
    }
    ret.endpoint = xstrdup(name);
    cfg->log_retention = xrealloc(cfg->log_retention, (cfg->n_log_retention + 1) * sizeof(*cfg->log_retention));
    cfg->log_retention[cfg->n_log_retention++] = ret;
  }
  return 0;
}

/* The keys of the meter, the log store and the console. 1 when key is not one of them. */
/* Limits of client connections. Returns 1 when key is not one of them. */
static int load_http_limits(sg_daemon_config_t *cfg, const char *key, json_t *v, sg_error_t **err) {
  json_int_t n = json_is_integer(v) ? json_integer_value(v) : -1;
  if (!strcmp(key, "max_header_bytes")) {
    if (n < 1024 || n > (16 << 20))
      return sg_make_error(err, SG_EINVAL, "config: max_header_bytes must be an integer 1024..16777216");
    cfg->max_header_bytes = (size_t)n;
  } else if (!strcmp(key, "max_headers")) {
    if (n < 8 || n > 10000)
      return sg_make_error(err, SG_EINVAL, "config: max_headers must be an integer 8..10000");
    cfg->max_headers = (size_t)n;
  } else if (!strcmp(key, "max_connections")) {
    if (n < 0 || n > 10000000)
      return sg_make_error(err, SG_EINVAL,
                           "config: max_connections must be an integer 0..10000000 (0: sized from RLIMIT_NOFILE)");
    cfg->max_connections = (size_t)n;
  } else {
    return 1;
  }
  return 0;
}

static int load_more(sg_daemon_config_t *cfg, const char *key, json_t *v, sg_error_t **err) {
  double num;
  int r = 0;
  if ((r = load_http_limits(cfg, key, v, err)) != 1)
    return r;
  if (!strcmp(key, "prices"))
    return load_prices(cfg, v, err);
  if (!strcmp(key, "log_retention"))
    return load_retention(cfg, v, err);
  if (!strcmp(key, "web_dir"))
    return set_str(v, key, &cfg->web_dir, err);
  if (!strcmp(key, "run_as")) {
    if (!json_is_string(v) || strlen(json_string_value(v)) > 64)
      return sg_make_error(err, SG_EINVAL,
                           "config: run_as must be a user name, \"UID[:GID]\" or \"root\" (at most 64 characters)");
    return set_str(v, key, &cfg->run_as, err);
  }
  if (!strcmp(key, "meter_checkpoint_s")) {
    if ((r = number_in(v, key, 0.1, 3600, &num, err)) == 0)
      cfg->meter_checkpoint_s = num;
  } else if (!strcmp(key, "log_max_bytes")) {
    if (!json_is_integer(v) || json_integer_value(v) < 0)
      return sg_make_error(err, SG_EINVAL, "config: log_max_bytes must be an integer >= 0 (0: no limit)");
    cfg->log_max_bytes = json_integer_value(v);
    r = 0;
  } else if (!strcmp(key, "log_max_age_s")) {
    if ((r = number_in(v, key, 0, 1e9, &num, err)) == 0)
      cfg->log_max_age_s = num;
  } else if (!strcmp(key, "log_trim_interval_s")) {
    if ((r = number_in(v, key, 0.1, 86400, &num, err)) == 0)
      cfg->log_trim_interval_s = num;
  } else if (!strcmp(key, "log_rate_lines_s")) {
    if ((r = number_in(v, key, 0, 1e9, &num, err)) == 0)
      cfg->log_rate_lines_s = num;
  } else if (!strcmp(key, "log_burst_lines")) {
    if ((r = number_in(v, key, 1, 1e9, &num, err)) == 0)
      cfg->log_burst_lines = num;
  } else {
    return 1;
  }
  return r;
}

int sg_daemon_config_load(sg_daemon_config_t *cfg, const char *path, sg_error_t **err) {
  json_error_t jerr;
  json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
  if (!root)
    return sg_make_error(err, SG_EINVAL, "config %s: line %d: %s", path, jerr.line, jerr.text);
  if (!json_is_object(root)) {
    json_decref(root);
    return sg_make_error(err, SG_EINVAL, "config %s: must be a JSON object", path);
  }
  int r = 0;
  const char *key;
  json_t *v;
  json_object_foreach(root, key, v) {
    if (!strcmp(key, "listen"))
      r = set_str(v, key, &cfg->listen, err);
    else if (!strcmp(key, "data_dir"))
      r = set_str(v, key, &cfg->data_dir, err);
    else if (!strcmp(key, "gpus"))
      r = set_str(v, key, &cfg->gpus, err);
    else if (!strcmp(key, "log_level")) {
      int lvl = json_is_string(v) ? sg_log_parse_level(json_string_value(v)) : -1;
      if (lvl < 0)
        r = sg_make_error(err, SG_EINVAL, "config: log_level must be debug, info, warn or error");
      else
        cfg->log_level = lvl;
    } else if (!strcmp(key, "stop_grace_s")) {
      if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 3600)
        r = sg_make_error(err, SG_EINVAL, "config: stop_grace_s must be a number of seconds 0..3600");
      else
        cfg->stop_grace_s = json_number_value(v);
    } else if (!strcmp(key, "max_body_bytes")) {
      if (!json_is_integer(v) || json_integer_value(v) < 1024 || json_integer_value(v) > (1ll << 32))
        r = sg_make_error(err, SG_EINVAL, "config: max_body_bytes must be an integer 1024..4294967296");
      else
        cfg->max_body = (size_t)json_integer_value(v);
    } else if (!strcmp(key, "header_timeout_s") || !strcmp(key, "idle_timeout_s") ||
               !strcmp(key, "io_timeout_s")) {
      double *slot = !strcmp(key, "header_timeout_s") ? &cfg->header_timeout_s
                     : !strcmp(key, "idle_timeout_s") ? &cfg->idle_timeout_s
                                                      : &cfg->io_timeout_s;
      if (!json_is_number(v) || json_number_value(v) < 0.1 || json_number_value(v) > 86400)
        r = sg_make_error(err, SG_EINVAL, "config: %s must be a number of seconds 0.1..86400", key);
      else
        *slot = json_number_value(v);
    } else if (!strcmp(key, "log_keep_lines")) {
      if (!json_is_integer(v) || json_integer_value(v) < 100)
        r = sg_make_error(err, SG_EINVAL, "config: log_keep_lines must be an integer >= 100");
      else
        cfg->log_keep_lines = json_integer_value(v);
    } else if ((r = load_more(cfg, key, v, err)) == 1 && (r = load_jobs_key(cfg, key, v, err)) == 1 &&
               (r = sg_daemon_config_load_oci(cfg, key, v, err)) == 1 &&
               (r = sg_daemon_config_load_cluster(cfg, key, v, err)) == 1)
      r = sg_make_error(err, SG_EINVAL, "config: unknown key \"%s\"", key);
    if (r < 0)
      break;
  }
  json_decref(root);
  return r;
}

sg_endpoint_t *sg_daemon_find_endpoint(sg_daemon_t *d, const char *name) {
  sg_endpoint_t *ep;
  TAILQ_FOREACH(ep, &d->endpoints, link) {
    if (!strcmp(ep->name, name))
      return ep;
  }
  return NULL;
}

sg_endpoint_t *sg_endpoint_new(sg_daemon_t *d, sg_spec_t *spec, int version, int64_t created, int64_t updated) {
  sg_endpoint_t *ep = xcalloc(1, sizeof(*ep));
  ep->d = d;
  ep->name = xstrdup(spec->name);
  ep->spec = spec;
  ep->version = version;
  ep->created_wall = created;
  ep->updated_wall = updated;
  TAILQ_INIT(&ep->workers);
  TAILQ_INIT(&ep->queue);
  TAILQ_INSERT_TAIL(&d->endpoints, ep, link);
  sg_endpoint_prepull(ep);
  sg_scaler_kick(d);
  return ep;
}

static void clear_failure_state(sg_endpoint_t *ep) {
  ep->consecutive_failures = 0;
  ep->backoff_until_mono = 0;
  free(ep->last_error);
  ep->last_error = NULL;
}

void sg_endpoint_update(sg_endpoint_t *ep, sg_spec_t *spec, int version, int64_t updated) {
  sg_spec_free(ep->spec);
  ep->spec = spec;
  ep->version = version;
  ep->updated_wall = updated;
  clear_failure_state(ep);
  sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) {
    if (sg_worker_live(w) && w->version != version)
      sg_worker_stop(w, "endpoint updated");
  }
  sg_logs_event(ep->d, ep->name, NULL, "endpoint updated to version %d", version);
  sg_endpoint_prepull(ep);
  sg_scaler_kick(ep->d);
}

void sg_endpoint_delete(sg_endpoint_t *ep) {
  sg_daemon_t *d = ep->d;
  ep->deleted = true;
  TAILQ_REMOVE(&d->endpoints, ep, link);
  TAILQ_INSERT_TAIL(&d->deleted, ep, link);
  sg_gateway_fail_queue(ep, 404, "not_found", "endpoint was deleted");
  sg_jobs_endpoint_deleted(ep);
  sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) {
    if (sg_worker_live(w))
      sg_worker_stop(w, "endpoint deleted");
  }
}

void sg_endpoint_maybe_free(sg_endpoint_t *ep) {
  if (!ep->deleted)
    return;
  sg_worker_prune(ep);
  if (!TAILQ_EMPTY(&ep->workers) || ep->proxies > 0)
    return;
  TAILQ_REMOVE(&ep->d->deleted, ep, link);
  sg_jobs_endpoint_free(ep);
  free(ep->name);
  sg_spec_free(ep->spec);
  free(ep->last_error);
  free(ep->last_decision);
  for (int i = 0; i < ep->n_last_logs; i++)
    free(ep->last_logs[i]);
  sg_series_free(ep->series);
  free(ep);
}

json_t *sg_endpoint_to_json(sg_endpoint_t *ep) {
  json_t *j = sg_spec_to_json(ep->spec);
  char t1[32], t2[32];
  json_object_set_new(j, "version", json_integer(ep->version));
  json_object_set_new(j, "created_at", json_string(sg_format_time(ep->created_wall, t1, sizeof(t1))));
  json_object_set_new(j, "updated_at", json_string(sg_format_time(ep->updated_wall, t2, sizeof(t2))));
  int n[5] = {0};
  sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) n[w->state]++;
  json_t *logs = json_array();
  for (int i = 0; i < ep->n_last_logs; i++)
    json_array_append_new(logs, json_string(ep->last_logs[i]));
  json_t *status = json_pack("{s:i, s:{s:i, s:i, s:i}, s:i, s:i, s:I, s:b, s:i, s:o, s:o, s:o}", "desired",
                             ep->desired, "workers", "starting", n[SG_W_STARTING], "ready", n[SG_W_READY],
                             "draining", n[SG_W_DRAINING], "in_flight", ep->in_flight, "queued", ep->queued,
                             "served", (json_int_t)ep->served, "crash_loop", ep->consecutive_failures >= 3,
                             "consecutive_failures", ep->consecutive_failures, "last_error",
                             ep->last_error ? json_string(ep->last_error) : json_null(), "last_logs", logs,
                             "last_decision", ep->last_decision ? json_string(ep->last_decision) : json_null());
  json_object_set_new(j, "status", status);
  return j;
}

static void load_endpoint(void *ud, const sg_endpoint_record_t *rec) {
  sg_daemon_t *d = ud;
  cleanup_error sg_error_t *err = NULL;
  sg_spec_t *spec = sg_spec_parse(rec->spec_json, strlen(rec->spec_json), &err);
  if (!spec) {
    sg_errlog("endpoint %s in the store is invalid, skipped: %s", rec->name, err->message);
    return;
  }
  sg_endpoint_new(d, spec, rec->version, rec->created_ms, rec->updated_ms);
}

static void reconcile_worker(void *ud, const sg_worker_record_t *rec) {
  if (!strcmp(rec->runtime, sg_process_runtime.name))
    sg_process_runtime.cleanup_orphan(rec->id, rec->pid);
}

/* Workers recorded by an earlier sgpud cannot be adopted by the process
 * runtime (their output pipes are gone): they are stopped and forgotten, and
 * the scaler starts fresh ones as the specs require. */
static int reconcile(sg_daemon_t *d, sg_error_t **err) {
  if (sg_store_worker_each(d->store, reconcile_worker, d, err) < 0)
    return -1;
  return sg_store_worker_clear(d->store, err);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg) {
  sg_daemon_t *d = arg;
  sg_scaler_run(d);
  sg_meter_tick(d);
  sg_series_tick(d);
  sg_logs_report_drops(d, false);
  sg_endpoint_t *ep, *tmp;
  TAILQ_FOREACH(ep, &d->endpoints, link) sg_worker_prune(ep);
  for (ep = TAILQ_FIRST(&d->deleted); ep; ep = tmp) {
    tmp = TAILQ_NEXT(ep, link);
    sg_endpoint_maybe_free(ep);
  }
}

static void stop_cb(evutil_socket_t sig, short what, void *arg) {
  sg_daemon_t *d = arg;
  sg_info("signal %d: stopping", (int)sig);
  d->shutting_down = true;
  event_base_loopbreak(d->base);
}

static int write_key(sg_daemon_t *d, sg_error_t **err) {
  cleanup_free char *path = xasprintf("%s/admin.key", d->cfg.data_dir);
  size_t len;
  char *key = sg_read_file(path, 4096, &len);
  if (key) {
    while (len > 0 && (key[len - 1] == '\n' || key[len - 1] == ' '))
      key[--len] = '\0';
    if (len < 16) {
      free(key);
      return sg_make_error(err, EINVAL, "%s is too short to be a key", path);
    }
    d->api_key = key;
    return 0;
  }
  if (errno != ENOENT)
    return sg_make_error(err, errno, "cannot read %s: %s", path, strerror(errno));
  unsigned char raw[24];
  sg_random_bytes(raw, sizeof(raw));
  char hex[2 * sizeof(raw) + 1];
  for (size_t i = 0; i < sizeof(raw); i++)
    snprintf(hex + 2 * i, 3, "%02x", raw[i]);
  cleanup_free char *content = xasprintf("sg_%s\n", hex);
  int r = sg_write_file_atomic(path, content, strlen(content), 0600);
  if (r < 0)
    return sg_make_error(err, -r, "cannot write %s: %s", path, strerror(-r));
  d->api_key = xasprintf("sg_%s", hex);
  sg_info("wrote a new admin API key to %s", path);
  return 0;
}

/* Half the descriptors for client connections (each proxied one may need a
 * connection to a worker too), less a reserve for workers, logs and the store. */
static size_t default_max_connections(void) {
  struct rlimit rl;
  rlim_t n = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
  if (n == RLIM_INFINITY || n > (1u << 21))
    n = 1u << 21;
  size_t half = (size_t)n / 2;
  return half > 64 + 16 ? half - 64 : 16;
}

static int bind_http(sg_daemon_t *d, sg_error_t **err) {
  cleanup_free char *addr = xstrdup(d->cfg.listen);
  char *colon = strrchr(addr, ':');
  if (!colon)
    return sg_make_error(err, EINVAL, "--listen: expected HOST:PORT, got %s", d->cfg.listen);
  *colon = '\0';
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (!colon[1] || *end || port < 0 || port > 65535)
    return sg_make_error(err, EINVAL, "--listen: bad port in %s", d->cfg.listen);
  const char *host = addr;
  if (host[0] == '[' && colon > addr + 1 && colon[-1] == ']') {
    host++;
    colon[-1] = '\0';
  }
  /* The daemon owns the router; each module registers its routes. */
  d->router = sg_router_new(d->api_key);
  sg_api_routes(d->router, d);
  sg_gateway_routes(d->router, d);
  sg_jobs_routes(d->router, d);
  sg_metrics_routes(d->router, d);
  sg_http_server_config_t hc = {
      .max_header_bytes = d->cfg.max_header_bytes,
      .max_headers = d->cfg.max_headers,
      .max_connections = d->cfg.max_connections ? d->cfg.max_connections : default_max_connections(),
      .max_buffered_body = SG_API_MAX_BODY,
      .header_timeout_s = d->cfg.header_timeout_s,
      .idle_timeout_s = d->cfg.idle_timeout_s,
      .io_timeout_s = d->cfg.io_timeout_s,
      .on_head = sg_router_on_head,
      .on_request = sg_router_on_request,
      .ud = d->router,
  };
  int bound = 0;
  d->http = sg_http_server_new(d->base, &hc, host, (int)port, &bound, err);
  if (!d->http)
    return -1;
  d->url = strchr(host, ':') ? xasprintf("http://[%s]:%d", host, bound) : xasprintf("http://%s:%d", host, bound);
  return 0;
}

static void create_sample(sg_daemon_t *d) {
  if (!TAILQ_EMPTY(&d->endpoints))
    return;
  cleanup_free char *worker = xasprintf("%s/echo-worker", d->self_dir);
  if (access(worker, X_OK) < 0) {
    sg_warn("sample endpoint not created: %s is missing", worker);
    return;
  }
  json_t *j = json_pack("{s:s, s:[s], s:{s:s, s:s}, s:{s:s}, s:{s:s, s:i}, s:{s:i, s:i, s:i}}", "name", "echo",
                        "command", worker, "env", "MODEL", "tiny-echo", "WARMUP_MS", "500", "health", "path",
                        "/health", "gpu", "type", "a100", "count", 1, "workers", "min", 0, "max", 2,
                        "idle_timeout_s", 60);
  cleanup_error sg_error_t *err = NULL;
  sg_spec_t *spec = sg_spec_from_json(j, &err);
  json_decref(j);
  if (!spec) {
    sg_errlog("sample endpoint: %s", err->message);
    return;
  }
  json_t *sj = sg_spec_to_json(spec);
  cleanup_free char *text = json_dumps(sj, JSON_COMPACT);
  json_decref(sj);
  int64_t now = sg_wall_ms();
  sg_endpoint_record_t rec = {spec->name, text, 1, now, now};
  if (sg_store_endpoint_insert(d->store, &rec, &err) < 0) {
    sg_errlog("sample endpoint: %s", err->message);
    sg_spec_free(spec);
    return;
  }
  sg_endpoint_new(d, spec, 1, now, now);
  sg_info("created the sample endpoint \"echo\" (%s)", worker);
}

sg_daemon_t *sg_daemon_new(sg_daemon_config_t *cfg, sg_error_t **err) {
  cleanup_free char *db = NULL, *url_path = NULL, *url_line = NULL;
  sg_daemon_t *d = xcalloc(1, sizeof(*d));
  d->cfg = *cfg;
  memset(cfg, 0, sizeof(*cfg));
  TAILQ_INIT(&d->endpoints);
  TAILQ_INIT(&d->deleted);
  LIST_INIT(&d->followers);
  sg_log_set_level(d->cfg.log_level);
  signal(SIGPIPE, SIG_IGN);

  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  self[n > 0 ? n : 0] = '\0';
  d->self_dir = xstrdup(n > 0 ? dirname(self) : ".");

  int r = sg_mkdir_p(d->cfg.data_dir, 0700);
  if (r < 0) {
    sg_make_error(err, -r, "cannot create data dir %s: %s", d->cfg.data_dir, strerror(-r));
    goto fail;
  }
  /* The admin key, the database and the images are sgpud's alone, even in
   * a directory that existed before. */
  if (chmod(d->cfg.data_dir, 0700) < 0) {
    sg_make_error(err, errno, "cannot make data dir %s private (mode 0700): %s", d->cfg.data_dir, strerror(errno));
    goto fail;
  }
  if (write_key(d, err) < 0)
    goto fail;
  db = xasprintf("%s/sgpu.db", d->cfg.data_dir);
  d->store = sg_store_open(db, err);
  if (!d->store)
    goto fail;
  if (sg_logs_init(d, db, err) < 0)
    goto fail;
  if (sg_meter_init(d, db, err) < 0)
    goto fail;
  d->gpus = sg_gpu_inventory_new(d->cfg.gpus, d->cfg.gpus_fallback, err);
  if (!d->gpus)
    goto fail;
  /* Precise timers: the coarse monotonic clock ticks every few ms, which
   * shows directly in cold starts (the first health probe is due 2 ms after
   * spawn). */
  struct event_config *ecfg = event_config_new();
  event_config_set_flag(ecfg, EVENT_BASE_FLAG_PRECISE_TIMER);
  d->base = event_base_new_with_config(ecfg);
  event_config_free(ecfg);
  if (!d->base) {
    sg_make_error(err, ENOMEM, "cannot create the event loop");
    goto fail;
  }
  if (sg_process_runtime_init(d->base, err) < 0)
    goto fail;
  if (sg_process_runtime_set_user(d->cfg.run_as, err) < 0)
    goto fail;
  if (sg_daemon_images_init(d, err) < 0)
    goto fail;
  if (sg_daemon_cluster_init(d, err) < 0)
    goto fail;
  if (reconcile(d, err) < 0)
    goto fail;
  if (sg_store_endpoint_each(d->store, load_endpoint, d, err) < 0)
    goto fail;
  sg_daemon_cluster_adopt(d);
  if (sg_jobs_init(d, db, err) < 0)
    goto fail;
  if (d->cfg.sample_endpoint)
    create_sample(d);
  if (bind_http(d, err) < 0)
    goto fail;
  url_path = xasprintf("%s/url", d->cfg.data_dir);
  url_line = xasprintf("%s\n", d->url);
  sg_write_file_atomic(url_path, url_line, strlen(url_line), 0644);

  d->tick = event_new(d->base, -1, EV_PERSIST, tick_cb, d);
  struct timeval tv = {0, TICK_MS * 1000};
  event_add(d->tick, &tv);
  d->sigterm = evsignal_new(d->base, SIGTERM, stop_cb, d);
  d->sigint = evsignal_new(d->base, SIGINT, stop_cb, d);
  evsignal_add(d->sigterm, NULL);
  evsignal_add(d->sigint, NULL);
  return d;
fail:
  sg_daemon_free(d);
  return NULL;
}

/* Stops every worker and waits (bounded) for them to exit. */
static void stop_all(sg_daemon_t *d) {
  sg_endpoint_t *ep;
  TAILQ_FOREACH(ep, &d->endpoints, link) {
    sg_gateway_fail_queue(ep, 503, "shutting_down", "sgpud is shutting down");
    sg_worker_t *w;
    TAILQ_FOREACH(w, &ep->workers, link) {
      if (!sg_worker_live(w))
        continue;
      if (w->rt->detach && w->rt->detach(w->inst)) {
        w->detached = true;
        sg_logs_event(d, ep->name, w->id, "worker left running for the next sgpud to adopt");
        continue;
      }
      sg_worker_stop(w, "sgpud shutting down");
    }
  }
  int64_t deadline = sg_now_ms() + (int64_t)(d->cfg.stop_grace_s * 1000) + 2000;
  for (;;) {
    bool live = false;
    TAILQ_FOREACH(ep, &d->endpoints, link) {
      sg_worker_t *w;
      TAILQ_FOREACH(w, &ep->workers, link) live |= !w->exited && !w->detached && w->inst;
    }
    if (!live || sg_now_ms() > deadline)
      break;
    event_base_loop(d->base, EVLOOP_ONCE);
  }
}

/* Tells a person who just ran `make run` how to call the sample endpoint. */
static void print_hint(sg_daemon_t *d) {
  if (!d->cfg.sample_endpoint || !sg_daemon_find_endpoint(d, "echo"))
    return;
  printf("\nsgpud is serving on %s with the sample endpoint \"echo\". Try, in another shell:\n\n"
         "  export SGPU_URL=%s SGPU_API_KEY=$(cat %s/admin.key)\n"
         "  curl -H \"Authorization: Bearer $SGPU_API_KEY\" $SGPU_URL/e/echo/infer -d 'hello'\n"
         "  curl -N -H \"Authorization: Bearer $SGPU_API_KEY\" \"$SGPU_URL/e/echo/infer?stream=1\" -d 'hi'\n"
         "  build/sgpu endpoint list\n"
         "  build/sgpu workers echo\n"
         "  build/sgpu logs echo -f\n\n"
         "Stop with Ctrl-C (workers are stopped with it).\n\n",
         d->url, d->url, d->cfg.data_dir);
  fflush(stdout);
}

int sg_daemon_run(sg_daemon_t *d) {
  sg_info("listening on %s (data dir %s, %zu GPU(s))", d->url, d->cfg.data_dir, d->gpus->n);
  print_hint(d);
  sg_scaler_kick(d);
  event_base_dispatch(d->base);
  stop_all(d);
  sg_logs_flush(d);
  return 0;
}

void sg_daemon_free(sg_daemon_t *d) {
  if (!d)
    return;
  /* Client connections go first, so that the owners of their requests
   * (proxies, job requests) hear of the end while the endpoints, workers and
   * jobs they refer to still exist. */
  sg_http_server_free(d->http);
  d->http = NULL;
  sg_meter_shutdown(d);
  sg_jobs_shutdown(d);
  sg_endpoint_t *ep;
  while ((ep = TAILQ_FIRST(&d->endpoints))) {
    TAILQ_REMOVE(&d->endpoints, ep, link);
    TAILQ_INSERT_TAIL(&d->deleted, ep, link);
  }
  while ((ep = TAILQ_FIRST(&d->deleted))) {
    sg_worker_t *w;
    TAILQ_FOREACH(w, &ep->workers, link) {
      if (!w->exited && !w->detached && w->inst)
        w->rt->signal(w->inst, SIGKILL);
      w->exited = true;
      w->in_flight = 0;
      w->probe_req = NULL;
    }
    ep->deleted = true;
    ep->proxies = 0;
    sg_endpoint_maybe_free(ep);
  }
  sg_daemon_images_free(d);
  sg_daemon_cluster_free(d);
  sg_logs_shutdown(d);
  sg_http_server_free(d->http);
  if (d->tick)
    event_free(d->tick);
  if (d->kick)
    event_free(d->kick);
  if (d->sigterm)
    event_free(d->sigterm);
  if (d->sigint)
    event_free(d->sigint);
  sg_process_runtime_shutdown();
  if (d->base)
    event_base_free(d->base);
  sg_store_close(d->store);
  sg_gpu_inventory_free(d->gpus);
  sg_daemon_config_clear(&d->cfg);
  sg_router_free(d->router);
  free(d->api_key);
  free(d->url);
  free(d->self_dir);
  free(d);
}
