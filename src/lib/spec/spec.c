#include "sgpu/spec.h"

#include <ctype.h>
#include <math.h>
#include <string.h>

#include "sgpu/image.h"
#include "sgpu/runtime.h"
#include "sgpu/util.h"

#define MAX_ARG_LEN 4096
#define MAX_ENV_VALUE 32768

bool sg_name_valid(const char *s) {
  size_t n = strlen(s);
  if (n < 1 || n > 63)
    return false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
      return false;
  }
  return s[0] != '-' && s[n - 1] != '-';
}

static bool env_name_valid(const char *s) {
  if (!*s || strlen(s) > 256 || !(isalpha((unsigned char)*s) || *s == '_'))
    return false;
  for (; *s; s++)
    if (!(isalnum((unsigned char)*s) || *s == '_'))
      return false;
  return true;
}

static bool gpu_type_valid(const char *s) {
  size_t n = strlen(s);
  if (n < 1 || n > 32)
    return false;
  for (; *s; s++)
    if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '-' || *s == '_'))
      return false;
  return true;
}

static bool printable(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f)
      return false;
  return true;
}

/* Rejects keys of obj not in allowed (NULL-terminated); prefix names the object. */
static int check_keys(json_t *obj, const char *prefix, const char *const *allowed, sg_error_t **err) {
  const char *key;
  json_t *v;
  json_object_foreach(obj, key, v) {
    bool ok = false;
    for (const char *const *a = allowed; *a; a++)
      if (!strcmp(*a, key))
        ok = true;
    if (!ok) {
      cleanup_free char *f = prefix ? xasprintf("%s.%s", prefix, key) : xstrdup(key);
      return sg_make_field_error(err, f, "unknown field");
    }
  }
  return 0;
}

static int get_int(json_t *obj, const char *prefix, const char *key, long long lo, long long hi, int def, int *out,
                   sg_error_t **err) {
  json_t *v = json_object_get(obj, key);
  cleanup_free char *f = prefix ? xasprintf("%s.%s", prefix, key) : xstrdup(key);
  if (!v) {
    *out = def;
    return 0;
  }
  if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
    return sg_make_field_error(err, f, "must be an integer between %lld and %lld", lo, hi);
  *out = (int)json_integer_value(v);
  return 0;
}

static int get_num(json_t *obj, const char *prefix, const char *key, double lo, double hi, double def, double *out,
                   sg_error_t **err) {
  json_t *v = json_object_get(obj, key);
  cleanup_free char *f = xasprintf("%s.%s", prefix, key);
  if (!v) {
    *out = def;
    return 0;
  }
  if (!json_is_number(v) || !isfinite(json_number_value(v)) || json_number_value(v) < lo || json_number_value(v) > hi)
    return sg_make_field_error(err, f, "must be a number between %g and %g", lo, hi);
  *out = json_number_value(v);
  return 0;
}

/* Fetches an optional sub-object; NULL (no error) when absent. */
static int get_obj(json_t *root, const char *key, json_t **out, sg_error_t **err) {
  json_t *v = json_object_get(root, key);
  *out = NULL;
  if (!v || json_is_null(v))
    return 0;
  if (!json_is_object(v))
    return sg_make_field_error(err, key, "must be an object");
  *out = v;
  return 0;
}

static int get_str(json_t *obj, const char *field, const char *key, size_t maxlen, char **out, sg_error_t **err) {
  json_t *v = json_object_get(obj, key);
  *out = NULL;
  if (!v || json_is_null(v))
    return 0;
  if (!json_is_string(v))
    return sg_make_field_error(err, field, "must be a string");
  const char *s = json_string_value(v);
  if (strlen(s) != json_string_length(v) || !printable(s))
    return sg_make_field_error(err, field, "must not contain control characters");
  if (strlen(s) > maxlen)
    return sg_make_field_error(err, field, "must be at most %zu bytes", maxlen);
  *out = xstrdup(s);
  return 0;
}

