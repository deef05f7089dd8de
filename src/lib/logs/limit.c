/* Per-worker output rate limit (see limit.h). */
#include "logs/limit.h"

bool sg_log_limit_take(sg_log_limit_t *l, double rate, double burst, int64_t now_ms) {
  if (rate <= 0)
    return true;
  if (burst < 1)
    burst = 1;
  if (l->last_ms == 0) {
    l->tokens = burst;
  } else if (now_ms > l->last_ms) {
    l->tokens += (double)(now_ms - l->last_ms) * rate / 1000.0;
    if (l->tokens > burst)
      l->tokens = burst;
  }
  if (now_ms > l->last_ms || l->last_ms == 0)
    l->last_ms = now_ms;
  if (l->tokens >= 1) {
    l->tokens -= 1;
    return true;
  }
  l->dropped++;
  l->dropped_total++;
  return false;
}

bool sg_log_limit_report_due(const sg_log_limit_t *l, int64_t now_ms, int64_t interval_ms, bool force) {
  return l->dropped > 0 && (force || now_ms - l->reported_ms >= interval_ms);
}
