/* The daemon's config file as data: one entry per key (redis static_configs[]
 * style) from which sg_daemon_config_defaults, sg_daemon_config_load, the
 * bounds errors, sg_daemon_config_clear and the key table of
 * `sgpud --help-config` and docs/API.md come. To add a key: a field in
 * sg_daemon_config_t and a row here (see docs/DESIGN.md). */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "gateway/jobs-proto.h"
#include "sgpu/log.h"
#include "sgpu/meter.h"
#include "sgpu/util.h"

#define F(field) offsetof(sg_daemon_config_t, field)
#define NO_MAX INT64_MAX

/* ---- custom parsers of keys whose value is an object ---------------------------------- */

/* "prices": {"a100": 0.0004, ...} or the command line's text form. */
static int parse_prices(sg_daemon_config_t *cfg, const char *key, json_t *v, sg_error_t **err) {
  cleanup_free char *text = NULL;
  if (json_is_string(v)) {
    text = xstrdup(json_string_value(v));
  } else if (json_is_object(v)) {
    text = xstrdup("");
    const char *type;
    json_t *p;
    json_object_foreach(v, type, p) {
      if (!json_is_number(p))
        return sg_make_error(err, SG_EINVAL, "config: %s.%s must be a number (price per GPU-second)", key, type);
      char *next = xasprintf("%s%s%s=%.17g", text, *text ? "," : "", type, json_number_value(p));
      free(text);
      text = next;
    }
  } else {
    return sg_make_error(err, SG_EINVAL, "config: %s must be an object {\"TYPE\": price per GPU-second}", key);
  }
  sg_price_table_t t = {0};
  int r = sg_price_table_parse(&t, text, err);
  sg_price_table_clear(&t);
  if (r < 0)
    return r;
  free(cfg->prices);
  cfg->prices = steal_pointer(&text);
  return 0;
}

/* "log_retention": {"NAME": {"max_lines": N, "max_bytes": N, "max_age_s": S}, ...};
 * adds to the overrides already there. */
static int parse_retention(sg_daemon_config_t *cfg, const char *key, json_t *v, sg_error_t **err) {
  if (!json_is_object(v))
    return sg_make_error(err, SG_EINVAL, "config: %s must be an object of endpoint names", key);
  const char *name;
  json_t *r;
  json_object_foreach(v, name, r) {
    if (!json_is_object(r))
      return sg_make_error(err, SG_EINVAL, "config: %s.%s must be an object", key, name);
    sg_log_retention_t ret = {NULL, -1, -1, -1}; /* -1: the default */
    const char *k;
    json_t *x;
    json_object_foreach(r, k, x) {
      bool integer = strcmp(k, "max_age_s") != 0;
      if (strcmp(k, "max_lines") && strcmp(k, "max_bytes") && strcmp(k, "max_age_s"))
        return sg_make_error(err, SG_EINVAL, "config: %s.%s.%s is not max_lines, max_bytes or max_age_s", key, name, k);
      if ((integer ? !json_is_integer(x) : !json_is_number(x)) || json_number_value(x) < 0)
        return sg_make_error(err, SG_EINVAL, "config: %s.%s.%s must be a number >= 0", key, name, k);
      if (!strcmp(k, "max_lines"))
        ret.max_lines = json_integer_value(x);
      else if (!strcmp(k, "max_bytes"))
        ret.max_bytes = json_integer_value(x);
      else
        ret.max_age_s = json_number_value(x);
    }
    ret.endpoint = xstrdup(name);
    cfg->log_retention = xrealloc(cfg->log_retention, (cfg->n_log_retention + 1) * sizeof(*cfg->log_retention));
    cfg->log_retention[cfg->n_log_retention++] = ret;
  }
  return 0;
}

static void clear_retention(sg_daemon_config_t *cfg) {
  for (size_t i = 0; i < cfg->n_log_retention; i++)
    free(cfg->log_retention[i].endpoint);
  free(cfg->log_retention);
  cfg->log_retention = NULL;
  cfg->n_log_retention = 0;
}

/* ---- element checks of string arrays ---------------------------------------------------- */

