/* Daemon diagnostics to stderr (worker output goes to the log store instead). */
#ifndef SGPU_LOG_H
#define SGPU_LOG_H

enum sg_log_level { SG_LOG_DEBUG, SG_LOG_INFO, SG_LOG_WARN, SG_LOG_ERROR };

void sg_log_set_level(enum sg_log_level level);
/* Parses "debug", "info", "warn", "error"; -1 if unknown. */
int sg_log_parse_level(const char *s);
void sg_log(enum sg_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define sg_debug(...) sg_log(SG_LOG_DEBUG, __VA_ARGS__)
#define sg_info(...) sg_log(SG_LOG_INFO, __VA_ARGS__)
#define sg_warn(...) sg_log(SG_LOG_WARN, __VA_ARGS__)
#define sg_errlog(...) sg_log(SG_LOG_ERROR, __VA_ARGS__)

#endif