static int parse_command(sg_spec_t *s, json_t *root, sg_error_t **err) {
  json_t *cmd = json_object_get(root, "command");
  /* An image brings its own entrypoint and cmd (a runtime that runs images,
   * given one). */
  const sg_runtime_ops_t *rt = sg_runtime_find(s->runtime);
  bool oci = rt && (rt->caps & SG_RUNTIME_IMAGES) && s->image;
  if ((!cmd || json_is_null(cmd) || (json_is_array(cmd) && json_array_size(cmd) == 0)) && oci)
    return 0; /* the image's entrypoint and cmd */
  if (!cmd || json_is_null(cmd))
    return sg_make_field_error(err, "command", "is required (the worker's argv)");
  if (!json_is_array(cmd) || json_array_size(cmd) < 1 || json_array_size(cmd) > SG_SPEC_MAX_ARGS)
    return sg_make_field_error(err, "command", "must be an array of 1 to %d strings", SG_SPEC_MAX_ARGS);
  s->n_command = json_array_size(cmd);
  s->command = xcalloc(s->n_command + 1, sizeof(char *));
  for (size_t i = 0; i < s->n_command; i++) {
    json_t *a = json_array_get(cmd, i);
    cleanup_free char *f = xasprintf("command[%zu]", i);
    if (!json_is_string(a) || strlen(json_string_value(a)) != json_string_length(a))
      return sg_make_field_error(err, f, "must be a string without NUL bytes");
    if (json_string_length(a) > MAX_ARG_LEN)
      return sg_make_field_error(err, f, "must be at most %d bytes", MAX_ARG_LEN);
    s->command[i] = xstrdup(json_string_value(a));
  }
  /* A bare name is looked up in PATH when the endpoint is created
   * (api/validate.c), which stores the path found. */
  if (s->command[0][0] != '/' && !oci && (!s->command[0][0] || strchr(s->command[0], '/')))
    return sg_make_field_error(err, "command[0]",
                               "must be an absolute path or a name to look up in PATH (it is executed directly, "
                               "without a shell)");
  return 0;
}

static int parse_env(sg_spec_t *s, json_t *root, sg_error_t **err) {
  json_t *env = json_object_get(root, "env");
  if (!env || json_is_null(env))
    return 0;
  if (!json_is_object(env))
    return sg_make_field_error(err, "env", "must be an object of strings");
  if (json_object_size(env) > SG_SPEC_MAX_ENV)
    return sg_make_field_error(err, "env", "must have at most %d entries", SG_SPEC_MAX_ENV);
  size_t n = json_object_size(env);
  s->env_keys = xcalloc(n + 1, sizeof(char *));
  s->env_values = xcalloc(n + 1, sizeof(char *));
  s->env_secrets = xcalloc(n + 1, sizeof(char *));
  const char *key;
  json_t *v;
  json_object_foreach(env, key, v) {
    cleanup_free char *f = xasprintf("env.%s", key);
    if (!env_name_valid(key))
      return sg_make_field_error(err, f, "is not a valid environment variable name");
    if (json_is_object(v)) {
      const char *secret = json_string_value(json_object_get(v, "secret"));
      if (json_object_size(v) != 1 || !secret || !sg_name_valid(secret))
        return sg_make_field_error(err, f,
                                   "must be a string, or {\"secret\": NAME} naming a secret (a DNS label: 1-63 of "
                                   "[a-z0-9-])");
      s->env_keys[s->n_env] = xstrdup(key);
      s->env_values[s->n_env] = xstrdup("");
      s->env_secrets[s->n_env] = xstrdup(secret);
      s->n_env++;
      continue;
    }
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v))
      return sg_make_field_error(err, f, "must be a string without NUL bytes, or {\"secret\": NAME}");
    if (json_string_length(v) > MAX_ENV_VALUE)
      return sg_make_field_error(err, f, "must be at most %d bytes", MAX_ENV_VALUE);
    s->env_keys[s->n_env] = xstrdup(key);
    s->env_values[s->n_env] = xstrdup(json_string_value(v));
    s->n_env++;
  }
  return 0;
}

