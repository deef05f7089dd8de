#include "sgpu/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "sgpu/util.h"

static enum sg_log_level min_level = SG_LOG_INFO;

void sg_log_set_level(enum sg_log_level level) { min_level = level; }

int sg_log_parse_level(const char *s) {
  static const char *names[] = {"debug", "info", "warn", "error"};
  for (size_t i = 0; i < SG_ARRAY_SIZE(names); i++)
    if (!strcmp(s, names[i]))
      return (int)i;
  return -1;
}

void sg_log(enum sg_log_level level, const char *fmt, ...) {
  static const char *tags[] = {"debug", "info", "warn", "error"};
  if (level < min_level)
    return;
  char ts[32];
  char line[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s sgpud %s: %s\n", sg_format_time(sg_wall_ms(), ts, sizeof(ts)), tags[level], line);
}