/* webhook_allow: "public", an address or a CIDR network. */
static int check_addr_rule(const char *key, size_t i, const char *s, sg_error_t **err) {
  (void)key;
  (void)i;
  sg_addr_rule_t rule;
  return sg_addr_rule_parse(s, &rule, err) < 0 ? -SG_EINVAL : 0;
}

/* insecure_registries: a host[:port], no path. */
static int check_host_port(const char *key, size_t i, const char *s, sg_error_t **err) {
  if (!*s || strchr(s, '/'))
    return sg_make_error(err, SG_EINVAL, "config: %s[%zu] must be a host[:port]", key, i);
  return 0;
}

static int check_abs_dir(const char *key, size_t i, const char *s, sg_error_t **err) {
  if (s[0] != '/' || !strcmp(s, "/"))
    return sg_make_error(err, SG_EINVAL, "config: %s[%zu] must be an absolute directory other than /", key, i);
  return 0;
}

static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};

/* advertise_url: "http[s]://HOST[:PORT][/PREFIX]", no query, fragment,
 * space or control character; trailing slashes dropped. "" unsets it. */
static int parse_advertise_url(sg_daemon_config_t *cfg, const char *key, json_t *v, sg_error_t **err) {
  const char *s = json_is_string(v) ? json_string_value(v) : NULL;
  if (!s || strlen(s) != json_string_length(v) || strlen(s) > 512)
    return sg_make_error(err, SG_EINVAL, "config: %s must be a URL string of at most 512 characters", key);
  size_t len = strlen(s);
  while (len > 0 && s[len - 1] == '/')
    len--;
  if (len == 0) {
    free(cfg->advertise_url);
    cfg->advertise_url = NULL;
    return 0;
  }
  size_t scheme = !strncmp(s, "http://", 7) ? 7 : !strncmp(s, "https://", 8) ? 8 : 0;
  bool ok = scheme > 0 && len > scheme && s[scheme] != '/' && s[scheme] != ':';
  for (size_t i = 0; ok && i < len; i++)
    ok = (unsigned char)s[i] > ' ' && s[i] != 0x7f && !strchr("?#\\\"", s[i]);
  if (!ok)
    return sg_make_error(err, SG_EINVAL,
                         "config: %s must be http://HOST[:PORT] or https://HOST[:PORT], optionally with a path, as "
                         "the workers reach sgpud (got \"%s\")",
                         key, s);
  free(cfg->advertise_url);
  cfg->advertise_url = xstrndup(s, len);
  return 0;
}

static void clear_advertise_url(sg_daemon_config_t *cfg) {
  free(cfg->advertise_url);
  cfg->advertise_url = NULL;
}

/* ---- the table ---------------------------------------------------------------------------- */