static int parse_health(sg_spec_t *s, json_t *root, sg_error_t **err) {
  static const char *const keys[] = {"path", "period_s", "timeout_s", "failure_threshold", "startup_timeout_s", NULL};
  json_t *h;
  if (get_obj(root, "health", &h, err) < 0)
    return -SG_EINVAL;
  json_t *empty = json_object();
  if (!h)
    h = empty;
  int r = check_keys(h, "health", keys, err);
  if (r == 0)
    r = get_str(h, "health.path", "path", 1024, &s->health.path, err);
  /* No path stays NULL here: sg_spec_from_json fills the default once the
   * protocol is known (a runpod endpoint has none). */
  if (r == 0 && s->health.path && s->health.path[0] != '/')
    r = sg_make_field_error(err, "health.path", "must start with '/'");
  if (r == 0)
    r = get_num(h, "health", "period_s", 0.05, 3600, 2, &s->health.period_s, err);
  if (r == 0)
    r = get_num(h, "health", "timeout_s", 0.05, 600, 2, &s->health.timeout_s, err);
  if (r == 0)
    r = get_int(h, "health", "failure_threshold", 1, 100, 3, &s->health.failure_threshold, err);
  if (r == 0)
    r = get_num(h, "health", "startup_timeout_s", 0.1, 86400, 600, &s->health.startup_timeout_s, err);
  json_decref(empty);
  return r;
}

static int parse_gpu(sg_spec_t *s, json_t *root, sg_error_t **err) {
  static const char *const keys[] = {"type", "count", NULL};
  json_t *g;
  if (get_obj(root, "gpu", &g, err) < 0)
    return -SG_EINVAL;
  if (!g)
    return 0;
  int r = check_keys(g, "gpu", keys, err);
  if (r == 0)
    r = get_int(g, "gpu", "count", 0, SG_SPEC_MAX_GPUS, 1, &s->gpu.count, err);
  if (r == 0)
    r = get_str(g, "gpu.type", "type", 32, &s->gpu.type, err);
  if (r < 0)
    return r;
  if (s->gpu.count > 0 && !s->gpu.type)
    return sg_make_field_error(err, "gpu.type", "is required when gpu.count > 0");
  if (s->gpu.type && !gpu_type_valid(s->gpu.type))
    return sg_make_field_error(err, "gpu.type", "must be 1-32 of [a-z0-9_-], e.g. \"a100\"");
  if (s->gpu.count == 0) {
    free(s->gpu.type);
    s->gpu.type = NULL;
  }
  return 0;
}

static int parse_workers(sg_spec_t *s, json_t *root, sg_error_t **err) {
  static const char *const keys[] = {
      "min", "max", "idle_timeout_s", "max_concurrency", "request_timeout_s", "max_queue", "stream_timeout_s", NULL};
  json_t *w;
  if (get_obj(root, "workers", &w, err) < 0)
    return -SG_EINVAL;
  json_t *empty = json_object();
  if (!w)
    w = empty;
  int r = check_keys(w, "workers", keys, err);
  if (r == 0)
    r = get_int(w, "workers", "max", 1, SG_SPEC_MAX_WORKERS, 4, &s->workers.max, err);
  if (r == 0)
    r = get_int(w, "workers", "min", 0, s->workers.max, 0, &s->workers.min, err);
  if (r == 0)
    r = get_num(w, "workers", "idle_timeout_s", 0, 86400, 30, &s->workers.idle_timeout_s, err);
  if (r == 0)
    r = get_int(w, "workers", "max_concurrency", 1, 10000, 1, &s->workers.max_concurrency, err);
  if (r == 0)
    r = get_num(w, "workers", "request_timeout_s", 0.1, 86400, 600, &s->workers.request_timeout_s, err);
  if (r == 0)
    r = get_int(w, "workers", "max_queue", 0, 100000, 1000, &s->workers.max_queue, err);
  if (r == 0)
    r = get_num(w, "workers", "stream_timeout_s", 0.1, 86400, 3600, &s->workers.stream_timeout_s, err);
  json_decref(empty);
  return r;
}

static int parse_scale(sg_spec_t *s, json_t *root, sg_error_t **err) {
  static const char *const keys[] = {"policy", "value", "hold_s", NULL};
  json_t *sc;
  if (get_obj(root, "scale", &sc, err) < 0)
    return -SG_EINVAL;
  json_t *empty = json_object();
  if (!sc)
    sc = empty;
  cleanup_free char *policy = NULL;
  int r = check_keys(sc, "scale", keys, err);
  if (r == 0)
    r = get_str(sc, "scale.policy", "policy", 32, &policy, err);
  if (r == 0) {
    if (!policy || !strcmp(policy, "concurrency"))
      s->scale.policy = SG_SCALE_CONCURRENCY;
    else if (!strcmp(policy, "queue_delay"))
      s->scale.policy = SG_SCALE_QUEUE_DELAY;
    else
      r = sg_make_field_error(err, "scale.policy", "must be \"concurrency\" or \"queue_delay\"");
  }
  if (r == 0) {
    double def = s->scale.policy == SG_SCALE_CONCURRENCY ? s->workers.max_concurrency : 2;
    r = s->scale.policy == SG_SCALE_CONCURRENCY ? get_num(sc, "scale", "value", 0.01, 10000, def, &s->scale.value, err)
                                                : get_num(sc, "scale", "value", 0, 3600, def, &s->scale.value, err);
  }
  if (r == 0)
    r = get_num(sc, "scale", "hold_s", 0, 3600, 0, &s->scale.hold_s, err);
  json_decref(empty);
  return r;
}

