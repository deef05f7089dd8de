/* GET /v1/usage: metered usage and its cost, per endpoint and in total,
 * optionally grouped by hour, day or worker.
 *
 * Usage records hold one worker's hour at most; a record that the asked
 * range cuts counts in proportion to the part inside. A worker's rounding up
 * to the whole second counts where its last record ends. The live records
 * are checkpointed first, so running workers count up to now.
 *
 * The loop checkpoints and queues the query on the query pool; a pool thread
 * waits for the usage writer's commit of those records (the barrier), reads
 * the records on a read-only connection and sums them; the answer is built
 * and sent on the loop when the job completes, or dropped when the client
 * went away meanwhile. */
#include <errno.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <math.h>
#include <time.h>

#include "api-internal.h"
#include "logs/logs.h"
#include "meter/meter-internal.h"
#include "meter/writer.h"
#include "sgpu/pool.h"
#include "sgpu/util.h"

#define DEFAULT_RANGE_MS (30LL * 86400000)

enum group { G_NONE, G_HOUR, G_DAY, G_WORKER };

struct sum {
  char *endpoint;
  char *worker;
  char *gpu_type;
  int gpu_count;
  int64_t bucket;
  double ms[SG_METER_NSTATES];
  double billable_ms, gpu_ms, requests, cost;
  int64_t first_ms, last_ms;
  bool open;
};

struct sums {
  json_t *index; /* key -> position in items */
  struct sum *items;
  size_t n, cap;
};

struct usage_ctx {
  int64_t from, to;
  enum group group;
  struct sum total;
  struct sums by_endpoint, by_group;
};

static struct sum *find(struct sums *s, const char *key) {
  json_t *i = json_object_get(s->index, key);
  if (i)
    return &s->items[json_integer_value(i)];
  if (s->n == s->cap) {
    s->cap = s->cap ? 2 * s->cap : 16;
    s->items = xrealloc(s->items, s->cap * sizeof(*s->items));
  }
  json_object_set_new(s->index, key, json_integer((json_int_t)s->n));
  struct sum *x = &s->items[s->n++];
  memset(x, 0, sizeof(*x));
  return x;
}

static void sums_free(struct sums *s) {
  for (size_t i = 0; i < s->n; i++) {
    free(s->items[i].endpoint);
    free(s->items[i].worker);
    free(s->items[i].gpu_type);
  }
  free(s->items);
  json_decref(s->index);
}

static void add(struct sum *x, const sg_usage_record_t *r, double f, int64_t round_ms) {
  double parts[SG_METER_NSTATES] = {(double)r->starting_ms, (double)r->busy_ms, (double)r->idle_ms};
  double metered = 0;
  for (int i = 0; i < SG_METER_NSTATES; i++) {
    x->ms[i] += parts[i] * f;
    metered += parts[i] * f;
  }
  double billable = metered + (double)round_ms;
  x->billable_ms += billable;
  x->gpu_ms += billable * r->gpu_count;
  x->cost += billable / 1000.0 * r->gpu_count * r->price;
  x->requests += (double)r->requests * f;
  if (!x->first_ms || r->start_ms < x->first_ms)
    x->first_ms = r->start_ms;
  if (r->end_ms > x->last_ms)
    x->last_ms = r->end_ms;
  x->open |= !r->closed;
  if (r->gpu_type && !x->gpu_type)
    x->gpu_type = xstrdup(r->gpu_type);
  if (r->gpu_count > x->gpu_count)
    x->gpu_count = r->gpu_count;
}

static void on_record(void *ud, const sg_usage_record_t *r) {
  struct usage_ctx *c = ud;
  double f = sg_meter_overlap(r->start_ms, r->end_ms, c->from, c->to);
  int64_t round_ms = r->closed && r->end_ms >= c->from && r->end_ms < c->to ? r->round_ms : 0;
  if (f <= 0 && round_ms == 0)
    return;
  add(&c->total, r, f, round_ms);
  struct sum *e = find(&c->by_endpoint, r->endpoint);
  if (!e->endpoint)
    e->endpoint = xstrdup(r->endpoint);
  add(e, r, f, round_ms);
  if (c->group == G_NONE)
    return;
  char key[512];
  int64_t bucket = 0;
  if (c->group == G_WORKER) {
    snprintf(key, sizeof(key), "%s", r->worker);
  } else {
    bucket = c->group == G_HOUR ? sg_meter_hour_start(r->start_ms) : sg_meter_day_start(r->start_ms);
    snprintf(key, sizeof(key), "%lld/%s", (long long)bucket, r->endpoint);
  }
  struct sum *g = find(&c->by_group, key);
  if (!g->endpoint) {
    g->endpoint = xstrdup(r->endpoint);
    g->bucket = bucket;
    if (c->group == G_WORKER)
      g->worker = xstrdup(r->worker);
  }
  add(g, r, f, round_ms);
}

static json_t *num(double v, double unit) { return json_real(round(v / unit) * unit); }

