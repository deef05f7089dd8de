/* Per-worker output rate limit: a token bucket of lines. Pure; the caller
 * passes the time. */
#ifndef SGPU_LOG_LIMIT_H
#define SGPU_LOG_LIMIT_H

#include <stdbool.h>
#include <stdint.h>

typedef struct sg_log_limit {
  double tokens;          /* lines that may pass now */
  int64_t last_ms;        /* when tokens were last refilled; 0: never */
  uint64_t dropped;       /* lines dropped since the last report */
  uint64_t dropped_total; /* lines dropped since the worker started */
  int64_t reported_ms;    /* when drops were last reported */
} sg_log_limit_t;

/* Takes one line from the bucket, refilled at rate lines/s up to burst
 * lines (a fresh bucket is full). Returns true when the line may pass;
 * otherwise counts it as dropped. rate <= 0 means no limit. */
bool sg_log_limit_take(sg_log_limit_t *l, double rate, double burst, int64_t now_ms);

/* True when drops are waiting to be reported and the last report is at
 * least interval_ms old (or force). */
bool sg_log_limit_report_due(const sg_log_limit_t *l, int64_t now_ms, int64_t interval_ms, bool force);

#endif
