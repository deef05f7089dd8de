/* The meter's live half: every worker is metered from the moment sgpud
 * starts it until its exit is noticed, split into starting, busy and idle
 * time. Its usage record is written when it starts, becomes ready and ends,
 * and every checkpoint interval while it runs, so that after a crash of
 * sgpud the bill reaches the last checkpoint and no further. A worker's
 * records are cut at each hour boundary (one record per worker and hour).
 *
 * Durations come from the monotonic clock; a worker's wall-clock times are
 * its start's wall time plus monotonic time since, so a wall clock step does
 * not make time appear or vanish. Records are written by the usage writer
 * thread; this file runs on the loop only. */
#include "meter/meter-internal.h"
#include "meter/writer.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define HOUR_MS 3600000LL

struct sg_meter {
  sg_price_table_t prices;
  sg_usage_writer_t *writer;
  uint64_t seq; /* newest batch submitted */
  int64_t interval_ms;
  int64_t last_checkpoint;
  sg_usage_record_t *recs; /* records gathered for the next batch */
  size_t n, cap;
};

/* A worker's meter: its current usage record (w->meter, owned here: made
 * when it starts, freed with it). */
struct sg_worker_meter {
  bool on;                /* metered: started and its last record not closed */
  sg_meter_acc_t acc;     /* the current record's time by state */
  int seg;                /* the current record's number */
  int64_t seg_start_wall; /* the current record's start */
  int64_t seg_start_hour; /* the hour it is in */
  int64_t closed_ms;      /* metered time of the worker's earlier records */
  int64_t requests;       /* requests that ended during the current record */
  double price;           /* per GPU-second, fixed when the worker started */
  int64_t base_wall;      /* the metered start: wall time ... */
  int64_t base_mono;      /* ... and the monotonic time it corresponds to */
  int gpu_count;
  char gpu_type[64];
};
typedef struct sg_worker_meter sg_worker_meter_t;

static sg_worker_meter_t *worker_meter(sg_worker_t *w) {
  if (!w->meter)
    w->meter = xcalloc(1, sizeof(*w->meter));
  return w->meter;
}

static int64_t wall_of(const sg_worker_t *w, int64_t mono) {
  return w->meter->base_wall + (mono - w->meter->base_mono);
}

/* Adds a copy of w's current record to the next batch. */
static void snapshot(sg_meter_t *m, sg_worker_t *w, int64_t end_wall, bool closed, int64_t round_ms) {
  sg_worker_meter_t *wm = w->meter;
  if (m->n == m->cap) {
    m->cap = m->cap ? 2 * m->cap : 16;
    m->recs = xrealloc(m->recs, m->cap * sizeof(*m->recs));
  }
  m->recs[m->n++] = (sg_usage_record_t){
      .worker = xstrdup(w->id),
      .seg = wm->seg,
      .endpoint = xstrdup(w->ep->name),
      .gpu_type = wm->gpu_count > 0 ? xstrdup(wm->gpu_type) : NULL,
      .gpu_count = wm->gpu_count,
      .price = wm->price,
      .start_ms = wm->seg_start_wall,
      .end_ms = end_wall,
      .starting_ms = wm->acc.ms[SG_METER_STARTING],
      .busy_ms = wm->acc.ms[SG_METER_BUSY],
      .idle_ms = wm->acc.ms[SG_METER_IDLE],
      .requests = wm->requests,
      .round_ms = round_ms,
      .closed = closed,
  };
}

static void submit(sg_meter_t *m) {
  if (m->n == 0 || !m->writer)
    return;
  m->seq = sg_usage_writer_submit(m->writer, m->recs, m->n);
  m->recs = NULL;
  m->n = m->cap = 0;
}

/* Adds the time of w's current record, which closes now, times its GPUs to
 * its endpoint's closed GPU time (/metrics). */
static void count_closed(sg_worker_t *w) {
  for (int s = 0; s < SG_METER_NSTATES; s++)
    w->ep->metrics.gpu_ms_closed[s] += w->meter->acc.ms[s] * w->meter->gpu_count;
}

/* Ends w's record at each hour boundary passed before now: the finished
 * hours' records are written closed, and a new record starts. */
static void cut_hours(sg_meter_t *m, sg_worker_t *w, int64_t now) {
  sg_worker_meter_t *wm = w->meter;
  while (sg_meter_hour_start(wall_of(w, now)) > wm->seg_start_hour) {
    int64_t boundary_wall = wm->seg_start_hour + HOUR_MS;
    sg_meter_acc_advance(&wm->acc, wm->base_mono + (boundary_wall - wm->base_wall));
    snapshot(m, w, boundary_wall, true, 0);
    count_closed(w);
    wm->closed_ms += sg_meter_acc_total(&wm->acc);
    sg_meter_acc_reset(&wm->acc);
    wm->requests = 0;
    wm->seg++;
    wm->seg_start_wall = boundary_wall;
    wm->seg_start_hour = boundary_wall;
  }
}