bool sg_spec_is_async(const sg_spec_t *s) { return s->type && !strcmp(s->type, "async"); }

bool sg_spec_is_runpod(const sg_spec_t *s) {
  return sg_spec_is_async(s) && s->async.protocol && !strcmp(s->async.protocol, "runpod");
}

int sg_spec_ping_interval_ms(const sg_spec_t *s) {
  int ms = (int)(s->async.ping_timeout_s * 1000 / 3);
  return ms < 1000 ? 1000 : ms;
}

#define ASYNC_MAX_INPUT_DEFAULT (10ll << 20)
#define ASYNC_MAX_INPUT_LIMIT (64ll << 20)

static int parse_async(sg_spec_t *s, json_t *root, sg_error_t **err) {
  static const char *const keys[] = {"path",      "max_retries", "retention_s",    "ttl_s",       "max_input_bytes",
                                     "max_queue", "protocol",    "ping_timeout_s", "take_wait_s", NULL};
  json_t *a;
  if (get_obj(root, "async", &a, err) < 0)
    return -SG_EINVAL;
  if (a && !sg_spec_is_async(s) && json_object_get(a, "protocol"))
    return sg_make_field_error(err, "async.protocol",
                               "is only for endpoints of \"type\": \"async\" (a sync endpoint's workers answer "
                               "requests over HTTP)");
  if (a && !sg_spec_is_async(s))
    return sg_make_field_error(err, "async", "is only for endpoints of \"type\": \"async\"");
  json_t *empty = json_object();
  if (!a)
    a = empty;
  int r = check_keys(a, "async", keys, err);
  if (r == 0)
    r = get_str(a, "async.path", "path", 1024, &s->async.path, err);
  if (r == 0 && !s->async.path)
    s->async.path = xstrdup("/run");
  if (r == 0 && (s->async.path[0] != '/' || strpbrk(s->async.path, " #")))
    r = sg_make_field_error(err, "async.path", "must start with '/' and hold no spaces or '#'");
  if (r == 0)
    r = get_int(a, "async", "max_retries", 0, 100, 2, &s->async.max_retries, err);
  if (r == 0)
    r = get_num(a, "async", "retention_s", 1, 30 * 86400, 1800, &s->async.retention_s, err);
  if (r == 0)
    r = get_num(a, "async", "ttl_s", 1, 7 * 86400, 86400, &s->async.ttl_s, err);
  if (r == 0) {
    json_t *v = json_object_get(a, "max_input_bytes");
    s->async.max_input_bytes = ASYNC_MAX_INPUT_DEFAULT;
    if (v && (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > ASYNC_MAX_INPUT_LIMIT))
      r = sg_make_field_error(err, "async.max_input_bytes", "must be an integer between 1 and %lld",
                              ASYNC_MAX_INPUT_LIMIT);
    else if (v)
      s->async.max_input_bytes = json_integer_value(v);
  }
  if (r == 0)
    r = get_int(a, "async", "max_queue", 1, 1000000, 100000, &s->async.max_queue, err);
  if (r == 0)
    r = get_str(a, "async.protocol", "protocol", 16, &s->async.protocol, err);
  if (r == 0 && !s->async.protocol)
    s->async.protocol = xstrdup("http");
  if (r == 0 && strcmp(s->async.protocol, "http") && strcmp(s->async.protocol, "runpod"))
    r = sg_make_field_error(err, "async.protocol", "must be \"http\" or \"runpod\"");
  if (r == 0)
    r = get_num(a, "async", "ping_timeout_s", 3, 3600, 30, &s->async.ping_timeout_s, err);
  if (r == 0)
    r = get_num(a, "async", "take_wait_s", 1, 60, 20, &s->async.take_wait_s, err);
  json_decref(empty);
  return r;
}

