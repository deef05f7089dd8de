/* The scaler loop: feeds each endpoint's metrics window (one observation
 * per pass, plus the start delay of every worker that became ready), asks the
 * pure policy (policy.c) for a decision, logs it when it changes something,
 * and carries it out by starting or stopping workers. It runs on every tick
 * and, through sg_scaler_kick(), at once after anything that changes demand
 * or supply (a request queued, a request done, a worker ready or gone, a spec
 * changed), so scale-from-zero waits for no tick. */
#include "daemon/daemon-internal.h"
#include "gateway/jobs.h"
#include "sgpu/log.h"
#include "sgpu/policy.h"
#include "sgpu/util.h"

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

static bool idle_expired(const sg_worker_t *w, int64_t now) {
  return w->state == SG_W_READY && w->in_flight == 0 &&
         now - w->last_used_mono >= (int64_t)(w->ep->spec->workers.idle_timeout_s * 1000);
}

/* How many more workers may start now: bounded by this node's free GPUs
 * (not for slurm workers: Slurm holds the ones it cannot place pending), and
 * to one at a time while the endpoint's starts keep failing (after the
 * backoff). */
static int start_slots(sg_endpoint_t *ep, int starting, int64_t now) {
  const sg_spec_t *spec = ep->spec;
  if (ep->backoff_until_mono > now)
    return 0;
  int slots = -1;
  if (spec->gpu.count > 0 && strcmp(spec->runtime, "slurm"))
    slots = sg_gpu_free_count(ep->d->gpus, spec->gpu.type) / spec->gpu.count;
  if (ep->consecutive_failures > 0)
    slots = starting > 0 ? 0 : (slots < 0 || slots > 1 ? 1 : slots);
  return slots;
}

/* The ready worker with nothing in flight that was used the longest ago, or
 * NULL. */
static sg_worker_t *longest_idle(sg_endpoint_t *ep) {
  sg_worker_t *w, *best = NULL;
  TAILQ_FOREACH(w, &ep->workers, link) {
    if (w->state == SG_W_READY && w->in_flight == 0 && !w->stopping &&
        (!best || w->last_used_mono < best->last_used_mono))
      best = w;
  }
  return best;
}

/* Logs a decision that changes something (workers started or stopped, or a
 * new count wanted that cannot start yet) as an endpoint event with its
 * reason; the last one logged is the endpoint's status.last_decision. */
static void set_decision(sg_endpoint_t *ep, const sg_scale_decision_t *dec) {
  bool acted = dec->start > 0 || dec->stop > 0;
  if (acted || dec->desired != ep->desired) {
    sg_logs_event(ep->d, ep->name, NULL, "scaler: %s", dec->reason);
    free(ep->last_decision);
    ep->last_decision = xstrdup(dec->reason);
  }
  if (dec->start > 0)
    ep->metrics.scale_ups++;
  if (dec->stop > 0)
    ep->metrics.scale_downs++;
  ep->desired = dec->desired;
}

/* Requests and jobs waiting for a worker: the scaler treats both alike. */
static int queued_demand(const sg_endpoint_t *ep) { return ep->queued + sg_jobs_queued(ep); }

/* Feeds the endpoint's window: its state now and the start delay of every
 * worker that became ready since the last pass. */
static void observe(sg_endpoint_t *ep, int ready, int idle, int64_t now) {
  int64_t newest = ep->scale_seen_ready_mono;
  sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) {
    if (w->ready_mono > ep->scale_seen_ready_mono && w->started_mono > 0) {
      if (!w->adopted) /* an adopted worker's start was not measured */
        sg_scale_window_note_start(&ep->scale_window, w->ready_mono - w->started_mono);
      if (w->ready_mono > newest)
        newest = w->ready_mono;
    }
  }
  ep->scale_seen_ready_mono = newest;
  sg_scale_window_observe(&ep->scale_window, now, ep->in_flight, queued_demand(ep), ready, idle, ep->served);
}

static void scale_endpoint(sg_endpoint_t *ep, int64_t now) {
  sg_scale_params_t params;
  sg_scale_params_from_spec(ep->spec, &params);
  sg_scale_metrics_t m = {0};
  int idle = 0;
  sg_worker_t *w;
  TAILQ_FOREACH(w, &ep->workers, link) {
    if (w->state == SG_W_READY) {
      m.ready++;
      if (w->in_flight == 0)
        idle++;
      if (idle_expired(w, now))
        m.idle_expired++;
    } else if (w->state == SG_W_STARTING) {
      m.starting++;
      m.starting_age_ms += now - w->started_mono;
    }
  }
  observe(ep, m.ready, idle, now);
  m.in_flight = ep->in_flight;
  m.queued = queued_demand(ep);
  int64_t request_wait = sg_gateway_oldest_wait(ep, now), job_wait = sg_jobs_oldest_wait(ep, now);
  m.oldest_wait_ms = request_wait > job_wait ? request_wait : job_wait;
  m.start_slots = start_slots(ep, m.starting, now);
  m.window = &ep->scale_window;

  sg_scale_decision_t dec;
  sg_scale_decide(&params, &m, now, &dec);
  set_decision(ep, &dec);

  for (int i = 0; i < dec.stop; i++) {
    sg_worker_t *victim = longest_idle(ep);
    if (!victim)
      break;
    sg_worker_stop(victim, "idle past workers.idle_timeout_s");
  }
  for (int i = 0; i < dec.start; i++) {
    cleanup_error sg_error_t *err = NULL;
    if (!sg_worker_start(ep, &err)) {
      sg_warn("endpoint %s: cannot start a worker: %s", ep->name, err->message);
      break;
    }
  }
}

void sg_scaler_run(sg_daemon_t *d) {
  if (d->shutting_down)
    return;
  int64_t now = sg_now_ms();
  sg_endpoint_t *ep;
  TAILQ_FOREACH(ep, &d->endpoints, link) scale_endpoint(ep, now);
}
