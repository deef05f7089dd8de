/* The scaler loop: notes the start delay of every worker that became ready,
 * describes each endpoint's workers and demand to the pure step (policy.c,
 * sg_scale_step: metrics, window, decision and the workers to stop), logs the
 * decision when it changes something, and carries it out by starting or
 * stopping workers. It runs on every tick
 * and, through sg_scaler_kick(), at once after anything that changes demand
 * or supply (a request queued, a request done, a worker ready or gone, a spec
 * changed: the fleet's demand_changed and endpoint events), so
 * scale-from-zero waits for no tick. What waits for a worker (requests,
 * jobs) it reads through the fleet (sg_fleet_waiting). */
#include "logs/logs.h"
#include "scaler/scaler.h"
#include "sgpu/log.h"
#include "sgpu/policy.h"
#include "sgpu/util.h"

#include <string.h>

/* The scaler's state of an endpoint (ep->scale): made by its first pass,
 * freed with the endpoint (endpoint_freed). */
struct sg_ep_scale {
  sg_scale_window_t window; /* demand history, for sg_scale_step */
  int64_t seen_ready_mono;  /* the newest worker ready time measured */
  int desired;              /* workers the last pass wanted */
  int held;                 /* idle workers the last pass held within scale.hold_s */
  char *last_decision;      /* the reason of the last decision logged */
};

int sg_scaler_desired(const sg_endpoint_t *ep) { return ep->scale ? ep->scale->desired : 0; }

static void kick_cb(evutil_socket_t fd, short what, void *arg) {
  sg_daemon_t *d = arg;
  d->kick_pending = false;
  sg_scaler_run(d);
}

void sg_scaler_kick(sg_daemon_t *d) {
  if (d->kick_pending || d->shutting_down || !d->base)
    return;
  if (!d->kick)
    d->kick = evtimer_new(d->base, kick_cb, d);
  struct timeval tv = {0, 0};
  evtimer_add(d->kick, &tv);
  d->kick_pending = true;
}

/* Workers the free GPUs of this node allow now, -1 for unlimited (a runtime
 * that schedules its own GPUs holds the ones it cannot place pending). */
static int gpu_slots(const sg_endpoint_t *ep) {
  const sg_spec_t *spec = ep->spec;
  const sg_runtime_ops_t *rt = sg_runtime_find(spec->runtime);
  if (spec->gpu.count > 0 && rt && !(rt->caps & SG_RUNTIME_OWN_GPUS))
    return sg_gpu_free_count(ep->d->gpus, spec->gpu.type) / spec->gpu.count;
  return -1;
}

/* Logs a decision that changes something (workers started or stopped, or a
 * new count wanted that cannot start yet) as an endpoint event with its
 * reason; the last one logged is the endpoint's status.last_decision. */
static void set_decision(sg_endpoint_t *ep, const sg_scale_decision_t *dec) {
  struct sg_ep_scale *sc = ep->scale;
  bool acted = dec->start > 0 || dec->stop > 0;
  if (acted || dec->desired != sc->desired || dec->held != sc->held) {
    sg_logs_event(ep->d, ep->name, NULL, "scaler: %s", dec->reason);
    free(sc->last_decision);
    sc->last_decision = xstrdup(dec->reason);
  }
  if (dec->start > 0)
    ep->metrics.scale_ups++;
  if (dec->stop > 0)
    ep->metrics.scale_downs++;
  sc->desired = dec->desired;
  sc->held = dec->held;
}

/* Feeds the endpoint's window the start delay of every worker that became
 * ready since the last pass. */
static void note_starts(sg_endpoint_t *ep) {
  struct sg_ep_scale *sc = ep->scale;
  int64_t newest = sc->seen_ready_mono;
  sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) {
    if (w->ready_mono > sc->seen_ready_mono && w->started_mono > 0) {
      if (!w->adopted) /* an adopted worker's start was not measured */
        sg_scale_window_note_start(&sc->window, w->ready_mono - w->started_mono);
      if (w->ready_mono > newest)
        newest = w->ready_mono;
    }
  }
  sc->seen_ready_mono = newest;
}

static sg_scale_wstate_t scale_state(const sg_worker_t *w) {
  return w->state == SG_W_READY ? SG_SCALE_W_READY : w->state == SG_W_STARTING ? SG_SCALE_W_STARTING : SG_SCALE_W_GONE;
}

static void rollout(sg_endpoint_t *ep, int64_t now);

/* GPUs of type that worker w holds in the inventory. */
static int gpus_held(const sg_worker_t *w, const char *type) {
  const sg_gpu_inventory_t *inv = w->d->gpus;
  int n = 0;
  for (size_t i = 0; i < inv->n; i++)
    if (inv->gpus[i].holder && !strcmp(inv->gpus[i].holder, w->id) && !strcmp(inv->gpus[i].type, type))
      n++;
  return n;
}

/* Live workers of ep not asked to stop. */
static int running_count(const sg_endpoint_t *ep) {
  int n = 0;
  const sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) n += sg_worker_live(w) && !w->stopping;
  return n;
}