const sg_config_key_t sg_config_keys[] = {
    {.key = "listen",
     .type = SG_CFG_STRING,
     .off = F(listen),
     .sdef = "127.0.0.1:8080",
     .help = "address to serve on, HOST:PORT (port 0 picks one)"},
    {.key = "data_dir",
     .type = SG_CFG_STRING,
     .off = F(data_dir),
     .shown_default = "`$SGPU_DATA_DIR`, else `~/.sgpu`",
     .help = "state, logs and admin.key"},
    {.key = "gpus",
     .type = SG_CFG_STRING,
     .off = F(gpus),
     .shown_default = "discovered (NVML)",
     .help = "this node's GPUs declared, `\"TYPE:N,...\"`"},
    {.key = "log_level",
     .type = SG_CFG_ENUM,
     .off = F(log_level),
     .names = log_levels,
     .idef = SG_LOG_INFO,
     .help = "daemon diagnostics on stderr"},
    {.key = "stop_grace_s",
     .type = SG_CFG_DOUBLE,
     .off = F(stop_grace_s),
     .dmin = 0,
     .dmax = 3600,
     .ddef = 10,
     .unit = "seconds",
     .help = "SIGTERM to SIGKILL"},
    {.key = "max_body_bytes",
     .type = SG_CFG_SIZE,
     .off = F(max_body),
     .imin = 1024,
     .imax = 1ll << 32,
     .idef = 20 << 20,
     .help = "invocation body limit (see Invocations)"},
    {.key = "log_keep_lines",
     .type = SG_CFG_INT64,
     .off = F(log_keep_lines),
     .imin = 100,
     .imax = NO_MAX,
     .idef = 100000,
     .help = "log lines kept per endpoint"},
    {.key = "header_timeout_s",
     .type = SG_CFG_DOUBLE,
     .off = F(header_timeout_s),
     .dmin = 0.1,
     .dmax = 86400,
     .ddef = 10,
     .unit = "seconds",
     .help = "a request's head must arrive within this"},
    {.key = "idle_timeout_s",
     .type = SG_CFG_DOUBLE,
     .off = F(idle_timeout_s),
     .dmin = 0.1,
     .dmax = 86400,
     .ddef = 75,
     .unit = "seconds",
     .help = "idle keep-alive client connections are closed after this"},
    {.key = "io_timeout_s",
     .type = SG_CFG_DOUBLE,
     .off = F(io_timeout_s),
     .dmin = 0.1,
     .dmax = 86400,
     .ddef = 60,
     .unit = "seconds",
     .help = "a body read or answer write stalled this long ends the connection"},
    {.key = "max_header_bytes",
     .type = SG_CFG_SIZE,
     .off = F(max_header_bytes),
     .imin = 1024,
     .imax = 16 << 20,
     .idef = 64 * 1024,
     .help = "request line and headers of one request (431 above)"},
    {.key = "max_headers",
     .type = SG_CFG_SIZE,
     .off = F(max_headers),
     .imin = 8,
     .imax = 10000,
     .idef = 100,
     .help = "header fields of one request (431 above)"},
    {.key = "max_connections",
     .type = SG_CFG_SIZE,
     .off = F(max_connections),
     .imin = 0,
     .imax = 10000000,
     .idef = 0,
     .note = "0: sized from RLIMIT_NOFILE",
     .help = "open client connections; 0: sized from the open-file limit"},
    {.key = "webhook_allow",
     .type = SG_CFG_STRV,
     .off = F(webhook_allow),
     .count_off = F(n_webhook_allow),
     .imax = 256,
     .sdef = "public",
     .check = check_addr_rule,
     .help = "addresses webhooks may go to: `\"public\"`, addresses, CIDR networks"},
    {.key = "webhook_retry_s",
     .type = SG_CFG_DOUBLE,
     .off = F(webhook_retry_s),
     .dmin = 0.01,
     .dmax = 3600,
     .ddef = 10,
     .unit = "seconds",
     .help = "delay between webhook attempts"},
    {.key = "jobs_max_batch",
     .type = SG_CFG_INT,
     .off = F(jobs_max_batch),
     .imin = 0,
     .imax = 1000000,
     .idef = 0,
     .help = "job writes per commit; 0: no bound"},
    {.key = "prices",
     .type = SG_CFG_CUSTOM,
     .off = F(prices),
     .sdef = "",
     .parse = parse_prices,
     .what = "object `{\"TYPE\": price}`",
     .shown_default = "none",
     .help = "price per GPU-second by GPU type (see Usage and billing)"},
    {.key = "meter_checkpoint_s",
     .type = SG_CFG_DOUBLE,
     .off = F(meter_checkpoint_s),
     .dmin = 0.1,
     .dmax = 3600,
     .ddef = 2,
     .unit = "seconds",
     .help = "usage records are written at least this often"},
    {.key = "log_max_bytes",
     .type = SG_CFG_INT64,
     .off = F(log_max_bytes),
     .imin = 0,
     .imax = NO_MAX,
     .idef = 256ll << 20,
     .note = "0: no limit",
     .help = "log text kept per endpoint; 0: no limit (see Logs)"},
    {.key = "log_max_age_s",
     .type = SG_CFG_DOUBLE,
     .off = F(log_max_age_s),
     .dmin = 0,
     .dmax = 1e9,
     .ddef = 7 * 86400,
     .unit = "seconds",
     .help = "age of the oldest log line kept; 0: no limit (see Logs)"},
    {.key = "log_retention",
     .type = SG_CFG_CUSTOM,
     .off = F(log_retention),
     .parse = parse_retention,
     .clear = clear_retention,
     .what = "object `{\"NAME\": {max_lines, max_bytes, max_age_s}}`",
     .shown_default = "none",
     .help = "per-endpoint retention (see Logs)"},
    {.key = "log_trim_interval_s",
     .type = SG_CFG_DOUBLE,
     .off = F(log_trim_interval_s),
     .dmin = 0.1,
     .dmax = 86400,
     .ddef = 30,
     .unit = "seconds",
     .help = "how often retention is applied"},
    {.key = "log_rate_lines_s",
     .type = SG_CFG_DOUBLE,
     .off = F(log_rate_lines_s),
     .dmin = 0,
     .dmax = 1e9,
     .ddef = 2000,
     .help = "lines per second per worker; 0: no limit (see Logs)"},
    {.key = "log_burst_lines",
     .type = SG_CFG_DOUBLE,
     .off = F(log_burst_lines),
     .dmin = 1,
     .dmax = 1e9,
     .ddef = 10000,
     .help = "burst of lines per worker above the rate"},
    {.key = "web_dir",
     .type = SG_CFG_STRING,
     .off = F(web_dir),
     .shown_default = "the embedded copy",
     .help = "serve the web console from this directory"},
    {.key = "oci_runtime",
     .type = SG_CFG_STRING,
     .off = F(oci_runtime),
     .imin = 1,
     .shown_default = "`\"crun\"`",
     .help = "OCI runtime binary: `\"crun\"`, `\"runc\"` or a path"},
    {.key = "cdi_dir",
     .type = SG_CFG_STRING,
     .off = F(cdi_dir),
     .imin = 1,
     .shown_default = "`\"/etc/cdi\"`",
     .help = "CDI specs of the GPUs"},
    {.key = "insecure_registries",
     .type = SG_CFG_STRV,
     .off = F(insecure_registries),
     .imax = 256,
     .check = check_host_port,
     .help = "registries (`\"host:port\"`) reached over plain HTTP"},
    {.key = "oci_userns",
     .type = SG_CFG_BOOL,
     .off = F(oci_userns),
     .idef = -1,
     .note = "default: a user namespace when the host allows it",
     .shown_default = "when the host allows it",
     .help = "containers in a user namespace (see Security model)"},
    {.key = "image_cache_max_bytes",
     .type = SG_CFG_INT64,
     .off = F(image_cache_max_bytes),
     .imin = 0,
     .imax = NO_MAX,
     .idef = 100ll << 30,
     .note = "0: no limit",
     .help = "unpacked layers kept, least recently used images go first; 0: no limit"},
    {.key = "image_max_layer_bytes",
     .type = SG_CFG_INT64,
     .off = F(image_max_layer_bytes),
     .imin = 0,
     .imax = NO_MAX,
     .idef = 64ll << 30,
     .note = "bytes; 0: no limit",
     .help = "unpacked size of one layer of a pull; 0: no limit"},
    {.key = "image_max_unpacked_bytes",
     .type = SG_CFG_INT64,
     .off = F(image_max_unpacked_bytes),
     .imin = 0,
     .imax = NO_MAX,
     .idef = 64ll << 30,
     .note = "bytes; 0: no limit",
     .help = "unpacked size of one image's layers together; 0: no limit"},
    {.key = "run_as",
     .type = SG_CFG_STRING,
     .off = F(run_as),
     .imax = 64,
     .note = "a user name, \"UID[:GID]\" or \"root\"",
     .shown_default = "`sgpu-worker`, else `nobody`",
     .help = "process workers' user when sgpud runs as root: a user name, `\"UID[:GID]\"` or `\"root\"`"},
    {.key = "default_runtime",
     .type = SG_CFG_CUSTOM,
     .off = F(default_runtime),
     .parse = sg_daemon_config_parse_default_runtime,
     .clear = sg_daemon_config_clear_default_runtime,
     .what = "runtime name",
     .shown_default = "`\"process\"` (`\"oci\"` with an image)",
     .help = "runtime of specs that name none: `\"process\"`, `\"oci\"` or `\"slurm\"`"},
    {.key = "advertise_url",
     .type = SG_CFG_CUSTOM,
     .off = F(advertise_url),
     .parse = parse_advertise_url,
     .clear = clear_advertise_url,
     .what = "URL string",
     .shown_default = "`http://127.0.0.1:PORT` (the listen address when it names one)",
     .help = "base URL the workers of `async.protocol: \"runpod\"` endpoints reach sgpud at; needed for Slurm workers"},
    {.key = "volume_host_paths",
     .type = SG_CFG_STRV,
     .off = F(volume_host_paths),
     .imax = 64,
     .check = check_abs_dir,
     .help = "directories under which specs may mount host paths (`\"host_path\"` volumes); none: no host path"},
    {.key = "slurm",
     .type = SG_CFG_CUSTOM,
     .off = F(slurm),
     .parse = sg_daemon_config_parse_slurm,
     .clear = sg_daemon_config_clear_slurm,
     .what = "object",
     .shown_default = "none",
     .help =
         "the Slurm runtime: `dir`, `partition`, `account`, `time_limit`, `image_dir`, `volume_dir`, `rest_*` (below)"},
};
const size_t sg_config_nkeys = SG_ARRAY_SIZE(sg_config_keys);