static json_t *sum_json(const struct sum *x, enum group group) {
  json_t *j = json_object();
  char t[32];
  if (group == G_HOUR || group == G_DAY) {
    json_object_set_new(j, "start", json_string(sg_format_time(x->bucket, t, sizeof(t))));
    json_object_set_new(j, "ts", json_integer(x->bucket));
  }
  if (x->worker)
    json_object_set_new(j, "worker", json_string(x->worker));
  if (x->endpoint)
    json_object_set_new(j, "endpoint", json_string(x->endpoint));
  if (x->endpoint || x->worker) {
    json_object_set_new(j, "gpu_type", x->gpu_type ? json_string(x->gpu_type) : json_null());
    json_object_set_new(j, "gpu_count", json_integer(x->gpu_count));
  }
  if (group == G_WORKER) {
    json_object_set_new(j, "started_at", json_string(sg_format_time(x->first_ms, t, sizeof(t))));
    json_object_set_new(j, "last_metered_at", json_string(sg_format_time(x->last_ms, t, sizeof(t))));
    json_object_set_new(j, "running", json_boolean(x->open));
  }
  json_int_t requests = (json_int_t)llround(x->requests);
  json_object_set_new(j, "billable_seconds", num(x->billable_ms / 1000, 0.001));
  json_object_set_new(j, "gpu_seconds", num(x->gpu_ms / 1000, 0.001));
  json_object_set_new(j, "seconds",
                      json_pack("{s:o, s:o, s:o, s:o}", "starting", num(x->ms[SG_METER_STARTING] / 1000, 0.001), "busy",
                                num(x->ms[SG_METER_BUSY] / 1000, 0.001), "idle",
                                num(x->ms[SG_METER_IDLE] / 1000, 0.001), "total",
                                num((x->ms[0] + x->ms[1] + x->ms[2]) / 1000, 0.001)));
  json_object_set_new(j, "requests", json_integer(requests));
  json_object_set_new(j, "cost", num(x->cost, 1e-9));
  json_object_set_new(j, "cost_per_1k_requests",
                      requests > 0 ? num(x->cost * 1000 / (double)requests, 1e-9) : json_null());
  return j;
}

/* Epoch ms, a duration before now ("24h"), or an RFC 3339 UTC date or time
 * ("2026-05-01", "2026-05-01T10:00:00Z"). -1 when malformed. */
static int64_t parse_when(const char *s, int64_t now) {
  if (!*s)
    return -1;
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (!*end && errno == 0 && v >= 0)
    return v;
  int64_t dur = sg_parse_duration_ms(s);
  if (dur >= 0)
    return now - dur;
  struct tm tm = {0};
  const char *rest = strptime(s, "%Y-%m-%d", &tm);
  if (!rest)
    return -1;
  if (*rest == 'T' || *rest == ' ') {
    rest = strptime(rest + 1, "%H:%M:%S", &tm);
    if (!rest)
      return -1;
    if (*rest == '.')
      for (rest++; *rest >= '0' && *rest <= '9'; rest++)
        ;
    if (*rest == 'Z')
      rest++;
  }
  if (*rest)
    return -1;
  time_t t = timegm(&tm);
  return t < 0 ? -1 : (int64_t)t * 1000;
}

static void send_usage(sg_http_req_t *req, json_t *body) {
  char *text = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(12));
  json_decref(body);
  size_t len = strlen(text);
  text = xrealloc(text, len + 2);
  text[len++] = '\n';
  sg_http_reply(req, 200, "application/json", text, len);
  free(text);
}

static json_t *prices_json(sg_daemon_t *d) {
  const sg_price_table_t *p = sg_meter_prices(d);
  json_t *j = json_object();
  for (size_t i = 0; i < p->n; i++)
    json_object_set_new(j, p->types[i], json_real(p->prices[i]));
  json_object_set_new(j, "default", json_real(p->fallback));
  return j;
}

/* A usage query on the pool. */
struct usage_job {
  sg_daemon_t *d;
  sg_http_req_t *req; /* NULL once the client went away */
  sg_store_readers_t *readers;
  sg_usage_writer_t *writer;
  uint64_t seq; /* the barrier */
  bool to_now;  /* no `to` given: up to the moment the read begins */
  char *endpoint;
  struct usage_ctx c; /* filled on the pool thread */
  sg_error_t *err;
};

static void usage_job_free(struct usage_job *j) {
  sums_free(&j->c.by_endpoint);
  sums_free(&j->c.by_group);
  free(j->c.total.gpu_type);
  sg_error_free(j->err);
  free(j->endpoint);
  free(j);
}

static void usage_req_closed(sg_http_req_t *req, void *arg) { ((struct usage_job *)arg)->req = NULL; }

/* Pool thread: waits for the checkpoint's commit, then sums the records. */
static void usage_work(void *data) {
  struct usage_job *j = data;
  sg_assert_not_loop_thread();
  if (j->writer && j->seq)
    sg_usage_writer_wait(j->writer, j->seq);
  j->c.by_endpoint.index = json_object();
  j->c.by_group.index = json_object();
  sg_store_t *reader = sg_store_readers_take(j->readers, &j->err);
  if (!reader)
    return;
  /* Records are written with their end time before they are committed, so
   * a `to` taken once the snapshot began holds every record it sees whole:
   * a worker that ended before the read counts closed and rounded. */
  if (sg_store_read_begin(reader, &j->err) == 0) {
    if (j->to_now)
      j->c.to = sg_wall_ms() + 1;
    sg_store_usage_each(reader, j->endpoint, j->c.from, j->c.to, on_record, &j->c, &j->err);
    sg_store_read_end(reader);
  }
  sg_store_readers_put(j->readers, reader);
}

