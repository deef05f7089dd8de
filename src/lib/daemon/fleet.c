/* The fleet: the endpoint list and each endpoint's lifecycle, and the events
 * that tell subscribed modules (gateway, jobs, meter, scaler, images) of
 * endpoint and worker changes, so that the fleet calls none of them. */
#include "daemon/fleet.h"
#include "logs/logs.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

void sg_fleet_subscribe(sg_daemon_t *d, const sg_fleet_subscriber_t *ops, void *ud) {
  if (d->n_subs == SG_FLEET_MAX_SUBSCRIBERS) {
    sg_errlog("fleet: more than %d subscribers", SG_FLEET_MAX_SUBSCRIBERS);
    abort();
  }
  d->subs[d->n_subs++] = (struct sg_fleet_sub){ops, ud};
}

void sg_fleet_unsubscribe(sg_daemon_t *d, const sg_fleet_subscriber_t *ops, void *ud) {
  for (size_t i = 0; i < d->n_subs; i++) {
    if (d->subs[i].ops == ops && d->subs[i].ud == ud) {
      memmove(&d->subs[i], &d->subs[i + 1], (d->n_subs - i - 1) * sizeof(d->subs[0]));
      d->n_subs--;
      return;
    }
  }
}

/* Calls each subscriber's `event` callback that is set, in order. */
#define DELIVER(d, event, ...)                                                                                         \
  do {                                                                                                                 \
    for (size_t i_ = 0; i_ < (d)->n_subs; i_++) {                                                                      \
      if ((d)->subs[i_].ops->event)                                                                                    \
        (d)->subs[i_].ops->event((d)->subs[i_].ud, __VA_ARGS__);                                                       \
    }                                                                                                                  \
  } while (0)

void sg_fleet_endpoint_created(sg_endpoint_t *ep) { DELIVER(ep->d, endpoint_created, ep); }
void sg_fleet_endpoint_updated(sg_endpoint_t *ep) { DELIVER(ep->d, endpoint_updated, ep); }
void sg_fleet_endpoint_deleted(sg_endpoint_t *ep) {
  DELIVER(ep->d, endpoint_deleted, ep);
  sg_logs_endpoint_deleted(ep->d, ep->name); /* its log follows end */
}
void sg_fleet_endpoint_freed(sg_endpoint_t *ep) { DELIVER(ep->d, endpoint_freed, ep); }

void sg_fleet_worker_started(sg_worker_t *w, sg_fleet_start_t how, int64_t start_wall) {
  DELIVER(w->d, worker_started, w, how, start_wall);
}

void sg_fleet_worker_ready(sg_worker_t *w) { DELIVER(w->d, worker_ready, w); }
void sg_fleet_worker_in_rotation(sg_worker_t *w) { DELIVER(w->d, worker_in_rotation, w); }
void sg_fleet_worker_load(sg_worker_t *w, int delta) { DELIVER(w->d, worker_load, w, delta); }
void sg_fleet_request_ended(sg_worker_t *w) { DELIVER(w->d, request_ended, w); }
void sg_fleet_worker_released(sg_worker_t *w) { DELIVER(w->d, worker_released, w); }

void sg_fleet_worker_ended(sg_worker_t *w, bool scheduled, int64_t end_wall) {
  DELIVER(w->d, worker_ended, w, scheduled, end_wall);
}

void sg_fleet_worker_freed(sg_worker_t *w) { DELIVER(w->d, worker_freed, w); }
void sg_fleet_demand_changed(sg_daemon_t *d) { DELIVER(d, demand_changed, d); }

void sg_fleet_waiting(const sg_endpoint_t *ep, int64_t now, int *queued, int64_t *oldest_wait_ms) {
  *queued = 0;
  *oldest_wait_ms = 0;
  DELIVER(ep->d, waiting, ep, now, queued, oldest_wait_ms);
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
  TAILQ_INSERT_TAIL(&d->endpoints, ep, link);
  sg_fleet_endpoint_created(ep);
  return ep;
}

static void clear_failure_state(sg_endpoint_t *ep) {
  ep->consecutive_failures = 0;
  ep->backoff_until_mono = 0;
  free(ep->last_error);
  ep->last_error = NULL;
  ep->image_failed = false;
}

bool sg_endpoint_update(sg_endpoint_t *ep, sg_spec_t *spec, int version, int64_t updated) {
  bool restart = sg_spec_restart_needed(ep->spec, spec);
  int before = ep->version;
  sg_spec_free(ep->spec);
  ep->spec = spec;
  ep->version = version;
  ep->updated_wall = updated;
  clear_failure_state(ep);
  int kept = 0;
  sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) {
    if (!restart && !w->exited && !w->stopping && w->version == before) {
      w->version = version;
      kept++;
    }
  }
  if (restart)
    sg_logs_event(ep->d, ep->name, NULL, "endpoint updated to version %d: workers are replaced one by one", version);
  else
    sg_logs_event(ep->d, ep->name, NULL, "endpoint updated to version %d: %d worker(s) go on without a restart",
                  version, kept);
  sg_fleet_endpoint_updated(ep);
  return restart;
}