const sg_config_key_t *sg_config_find(const char *key) {
  for (size_t i = 0; i < sg_config_nkeys; i++)
    if (!strcmp(sg_config_keys[i].key, key))
      return &sg_config_keys[i];
  return NULL;
}

#define AT(cfg, k, T) ((T *)((char *)(cfg) + (k)->off))

/* "a, b or c" of an enum's names (the caller frees). */
static char *join_names(const char *const *names, const char *last) {
  char *s = xstrdup("");
  for (size_t i = 0; names[i]; i++) {
    const char *sep = i == 0 ? "" : names[i + 1] ? ", " : last;
    char *next = xasprintf("%s%s%s", s, sep, names[i]);
    free(s);
    s = next;
  }
  return s;
}

/* What a valid value of k is, in words: "an integer 8..10000" (the caller frees). */
static char *describe(const sg_config_key_t *k) {
  switch (k->type) {
  case SG_CFG_STRING:
    if (k->imax)
      return xasprintf("a %sstring of at most %lld characters", k->imin ? "non-empty " : "", (long long)k->imax);
    return xasprintf("a %sstring", k->imin ? "non-empty " : "");
  case SG_CFG_INT:
  case SG_CFG_INT64:
  case SG_CFG_SIZE:
    if (k->imax == NO_MAX)
      return xasprintf("an integer >= %lld", (long long)k->imin);
    return xasprintf("an integer %lld..%lld", (long long)k->imin, (long long)k->imax);
  case SG_CFG_DOUBLE:
    return xasprintf("a number%s%s %g..%g", k->unit ? " of " : "", k->unit ? k->unit : "", k->dmin, k->dmax);
  case SG_CFG_BOOL:
    return xstrdup("true or false");
  case SG_CFG_ENUM:
    return join_names(k->names, " or ");
  case SG_CFG_STRV:
    return xasprintf("an array of at most %lld strings", (long long)k->imax);
  case SG_CFG_CUSTOM:
    break;
  }
  return xstrdup(k->what ? k->what : "valid");
}

