/* The daemon's config keys as one table (config.c): each key's type, where it
 * lives in sg_daemon_config_t, its bounds, its default and its help. Loading,
 * bounds errors, defaults, freeing, `sgpud --help-config` and the check of
 * docs/API.md all read this table. Private to the daemon. */
#ifndef SGPU_DAEMON_CONFIG_H
#define SGPU_DAEMON_CONFIG_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "sgpu/daemon.h"
#include "sgpu/error.h"

typedef enum sg_config_type {
  SG_CFG_STRING, /* char *; imin: 1 for non-empty, imax: longest length (0: any) */
  SG_CFG_INT,    /* int, integer imin..imax */
  SG_CFG_INT64,  /* int64_t, integer imin..imax */
  SG_CFG_SIZE,   /* size_t, integer imin..imax (imin >= 0) */
  SG_CFG_DOUBLE, /* double, number dmin..dmax */
  SG_CFG_BOOL,   /* int: 1 or 0; idef may be -1 (unset: decided later) */
  SG_CFG_ENUM,   /* int: the index of the value in names[] */
  SG_CFG_STRV,   /* char **, NULL-terminated, at most imax strings, each passing check */
  SG_CFG_CUSTOM, /* parse() does it all; clear() frees it */
} sg_config_type_t;

typedef struct sg_config_key {
  const char *key;
  sg_config_type_t type;
  size_t off; /* of the field in sg_daemon_config_t */
  int64_t imin, imax;
  double dmin, dmax;
  int64_t idef;              /* default of INT, INT64, SIZE, BOOL, ENUM */
  double ddef;               /* default of DOUBLE */
  const char *sdef;          /* default of STRING; of STRV its one element (NULL: none) */
  const char *unit;          /* "seconds": a DOUBLE is "a number of seconds" in errors */
  const char *note;          /* appended to errors in parentheses ("0: no limit") */
  const char *shown_default; /* the default as the table prints it, when not the value above */
  const char *what;          /* CUSTOM: what the value is, for the table */
  const char *help;
  const char *const *names; /* ENUM values, NULL-terminated */
  size_t count_off;         /* STRV: a size_t count of the strings too (0: none) */
  /* STRV: validates element i (a string) or fails with an error naming key[i]. */
  int (*check)(const char *key, size_t i, const char *s, sg_error_t **err);
  /* CUSTOM: applies v to cfg, or fails with an error naming the key. */
  int (*parse)(sg_daemon_config_t *cfg, const char *key, json_t *v, sg_error_t **err);
  /* CUSTOM: frees what parse set (also when it was never called). A CUSTOM
   * entry without clear but with sdef holds a char * at off: the defaults set
   * it to a copy of sdef and clearing frees it. */
  void (*clear)(sg_daemon_config_t *cfg);
} sg_config_key_t;

/* The table, n entries, in the order the help lists them. */
extern const sg_config_key_t sg_config_keys[];
extern const size_t sg_config_nkeys;

/* The entry of key, or NULL. */
const sg_config_key_t *sg_config_find(const char *key);
/* The Markdown row of k (no newline; the caller frees): "| `key` | type | default | help |". */
char *sg_config_row(const sg_config_key_t *k);

/* Custom parsers of other files of the daemon. cluster.c: default_runtime
 * (the names of the runtimes) and slurm (its sub-keys). */
int sg_daemon_config_parse_default_runtime(sg_daemon_config_t *cfg, const char *key, json_t *v, sg_error_t **err);
void sg_daemon_config_clear_default_runtime(sg_daemon_config_t *cfg);
int sg_daemon_config_parse_slurm(sg_daemon_config_t *cfg, const char *key, json_t *v, sg_error_t **err);
void sg_daemon_config_clear_slurm(sg_daemon_config_t *cfg);

#endif