/* Fair share of the node's GPUs: ep has work waiting and no worker can start
 * because the GPUs of its type are held. Idle workers (ready, nothing in
 * flight) of other endpoints that hold such GPUs stop, never below their
 * workers.min, the longest idle first, just enough for one worker of ep
 * (GPUs that stopping workers still hold count as coming free, so the next
 * passes stop no more while they exit). Each stop is an event on both
 * endpoints. The GPUs come free when the worker has exited; that pass starts
 * ep's worker. */
static void reclaim_gpus(sg_endpoint_t *ep) {
  sg_daemon_t *d = ep->d;
  const char *type = ep->spec->gpu.type;
  if (ep->spec->gpu.count <= 0 || !type)
    return;
  int short_by = ep->spec->gpu.count - sg_gpu_free_count(d->gpus, type);
  sg_endpoint_t *o;
  sg_worker_t *w;
  TAILQ_FOREACH(o, &d->endpoints, link) {
    TAILQ_FOREACH(w, &o->workers, link) {
      if (w->stopping && !w->exited)
        short_by -= gpus_held(w, type);
    }
  }
  while (short_by > 0) {
    sg_worker_t *victim = NULL;
    int victim_gpus = 0;
    TAILQ_FOREACH(o, &d->endpoints, link) {
      if (o == ep || running_count(o) <= o->spec->workers.min)
        continue;
      TAILQ_FOREACH(w, &o->workers, link) {
        if (w->state != SG_W_READY || w->stopping || w->in_flight > 0)
          continue;
        int held = gpus_held(w, type);
        if (held > 0 && (!victim || w->last_used_mono < victim->last_used_mono)) {
          victim = w;
          victim_gpus = held;
        }
      }
    }
    if (!victim)
      return;
    /* sg_worker_stop's event on the victim's endpoint names ep. */
    cleanup_free char *why = xasprintf("scaler: idle, its %d %s GPU(s) go to endpoint %s, whose work waits for GPUs",
                                       victim_gpus, type, ep->name);
    sg_logs_event(d, ep->name, NULL,
                  "scaler: stopping idle worker %s of endpoint %s to free %d %s GPU(s) for this "
                  "endpoint's waiting work",
                  victim->id, victim->ep->name, victim_gpus, type);
    sg_worker_stop(victim, why);
    short_by -= victim_gpus;
  }
}

/* One pass over ep: describes it to the pure step (policy.c), logs the
 * decision and carries it out. */
static void scale_endpoint(sg_endpoint_t *ep, int64_t now) {
  if (!ep->scale) {
    ep->scale = xcalloc(1, sizeof(*ep->scale));
    sg_scale_window_init(&ep->scale->window);
  }
  sg_scale_params_t params;
  sg_scale_params_from_spec(ep->spec, &params);
  size_t n = 0;
  sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) n++;
  cleanup_free sg_scale_worker_t *sw = xcalloc(n ? n : 1, sizeof(*sw));
  cleanup_free sg_worker_t **ws = xcalloc(n ? n : 1, sizeof(*ws));
  cleanup_free size_t *victims = xcalloc(n ? n : 1, sizeof(*victims));
  size_t i = 0;
  TAILQ_FOREACH(w, &ep->workers, link) {
    sw[i] = (sg_scale_worker_t){.state = scale_state(w),
                                .stopping = w->stopping,
                                .outdated = w->version != ep->version,
                                .in_flight = w->in_flight,
                                .started_ms = w->started_mono,
                                .last_used_ms = w->last_used_mono};
    ws[i++] = w;
  }
  int queued = 0;
  int64_t oldest_wait = 0;
  sg_fleet_waiting(ep, now, &queued, &oldest_wait); /* requests and jobs alike */
  sg_scale_input_t in = {.workers = sw,
                         .n_workers = n,
                         .in_flight = ep->in_flight,
                         .queued = queued,
                         .completed = ep->served,
                         .oldest_wait_ms = oldest_wait,
                         .gpu_slots = gpu_slots(ep),
                         .backing_off = ep->backoff_until_mono > now,
                         .failing = ep->consecutive_failures > 0};
  note_starts(ep);
  sg_scale_decision_t dec;
  size_t n_victims = sg_scale_step(&params, &ep->scale->window, &in, now, &dec, victims);
  set_decision(ep, &dec);

  for (size_t k = 0; k < n_victims; k++) {
    if (ws[victims[k]]->state == SG_W_READY)
      sg_worker_drain(ws[victims[k]], SG_SCALE_STOP_REASON);
    else
      sg_worker_stop(ws[victims[k]], SG_SCALE_STOP_STARTING_REASON);
  }
  for (int k = 0; k < dec.start; k++) {
    cleanup_error sg_error_t *err = NULL;
    if (!sg_worker_start(ep, &err)) {
      sg_warn("endpoint %s: cannot start a worker: %s", ep->name, err->message);
      break;
    }
  }
  if (dec.rule == SG_SCALE_RULE_WAIT_GPUS && queued > 0 && !in.backing_off && in.gpu_slots == 0)
    reclaim_gpus(ep);
  rollout(ep, now);
}

