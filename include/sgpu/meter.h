/* The meter's pure parts: prices per GPU type, a worker's time split by
 * state, whole-second rounding and hour buckets. No clocks are read here:
 * every function takes the time it works on, so the same code is used live
 * and in tests. */
#ifndef SGPU_METER_H
#define SGPU_METER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sgpu/error.h"

/* What a metered worker is doing. */
typedef enum {
  SG_METER_STARTING, /* started, not yet healthy */
  SG_METER_BUSY,     /* healthy (or stopping) with at least one request in flight */
  SG_METER_IDLE,     /* healthy (or stopping) with nothing in flight */
  SG_METER_NSTATES
} sg_meter_state_t;

const char *sg_meter_state_name(sg_meter_state_t s);

/* Prices per GPU-second, by GPU type. A type not listed costs `fallback`
 * ("default=" in the text form; 0 when absent). */
typedef struct sg_price_table {
  size_t n;
  char **types;
  double *prices;
  double fallback;
} sg_price_table_t;

/* Parses "a100=0.00040,h100=0.0012,default=0.0002" (spaces allowed around
 * items) into t, replacing what it held. An empty string is an empty table.
 * On error t is left empty and err names the bad item. */
int sg_price_table_parse(sg_price_table_t *t, const char *text, sg_error_t **err);
/* The price of one GPU-second of type (NULL: a worker without GPUs costs 0). */
double sg_price_lookup(const sg_price_table_t *t, const char *type);
/* The table in its text form, types in the order given. Caller frees. */
char *sg_price_table_format(const sg_price_table_t *t);
bool sg_price_table_equal(const sg_price_table_t *a, const sg_price_table_t *b);
void sg_price_table_clear(sg_price_table_t *t);

/* One worker's metered milliseconds by state since the accumulator was last
 * reset, and the state it is in since `since_ms`. Times are any one clock
 * that does not go back (sgpud uses the monotonic clock). */
typedef struct sg_meter_acc {
  sg_meter_state_t state;
  int64_t since_ms;
  int64_t ms[SG_METER_NSTATES];
} sg_meter_acc_t;

void sg_meter_acc_init(sg_meter_acc_t *acc, sg_meter_state_t state, int64_t now_ms);
/* Counts the time from since_ms to now_ms in the current state. A now_ms
 * before since_ms counts nothing. */
void sg_meter_acc_advance(sg_meter_acc_t *acc, int64_t now_ms);
/* Advances to now_ms, then switches to state. */
void sg_meter_acc_set(sg_meter_acc_t *acc, sg_meter_state_t state, int64_t now_ms);
/* Clears the counted time, keeping the state (a new record starts). */
void sg_meter_acc_reset(sg_meter_acc_t *acc);
int64_t sg_meter_acc_total(const sg_meter_acc_t *acc);

/* Whole seconds billed for a worker metered total_ms: rounded up. */
int64_t sg_meter_billable_s(int64_t total_ms);
/* Milliseconds added to total_ms by that rounding (0..999). */
int64_t sg_meter_round_ms(int64_t total_ms);
/* The cost of billable_ms on gpu_count GPUs at price per GPU-second. */
double sg_meter_cost(int64_t billable_ms, int gpu_count, double price);

/* Start (wall-clock ms, UTC) of the hour or day that holds wall_ms. */
int64_t sg_meter_hour_start(int64_t wall_ms);
int64_t sg_meter_day_start(int64_t wall_ms);

/* The share of [start_ms, end_ms] inside [from_ms, to_ms) as a fraction
 * 0..1 (a zero-length span counts whole when its point is inside). */
double sg_meter_overlap(int64_t start_ms, int64_t end_ms, int64_t from_ms, int64_t to_ms);

#endif