static int bad_value(const sg_config_key_t *k, sg_error_t **err) {
  cleanup_free char *what = describe(k);
  if (k->note)
    return sg_make_error(err, SG_EINVAL, "config: %s must be %s (%s)", k->key, what, k->note);
  return sg_make_error(err, SG_EINVAL, "config: %s must be %s", k->key, what);
}

static void strv_free(char ***slot, size_t *count) {
  for (char **p = *slot; p && *p; p++)
    free(*p);
  free(*slot);
  *slot = NULL;
  if (count)
    *count = 0;
}

/* Applies v to k's field of cfg; on an error cfg keeps its old value of k. */
static int apply(const sg_config_key_t *k, sg_daemon_config_t *cfg, json_t *v, sg_error_t **err) {
  switch (k->type) {
  case SG_CFG_STRING: {
    if (!json_is_string(v) || (k->imin && !*json_string_value(v)) ||
        (k->imax && strlen(json_string_value(v)) > (size_t)k->imax))
      return bad_value(k, err);
    char **slot = AT(cfg, k, char *);
    free(*slot);
    *slot = xstrdup(json_string_value(v));
    return 0;
  }
  case SG_CFG_INT:
  case SG_CFG_INT64:
  case SG_CFG_SIZE: {
    if (!json_is_integer(v) || json_integer_value(v) < k->imin || json_integer_value(v) > k->imax)
      return bad_value(k, err);
    json_int_t n = json_integer_value(v);
    if (k->type == SG_CFG_INT)
      *AT(cfg, k, int) = (int)n;
    else if (k->type == SG_CFG_INT64)
      *AT(cfg, k, int64_t) = n;
    else
      *AT(cfg, k, size_t) = (size_t)n;
    return 0;
  }
  case SG_CFG_DOUBLE:
    if (!json_is_number(v) || json_number_value(v) < k->dmin || json_number_value(v) > k->dmax)
      return bad_value(k, err);
    *AT(cfg, k, double) = json_number_value(v);
    return 0;
  case SG_CFG_BOOL:
    if (!json_is_boolean(v))
      return bad_value(k, err);
    *AT(cfg, k, int) = json_is_true(v);
    return 0;
  case SG_CFG_ENUM:
    for (int i = 0; json_is_string(v) && k->names[i]; i++) {
      if (!strcmp(json_string_value(v), k->names[i])) {
        *AT(cfg, k, int) = i;
        return 0;
      }
    }
    return bad_value(k, err);
  case SG_CFG_STRV: {
    if (!json_is_array(v) || json_array_size(v) > (size_t)k->imax)
      return bad_value(k, err);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
      if (!json_is_string(e))
        return sg_make_error(err, SG_EINVAL, "config: %s[%zu] must be a string", k->key, i);
      if (k->check && k->check(k->key, i, json_string_value(e), err) < 0)
        return -SG_EINVAL;
    }
    char ***slot = AT(cfg, k, char **);
    size_t *count = k->count_off ? (size_t *)((char *)cfg + k->count_off) : NULL;
    strv_free(slot, count);
    *slot = xcalloc(json_array_size(v) + 1, sizeof(char *));
    json_array_foreach(v, i, e)(*slot)[i] = xstrdup(json_string_value(e));
    if (count)
      *count = json_array_size(v);
    return 0;
  }
  case SG_CFG_CUSTOM:
    return k->parse(cfg, k->key, v, err);
  }
  return bad_value(k, err);
}