/* The state w's load puts it in, once it is past starting. */
static sg_meter_state_t load_state(const sg_worker_t *w) { return w->in_flight > 0 ? SG_METER_BUSY : SG_METER_IDLE; }

static void checkpoint(sg_meter_t *m, sg_worker_t *w, int64_t now) {
  sg_worker_meter_t *wm = w->meter;
  cut_hours(m, w, now);
  if (wm->acc.state != SG_METER_STARTING && wm->acc.state != load_state(w))
    sg_meter_acc_set(&wm->acc, load_state(w), now);
  sg_meter_acc_advance(&wm->acc, now);
  snapshot(m, w, wall_of(w, now), false, 0);
}

static void subscribe(sg_daemon_t *d);

int sg_meter_init(sg_daemon_t *d, const char *db_path, sg_error_t **err) {
  subscribe(d);
  sg_meter_t *m = xcalloc(1, sizeof(*m));
  d->meter = m;
  m->interval_ms = (int64_t)(d->cfg.meter_checkpoint_s * 1000);
  if (m->interval_ms < 100)
    m->interval_ms = 100;
  if (sg_price_table_parse(&m->prices, d->cfg.prices, err) < 0)
    return -1;
  /* Records left open by a sgpud that did not stop cleanly end at their
   * last checkpoint. */
  if (sg_store_usage_close_open(d->store, err) < 0)
    return -1;
  m->writer = sg_usage_writer_start(db_path, err);
  if (!m->writer)
    return -1;
  m->last_checkpoint = sg_now_ms();
  cleanup_free char *text = sg_price_table_format(&m->prices);
  sg_info("prices per GPU-second: %s", *text ? text : "none (usage is metered at no cost)");
  return 0;
}

const sg_price_table_t *sg_meter_prices(sg_daemon_t *d) { return &d->meter->prices; }

static void start_worker(sg_worker_t *w, int64_t base_wall, int64_t base_mono) {
  sg_meter_t *m = w->d->meter;
  if (!m)
    return;
  sg_worker_meter_t *wm = worker_meter(w);
  memset(wm, 0, sizeof(*wm));
  wm->on = true;
  wm->base_wall = base_wall;
  wm->base_mono = base_mono;
  sg_meter_acc_init(&wm->acc, SG_METER_STARTING, base_mono);
  wm->seg_start_wall = base_wall;
  wm->seg_start_hour = sg_meter_hour_start(base_wall);
  wm->gpu_count = w->n_gpus;
  if (w->n_gpus > 0 && w->ep->spec->gpu.type)
    snprintf(wm->gpu_type, sizeof(wm->gpu_type), "%s", w->ep->spec->gpu.type);
  wm->price = w->n_gpus > 0 ? sg_price_lookup(&m->prices, wm->gpu_type) : 0;
  snapshot(m, w, base_wall, false, 0);
  submit(m);
}

static void sg_meter_worker_started(sg_worker_t *w) { start_worker(w, w->started_wall, w->started_mono); }

static void sg_meter_worker_started_at(sg_worker_t *w, int64_t start_wall) {
  int64_t now_wall = sg_wall_ms(), now = sg_now_ms();
  if (start_wall <= 0 || start_wall > now_wall)
    start_wall = now_wall;
  start_worker(w, start_wall, now - (now_wall - start_wall));
}

typedef struct adopt_records {
  sg_usage_record_t last;
  char gpu_type[64];
  int64_t earlier_ms; /* metered time of the records before the last */
  bool have;
} adopt_records_t;

static void adopt_record(void *ud, const sg_usage_record_t *rec) {
  adopt_records_t *a = ud;
  if (a->have)
    a->earlier_ms += a->last.starting_ms + a->last.busy_ms + a->last.idle_ms;
  a->have = true;
  a->last = *rec;
  a->last.worker = a->last.endpoint = NULL;
  snprintf(a->gpu_type, sizeof(a->gpu_type), "%s", rec->gpu_type ? rec->gpu_type : "");
  a->last.gpu_type = NULL;
}

