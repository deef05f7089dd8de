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
#include "auth/keys.h"
#include "gateway/gateway.h"
#include "gateway/jobs.h"
#include "logs/logs.h"
#include "meter/meter-internal.h"
#include "scaler/scaler.h"
#include "sgpu/log.h"
#include "sgpu/pool.h"
#include "sgpu/secrets-store.h"
#include "sgpu/util.h"

#define TICK_MS 250
#define QUERY_THREADS 2 /* log and usage queries at once */

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
  const sg_runtime_ops_t *rt = sg_runtime_find(rec->runtime);
  if (rt && rt->reconcile)
    rt->reconcile(rec->id, rec->pid);
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

/* Every module's routes (d NULL: only to list them). */
static void add_routes(sg_router_t *r, sg_daemon_t *d) {
  sg_api_routes(r, d);
  sg_gateway_routes(r, d);
  sg_jobs_routes(r, d);
  sg_jobs_pull_routes(r, d);
  sg_metrics_routes(r, d);
}

static void print_route(void *ud, const sg_route_t *rt) {
  char m[64], sc[64];
  fprintf(ud, "%s\t%s%s\t%s%s\n", sg_route_methods_str(rt->methods, m, sizeof(m)), rt->path, rt->prefix ? "*" : "",
          sg_scope_str(rt->scope, sc, sizeof(sc)), rt->flags & SG_ROUTE_LISTS_ENDPOINTS ? "\tlists-endpoints" : "");
}

void sg_daemon_list_routes(FILE *f) {
  sg_router_t *r = sg_router_new("-");
  add_routes(r, NULL);
  sg_router_each(r, print_route, f);
  sg_router_free(r);
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
  /* The daemon owns the router; each module registers its routes; keys
   * and scopes are checked by api/keys.c. */
  d->router = sg_router_new(d->api_key);
  add_routes(d->router, d);
  sg_keys_attach(d, d->router);
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
                        "command", worker, "env", "MODEL", "tiny-echo", "WARMUP_MS", "500", "health", "path", "/health",
                        "gpu", "type", "a100", "count", 1, "workers", "min", 0, "max", 2, "idle_timeout_s", 60);
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
  cleanup_free char *db = NULL, *url_path = NULL, *url_line = NULL, *worker_key = NULL, *secret_key = NULL;
  sg_daemon_t *d = xcalloc(1, sizeof(*d));
  d->cfg = *cfg;
  memset(cfg, 0, sizeof(*cfg));
  TAILQ_INIT(&d->endpoints);
  TAILQ_INIT(&d->deleted);
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
  worker_key = xasprintf("%s/worker.key", d->cfg.data_dir);
  if (sg_worker_key_load(worker_key, d->worker_key, err) < 0)
    goto fail;
  secret_key = xasprintf("%s/secret.key", d->cfg.data_dir);
  if (sg_seal_key_load(secret_key, d->secret_key, err) < 0)
    goto fail;
  db = xasprintf("%s/sgpu.db", d->cfg.data_dir);
  d->store = sg_store_open(db, err);
  if (!d->store)
    goto fail;
  if (sg_keys_init(d, err) < 0)
    goto fail;
  sg_store_set_seal_key(d->store, d->secret_key);
  if (sg_logs_init(d, db, err) < 0)
    goto fail;
  if (sg_meter_init(d, db, err) < 0)
    goto fail;
  /* Fleet events reach modules in the order they subscribe: the meter (in
   * sg_meter_init) hears a worker is ready before the gateway sends it a request. */
  sg_gateway_init(d);
  sg_scaler_init(d);
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
  d->readers = sg_store_readers_new(db);
  d->store_thread = sg_store_thread_new(d->base, d->store, err);
  if (!d->store_thread)
    goto fail;
  d->query_pool = sg_pool_new(d->base, QUERY_THREADS, err);
  if (!d->query_pool)
    goto fail;
  if (sg_daemon_images_init(d, err) < 0)
    goto fail;
  if (sg_daemon_secrets_init(d, err) < 0)
    goto fail;
  if (sg_daemon_volumes_init(d, err) < 0)
    goto fail;
  if (sg_daemon_runtimes_init(d, err) < 0)
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
      if (sg_worker_draining(w)) {
        sg_worker_stop(w, "sgpud shutting down");
        continue;
      }
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
  /* From here on this thread is the loop that serves: in debug builds every
   * store call on it aborts (sg_assert_not_loop_thread). The loads of
   * sg_daemon_new ran before anything was served and are not checked. */
  sg_loop_thread_set();
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
  /* Queries still running finish against writers that still exist. */
  sg_pool_free(d->query_pool);
  d->query_pool = NULL;
  /* Writes still queued apply, live state with them, before the endpoints go. */
  sg_keys_flush(d);
  if (d->store_thread)
    sg_store_thread_drain(d->store_thread);
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
    }
    ep->deleted = true;
    ep->proxies = 0;
    sg_endpoint_maybe_free(ep);
  }
  sg_daemon_images_free(d);
  sg_daemon_volumes_free(d);
  sg_daemon_runtimes_free(d);
  sg_logs_shutdown(d);
  /* Before the loop goes: its last writes apply (done() runs on the loop). */
  sg_store_thread_free(d->store_thread);
  d->store_thread = NULL;
  sg_keys_free(d);
  sg_daemon_secrets_free(d); /* after the last done() that may set one */
  sg_http_server_free(d->http);
  if (d->tick)
    event_free(d->tick);
  if (d->kick)
    event_free(d->kick);
  if (d->sigterm)
    event_free(d->sigterm);
  if (d->sigint)
    event_free(d->sigint);
  if (d->base)
    event_base_free(d->base);
  sg_store_close(d->store);
  sg_store_readers_free(d->readers);
  sg_gpu_inventory_free(d->gpus);
  sg_daemon_config_clear(&d->cfg);
  sg_router_free(d->router);
  free(d->api_key);
  free(d->url);
  free(d->self_dir);
  free(d);
}