void sg_daemon_config_defaults(sg_daemon_config_t *cfg) {
  memset(cfg, 0, sizeof(*cfg));
  for (size_t i = 0; i < sg_config_nkeys; i++) {
    const sg_config_key_t *k = &sg_config_keys[i];
    switch (k->type) {
    case SG_CFG_STRING:
      *AT(cfg, k, char *) = k->sdef ? xstrdup(k->sdef) : NULL;
      break;
    case SG_CFG_INT:
    case SG_CFG_BOOL:
    case SG_CFG_ENUM:
      *AT(cfg, k, int) = (int)k->idef;
      break;
    case SG_CFG_INT64:
      *AT(cfg, k, int64_t) = k->idef;
      break;
    case SG_CFG_SIZE:
      *AT(cfg, k, size_t) = (size_t)k->idef;
      break;
    case SG_CFG_DOUBLE:
      *AT(cfg, k, double) = k->ddef;
      break;
    case SG_CFG_STRV:
      if (k->sdef) {
        char **v = xcalloc(2, sizeof(char *));
        v[0] = xstrdup(k->sdef);
        *AT(cfg, k, char **) = v;
        if (k->count_off)
          *(size_t *)((char *)cfg + k->count_off) = 1;
      }
      break;
    case SG_CFG_CUSTOM:
      if (!k->clear && k->sdef)
        *AT(cfg, k, char *) = xstrdup(k->sdef);
      break;
    }
  }
  /* Computed at start, and a field that is no key. */
  cfg->data_dir = sg_default_data_dir();
  cfg->gpus_fallback = xstrdup("a100:4");
}

void sg_daemon_config_clear(sg_daemon_config_t *cfg) {
  for (size_t i = 0; i < sg_config_nkeys; i++) {
    const sg_config_key_t *k = &sg_config_keys[i];
    if (k->type == SG_CFG_STRING || (k->type == SG_CFG_CUSTOM && !k->clear && k->sdef))
      free(*AT(cfg, k, char *));
    else if (k->type == SG_CFG_STRV)
      strv_free(AT(cfg, k, char **), k->count_off ? (size_t *)((char *)cfg + k->count_off) : NULL);
    else if (k->type == SG_CFG_CUSTOM && k->clear)
      k->clear(cfg);
  }
  free(cfg->gpus_fallback);
  memset(cfg, 0, sizeof(*cfg));
}