void sg_endpoint_delete(sg_endpoint_t *ep) {
  sg_daemon_t *d = ep->d;
  ep->deleted = true;
  TAILQ_REMOVE(&d->endpoints, ep, link);
  TAILQ_INSERT_TAIL(&d->deleted, ep, link);
  sg_fleet_endpoint_deleted(ep);
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
  sg_fleet_endpoint_freed(ep);
  free(ep->name);
  sg_spec_free(ep->spec);
  free(ep->last_error);
  for (int i = 0; i < ep->n_last_logs; i++)
    free(ep->last_logs[i]);
  free(ep);
}

/* True when no node here can ever hold gpu.count GPUs of gpu.type: only for
 * a runtime that takes its GPUs from this host's inventory. */
static bool unschedulable(const sg_endpoint_t *ep) {
  const sg_spec_t *spec = ep->spec;
  if (spec->gpu.count <= 0 || !spec->gpu.type || !ep->d->gpus)
    return false;
  const sg_runtime_ops_t *rt = sg_runtime_find(spec->runtime);
  if (!rt || (rt->caps & SG_RUNTIME_OWN_GPUS))
    return false;
  return sg_gpu_total_count(ep->d->gpus, spec->gpu.type) < spec->gpu.count;
}

const char *sg_endpoint_state(const sg_endpoint_t *ep) {
  bool ready = false, current = false;
  const sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) {
    if (w->state == SG_W_READY)
      ready = true;
    if (sg_worker_live(w) && w->version == ep->version && !w->stopping)
      current = true;
  }
  if (ready)
    return "serving";
  if (!current) {
    if (unschedulable(ep))
      return "unschedulable";
    if (ep->image_failed)
      return "image_pull_failed";
    if (ep->consecutive_failures >= SG_CRASH_LOOP_FAILURES)
      return "crash_loop";
  }
  return current || ep->spec->workers.min > 0 ? "starting" : "scaled_to_zero";
}

bool sg_endpoint_failing(const sg_endpoint_t *ep, const char **code) {
  const char *s = sg_endpoint_state(ep);
  bool failing = !strcmp(s, "unschedulable");
  /* Once the backoff is over, work queues again and starts a worker: the
   * endpoint may have recovered (a registry back, a file restored). */
  if (!strcmp(s, "crash_loop") || !strcmp(s, "image_pull_failed"))
    failing = ep->backoff_until_mono > sg_now_ms();
  if (failing)
    *code = s;
  return failing;
}

json_t *sg_endpoint_to_json(sg_endpoint_t *ep) {
  json_t *j = sg_spec_to_json(ep->spec);
  char t1[32], t2[32];
  json_object_set_new(j, "version", json_integer(ep->version));
  json_object_set_new(j, "created_at", json_string(sg_format_time(ep->created_wall, t1, sizeof(t1))));
  json_object_set_new(j, "updated_at", json_string(sg_format_time(ep->updated_wall, t2, sizeof(t2))));
  int n[5] = {0}, outdated = 0;
  sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) {
    n[w->state]++;
    outdated += sg_worker_live(w) && w->version != ep->version;
  }
  json_t *logs = json_array();
  for (int i = 0; i < ep->n_last_logs; i++)
    json_array_append_new(logs, json_string(ep->last_logs[i]));
  /* "desired" and "last_decision" are the scaler's, "queued" the gateway's:
   * set by their endpoint_status callbacks. */
  json_t *status = json_pack(
      "{s:i, s:{s:i, s:i, s:i, s:i}, s:i, s:i, s:I, s:b, s:i, s:o, s:o, s:n}", "desired", 0, "workers", "starting",
      n[SG_W_STARTING], "ready", n[SG_W_READY], "draining", n[SG_W_DRAINING], "outdated", outdated, "in_flight",
      ep->in_flight, "queued", 0, "served", (json_int_t)ep->served, "crash_loop",
      ep->consecutive_failures >= SG_CRASH_LOOP_FAILURES, "consecutive_failures", ep->consecutive_failures,
      "last_error", ep->last_error ? json_string(ep->last_error) : json_null(), "last_logs", logs, "last_decision");
  DELIVER(ep->d, endpoint_status, ep, status);
  json_object_set_new(status, "state", json_string(sg_endpoint_state(ep)));
  json_object_set_new(j, "status", status);
  return j;
}