/* "slurm": {"partition", "account", "time_limit"}, each optional; only with
 * a runtime that schedules its own GPUs (SG_RUNTIME_OWN_GPUS). */
static int parse_slurm(sg_spec_t *s, json_t *root, sg_error_t **err) {
  static const char *const keys[] = {"partition", "account", "time_limit", NULL};
  json_t *o;
  if (get_obj(root, "slurm", &o, err) < 0)
    return -1;
  if (!o)
    return 0;
  const sg_runtime_ops_t *rt = sg_runtime_find(s->runtime);
  if (!rt || !(rt->caps & SG_RUNTIME_OWN_GPUS))
    return sg_make_field_error(err, "slurm", "is only used by the slurm runtime");
  if (check_keys(o, "slurm", keys, err) < 0)
    return -1;
  if (get_str(o, "slurm.partition", "partition", 128, &s->slurm.partition, err) < 0 ||
      get_str(o, "slurm.account", "account", 128, &s->slurm.account, err) < 0 ||
      get_str(o, "slurm.time_limit", "time_limit", 32, &s->slurm.time_limit, err) < 0)
    return -1;
  const char *names[] = {s->slurm.partition, s->slurm.account};
  for (int i = 0; i < 2; i++) {
    for (const char *c = names[i]; c && *c; c++)
      if (!isalnum((unsigned char)*c) && !strchr("_-.", *c))
        return sg_make_field_error(err, i ? "slurm.account" : "slurm.partition", "must be a name of [A-Za-z0-9_.-]");
  }
  if (s->slurm.time_limit &&
      (!*s->slurm.time_limit || strspn(s->slurm.time_limit, "0123456789:-") != strlen(s->slurm.time_limit)))
    return sg_make_field_error(err, "slurm.time_limit",
                               "must be in Slurm's time format: MINUTES, HH:MM:SS or DAYS-HH:MM:SS");
  return 0;
}

bool sg_spec_path_normalized(const char *p) {
  if (p[0] != '/')
    return false;
  if (!p[1])
    return true;
  for (const char *c = p; *c;) {
    const char *comp = c + 1; /* after the '/' */
    size_t len = strcspn(comp, "/");
    if (len == 0 || (len == 1 && comp[0] == '.') || (len == 2 && comp[0] == '.' && comp[1] == '.'))
      return false;
    c = comp + len;
  }
  return true;
}

char *sg_spec_volume_env_name(const sg_spec_volume_t *v) {
  const char *base = v->name;
  if (!base) {
    const char *slash = strrchr(v->path, '/');
    base = slash ? slash + 1 : v->path;
  }
  char *s = xasprintf("SGPU_VOLUME_%s", base);
  for (char *c = s + strlen("SGPU_VOLUME_"); *c; c++)
    *c = isalnum((unsigned char)*c) ? (char)toupper((unsigned char)*c) : '_';
  return s;
}

/* "volumes": [{"name" | "host_path", "path", "read_only"?}], at most
 * SG_SPEC_MAX_VOLUMES. Whether a named volume exists and a host path is
 * allowed is the daemon's check (api/validate.c). */
