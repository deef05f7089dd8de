/* The meter's pure parts (see sgpu/meter.h). */
#include "sgpu/meter.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <string.h>

#include "sgpu/util.h"

#define HOUR_MS 3600000LL
#define DAY_MS 86400000LL

const char *sg_meter_state_name(sg_meter_state_t s) {
  static const char *const names[] = {"starting", "busy", "idle"};
  return s < SG_METER_NSTATES ? names[s] : "unknown";
}

void sg_price_table_clear(sg_price_table_t *t) {
  for (size_t i = 0; i < t->n; i++)
    free(t->types[i]);
  free(t->types);
  free(t->prices);
  memset(t, 0, sizeof(*t));
}

int sg_price_table_parse(sg_price_table_t *t, const char *text, sg_error_t **err) {
  sg_price_table_clear(t);
  cleanup_free char *copy = xstrdup(text ? text : "");
  char *save = NULL;
  for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
    item = sg_str_trim(item);
    if (!*item)
      continue;
    char *eq = strchr(item, '=');
    if (!eq) {
      sg_price_table_clear(t);
      return sg_make_field_error(err, "prices", "prices: \"%s\" is not TYPE=PRICE", item);
    }
    *eq = '\0';
    char *type = sg_str_trim(item), *value = sg_str_trim(eq + 1), *end;
    errno = 0;
    double price = strtod(value, &end);
    if (!*type || strlen(type) > 63 || !*value || *end || errno || !isfinite(price) || price < 0) {
      sg_price_table_clear(t);
      return sg_make_field_error(err, "prices",
                                 "prices: \"%s=%s\" needs a GPU type (up to 63 characters) and a price >= 0 "
                                 "per GPU-second",
                                 type, value);
    }
    if (!strcmp(type, "default")) {
      t->fallback = price;
      continue;
    }
    size_t i;
    for (i = 0; i < t->n && strcmp(t->types[i], type); i++)
      ;
    if (i == t->n) {
      t->types = xrealloc(t->types, (t->n + 1) * sizeof(*t->types));
      t->prices = xrealloc(t->prices, (t->n + 1) * sizeof(*t->prices));
      t->types[t->n++] = xstrdup(type);
    }
    t->prices[i] = price;
  }
  return 0;
}

double sg_price_lookup(const sg_price_table_t *t, const char *type) {
  if (!type)
    return 0;
  for (size_t i = 0; i < t->n; i++)
    if (!strcmp(t->types[i], type))
      return t->prices[i];
  return t->fallback;
}

char *sg_price_table_format(const sg_price_table_t *t) {
  char *out = xstrdup("");
  for (size_t i = 0; i <= t->n; i++) {
    if (i == t->n && t->fallback == 0)
      break;
    char *next = xasprintf("%s%s%s=%.17g", out, *out ? "," : "", i < t->n ? t->types[i] : "default",
                           i < t->n ? t->prices[i] : t->fallback);
    free(out);
    out = next;
  }
  return out;
}

bool sg_price_table_equal(const sg_price_table_t *a, const sg_price_table_t *b) {
  if (a->n != b->n || a->fallback != b->fallback)
    return false;
  for (size_t i = 0; i < a->n; i++)
    if (sg_price_lookup(b, a->types[i]) != a->prices[i])
      return false;
  for (size_t i = 0; i < b->n; i++)
    if (sg_price_lookup(a, b->types[i]) != b->prices[i])
      return false;
  return true;
}

void sg_meter_acc_init(sg_meter_acc_t *acc, sg_meter_state_t state, int64_t now_ms) {
  memset(acc, 0, sizeof(*acc));
  acc->state = state;
  acc->since_ms = now_ms;
}

void sg_meter_acc_advance(sg_meter_acc_t *acc, int64_t now_ms) {
  if (now_ms <= acc->since_ms)
    return;
  acc->ms[acc->state] += now_ms - acc->since_ms;
  acc->since_ms = now_ms;
}

void sg_meter_acc_set(sg_meter_acc_t *acc, sg_meter_state_t state, int64_t now_ms) {
  sg_meter_acc_advance(acc, now_ms);
  acc->state = state;
}

void sg_meter_acc_reset(sg_meter_acc_t *acc) { memset(acc->ms, 0, sizeof(acc->ms)); }

int64_t sg_meter_acc_total(const sg_meter_acc_t *acc) {
  int64_t t = 0;
  for (int i = 0; i < SG_METER_NSTATES; i++)
    t += acc->ms[i];
  return t;
}

int64_t sg_meter_billable_s(int64_t total_ms) { return total_ms <= 0 ? 0 : (total_ms + 999) / 1000; }

int64_t sg_meter_round_ms(int64_t total_ms) {
  return sg_meter_billable_s(total_ms) * 1000 - (total_ms > 0 ? total_ms : 0);
}

double sg_meter_cost(int64_t billable_ms, int gpu_count, double price) {
  return (double)billable_ms / 1000.0 * gpu_count * price;
}

static int64_t floor_to(int64_t v, int64_t unit) {
  int64_t q = v / unit;
  if (v % unit < 0)
    q--;
  return q * unit;
}

int64_t sg_meter_hour_start(int64_t wall_ms) { return floor_to(wall_ms, HOUR_MS); }
int64_t sg_meter_day_start(int64_t wall_ms) { return floor_to(wall_ms, DAY_MS); }

double sg_meter_overlap(int64_t start_ms, int64_t end_ms, int64_t from_ms, int64_t to_ms) {
  if (end_ms <= start_ms)
    return start_ms >= from_ms && start_ms < to_ms ? 1.0 : 0.0;
  int64_t lo = start_ms > from_ms ? start_ms : from_ms;
  int64_t hi = end_ms < to_ms ? end_ms : to_ms;
  if (hi <= lo)
    return 0.0;
  return (double)(hi - lo) / (double)(end_ms - start_ms);
}