/* Rolling replacement after an update that needs new workers: a live worker
 * of an older version is outdated. One that is still starting is stopped
 * (it serves nothing yet). Each ready worker of the current version that
 * has not yet replaced one retires one outdated ready worker (drained: it
 * finishes what it has in flight), so ready capacity never drops for the
 * update. New workers start for the outdated ones not yet covered by a
 * starting one, as many as workers.max and the free GPUs allow (surge);
 * when none can start and none is starting, one outdated worker drains to
 * make room (one at a time). Nothing starts during a crash loop's backoff:
 * when the new version never becomes ready, the outdated workers go on
 * serving and the endpoint's last_error says why. Here rather than in a
 * module of its own because starts share workers.max and the free GPUs with
 * the scaler's own decisions; stateless but for each worker's
 * replaced_old, so an update or rollback in the middle simply retargets. */
static void rollout(sg_endpoint_t *ep, int64_t now) {
  int outdated = 0, starting = 0, live = 0;
  sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) {
    if (!sg_worker_live(w) || w->stopping)
      continue;
    if (w->version != ep->version && w->state == SG_W_STARTING) {
      sg_worker_stop(w, "an outdated version");
      continue;
    }
    live++;
    if (w->version != ep->version)
      outdated++;
    else if (w->state == SG_W_STARTING)
      starting++;
  }
  if (outdated == 0)
    return;
  /* Pair each new ready worker with an outdated one to retire. */
  TAILQ_FOREACH(w, &ep->workers, link) {
    if (outdated == 0)
      break;
    if (w->state != SG_W_READY || w->stopping || w->version != ep->version || w->replaced_old)
      continue;
    sg_worker_t *victim = NULL, *o;
    TAILQ_FOREACH(o, &ep->workers, link) {
      if (o->state == SG_W_READY && !o->stopping && o->version != ep->version &&
          (!victim || o->in_flight < victim->in_flight))
        victim = o;
    }
    if (!victim)
      break;
    w->replaced_old = true;
    cleanup_free char *why = xasprintf("replaced by %s of version %d", w->id, ep->version);
    sg_worker_drain(victim, why);
    outdated--;
    live--;
  }
  int want = outdated - starting;
  if (want <= 0 || ep->backoff_until_mono > now)
    return;
  int room = ep->spec->workers.max - live;
  int slots = gpu_slots(ep);
  if (slots >= 0 && slots < room)
    room = slots;
  if (room <= 0) {
    if (starting > 0)
      return; /* wait for it to be ready */
    sg_worker_t *victim = NULL, *o;
    TAILQ_FOREACH(o, &ep->workers, link) {
      if (o->state == SG_W_READY && !o->stopping && o->version != ep->version &&
          (!victim || o->in_flight < victim->in_flight))
        victim = o;
    }
    if (victim) {
      cleanup_free char *why = xasprintf("making room for version %d (no worker can start beside it)", ep->version);
      sg_worker_drain(victim, why);
    }
    return;
  }
  if (want > room)
    want = room;
  sg_logs_event(ep->d, ep->name, NULL, "rollout: starting %d worker(s) of version %d for %d outdated", want,
                ep->version, outdated);
  for (int k = 0; k < want; k++) {
    cleanup_error sg_error_t *err = NULL;
    if (!sg_worker_start(ep, &err)) {
      sg_warn("endpoint %s: cannot start a worker: %s", ep->name, err->message);
      break;
    }
  }
}

static void on_demand(void *ud, sg_daemon_t *d) { sg_scaler_kick(d); }
static void on_endpoint(void *ud, sg_endpoint_t *ep) { sg_scaler_kick(ep->d); }

static void on_endpoint_freed(void *ud, sg_endpoint_t *ep) {
  if (!ep->scale)
    return;
  free(ep->scale->last_decision);
  free(ep->scale);
  ep->scale = NULL;
}

/* status.desired and status.last_decision of the endpoint's JSON. */
static void endpoint_status(void *ud, const sg_endpoint_t *ep, json_t *status) {
  const struct sg_ep_scale *sc = ep->scale;
  if (!sc)
    return; /* no pass yet: 0 and null, as the fleet put them */
  json_object_set_new(status, "desired", json_integer(sc->desired));
  json_object_set_new(status, "last_decision", sc->last_decision ? json_string(sc->last_decision) : json_null());
}

static const sg_fleet_subscriber_t subscriber = {
    .endpoint_created = on_endpoint,
    .endpoint_updated = on_endpoint,
    .endpoint_freed = on_endpoint_freed,
    .demand_changed = on_demand,
    .endpoint_status = endpoint_status,
};

void sg_scaler_init(sg_daemon_t *d) { sg_fleet_subscribe(d, &subscriber, NULL); }

void sg_scaler_run(sg_daemon_t *d) {
  if (d->shutting_down)
    return;
  int64_t now = sg_now_ms();
  sg_endpoint_t *ep;
  TAILQ_FOREACH(ep, &d->endpoints, link) scale_endpoint(ep, now);
}