/* Loop: answers, unless the client went away. */
static void usage_done(void *data, bool cancelled) {
  struct usage_job *j = data;
  sg_http_req_t *req = j->req;
  if (!req) {
    usage_job_free(j);
    return;
  }
  sg_http_set_close_cb(req, NULL, NULL);
  if (cancelled) {
    sg_http_send_error(req, 503, "shutting_down", "sgpud is stopping", NULL);
    usage_job_free(j);
    return;
  }
  if (j->err) {
    sg_http_send_sg_error(req, j->err);
    usage_job_free(j);
    return;
  }
  struct usage_ctx *c = &j->c;
  char t1[32], t2[32];
  json_t *eps = json_array(), *groups = json_array();
  for (size_t i = 0; i < c->by_endpoint.n; i++)
    json_array_append_new(eps, sum_json(&c->by_endpoint.items[i], G_NONE));
  for (size_t i = 0; i < c->by_group.n; i++)
    json_array_append_new(groups, sum_json(&c->by_group.items[i], c->group));
  static const char *const group_names[] = {NULL, "hour", "day", "worker"};
  free(c->total.gpu_type);
  c->total.gpu_type = NULL;
  json_t *total = sum_json(&c->total, G_NONE);
  json_t *body = json_pack("{s:s, s:s, s:I, s:I, s:o, s:o, s:o, s:o}", "from", sg_format_time(c->from, t1, sizeof(t1)),
                           "to", sg_format_time(c->to, t2, sizeof(t2)), "from_ts", (json_int_t)c->from, "to_ts",
                           (json_int_t)c->to, "prices", prices_json(j->d), "total", total, "endpoints", eps, "group",
                           c->group ? json_string(group_names[c->group]) : json_null());
  if (c->group)
    json_object_set_new(body, "groups", groups);
  else
    json_decref(groups);
  usage_job_free(j);
  send_usage(req, body);
}

static const sg_pool_job_ops_t usage_ops = {usage_work, usage_done};

void sg_api_usage(sg_daemon_t *d, sg_http_req_t *req) {
  struct evkeyvalq params;
  TAILQ_INIT(&params);
  const char *query = sg_http_query(req);
  if (query && evhttp_parse_query_str(query, &params) < 0)
    return sg_http_send_error(req, 400, "invalid_query", "the query string is malformed", NULL);
  int64_t now = sg_wall_ms();
  struct usage_ctx c = {.from = now - DEFAULT_RANGE_MS, .to = now + 1};
  const char *endpoint = NULL, *bad = NULL, *why = NULL;
  bool to_given = false;
  struct evkeyval *kv;
  TAILQ_FOREACH(kv, &params, next) {
    const char *k = kv->key, *v = kv->value;
    if (!strcmp(k, "endpoint")) {
      endpoint = *v ? v : NULL;
    } else if (!strcmp(k, "from") || !strcmp(k, "to")) {
      int64_t t = parse_when(v, now);
      if (t < 0)
        bad = k, why = "must be epoch milliseconds, a duration before now (24h, 7d) or an RFC 3339 UTC time";
      else if (!strcmp(k, "from"))
        c.from = t;
      else
        c.to = t, to_given = true;
    } else if (!strcmp(k, "group")) {
      if (!strcmp(v, "hour"))
        c.group = G_HOUR;
      else if (!strcmp(v, "day"))
        c.group = G_DAY;
      else if (!strcmp(v, "worker"))
        c.group = G_WORKER;
      else if (*v)
        bad = k, why = "must be hour, day or worker";
    } else {
      bad = k, why = "is not a known parameter (endpoint, from, to, group)";
    }
    if (bad)
      break;
  }
  if (!bad && c.to <= c.from)
    bad = "to", why = "must be after from";
  if (bad) {
    cleanup_free char *msg = xasprintf("%s: %s", bad, why);
    cleanup_free char *field = xstrdup(bad);
    evhttp_clear_headers(&params);
    return sg_http_send_error(req, 400, "invalid_query", msg, field);
  }
  if (sg_queries_busy(d, req)) {
    evhttp_clear_headers(&params);
    return;
  }
  struct usage_job *j = xcalloc(1, sizeof(*j));
  j->c = c;
  j->endpoint = endpoint ? xstrdup(endpoint) : NULL;
  j->to_now = !to_given;
  evhttp_clear_headers(&params);
  j->d = d;
  j->req = req;
  j->readers = d->readers;
  sg_meter_barrier(d, &j->writer, &j->seq);
  sg_http_set_close_cb(req, usage_req_closed, j);
  sg_pool_submit(d->query_pool, &usage_ops, j);
}