static void sg_meter_worker_adopted(sg_worker_t *w, int64_t start_wall) {
  sg_meter_t *m = w->d->meter;
  if (!m)
    return;
  adopt_records_t a = {0};
  cleanup_error sg_error_t *err = NULL;
  int n = sg_store_usage_reopen(w->d->store, w->id, adopt_record, &a, &err);
  if (n < 0)
    sg_warn("worker %s: earlier usage not found (%s); metered from its start", w->id, err->message);
  if (n <= 0) {
    sg_meter_worker_started_at(w, start_wall);
    return;
  }
  sg_worker_meter_t *wm = worker_meter(w);
  int64_t now = sg_now_ms(), now_wall = sg_wall_ms();
  memset(wm, 0, sizeof(*wm));
  wm->on = true;
  /* The clocks line up at the last record's end: time goes on from there. */
  wm->base_wall = a.last.end_ms;
  wm->base_mono = now - (now_wall - a.last.end_ms);
  bool was_ready = a.last.busy_ms + a.last.idle_ms > 0 || a.last.seg > 0;
  sg_meter_acc_init(&wm->acc, was_ready ? SG_METER_IDLE : SG_METER_STARTING, wm->base_mono);
  wm->acc.ms[SG_METER_STARTING] = a.last.starting_ms;
  wm->acc.ms[SG_METER_BUSY] = a.last.busy_ms;
  wm->acc.ms[SG_METER_IDLE] = a.last.idle_ms;
  wm->seg = a.last.seg;
  wm->seg_start_wall = a.last.start_ms;
  wm->seg_start_hour = sg_meter_hour_start(a.last.start_ms);
  wm->closed_ms = a.earlier_ms;
  wm->requests = a.last.requests;
  wm->price = a.last.price;
  wm->gpu_count = a.last.gpu_count;
  snprintf(wm->gpu_type, sizeof(wm->gpu_type), "%s", a.gpu_type);
  checkpoint(m, w, now);
  submit(m);
}

static void sg_meter_worker_ready(sg_worker_t *w) {
  sg_meter_t *m = w->d->meter;
  if (!m || !w->meter || !w->meter->on)
    return;
  int64_t now = sg_now_ms();
  cut_hours(m, w, now);
  sg_meter_acc_set(&w->meter->acc, load_state(w), now);
  checkpoint(m, w, now);
  submit(m);
}

static void sg_meter_worker_load(sg_worker_t *w) {
  sg_worker_meter_t *wm = w->meter;
  if (!wm || !wm->on)
    return;
  if (wm->acc.state == SG_METER_STARTING || wm->acc.state == load_state(w))
    return;
  int64_t now = sg_now_ms();
  if (w->d->meter)
    cut_hours(w->d->meter, w, now);
  sg_meter_acc_set(&wm->acc, load_state(w), now);
}

static void end_worker(sg_meter_t *m, sg_worker_t *w, int64_t now) {
  sg_worker_meter_t *wm = w->meter;
  cut_hours(m, w, now);
  sg_meter_acc_advance(&wm->acc, now);
  int64_t round_ms = sg_meter_round_ms(wm->closed_ms + sg_meter_acc_total(&wm->acc));
  snapshot(m, w, wall_of(w, now), true, round_ms);
  count_closed(w);
  wm->on = false;
}

static void sg_meter_worker_ended(sg_worker_t *w) {
  sg_meter_t *m = w->d->meter;
  if (!m || !w->meter || !w->meter->on)
    return;
  end_worker(m, w, sg_now_ms());
  submit(m);
}

static void sg_meter_worker_ended_at(sg_worker_t *w, int64_t end_wall) {
  sg_meter_t *m = w->d->meter;
  sg_worker_meter_t *wm = w->meter;
  if (!m || !wm || !wm->on)
    return;
  int64_t now = sg_now_ms();
  int64_t end = end_wall > 0 ? wm->base_mono + (end_wall - wm->base_wall) : now;
  if (end > now)
    end = now;
  if (end < wm->base_mono)
    end = wm->base_mono;
  /* Checkpoints taken after the end (it is noticed late) are taken back. */
  if (wm->acc.since_ms > end) {
    int64_t over = wm->acc.since_ms - end;
    wm->acc.ms[wm->acc.state] -= over < wm->acc.ms[wm->acc.state] ? over : wm->acc.ms[wm->acc.state];
    wm->acc.since_ms = end;
  }
  end_worker(m, w, end);
  submit(m);
}

/* ---- fleet events ---- */

static void on_started(void *ud, sg_worker_t *w, sg_fleet_start_t how, int64_t start_wall) {
  if (how == SG_FLEET_START_ADOPTED)
    sg_meter_worker_adopted(w, start_wall);
  else if (how == SG_FLEET_START_PLACED)
    sg_meter_worker_started_at(w, start_wall);
  else
    sg_meter_worker_started(w);
}

static void on_ready(void *ud, sg_worker_t *w) { sg_meter_worker_ready(w); }
static void on_load(void *ud, sg_worker_t *w, int delta) { sg_meter_worker_load(w); }