static int parse_volumes(sg_spec_t *s, json_t *root, sg_error_t **err) {
  static const char *const keys[] = {"name", "host_path", "path", "read_only", NULL};
  json_t *arr = json_object_get(root, "volumes");
  if (!arr || json_is_null(arr))
    return 0;
  if (!json_is_array(arr) || json_array_size(arr) > SG_SPEC_MAX_VOLUMES)
    return sg_make_field_error(err, "volumes", "must be an array of at most %d volumes", SG_SPEC_MAX_VOLUMES);
  s->volumes = xcalloc(json_array_size(arr) + 1, sizeof(*s->volumes));
  for (size_t i = 0; i < json_array_size(arr); i++) {
    json_t *o = json_array_get(arr, i);
    cleanup_free char *pre = xasprintf("volumes[%zu]", i);
    cleanup_free char *f_name = xasprintf("%s.name", pre);
    cleanup_free char *f_host = xasprintf("%s.host_path", pre);
    cleanup_free char *f_path = xasprintf("%s.path", pre);
    cleanup_free char *f_ro = xasprintf("%s.read_only", pre);
    if (!json_is_object(o))
      return sg_make_field_error(err, pre, "must be an object");
    if (check_keys(o, pre, keys, err) < 0)
      return -SG_EINVAL;
    sg_spec_volume_t *v = &s->volumes[s->n_volumes++];
    if (get_str(o, f_name, "name", 63, &v->name, err) < 0 ||
        get_str(o, f_host, "host_path", SG_SPEC_MAX_VOLUME_PATH, &v->host_path, err) < 0 ||
        get_str(o, f_path, "path", SG_SPEC_MAX_VOLUME_PATH, &v->path, err) < 0)
      return -SG_EINVAL;
    if (!v->name == !v->host_path)
      return sg_make_field_error(err, pre, "must have exactly one of \"name\" (a volume) and \"host_path\"");
    if (v->name && !sg_name_valid(v->name))
      return sg_make_field_error(err, f_name, "must name a volume (a DNS label: 1-63 of [a-z0-9-])");
    if (v->host_path && (!sg_spec_path_normalized(v->host_path) || !strcmp(v->host_path, "/")))
      return sg_make_field_error(err, f_host,
                                 "must be an absolute path in normal form (no \"..\", \".\", \"//\" or trailing "
                                 "'/'), not \"/\"");
    if (!v->path)
      return sg_make_field_error(err, f_path, "is required: where the worker sees the volume");
    if (!sg_spec_path_normalized(v->path) || !strcmp(v->path, "/"))
      return sg_make_field_error(err, f_path,
                                 "must be an absolute path in normal form (no \"..\", \".\", \"//\" or trailing "
                                 "'/'), not \"/\"");
    json_t *ro = json_object_get(o, "read_only");
    if (ro && !json_is_boolean(ro))
      return sg_make_field_error(err, f_ro, "must be true or false");
    v->read_only = ro && json_is_true(ro);
    cleanup_free char *env = sg_spec_volume_env_name(v);
    for (size_t k = 0; k + 1 < s->n_volumes; k++) {
      const sg_spec_volume_t *u = &s->volumes[k];
      if (!strcmp(u->path, v->path))
        return sg_make_field_error(err, f_path, "is the path of volumes[%zu] too", k);
      cleanup_free char *uenv = sg_spec_volume_env_name(u);
      if (!strcmp(uenv, env))
        return sg_make_field_error(err, v->name ? f_name : f_path,
                                   "gives the environment variable %s of volumes[%zu] too", env, k);
    }
  }
  return 0;
}