int sg_daemon_config_load(sg_daemon_config_t *cfg, const char *path, sg_error_t **err) {
  json_error_t jerr;
  json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
  if (!root)
    return sg_make_error(err, SG_EINVAL, "config %s: line %d: %s", path, jerr.line, jerr.text);
  if (!json_is_object(root)) {
    json_decref(root);
    return sg_make_error(err, SG_EINVAL, "config %s: must be a JSON object", path);
  }
  int r = 0;
  const char *key;
  json_t *v;
  json_object_foreach(root, key, v) {
    const sg_config_key_t *k = sg_config_find(key);
    r = k ? apply(k, cfg, v, err) : sg_make_error(err, SG_EINVAL, "config: unknown key \"%s\"", key);
    if (r < 0)
      break;
  }
  json_decref(root);
  return r;
}

/* ---- the key table for people ------------------------------------------------------------ */

static char *shown_type(const sg_config_key_t *k) {
  switch (k->type) {
  case SG_CFG_STRING:
    if (k->imax)
      return xasprintf("string, at most %lld characters", (long long)k->imax);
    return xstrdup(k->imin ? "string, non-empty" : "string");
  case SG_CFG_INT:
  case SG_CFG_INT64:
  case SG_CFG_SIZE:
    if (k->imax == NO_MAX)
      return xasprintf("integer >= %lld", (long long)k->imin);
    return xasprintf("integer %lld..%lld", (long long)k->imin, (long long)k->imax);
  case SG_CFG_DOUBLE:
    return xasprintf("number %g..%g%s", k->dmin, k->dmax, k->unit ? " (seconds)" : "");
  case SG_CFG_BOOL:
    return xstrdup("`true` or `false`");
  case SG_CFG_ENUM: {
    cleanup_free char *names = join_names(k->names, ", ");
    return xasprintf("one of %s", names);
  }
  case SG_CFG_STRV:
    return xasprintf("array of at most %lld strings", (long long)k->imax);
  case SG_CFG_CUSTOM:
    break;
  }
  return xstrdup(k->what ? k->what : "");
}

static char *shown_default(const sg_config_key_t *k) {
  if (k->shown_default)
    return xstrdup(k->shown_default);
  switch (k->type) {
  case SG_CFG_STRING:
    return k->sdef ? xasprintf("`\"%s\"`", k->sdef) : xstrdup("none");
  case SG_CFG_INT:
  case SG_CFG_INT64:
  case SG_CFG_SIZE:
  case SG_CFG_BOOL: {
    static const char *const units[] = {"KiB", "MiB", "GiB", "TiB"};
    int u = -1;
    for (int64_t n = k->idef; u < 3 && n >= 1024 && n % 1024 == 0 && strstr(k->key, "bytes"); n /= 1024)
      u++;
    if (u >= 0)
      return xasprintf("%lld (%lld %s)", (long long)k->idef, (long long)(k->idef >> (10 * (u + 1))), units[u]);
    return xasprintf("%lld", (long long)k->idef);
  }
  case SG_CFG_DOUBLE:
    return xasprintf("%g", k->ddef);
  case SG_CFG_ENUM:
    return xasprintf("`%s`", k->names[k->idef]);
  case SG_CFG_STRV:
    return k->sdef ? xasprintf("`[\"%s\"]`", k->sdef) : xstrdup("none");
  case SG_CFG_CUSTOM:
    break;
  }
  return xstrdup("none");
}

char *sg_config_row(const sg_config_key_t *k) {
  cleanup_free char *type = shown_type(k);
  cleanup_free char *def = shown_default(k);
  return xasprintf("| `%s` | %s | %s | %s |", k->key, type, def, k->help);
}

void sg_daemon_config_help(FILE *out) {
  fputs("| key | value | default | what it sets |\n| --- | --- | --- | --- |\n", out);
  for (size_t i = 0; i < sg_config_nkeys; i++) {
    cleanup_free char *row = sg_config_row(&sg_config_keys[i]);
    fprintf(out, "%s\n", row);
  }
}