/* A request or job ended on w: counted once, on its last attempt. */
static void on_request_ended(void *ud, sg_worker_t *w) {
  if (w->meter && w->meter->on)
    w->meter->requests++;
}

static void on_ended(void *ud, sg_worker_t *w, bool scheduled, int64_t end_wall) {
  if (scheduled)
    sg_meter_worker_ended_at(w, end_wall);
  else
    sg_meter_worker_ended(w);
}

/* The endpoint's chart series (series.c) goes with it. */
static void on_endpoint_freed(void *ud, sg_endpoint_t *ep) {
  sg_series_free(ep->series);
  ep->series = NULL;
}

static void on_freed(void *ud, sg_worker_t *w) {
  free(w->meter);
  w->meter = NULL;
}

static const sg_fleet_subscriber_t subscriber = {
    .endpoint_freed = on_endpoint_freed,
    .worker_freed = on_freed,
    .worker_started = on_started,
    .worker_ready = on_ready,
    .worker_load = on_load,
    .request_ended = on_request_ended,
    .worker_ended = on_ended,
};

/* For good, first of all: the meter hears of a worker before the modules
 * that may hand it work. */
static void subscribe(sg_daemon_t *d) { sg_fleet_subscribe(d, &subscriber, NULL); }

/* Calls fn for every metered worker, of live and deleted endpoints. */
static void each_metered(sg_daemon_t *d, void (*fn)(sg_meter_t *m, sg_worker_t *w, int64_t now), int64_t now) {
  struct sg_endpoint_list *lists[] = {&d->endpoints, &d->deleted};
  for (size_t i = 0; i < SG_ARRAY_SIZE(lists); i++) {
    sg_endpoint_t *ep;
    TAILQ_FOREACH(ep, lists[i], link) {
      sg_worker_t *w;
      TAILQ_FOREACH(w, &ep->workers, link) {
        if (w->meter && w->meter->on)
          fn(d->meter, w, now);
      }
    }
  }
}

void sg_meter_checkpoint_all(sg_daemon_t *d) {
  if (!d->meter)
    return;
  int64_t now = sg_now_ms();
  each_metered(d, checkpoint, now);
  d->meter->last_checkpoint = now;
  submit(d->meter);
}

/* Sets each endpoint's ep->metrics.gpu_ms to its closed GPU time plus that of
 * its workers' open records up to now, never lower than it was (a late
 * noticed end takes time back from an open record). */
static void refresh_gpu_metrics(sg_daemon_t *d, int64_t now) {
  struct sg_endpoint_list *lists[] = {&d->endpoints, &d->deleted};
  for (size_t i = 0; i < SG_ARRAY_SIZE(lists); i++) {
    sg_endpoint_t *ep;
    TAILQ_FOREACH(ep, lists[i], link) {
      int64_t ms[SG_METER_NSTATES];
      memcpy(ms, ep->metrics.gpu_ms_closed, sizeof(ms));
      sg_worker_t *w;
      TAILQ_FOREACH(w, &ep->workers, link) {
        const sg_worker_meter_t *wm = w->meter;
        if (!wm || !wm->on)
          continue;
        for (int s = 0; s < SG_METER_NSTATES; s++) {
          int64_t t = wm->acc.ms[s];
          if ((int)wm->acc.state == s && now > wm->acc.since_ms)
            t += now - wm->acc.since_ms;
          ms[s] += t * wm->gpu_count;
        }
      }
      for (int s = 0; s < SG_METER_NSTATES; s++)
        if (ms[s] > ep->metrics.gpu_ms[s])
          ep->metrics.gpu_ms[s] = ms[s];
    }
  }
}

void sg_meter_tick(sg_daemon_t *d) {
  if (!d->meter)
    return;
  if (sg_now_ms() - d->meter->last_checkpoint >= d->meter->interval_ms)
    sg_meter_checkpoint_all(d);
  refresh_gpu_metrics(d, sg_now_ms());
}

void sg_meter_barrier(sg_daemon_t *d, struct sg_usage_writer **writer, uint64_t *seq) {
  sg_meter_t *m = d->meter;
  *writer = NULL;
  *seq = 0;
  if (!m)
    return;
  sg_meter_checkpoint_all(d);
  if (m->writer && m->seq) {
    *writer = m->writer;
    *seq = m->seq;
  }
}

void sg_meter_shutdown(sg_daemon_t *d) {
  sg_meter_t *m = d->meter;
  if (!m)
    return;
  if (m->writer) {
    each_metered(d, end_worker, sg_now_ms());
    submit(m);
  }
  sg_usage_writer_stop(m->writer);
  sg_usage_records_free(m->recs, m->n);
  sg_price_table_clear(&m->prices);
  free(m);
  d->meter = NULL;
}