sg_spec_t *sg_spec_from_json(json_t *root, sg_error_t **err) {
  static const char *const keys[] = {"name",          "type",   "runtime", "image",   "command", "env",
                                     "port",          "health", "gpu",     "workers", "scale",   "async",
                                     "registry_auth", "slurm",  "volumes", NULL};
  if (!json_is_object(root)) {
    sg_make_error(err, SG_EJSON, "the spec must be a JSON object");
    return NULL;
  }
  cleanup_spec sg_spec_t *s = xcalloc(1, sizeof(*s));
  if (check_keys(root, NULL, keys, err) < 0)
    return NULL;
  if (get_str(root, "name", "name", 63, &s->name, err) < 0)
    return NULL;
  if (!s->name) {
    sg_make_field_error(err, "name", "is required");
    return NULL;
  }
  if (!sg_name_valid(s->name)) {
    sg_make_field_error(err, "name",
                        "must be a DNS label: 1-63 of [a-z0-9-], starting and ending with a letter or digit");
    return NULL;
  }
  if (get_str(root, "type", "type", 16, &s->type, err) < 0)
    return NULL;
  if (!s->type)
    s->type = xstrdup("sync");
  if (strcmp(s->type, "sync") && strcmp(s->type, "async")) {
    sg_make_field_error(err, "type", "must be \"sync\" or \"async\"");
    return NULL;
  }
  if (get_str(root, "runtime", "runtime", 16, &s->runtime, err) < 0)
    return NULL;
  if (get_str(root, "image", "image", 512, &s->image, err) < 0)
    return NULL;
  if (s->image) {
    sg_image_ref_t ref;
    cleanup_error sg_error_t *rerr = NULL;
    if (sg_image_ref_parse(s->image, &ref, &rerr) < 0) {
      sg_make_field_error(err, "image", "%s", rerr->message);
      return NULL;
    }
    sg_image_ref_clear(&ref);
  }
  if (!s->runtime)
    s->runtime = xstrdup(sg_runtime_default(s->image != NULL)->name);
  const sg_runtime_ops_t *rt = sg_runtime_find(s->runtime);
  if (!rt) {
    cleanup_free char *names = sg_runtime_names_text();
    sg_make_field_error(err, "runtime", "must be %s", names);
    return NULL;
  }
  if (parse_slurm(s, root, err) < 0)
    return NULL;
  if ((rt->caps & SG_RUNTIME_NEEDS_IMAGE) && !s->image) {
    sg_make_field_error(err, "image", "is required by the %s runtime", rt->name);
    return NULL;
  }
  if (get_str(root, "registry_auth", "registry_auth", 63, &s->registry_auth, err) < 0)
    return NULL;
  if (s->registry_auth && !sg_name_valid(s->registry_auth)) {
    sg_make_field_error(err, "registry_auth", "must name a registry auth (a DNS label)");
    return NULL;
  }
  if (parse_command(s, root, err) < 0 || parse_env(s, root, err) < 0)
    return NULL;
  if (get_int(root, NULL, "port", 1, 65535, 8000, &s->port, err) < 0)
    return NULL;
  if (parse_health(s, root, err) < 0 || parse_gpu(s, root, err) < 0 || parse_workers(s, root, err) < 0 ||
      parse_scale(s, root, err) < 0 || parse_async(s, root, err) < 0 || parse_volumes(s, root, err) < 0)
    return NULL;
  /* A runpod worker need not serve HTTP: without a path it is not probed. */
  if (!s->health.path && !sg_spec_is_runpod(s))
    s->health.path = xstrdup("/health");
  return steal_pointer(&s);
}

sg_spec_t *sg_spec_parse(const char *text, size_t len, sg_error_t **err) {
  json_error_t jerr;
  cleanup_json json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!j) {
    sg_make_error(err, SG_EJSON, "invalid JSON at line %d column %d: %s", jerr.line, jerr.column, jerr.text);
    return NULL;
  }
  return sg_spec_from_json(j, err);
}

static json_t *spec_to_json(const sg_spec_t *s);

json_t *sg_spec_to_json(const sg_spec_t *s) {
  json_t *j = spec_to_json(s);
  if (s->registry_auth)
    json_object_set_new(j, "registry_auth", json_string(s->registry_auth));
  const sg_runtime_ops_t *rt = sg_runtime_find(s->runtime);
  if (rt && (rt->caps & SG_RUNTIME_OWN_GPUS)) {
    json_t *o = json_object();
    if (s->slurm.partition)
      json_object_set_new(o, "partition", json_string(s->slurm.partition));
    if (s->slurm.account)
      json_object_set_new(o, "account", json_string(s->slurm.account));
    if (s->slurm.time_limit)
      json_object_set_new(o, "time_limit", json_string(s->slurm.time_limit));
    json_object_set_new(j, "slurm", o);
  }
  if (sg_spec_is_async(s)) {
    json_t *a = json_pack("{s:s, s:i, s:f, s:f, s:I, s:i}", "path", s->async.path, "max_retries", s->async.max_retries,
                          "retention_s", s->async.retention_s, "ttl_s", s->async.ttl_s, "max_input_bytes",
                          (json_int_t)s->async.max_input_bytes, "max_queue", s->async.max_queue);
    json_object_set_new(a, "protocol", json_string(s->async.protocol));
    json_object_set_new(a, "ping_timeout_s", json_real(s->async.ping_timeout_s));
    json_object_set_new(a, "take_wait_s", json_real(s->async.take_wait_s));
    json_object_set_new(j, "async", a);
  }
  if (s->n_volumes) {
    json_t *vols = json_array();
    for (size_t i = 0; i < s->n_volumes; i++) {
      const sg_spec_volume_t *v = &s->volumes[i];
      json_t *o = json_object();
      json_object_set_new(o, v->name ? "name" : "host_path", json_string(v->name ? v->name : v->host_path));
      json_object_set_new(o, "path", json_string(v->path));
      json_object_set_new(o, "read_only", json_boolean(v->read_only));
      json_array_append_new(vols, o);
    }
    json_object_set_new(j, "volumes", vols);
  }
  return j;
}

static json_t *spec_to_json_core(const sg_spec_t *s) {
  json_t *cmd = json_array();
  for (size_t i = 0; i < s->n_command; i++)
    json_array_append_new(cmd, json_string(s->command[i]));
  json_t *env = json_object();
  for (size_t i = 0; i < s->n_env; i++)
    json_object_set_new(env, s->env_keys[i],
                        s->env_secrets[i] ? json_pack("{s:s}", "secret", s->env_secrets[i])
                                          : json_string(s->env_values[i]));
  json_t *gpu = json_pack("{s:i}", "count", s->gpu.count);
  json_object_set_new(gpu, "type", s->gpu.type ? json_string(s->gpu.type) : json_null());
  return json_pack("{s:s, s:s, s:s, s:o, s:o, s:o, s:i, s:{s:o, s:f, s:f, s:i, s:f}, s:o,"
                   " s:{s:i, s:i, s:f, s:i, s:f, s:i}, s:{s:s, s:f, s:f}}",
                   "name", s->name, "type", s->type, "runtime", s->runtime, "image",
                   s->image ? json_string(s->image) : json_null(), "command", cmd, "env", env, "port", s->port,
                   "health", "path", s->health.path ? json_string(s->health.path) : json_null(), "period_s",
                   s->health.period_s, "timeout_s", s->health.timeout_s, "failure_threshold",
                   s->health.failure_threshold, "startup_timeout_s", s->health.startup_timeout_s, "gpu", gpu, "workers",
                   "min", s->workers.min, "max", s->workers.max, "idle_timeout_s", s->workers.idle_timeout_s,
                   "max_concurrency", s->workers.max_concurrency, "request_timeout_s", s->workers.request_timeout_s,
                   "max_queue", s->workers.max_queue, "scale", "policy", sg_scale_policy_name(s->scale.policy), "value",
                   s->scale.value, "hold_s", s->scale.hold_s);
}

static json_t *spec_to_json(const sg_spec_t *s) {
  json_t *j = spec_to_json_core(s);
  json_object_set_new(json_object_get(j, "workers"), "stream_timeout_s", json_real(s->workers.stream_timeout_s));
  return j;
}

const char *sg_scale_policy_name(sg_scale_policy_t p) {
  return p == SG_SCALE_QUEUE_DELAY ? "queue_delay" : "concurrency";
}

/* The fields sg_spec_restart_needed ignores: running workers follow them. */
static const char *const live_fields[] = {"workers", "scale", "health", "async"};

bool sg_spec_restart_needed(const sg_spec_t *old, const sg_spec_t *new) {
  /* The protocol and the ping interval are in a runpod worker's environment. */
  if (sg_spec_is_runpod(old) != sg_spec_is_runpod(new) ||
      (sg_spec_is_runpod(old) && sg_spec_ping_interval_ms(old) != sg_spec_ping_interval_ms(new)))
    return true;
  cleanup_json json_t *a = sg_spec_to_json(old);
  cleanup_json json_t *b = sg_spec_to_json(new);
  for (size_t i = 0; i < sizeof(live_fields) / sizeof(live_fields[0]); i++) {
    json_object_del(a, live_fields[i]);
    json_object_del(b, live_fields[i]);
  }
  return !json_equal(a, b);
}

void sg_spec_free(sg_spec_t *s) {
  if (!s)
    return;
  free(s->name);
  free(s->type);
  free(s->runtime);
  free(s->image);
  sg_strv_free(s->command); /* NULL-terminated, as are the env vectors */
  sg_strv_free(s->env_keys);
  sg_strv_free(s->env_values);
  for (size_t i = 0; s->env_secrets && i < s->n_env; i++)
    free(s->env_secrets[i]);
  free(s->env_secrets);
  free(s->health.path);
  free(s->gpu.type);
  free(s->async.path);
  free(s->async.protocol);
  free(s->registry_auth);
  free(s->slurm.partition);
  free(s->slurm.account);
  free(s->slurm.time_limit);
  for (size_t i = 0; i < s->n_volumes; i++) {
    free(s->volumes[i].name);
    free(s->volumes[i].host_path);
    free(s->volumes[i].path);
  }
  free(s->volumes);
  free(s);
}
