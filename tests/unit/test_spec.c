/* Endpoint spec parsing: defaults, validation of every field (with the field
 * named in the error), unknown fields, and the round trip through JSON. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>

#include "sgpu/spec.h"
#include "sgpu/util.h"

static const char *const minimal = "{\"name\": \"echo\", \"command\": [\"/bin/echo-worker\"]}";

/* Every field set, none to its default. */
static const char *const full =
    "{\"name\": \"echo-2\", \"type\": \"sync\", \"runtime\": \"process\","
    " \"image\": \"127.0.0.1:5001/demo/echo:latest\","
    " \"command\": [\"/echo-worker\", \"--port\", \"$PORT\"],"
    " \"env\": {\"MODEL\": \"tiny\", \"_X1\": \"\"},"
    " \"port\": 9001,"
    " \"health\": {\"path\": \"/ready\", \"period_s\": 0.5, \"timeout_s\": 1.5, \"failure_threshold\": 7,"
    "  \"startup_timeout_s\": 42},"
    " \"gpu\": {\"type\": \"a100\", \"count\": 2},"
    " \"workers\": {\"min\": 1, \"max\": 6, \"idle_timeout_s\": 12.5, \"max_concurrency\": 3,"
    "  \"request_timeout_s\": 90, \"max_queue\": 55, \"stream_timeout_s\": 120},"
    " \"scale\": {\"policy\": \"queue_delay\", \"value\": 4, \"hold_s\": 20}}";

static sg_spec_t *parse(const char *text, sg_error_t **err) { return sg_spec_parse(text, strlen(text), err); }

static void test_defaults(void **state) {
  (void)state;
  sg_error_t *err = NULL;
  sg_spec_t *s = parse(minimal, &err);
  assert_null(err);
  assert_non_null(s);
  assert_string_equal(s->name, "echo");
  assert_string_equal(s->type, "sync");
  assert_string_equal(s->runtime, "process");
  assert_null(s->image);
  assert_int_equal(s->n_command, 1);
  assert_string_equal(s->command[0], "/bin/echo-worker");
  assert_null(s->command[1]);
  assert_int_equal(s->n_env, 0);
  assert_int_equal(s->port, 8000);
  assert_string_equal(s->health.path, "/health");
  assert_true(s->health.period_s == 2);
  assert_true(s->health.timeout_s == 2);
  assert_int_equal(s->health.failure_threshold, 3);
  assert_true(s->health.startup_timeout_s == 600);
  assert_int_equal(s->gpu.count, 0);
  assert_null(s->gpu.type);
  assert_int_equal(s->workers.min, 0);
  assert_int_equal(s->workers.max, 4);
  assert_true(s->workers.idle_timeout_s == 30);
  assert_int_equal(s->workers.max_concurrency, 1);
  assert_true(s->workers.request_timeout_s == 600);
  assert_int_equal(s->workers.max_queue, 1000);
  assert_true(s->workers.stream_timeout_s == 3600);
  assert_int_equal(s->scale.policy, SG_SCALE_CONCURRENCY);
  assert_true(s->scale.value == 1);
  assert_true(s->scale.hold_s == 0);
  sg_spec_free(s);
}

/* null stands for "absent" where the value is a string or an object. */
static void test_nulls_mean_defaults(void **state) {
  (void)state;
  sg_error_t *err = NULL;
  sg_spec_t *s = parse("{\"name\": \"n\", \"command\": [\"/w\"], \"type\": null, \"runtime\": null, \"image\": null,"
                       " \"env\": null, \"health\": {\"path\": null}, \"gpu\": {\"count\": 0, \"type\": null},"
                       " \"workers\": null, \"scale\": {\"policy\": null}}",
                       &err);
  assert_null(err);
  assert_non_null(s);
  assert_string_equal(s->type, "sync");
  assert_string_equal(s->runtime, "process");
  assert_null(s->image);
  assert_int_equal(s->n_env, 0);
  assert_int_equal(s->port, 8000);
  assert_string_equal(s->health.path, "/health");
  assert_int_equal(s->gpu.count, 0);
  assert_null(s->gpu.type);
  assert_int_equal(s->workers.max, 4);
  assert_int_equal(s->scale.policy, SG_SCALE_CONCURRENCY);
  assert_true(s->scale.value == 1);
  sg_spec_free(s);
  s = parse("{\"name\": \"n\", \"command\": [\"/w\"], \"health\": null, \"gpu\": null, \"scale\": null}", &err);
  assert_null(err);
  assert_non_null(s);
  assert_string_equal(s->health.path, "/health");
  assert_int_equal(s->gpu.count, 0);
  assert_int_equal(s->scale.policy, SG_SCALE_CONCURRENCY);
  sg_spec_free(s);
}

static void test_full(void **state) {
  (void)state;
  sg_error_t *err = NULL;
  sg_spec_t *s = parse(full, &err);
  assert_null(err);
  assert_non_null(s);
  assert_string_equal(s->name, "echo-2");
  assert_string_equal(s->image, "127.0.0.1:5001/demo/echo:latest");
  assert_int_equal(s->n_command, 3);
  assert_string_equal(s->command[0], "/echo-worker");
  assert_string_equal(s->command[1], "--port");
  assert_string_equal(s->command[2], "$PORT");
  assert_null(s->command[3]);
  assert_int_equal(s->n_env, 2);
  int seen = 0;
  for (size_t i = 0; i < s->n_env; i++) {
    if (!strcmp(s->env_keys[i], "MODEL")) {
      assert_string_equal(s->env_values[i], "tiny");
      seen |= 1;
    } else if (!strcmp(s->env_keys[i], "_X1")) {
      assert_string_equal(s->env_values[i], "");
      seen |= 2;
    }
  }
  assert_int_equal(seen, 3);
  assert_int_equal(s->port, 9001);
  assert_string_equal(s->health.path, "/ready");
  assert_true(s->health.period_s == 0.5);
  assert_true(s->health.timeout_s == 1.5);
  assert_int_equal(s->health.failure_threshold, 7);
  assert_true(s->health.startup_timeout_s == 42);
  assert_string_equal(s->gpu.type, "a100");
  assert_int_equal(s->gpu.count, 2);
  assert_int_equal(s->workers.min, 1);
  assert_int_equal(s->workers.max, 6);
  assert_true(s->workers.idle_timeout_s == 12.5);
  assert_int_equal(s->workers.max_concurrency, 3);
  assert_true(s->workers.request_timeout_s == 90);
  assert_int_equal(s->workers.max_queue, 55);
  assert_true(s->workers.stream_timeout_s == 120);
  assert_int_equal(s->scale.policy, SG_SCALE_QUEUE_DELAY);
  assert_true(s->scale.value == 4);
  assert_true(s->scale.hold_s == 20);
  sg_spec_free(s);
}

static void test_scale_value_defaults(void **state) {
  (void)state;
  sg_error_t *err = NULL;
  /* concurrency: the target defaults to max_concurrency. */
  sg_spec_t *s = parse("{\"name\": \"a\", \"command\": [\"/w\"], \"workers\": {\"max_concurrency\": 8}}", &err);
  assert_non_null(s);
  assert_int_equal(s->scale.policy, SG_SCALE_CONCURRENCY);
  assert_true(s->scale.value == 8);
  sg_spec_free(s);
  s = parse("{\"name\": \"a\", \"command\": [\"/w\"], \"workers\": {\"max_concurrency\": 8},"
            " \"scale\": {\"policy\": \"concurrency\"}}",
            &err);
  assert_non_null(s);
  assert_true(s->scale.value == 8);
  sg_spec_free(s);
  /* queue_delay: two seconds. */
  s = parse("{\"name\": \"a\", \"command\": [\"/w\"], \"workers\": {\"max_concurrency\": 8},"
            " \"scale\": {\"policy\": \"queue_delay\"}}",
            &err);
  assert_non_null(s);
  assert_int_equal(s->scale.policy, SG_SCALE_QUEUE_DELAY);
  assert_true(s->scale.value == 2);
  sg_spec_free(s);
  assert_null(err);
}

static void test_gpu_rules(void **state) {
  (void)state;
  sg_error_t *err = NULL;
  /* A gpu object without count asks for one GPU. */
  sg_spec_t *s = parse("{\"name\": \"a\", \"command\": [\"/w\"], \"gpu\": {\"type\": \"h100\"}}", &err);
  assert_non_null(s);
  assert_int_equal(s->gpu.count, 1);
  assert_string_equal(s->gpu.type, "h100");
  sg_spec_free(s);
  /* count 0 drops the type. */
  s = parse("{\"name\": \"a\", \"command\": [\"/w\"], \"gpu\": {\"type\": \"h100\", \"count\": 0}}", &err);
  assert_non_null(s);
  assert_int_equal(s->gpu.count, 0);
  assert_null(s->gpu.type);
  sg_spec_free(s);
  /* count 0 needs no type. */
  s = parse("{\"name\": \"a\", \"command\": [\"/w\"], \"gpu\": {\"count\": 0}}", &err);
  assert_non_null(s);
  assert_int_equal(s->gpu.count, 0);
  assert_null(s->gpu.type);
  sg_spec_free(s);
  s = parse("{\"name\": \"a\", \"command\": [\"/w\"], \"gpu\": {\"type\": \"rtx_4090-x\", \"count\": 16}}", &err);
  assert_non_null(s);
  assert_int_equal(s->gpu.count, 16);
  assert_string_equal(s->gpu.type, "rtx_4090-x");
  sg_spec_free(s);
  assert_null(err);
}

/* ---- validation: each case replaces one field of a valid spec ---- */

/* Sets (or, with value NULL, deletes) the dotted path in obj. */
static void patch(json_t *obj, const char *path, const char *value) {
  char *copy = xstrdup(path);
  char *dot = strchr(copy, '.');
  json_t *target = obj;
  const char *key = copy;
  if (dot) {
    *dot = '\0';
    target = json_object_get(obj, copy);
    if (!json_is_object(target)) {
      target = json_object();
      json_object_set_new(obj, copy, target);
    }
    key = dot + 1;
  }
  if (value) {
    json_error_t jerr;
    json_t *v = json_loads(value, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!v)
      fail_msg("bad test value %s: %s", value, jerr.text);
    json_object_set_new(target, key, v);
  } else {
    json_object_del(target, key);
  }
  free(copy);
}

static json_t *base_spec(void) {
  json_error_t jerr;
  json_t *j = json_loads("{\"name\": \"base\", \"command\": [\"/w\"], \"health\": {}, \"workers\": {}, \"scale\": {}}",
                         0, &jerr);
  assert_non_null(j);
  return j;
}

/* Applies the patch and expects an SG_EINVAL error naming field. */
static void expect_invalid(const char *path, const char *value, const char *field) {
  json_t *j = base_spec();
  patch(j, path, value);
  sg_error_t *err = NULL;
  sg_spec_t *s = sg_spec_from_json(j, &err);
  if (s)
    fail_msg("%s = %s was accepted", path, value ? value : "(deleted)");
  assert_non_null(err);
  assert_int_equal(err->status, SG_EINVAL);
  if (!err->field || strcmp(err->field, field))
    fail_msg("%s = %s: error names field %s, want %s (%s)", path, value ? value : "(deleted)",
             err->field ? err->field : "(none)", field, err->message);
  /* The message reads on its own: it starts with the field. */
  size_t n = strlen(field);
  assert_true(strncmp(err->message, field, n) == 0 && err->message[n] == ':');
  sg_error_free(err);
  json_decref(j);
}

static void expect_valid(const char *path, const char *value) {
  json_t *j = base_spec();
  patch(j, path, value);
  sg_error_t *err = NULL;
  sg_spec_t *s = sg_spec_from_json(j, &err);
  if (!s)
    fail_msg("%s = %s was rejected: %s", path, value ? value : "(deleted)", err ? err->message : "?");
  assert_null(err);
  sg_spec_free(s);
  json_decref(j);
}

static char *json_str_of(char c, size_t n) {
  char *s = xmalloc(n + 3);
  s[0] = '"';
  memset(s + 1, c, n);
  s[n + 1] = '"';
  s[n + 2] = '\0';
  return s;
}

/* "[\"/a\", \"/a\", ...]" with n elements */
static char *json_argv(size_t n) {
  char *s = xmalloc(n * 6 + 3);
  char *p = s;
  *p++ = '[';
  for (size_t i = 0; i < n; i++)
    p += sprintf(p, "%s\"/a\"", i ? "," : "");
  *p++ = ']';
  *p = '\0';
  return s;
}

/* {"V0": "x", ...} with n entries */
static char *json_env(size_t n) {
  char *s = xmalloc(n * 16 + 3);
  char *p = s;
  *p++ = '{';
  for (size_t i = 0; i < n; i++)
    p += sprintf(p, "%s\"V%zu\":\"x\"", i ? "," : "", i);
  *p++ = '}';
  *p = '\0';
  return s;
}

static void test_base_is_valid(void **state) {
  (void)state;
  expect_valid("name", "\"base\"");
}

static void test_unknown_fields(void **state) {
  (void)state;
  expect_invalid("bogus", "1", "bogus");
  expect_invalid("Name", "\"x\"", "Name");
  expect_invalid("health.bogus", "1", "health.bogus");
  expect_invalid("health.interval", "1", "health.interval");
  expect_invalid("gpu.bogus", "1", "gpu.bogus");
  expect_invalid("workers.bogus", "1", "workers.bogus");
  expect_invalid("workers.concurrency", "1", "workers.concurrency");
  expect_invalid("scale.bogus", "1", "scale.bogus");
}

/* An explicit null for a number is an error, not the default. */
static void test_numeric_null_rejected(void **state) {
  (void)state;
  expect_invalid("port", "null", "port");
  expect_invalid("health.period_s", "null", "health.period_s");
  expect_invalid("health.timeout_s", "null", "health.timeout_s");
  expect_invalid("health.failure_threshold", "null", "health.failure_threshold");
  expect_invalid("health.startup_timeout_s", "null", "health.startup_timeout_s");
  expect_invalid("workers.min", "null", "workers.min");
  expect_invalid("workers.max", "null", "workers.max");
  expect_invalid("workers.idle_timeout_s", "null", "workers.idle_timeout_s");
  expect_invalid("workers.max_concurrency", "null", "workers.max_concurrency");
  expect_invalid("workers.request_timeout_s", "null", "workers.request_timeout_s");
  expect_invalid("workers.max_queue", "null", "workers.max_queue");
  expect_invalid("scale.value", "null", "scale.value");
  json_t *j = base_spec();
  patch(j, "gpu.type", "\"a100\"");
  patch(j, "gpu.count", "null");
  sg_error_t *err = NULL;
  assert_null(sg_spec_from_json(j, &err));
  assert_non_null(err);
  assert_string_equal(err->field, "gpu.count");
  sg_error_free(err);
  json_decref(j);
}

static void test_invalid_name(void **state) {
  (void)state;
  expect_invalid("name", NULL, "name");
  expect_invalid("name", "null", "name");
  expect_invalid("name", "123", "name");
  expect_invalid("name", "\"\"", "name");
  expect_invalid("name", "\"Echo\"", "name");
  expect_invalid("name", "\"-echo\"", "name");
  expect_invalid("name", "\"echo-\"", "name");
  expect_invalid("name", "\"ec_ho\"", "name");
  expect_invalid("name", "\"ec.ho\"", "name");
  expect_invalid("name", "\"ec\\u0001ho\"", "name");
  expect_invalid("name", "\"ec\\u0000ho\"", "name");
  char *s64 = json_str_of('a', 64), *s63 = json_str_of('a', 63);
  expect_invalid("name", s64, "name");
  expect_valid("name", s63);
  free(s64);
  free(s63);
  expect_valid("name", "\"0\"");
  expect_valid("name", "\"a-0-b\"");
}

static void test_invalid_type_runtime_image(void **state) {
  (void)state;
  expect_invalid("type", "1", "type");
  expect_valid("type", "\"async\"");
  expect_invalid("type", "\"batch\"", "type");
  expect_invalid("type", "\"SYNC\"", "type");
  expect_valid("type", "\"sync\"");
  expect_invalid("runtime", "5", "runtime");
  expect_invalid("runtime", "\"oci\"", "image"); /* oci needs an image */
  expect_invalid("image", "\"Bad/Name\"", "image");
  expect_invalid("image", "\"x@sha256:12\"", "image");
  expect_valid("image", "\"127.0.0.1:5000/demo/echo:v1\"");
  expect_valid("runtime", "\"slurm\"");
  expect_invalid("slurm", "{\"partition\": \"gpu\"}", "slurm"); /* only with the slurm runtime */
  expect_invalid("runtime", "\"docker\"", "runtime");
  expect_valid("runtime", "\"process\"");
  expect_invalid("image", "5", "image");
  expect_invalid("image", "[\"x\"]", "image");
  expect_invalid("image", "\"a\\nb\"", "image");
  char *s513 = json_str_of('i', 513), *s256 = json_str_of('i', 256), *s255 = json_str_of('i', 255);
  expect_invalid("image", s513, "image");
  expect_invalid("image", s256, "image"); /* a reference's name is at most 255 characters */
  /* ... once normalized: docker.io/library/ and 237 characters */
  expect_invalid("image", s255, "image");
  char *s238 = json_str_of('i', 238), *s237 = json_str_of('i', 237);
  expect_invalid("image", s238, "image");
  expect_valid("image", s237);
  free(s513);
  free(s256);
  free(s255);
  free(s238);
  free(s237);
}

static void test_invalid_command(void **state) {
  (void)state;
  expect_invalid("command", NULL, "command");
  expect_invalid("command", "null", "command");
  expect_invalid("command", "\"/bin/worker\"", "command");
  expect_invalid("command", "[]", "command");
  expect_invalid("command", "{}", "command");
  char *a65 = json_argv(65), *a64 = json_argv(64);
  expect_invalid("command", a65, "command");
  expect_valid("command", a64);
  free(a65);
  free(a64);
  expect_invalid("command", "[1]", "command[0]");
  expect_invalid("command", "[\"/a\", 2]", "command[1]");
  expect_invalid("command", "[\"/a\", \"b\", null]", "command[2]");
  expect_valid("command", "[\"worker\"]"); /* looked up in PATH at create */
  expect_invalid("command", "[\"./worker\"]", "command[0]");
  expect_invalid("command", "[\"bin/worker\"]", "command[0]");
  expect_invalid("command", "[\"\"]", "command[0]");
  expect_invalid("command", "[\"/a\", \"x\\u0000y\"]", "command[1]");
  char big[4096 + 16];
  snprintf(big, sizeof(big), "[\"/a\", \"%0*d\"]", 4097, 0);
  expect_invalid("command", big, "command[1]");
  snprintf(big, sizeof(big), "[\"/a\", \"%0*d\"]", 4096, 0);
  expect_valid("command", big);
  /* Arguments other than argv[0] need not be paths. */
  expect_valid("command", "[\"/a\", \"\", \"--x=$PORT\"]");
}

/* {"secret": NAME} in env: kept as a reference (the value is ""), shown as
 * the reference again, and a change of secret restarts workers. */
static void test_env_secret_reference(void **state) {
  (void)state;
  const char *text = "{\"name\": \"e\", \"command\": [\"/bin/true\"],"
                     " \"env\": {\"HF_TOKEN\": {\"secret\": \"hf\"}, \"MODEL\": \"tiny\"}}";
  sg_error_t *err = NULL;
  sg_spec_t *s = parse(text, &err);
  assert_null(err);
  assert_int_equal(s->n_env, 2);
  int seen = 0;
  for (size_t i = 0; i < s->n_env; i++) {
    if (!strcmp(s->env_keys[i], "HF_TOKEN")) {
      assert_string_equal(s->env_secrets[i], "hf");
      assert_string_equal(s->env_values[i], "");
      seen |= 1;
    } else {
      assert_null(s->env_secrets[i]);
      assert_string_equal(s->env_values[i], "tiny");
      seen |= 2;
    }
  }
  assert_int_equal(seen, 3);
  json_t *j = sg_spec_to_json(s);
  json_t *ref = json_object_get(json_object_get(j, "env"), "HF_TOKEN");
  assert_true(json_is_object(ref));
  assert_int_equal(json_object_size(ref), 1);
  assert_string_equal(json_string_value(json_object_get(ref, "secret")), "hf");
  /* Round trip: the JSON parses back to the same reference. */
  sg_spec_t *again = sg_spec_from_json(j, &err);
  assert_non_null(again);
  assert_false(sg_spec_restart_needed(s, again));
  json_decref(j);
  const char *other = "{\"name\": \"e\", \"command\": [\"/bin/true\"],"
                      " \"env\": {\"HF_TOKEN\": {\"secret\": \"hf2\"}, \"MODEL\": \"tiny\"}}";
  sg_spec_t *changed = parse(other, &err);
  assert_true(sg_spec_restart_needed(s, changed));
  sg_spec_free(changed);
  sg_spec_free(again);
  sg_spec_free(s);
  expect_valid("env", "{\"A\": {\"secret\": \"a-1\"}}");
  expect_invalid("env", "{\"A\": {}}", "env.A");
  expect_invalid("env", "{\"A\": {\"secret\": 1}}", "env.A");
  expect_invalid("env", "{\"A\": {\"secret\": \"Bad_Name\"}}", "env.A");
  expect_invalid("env", "{\"A\": {\"secret\": \"\"}}", "env.A");
  expect_invalid("env", "{\"A\": {\"secret\": \"a\", \"b\": 1}}", "env.A");
  expect_invalid("env", "{\"A\": {\"value\": \"a\"}}", "env.A");
  expect_invalid("env", "{\"OK\": {\"secret\": \"a\"}, \"1B\": {\"secret\": \"a\"}}", "env.1B");
}

static void test_invalid_env(void **state) {
  (void)state;
  expect_invalid("env", "[]", "env");
  expect_invalid("env", "\"A=1\"", "env");
  expect_invalid("env", "{\"1A\": \"x\"}", "env.1A");
  expect_invalid("env", "{\"A-B\": \"x\"}", "env.A-B");
  expect_invalid("env", "{\"A B\": \"x\"}", "env.A B");
  expect_invalid("env", "{\"\": \"x\"}", "env.");
  expect_invalid("env", "{\"OK\": \"x\", \"A\": 1}", "env.A");
  expect_invalid("env", "{\"A\": null}", "env.A");
  expect_invalid("env", "{\"A\": \"x\\u0000\"}", "env.A");
  char *k257 = xmalloc(300), *k256 = xmalloc(300);
  snprintf(k257, 300, "{\"%0*d\": \"x\"}", 257, 0);
  k257[2] = 'K';
  snprintf(k256, 300, "{\"%0*d\": \"x\"}", 256, 0);
  k256[2] = 'K';
  expect_valid("env", k256);
  char field[300];
  snprintf(field, sizeof(field), "env.K%0*d", 256, 0);
  expect_invalid("env", k257, field);
  free(k257);
  free(k256);
  char *e129 = json_env(129), *e128 = json_env(128);
  expect_invalid("env", e129, "env");
  expect_valid("env", e128);
  free(e129);
  free(e128);
  char *big = xmalloc(32800);
  snprintf(big, 32800, "{\"A\": \"%0*d\"}", 32769, 0);
  expect_invalid("env", big, "env.A");
  snprintf(big, 32800, "{\"A\": \"%0*d\"}", 32768, 0);
  expect_valid("env", big);
  free(big);
  expect_valid("env", "{\"_\": \"\", \"a_1\": \"multi\\nline\"}");
}

static void test_invalid_port(void **state) {
  (void)state;
  expect_invalid("port", "0", "port");
  expect_invalid("port", "-1", "port");
  expect_invalid("port", "65536", "port");
  expect_invalid("port", "\"8000\"", "port");
  expect_invalid("port", "80.5", "port");
  expect_invalid("port", "8000.0", "port");
  expect_invalid("port", "true", "port");
  expect_valid("port", "1");
  expect_valid("port", "65535");
}

static void test_invalid_health(void **state) {
  (void)state;
  expect_invalid("health", "\"/health\"", "health");
  expect_invalid("health", "[]", "health");
  expect_invalid("health.path", "\"health\"", "health.path");
  expect_invalid("health.path", "\"\"", "health.path");
  expect_invalid("health.path", "1", "health.path");
  expect_invalid("health.path", "\"/a\\tb\"", "health.path");
  char *p = json_str_of('p', 1025);
  p[1] = '/';
  expect_invalid("health.path", p, "health.path");
  p[1025] = '"';
  p[1026] = '\0';
  expect_valid("health.path", p);
  free(p);
  expect_invalid("health.period_s", "0.01", "health.period_s");
  expect_invalid("health.period_s", "3601", "health.period_s");
  expect_invalid("health.period_s", "\"2\"", "health.period_s");
  expect_valid("health.period_s", "0.05");
  expect_valid("health.period_s", "3600");
  expect_invalid("health.timeout_s", "0.04", "health.timeout_s");
  expect_invalid("health.timeout_s", "601", "health.timeout_s");
  expect_valid("health.timeout_s", "600");
  expect_invalid("health.failure_threshold", "0", "health.failure_threshold");
  expect_invalid("health.failure_threshold", "101", "health.failure_threshold");
  expect_invalid("health.failure_threshold", "1.5", "health.failure_threshold");
  expect_valid("health.failure_threshold", "1");
  expect_valid("health.failure_threshold", "100");
  expect_invalid("health.startup_timeout_s", "0.05", "health.startup_timeout_s");
  expect_invalid("health.startup_timeout_s", "86401", "health.startup_timeout_s");
  expect_invalid("health.startup_timeout_s", "false", "health.startup_timeout_s");
  expect_valid("health.startup_timeout_s", "0.1");
}

static void test_invalid_gpu(void **state) {
  (void)state;
  expect_invalid("gpu", "\"a100\"", "gpu");
  expect_invalid("gpu", "1", "gpu");
  expect_invalid("gpu.count", "1", "gpu.type");
  expect_invalid("gpu.type", "\"A100\"", "gpu.type");
  expect_invalid("gpu.type", "\"a 100\"", "gpu.type");
  expect_invalid("gpu.type", "\"\"", "gpu.type");
  expect_invalid("gpu.type", "7", "gpu.type");
  char *t33 = json_str_of('t', 33), *t32 = json_str_of('t', 32);
  expect_invalid("gpu.type", t33, "gpu.type");
  expect_valid("gpu.type", t32);
  free(t33);
  free(t32);
  json_t *j = base_spec();
  patch(j, "gpu.type", "\"a100\"");
  patch(j, "gpu.count", "17");
  sg_error_t *err = NULL;
  assert_null(sg_spec_from_json(j, &err));
  assert_non_null(err);
  assert_string_equal(err->field, "gpu.count");
  sg_error_free(err);
  err = NULL;
  patch(j, "gpu.count", "-1");
  assert_null(sg_spec_from_json(j, &err));
  assert_string_equal(err->field, "gpu.count");
  sg_error_free(err);
  err = NULL;
  patch(j, "gpu.count", "\"1\"");
  assert_null(sg_spec_from_json(j, &err));
  assert_string_equal(err->field, "gpu.count");
  sg_error_free(err);
  json_decref(j);
}

static void test_invalid_workers(void **state) {
  (void)state;
  expect_invalid("workers", "[]", "workers");
  expect_invalid("workers", "4", "workers");
  expect_invalid("workers.max", "0", "workers.max");
  expect_invalid("workers.max", "1001", "workers.max");
  expect_invalid("workers.max", "2.5", "workers.max");
  expect_valid("workers.max", "1000");
  expect_invalid("workers.min", "-1", "workers.min");
  expect_invalid("workers.min", "5", "workers.min"); /* above the default max of 4 */
  expect_valid("workers.min", "4");
  expect_invalid("workers.idle_timeout_s", "-0.5", "workers.idle_timeout_s");
  expect_invalid("workers.idle_timeout_s", "86401", "workers.idle_timeout_s");
  expect_valid("workers.idle_timeout_s", "0");
  expect_invalid("workers.max_concurrency", "0", "workers.max_concurrency");
  expect_invalid("workers.max_concurrency", "10001", "workers.max_concurrency");
  expect_valid("workers.max_concurrency", "10000");
  expect_invalid("workers.request_timeout_s", "0.05", "workers.request_timeout_s");
  expect_invalid("workers.request_timeout_s", "86401", "workers.request_timeout_s");
  expect_valid("workers.request_timeout_s", "0.1");
  expect_invalid("workers.stream_timeout_s", "0.05", "workers.stream_timeout_s");
  expect_invalid("workers.stream_timeout_s", "86401", "workers.stream_timeout_s");
  expect_invalid("workers.stream_timeout_s", "\"long\"", "workers.stream_timeout_s");
  expect_valid("workers.stream_timeout_s", "0.1");
  expect_valid("workers.stream_timeout_s", "86400");
  expect_invalid("workers.max_queue", "-1", "workers.max_queue");
  expect_invalid("workers.max_queue", "100001", "workers.max_queue");
  expect_valid("workers.max_queue", "0");
  expect_valid("workers.max_queue", "100000");

  /* min is checked against the max that was given. */
  json_t *j = base_spec();
  patch(j, "workers.max", "10");
  patch(j, "workers.min", "10");
  sg_error_t *err = NULL;
  sg_spec_t *s = sg_spec_from_json(j, &err);
  assert_non_null(s);
  assert_int_equal(s->workers.min, 10);
  sg_spec_free(s);
  patch(j, "workers.min", "11");
  assert_null(sg_spec_from_json(j, &err));
  assert_string_equal(err->field, "workers.min");
  sg_error_free(err);
  json_decref(j);
}

static void test_invalid_scale(void **state) {
  (void)state;
  expect_invalid("scale", "\"concurrency\"", "scale");
  expect_invalid("scale.policy", "\"rps\"", "scale.policy");
  expect_invalid("scale.policy", "1", "scale.policy");
  expect_invalid("scale.policy", "\"Concurrency\"", "scale.policy");
  expect_invalid("scale.value", "0", "scale.value");
  expect_invalid("scale.value", "0.001", "scale.value");
  expect_invalid("scale.value", "10001", "scale.value");
  expect_invalid("scale.value", "\"1\"", "scale.value");
  expect_invalid("scale.hold_s", "-1", "scale.hold_s");
  expect_invalid("scale.hold_s", "3601", "scale.hold_s");
  expect_invalid("scale.hold_s", "\"5\"", "scale.hold_s");
  expect_valid("scale.value", "0.01");
  expect_valid("scale.value", "10000");

  json_t *j = base_spec();
  patch(j, "scale.policy", "\"queue_delay\"");
  sg_error_t *err = NULL;
  const char *bad[] = {"-1", "3601", "\"2\""};
  for (size_t i = 0; i < SG_ARRAY_SIZE(bad); i++) {
    patch(j, "scale.value", bad[i]);
    assert_null(sg_spec_from_json(j, &err));
    assert_non_null(err);
    assert_string_equal(err->field, "scale.value");
    sg_error_free(err);
    err = NULL;
  }
  const char *good[] = {"0", "3600", "0.25"};
  for (size_t i = 0; i < SG_ARRAY_SIZE(good); i++) {
    patch(j, "scale.value", good[i]);
    sg_spec_t *s = sg_spec_from_json(j, &err);
    assert_non_null(s);
    assert_int_equal(s->scale.policy, SG_SCALE_QUEUE_DELAY);
    assert_true(s->scale.value == json_number_value(json_object_get(json_object_get(j, "scale"), "value")));
    sg_spec_free(s);
  }
  json_decref(j);
}

static void test_not_json(void **state) {
  (void)state;
  const char *texts[] = {"",
                         "{",
                         "[1, 2]",
                         "\"spec\"",
                         "42",
                         "null",
                         "{\"name\": \"a\",}",
                         "{\"name\": \"a\", \"name\": \"b\", \"command\": [\"/w\"]}"};
  for (size_t i = 0; i < SG_ARRAY_SIZE(texts); i++) {
    sg_error_t *err = NULL;
    sg_spec_t *s = parse(texts[i], &err);
    if (s)
      fail_msg("accepted %s", texts[i]);
    assert_non_null(err);
    assert_int_equal(err->status, SG_EJSON);
    assert_null(err->field);
    assert_non_null(err->message);
    sg_error_free(err);
  }
  /* Not an object, given as JSON. */
  json_t *arr = json_array();
  sg_error_t *err = NULL;
  assert_null(sg_spec_from_json(arr, &err));
  assert_int_equal(err->status, SG_EJSON);
  sg_error_free(err);
  json_decref(arr);
  /* The length is honoured: trailing bytes past len are not read. */
  char buf[64];
  snprintf(buf, sizeof(buf), "%sGARBAGE", minimal);
  err = NULL;
  sg_spec_t *s = sg_spec_parse(buf, strlen(minimal), &err);
  assert_non_null(s);
  sg_spec_free(s);
  assert_null(err);
}

static void test_error_not_overwritten(void **state) {
  (void)state;
  /* A NULL err is allowed. */
  assert_null(parse("{\"name\": \"A\", \"command\": [\"/w\"]}", NULL));
  assert_null(parse("nope", NULL));
}

/* ---- serialization ---- */

static void test_to_json_every_field(void **state) {
  (void)state;
  sg_spec_t *s = parse(full, NULL);
  assert_non_null(s);
  json_t *j = sg_spec_to_json(s);
  assert_non_null(j);
  const char *top[] = {"name", "type",   "runtime", "image",   "command", "env",
                       "port", "health", "gpu",     "workers", "scale"};
  assert_int_equal(json_object_size(j), SG_ARRAY_SIZE(top));
  for (size_t i = 0; i < SG_ARRAY_SIZE(top); i++)
    assert_non_null(json_object_get(j, top[i]));
  assert_string_equal(json_string_value(json_object_get(j, "name")), "echo-2");
  assert_string_equal(json_string_value(json_object_get(j, "image")), "127.0.0.1:5001/demo/echo:latest");
  assert_int_equal(json_array_size(json_object_get(j, "command")), 3);
  assert_string_equal(json_string_value(json_array_get(json_object_get(j, "command"), 2)), "$PORT");
  assert_string_equal(json_string_value(json_object_get(json_object_get(j, "env"), "MODEL")), "tiny");
  assert_int_equal(json_integer_value(json_object_get(j, "port")), 9001);
  json_t *h = json_object_get(j, "health");
  assert_string_equal(json_string_value(json_object_get(h, "path")), "/ready");
  assert_true(json_number_value(json_object_get(h, "period_s")) == 0.5);
  assert_int_equal(json_integer_value(json_object_get(h, "failure_threshold")), 7);
  json_t *g = json_object_get(j, "gpu");
  assert_string_equal(json_string_value(json_object_get(g, "type")), "a100");
  assert_int_equal(json_integer_value(json_object_get(g, "count")), 2);
  json_t *w = json_object_get(j, "workers");
  assert_int_equal(json_integer_value(json_object_get(w, "min")), 1);
  assert_int_equal(json_integer_value(json_object_get(w, "max")), 6);
  assert_true(json_number_value(json_object_get(w, "idle_timeout_s")) == 12.5);
  assert_int_equal(json_integer_value(json_object_get(w, "max_concurrency")), 3);
  assert_int_equal(json_integer_value(json_object_get(w, "max_queue")), 55);
  json_t *sc = json_object_get(j, "scale");
  assert_string_equal(json_string_value(json_object_get(sc, "policy")), "queue_delay");
  assert_true(json_number_value(json_object_get(sc, "value")) == 4);
  json_decref(j);
  sg_spec_free(s);
}

static void test_to_json_defaults_spelled_out(void **state) {
  (void)state;
  sg_spec_t *s = parse(minimal, NULL);
  assert_non_null(s);
  json_t *j = sg_spec_to_json(s);
  assert_true(json_is_null(json_object_get(j, "image")));
  assert_int_equal(json_object_size(json_object_get(j, "env")), 0);
  assert_true(json_is_null(json_object_get(json_object_get(j, "gpu"), "type")));
  assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "gpu"), "count")), 0);
  assert_string_equal(json_string_value(json_object_get(json_object_get(j, "scale"), "policy")), "concurrency");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "workers"), "max_queue")), 1000);
  assert_string_equal(json_string_value(json_object_get(json_object_get(j, "health"), "path")), "/health");
  json_decref(j);
  sg_spec_free(s);
}

/* parse -> to_json -> text -> parse -> to_json gives the same JSON. */
static void round_trip(const char *text) {
  sg_error_t *err = NULL;
  sg_spec_t *a = parse(text, &err);
  assert_non_null(a);
  json_t *ja = sg_spec_to_json(a);
  char *dumped = json_dumps(ja, JSON_COMPACT);
  assert_non_null(dumped);
  sg_spec_t *b = parse(dumped, &err);
  if (!b)
    fail_msg("normalized spec rejected: %s\n%s", err ? err->message : "?", dumped);
  json_t *jb = sg_spec_to_json(b);
  assert_true(json_equal(ja, jb));
  assert_string_equal(a->name, b->name);
  assert_int_equal(a->n_command, b->n_command);
  assert_int_equal(a->n_env, b->n_env);
  assert_int_equal(a->port, b->port);
  assert_int_equal(a->gpu.count, b->gpu.count);
  assert_int_equal(a->workers.min, b->workers.min);
  assert_int_equal(a->workers.max, b->workers.max);
  assert_int_equal(a->scale.policy, b->scale.policy);
  assert_true(a->scale.value == b->scale.value);
  assert_true(a->health.period_s == b->health.period_s);
  free(dumped);
  json_decref(ja);
  json_decref(jb);
  sg_spec_free(a);
  sg_spec_free(b);
}

static void test_round_trip(void **state) {
  (void)state;
  round_trip(minimal);
  round_trip(full);
  round_trip("{\"name\": \"u\", \"command\": [\"/w\", \"caf\\u00e9\", \"\\\"q\\\"\"], \"env\": {\"E\": \"\\u2603\"},"
             " \"gpu\": {\"type\": \"h100\"}, \"scale\": {\"value\": 0.25}}");
}

/* ---- async.protocol and the runpod fields ---- */

static const char *const async_min = "{\"name\": \"rp\", \"type\": \"async\", \"command\": [\"/w\"]}";
static const char *const runpod_min =
    "{\"name\": \"rp\", \"type\": \"async\", \"command\": [\"/w\"], \"async\": {\"protocol\": \"runpod\"}}";

static void test_async_protocol_defaults(void **state) {
  (void)state;
  sg_error_t *err = NULL;
  sg_spec_t *s = parse(async_min, &err);
  assert_non_null(s);
  assert_string_equal(s->async.protocol, "http");
  assert_false(sg_spec_is_runpod(s));
  assert_true(s->async.ping_timeout_s == 30);
  assert_true(s->async.take_wait_s == 20);
  assert_string_equal(s->health.path, "/health");
  sg_spec_free(s);
  /* A sync spec has the defaults too, and is never runpod. */
  s = parse(minimal, &err);
  assert_non_null(s);
  assert_string_equal(s->async.protocol, "http");
  assert_false(sg_spec_is_runpod(s));
  sg_spec_free(s);

  s = parse(runpod_min, &err);
  assert_non_null(s);
  assert_string_equal(s->async.protocol, "runpod");
  assert_true(sg_spec_is_runpod(s));
  /* No health path given: none, the worker is not probed. */
  assert_null(s->health.path);
  assert_int_equal(sg_spec_ping_interval_ms(s), 10000);
  json_t *j = sg_spec_to_json(s);
  json_t *a = json_object_get(j, "async");
  assert_string_equal(json_string_value(json_object_get(a, "protocol")), "runpod");
  assert_true(json_number_value(json_object_get(a, "ping_timeout_s")) == 30);
  assert_true(json_number_value(json_object_get(a, "take_wait_s")) == 20);
  assert_true(json_is_null(json_object_get(json_object_get(j, "health"), "path")));
  json_decref(j);
  sg_spec_free(s);
}

static void test_async_protocol_fields(void **state) {
  (void)state;
  sg_error_t *err = NULL;
  sg_spec_t *s = parse("{\"name\": \"rp\", \"type\": \"async\", \"command\": [\"/w\"], \"health\": {\"path\": \"/ok\"},"
                       " \"async\": {\"protocol\": \"runpod\", \"ping_timeout_s\": 4, \"take_wait_s\": 1.5}}",
                       &err);
  assert_non_null(s);
  assert_true(sg_spec_is_runpod(s));
  assert_string_equal(s->health.path, "/ok"); /* given: probed as for any worker */
  assert_true(s->async.ping_timeout_s == 4);
  assert_true(s->async.take_wait_s == 1.5);
  assert_int_equal(sg_spec_ping_interval_ms(s), 1333);
  sg_spec_free(s);
  s = parse("{\"name\": \"rp\", \"type\": \"async\", \"command\": [\"/w\"],"
            " \"async\": {\"protocol\": \"runpod\", \"ping_timeout_s\": 3}}",
            &err);
  assert_non_null(s);
  assert_int_equal(sg_spec_ping_interval_ms(s), 1000);
  sg_spec_free(s);
  s = parse("{\"name\": \"rp\", \"type\": \"async\", \"command\": [\"/w\"],"
            " \"async\": {\"protocol\": \"http\", \"ping_timeout_s\": 3600}}",
            &err);
  assert_non_null(s);
  assert_false(sg_spec_is_runpod(s));
  assert_string_equal(s->health.path, "/health");
  sg_spec_free(s);
}

/* Parses text and expects an SG_EINVAL error naming field. */
static void expect_text_invalid(const char *text, const char *field) {
  sg_error_t *err = NULL;
  sg_spec_t *s = parse(text, &err);
  if (s)
    fail_msg("accepted: %s", text);
  assert_non_null(err);
  assert_int_equal(err->status, SG_EINVAL);
  if (!err->field || strcmp(err->field, field))
    fail_msg("%s: error names %s, want %s (%s)", text, err->field ? err->field : "(none)", field, err->message);
  sg_error_free(err);
}

static void test_invalid_async_protocol(void **state) {
  (void)state;
  const char *head = "{\"name\": \"rp\", \"type\": \"async\", \"command\": [\"/w\"], \"async\": ";
  static const struct {
    const char *async, *field;
  } bad[] = {
      {"{\"protocol\": \"grpc\"}", "async.protocol"},
      {"{\"protocol\": \"RunPod\"}", "async.protocol"},
      {"{\"protocol\": \"\"}", "async.protocol"},
      {"{\"protocol\": 1}", "async.protocol"},
      {"{\"protocol\": \"runpod\", \"ping_timeout_s\": 2.9}", "async.ping_timeout_s"},
      {"{\"protocol\": \"runpod\", \"ping_timeout_s\": 3601}", "async.ping_timeout_s"},
      {"{\"protocol\": \"runpod\", \"ping_timeout_s\": \"30\"}", "async.ping_timeout_s"},
      {"{\"protocol\": \"runpod\", \"take_wait_s\": 0.5}", "async.take_wait_s"},
      {"{\"protocol\": \"runpod\", \"take_wait_s\": 61}", "async.take_wait_s"},
      {"{\"protocol\": \"runpod\", \"take_wait_s\": null}", "async.take_wait_s"},
      {"{\"protocol\": \"runpod\", \"poll\": 1}", "async.poll"},
  };
  for (size_t i = 0; i < SG_ARRAY_SIZE(bad); i++) {
    char *text = xasprintf("%s%s}", head, bad[i].async);
    expect_text_invalid(text, bad[i].field);
    free(text);
  }
  /* runpod (or any protocol) on a sync endpoint names async.protocol. */
  expect_text_invalid("{\"name\": \"rp\", \"command\": [\"/w\"], \"async\": {\"protocol\": \"runpod\"}}",
                      "async.protocol");
  expect_text_invalid("{\"name\": \"rp\", \"type\": \"sync\", \"command\": [\"/w\"], \"async\": {\"protocol\": "
                      "\"http\", \"take_wait_s\": 5}}",
                      "async.protocol");
  expect_text_invalid("{\"name\": \"rp\", \"command\": [\"/w\"], \"async\": {\"take_wait_s\": 5}}", "async");
  /* An explicit health path is checked as always. */
  expect_text_invalid("{\"name\": \"rp\", \"type\": \"async\", \"command\": [\"/w\"], \"health\": {\"path\": \"x\"},"
                      " \"async\": {\"protocol\": \"runpod\"}}",
                      "health.path");
}

/* GET's JSON parses back to the same spec, health path null included. */
static void test_async_protocol_round_trip(void **state) {
  (void)state;
  round_trip(runpod_min);
  round_trip("{\"name\": \"rp\", \"type\": \"async\", \"command\": [\"/w\"], \"health\": {\"path\": \"/h\"},"
             " \"async\": {\"protocol\": \"runpod\", \"ping_timeout_s\": 9, \"take_wait_s\": 2}}");
  round_trip(async_min);
}

/* The protocol and the ping interval reach the workers' environment: a
 * change needs new workers; take_wait_s and the health path do not. */
static void test_async_protocol_restart(void **state) {
  (void)state;
  sg_spec_t *http = parse(async_min, NULL);
  sg_spec_t *rp = parse(runpod_min, NULL);
  sg_spec_t *rp_ping = parse("{\"name\": \"rp\", \"type\": \"async\", \"command\": [\"/w\"],"
                             " \"async\": {\"protocol\": \"runpod\", \"ping_timeout_s\": 60}}",
                             NULL);
  sg_spec_t *rp_wait =
      parse("{\"name\": \"rp\", \"type\": \"async\", \"command\": [\"/w\"],"
            " \"health\": {\"path\": \"/h\"}, \"async\": {\"protocol\": \"runpod\", \"take_wait_s\": 5}}",
            NULL);
  sg_spec_t *http_ping = parse("{\"name\": \"rp\", \"type\": \"async\", \"command\": [\"/w\"],"
                               " \"async\": {\"ping_timeout_s\": 60}}",
                               NULL);
  assert_non_null(http);
  assert_non_null(rp);
  assert_non_null(rp_ping);
  assert_non_null(rp_wait);
  assert_non_null(http_ping);
  assert_true(sg_spec_restart_needed(http, rp));
  assert_true(sg_spec_restart_needed(rp, http));
  assert_true(sg_spec_restart_needed(rp, rp_ping));
  assert_false(sg_spec_restart_needed(rp, rp_wait));
  assert_false(sg_spec_restart_needed(http, http_ping));
  sg_spec_free(http);
  sg_spec_free(rp);
  sg_spec_free(rp_ping);
  sg_spec_free(rp_wait);
  sg_spec_free(http_ping);
}

static void test_name_valid(void **state) {
  (void)state;
  const char *good[] = {"a",     "0",      "echo",   "echo-2",
                        "a-b-c", "9lives", "x1y2z3", "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk"};
  const char *bad[] = {"",    "-",   "-a",       "a-",
                       "A",   "aB",  "a_b",      "a.b",
                       "a b", "a/b", "\xc3\xa9", "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijkl"};
  assert_int_equal(strlen(good[7]), 63);
  assert_int_equal(strlen(bad[11]), 64);
  for (size_t i = 0; i < SG_ARRAY_SIZE(good); i++)
    if (!sg_name_valid(good[i]))
      fail_msg("rejected \"%s\"", good[i]);
  for (size_t i = 0; i < SG_ARRAY_SIZE(bad); i++)
    if (sg_name_valid(bad[i]))
      fail_msg("accepted \"%s\"", bad[i]);
}

static void test_policy_name(void **state) {
  (void)state;
  assert_string_equal(sg_scale_policy_name(SG_SCALE_CONCURRENCY), "concurrency");
  assert_string_equal(sg_scale_policy_name(SG_SCALE_QUEUE_DELAY), "queue_delay");
}

/* Which changes need new workers and which apply to running ones. */
static void test_restart_needed(void **state) {
  (void)state;
  sg_error_t *err = NULL;
  sg_spec_t *base = parse(full, &err);
  assert_non_null(base);
  assert_false(sg_spec_restart_needed(base, base));
  static const struct {
    const char *field, *value;
    bool restart;
  } cases[] = {
      {"command", "[\"/other\"]", true},
      {"env", "{\"MODEL\": \"big\"}", true},
      {"image", "\"127.0.0.1:5001/demo/echo:v2\"", true},
      {"port", "9002", true},
      {"gpu", "{\"type\": \"a100\", \"count\": 1}", true},
      {"type", "\"async\"", true},
      {"workers", "{\"min\": 0, \"max\": 9, \"idle_timeout_s\": 1, \"request_timeout_s\": 3}", false},
      {"scale", "{\"policy\": \"concurrency\", \"value\": 2}", false},
      {"health", "{\"path\": \"/healthz\", \"period_s\": 2}", false},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    json_t *j = json_loads(full, 0, NULL);
    json_object_set_new(j, cases[i].field, json_loads(cases[i].value, JSON_DECODE_ANY, NULL));
    sg_spec_t *changed = sg_spec_from_json(j, &err);
    json_decref(j);
    if (!changed)
      fail_msg("%s: %s", cases[i].field, err->message);
    if (sg_spec_restart_needed(base, changed) != cases[i].restart)
      fail_msg("%s: restart should be %d", cases[i].field, cases[i].restart);
    assert_int_equal(sg_spec_restart_needed(changed, base), cases[i].restart);
    sg_spec_free(changed);
  }
  sg_spec_free(base);
}

/* ---- every examples/NAME.json is a spec sgpud takes ---- */

static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void test_examples_parse(void **state) {
  (void)state;
  const char *dir = SG_SOURCE_ROOT "/examples";
  DIR *d = opendir(dir);
  assert_non_null(d);
  char *names[64];
  size_t n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t len = strlen(e->d_name);
    if (len > 5 && !strcmp(e->d_name + len - 5, ".json")) {
      assert_true(n < 64);
      names[n++] = xstrdup(e->d_name);
    }
  }
  closedir(d);
  qsort(names, n, sizeof(names[0]), cmp_name);
  bool runpod_seen = false;
  for (size_t i = 0; i < n; i++) {
    cleanup_free char *path = xasprintf("%s/%s", dir, names[i]);
    FILE *f = fopen(path, "re");
    assert_non_null(f);
    char buf[65536];
    size_t len = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    assert_true(len < sizeof(buf));
    sg_error_t *err = NULL;
    sg_spec_t *s = sg_spec_parse(buf, len, &err);
    if (!s)
      fail_msg("%s: %s", names[i], err->message);
    if (!strcmp(names[i], "runpod-worker.json")) {
      /* An unmodified RunPod worker image: pulled, on a GPU, not probed. */
      runpod_seen = true;
      assert_true(sg_spec_is_runpod(s));
      assert_non_null(s->image);
      assert_true(s->gpu.count >= 1);
      assert_null(s->health.path);
      /* Its token is a secret reference, not a value in the spec. */
      bool hf = false;
      for (size_t k = 0; k < s->n_env; k++)
        if (!strcmp(s->env_keys[k], "HF_TOKEN"))
          hf = s->env_secrets && s->env_secrets[k] != NULL;
      assert_true(hf);
    }
    sg_spec_free(s);
    free(names[i]);
  }
  assert_true(runpod_seen);
}

static void test_volume_paths(void **state) {
  (void)state;
  const char *good[] = {"/a", "/a/b", "/root/.cache/huggingface", "/a.b/c..d", "/...", "/", NULL};
  const char *bad[] = {"", "a", "a/b", "//a", "/a/", "/a//b", "/a/./b", "/a/../b", "/..", "/.", "/a/..", NULL};
  for (const char **p = good; *p; p++)
    if (!sg_spec_path_normalized(*p))
      fail_msg("%s refused", *p);
  for (const char **p = bad; *p; p++)
    if (sg_spec_path_normalized(*p))
      fail_msg("%s accepted", *p);
}

static void test_volumes(void **state) {
  (void)state;
  expect_valid("volumes", "[{\"name\": \"hf-cache\", \"path\": \"/root/.cache/huggingface\"},"
                          " {\"host_path\": \"/srv/models\", \"path\": \"/models\", \"read_only\": true}]");
  expect_valid("volumes", "[]");
  expect_valid("volumes", "null");
  expect_invalid("volumes", "{}", "volumes");
  expect_invalid("volumes", "[1]", "volumes[0]");
  expect_invalid("volumes", "[{\"path\": \"/a\"}]", "volumes[0]");
  expect_invalid("volumes", "[{\"name\": \"v\", \"host_path\": \"/srv\", \"path\": \"/a\"}]", "volumes[0]");
  expect_invalid("volumes", "[{\"name\": \"v\"}]", "volumes[0].path");
  expect_invalid("volumes", "[{\"name\": \"V_1\", \"path\": \"/a\"}]", "volumes[0].name");
  expect_invalid("volumes", "[{\"name\": \"v\", \"path\": \"/a/../etc\"}]", "volumes[0].path");
  expect_invalid("volumes", "[{\"name\": \"v\", \"path\": \"/\"}]", "volumes[0].path");
  expect_invalid("volumes", "[{\"name\": \"v\", \"path\": \"a\"}]", "volumes[0].path");
  expect_invalid("volumes", "[{\"host_path\": \"/srv/../etc\", \"path\": \"/a\"}]", "volumes[0].host_path");
  expect_invalid("volumes", "[{\"host_path\": \"srv\", \"path\": \"/a\"}]", "volumes[0].host_path");
  expect_invalid("volumes", "[{\"host_path\": \"/\", \"path\": \"/a\"}]", "volumes[0].host_path");
  expect_invalid("volumes", "[{\"name\": \"v\", \"path\": \"/a\", \"read_only\": 1}]", "volumes[0].read_only");
  expect_invalid("volumes", "[{\"name\": \"v\", \"path\": \"/a\", \"x\": 1}]", "volumes[0].x");
  expect_invalid("volumes", "[{\"name\": \"v\", \"path\": \"/a\"}, {\"name\": \"w\", \"path\": \"/a\"}]",
                 "volumes[1].path");
  /* Two volumes whose variables would be the same name. */
  expect_invalid("volumes",
                 "[{\"host_path\": \"/srv/m\", \"path\": \"/a/models\"},"
                 " {\"host_path\": \"/srv/n\", \"path\": \"/b/models\"}]",
                 "volumes[1].path");
  expect_invalid("volumes", "[{\"name\": \"a-b\", \"path\": \"/x\"}, {\"name\": \"a-b\", \"path\": \"/y\"}]",
                 "volumes[1].name");
  /* At most SG_SPEC_MAX_VOLUMES. */
  sg_strbuf_t b = SG_STRBUF_INIT;
  sg_strbuf_appendf(&b, "[");
  for (int i = 0; i <= SG_SPEC_MAX_VOLUMES; i++)
    sg_strbuf_appendf(&b, "%s{\"name\": \"v%d\", \"path\": \"/v%d\"}", i ? "," : "", i, i);
  sg_strbuf_appendf(&b, "]");
  char *many = sg_strbuf_steal(&b);
  expect_invalid("volumes", many, "volumes");
  free(many);
}

static void test_volume_env_names(void **state) {
  (void)state;
  sg_spec_volume_t named = {.name = "hf-cache", .path = "/root/.cache/huggingface"};
  sg_spec_volume_t host = {.host_path = "/srv/models", .path = "/models"};
  sg_spec_volume_t dotted = {.host_path = "/srv/m", .path = "/opt/llama-3.1"};
  char *a = sg_spec_volume_env_name(&named), *h = sg_spec_volume_env_name(&host), *d = sg_spec_volume_env_name(&dotted);
  assert_string_equal(a, "SGPU_VOLUME_HF_CACHE");
  assert_string_equal(h, "SGPU_VOLUME_MODELS");
  assert_string_equal(d, "SGPU_VOLUME_LLAMA_3_1");
  free(a);
  free(h);
  free(d);
}

static void test_volumes_round_trip_and_restart(void **state) {
  (void)state;
  const char *with = "{\"name\": \"v\", \"command\": [\"/w\"], \"volumes\": [{\"name\": \"hf\", \"path\": \"/c\"},"
                     " {\"host_path\": \"/srv/models\", \"path\": \"/models\", \"read_only\": true}]}";
  const char *ro =
      "{\"name\": \"v\", \"command\": [\"/w\"], \"volumes\": [{\"name\": \"hf\", \"path\": \"/c\","
      " \"read_only\": true}, {\"host_path\": \"/srv/models\", \"path\": \"/models\", \"read_only\": true}]}";
  sg_error_t *err = NULL;
  sg_spec_t *a = parse(with, &err), *b = parse(ro, &err), *none = parse(minimal, &err);
  assert_non_null(a);
  assert_non_null(b);
  assert_non_null(none);
  json_t *j = sg_spec_to_json(a);
  json_t *vols = json_object_get(j, "volumes");
  assert_int_equal(json_array_size(vols), 2);
  assert_string_equal(json_string_value(json_object_get(json_array_get(vols, 0), "name")), "hf");
  assert_true(json_is_false(json_object_get(json_array_get(vols, 0), "read_only")));
  assert_string_equal(json_string_value(json_object_get(json_array_get(vols, 1), "host_path")), "/srv/models");
  sg_spec_t *again = sg_spec_from_json(j, &err);
  assert_non_null(again);
  assert_false(sg_spec_restart_needed(a, again));
  assert_true(sg_spec_restart_needed(a, b));
  assert_true(sg_spec_restart_needed(none, a));
  json_decref(j);
  sg_spec_free(a);
  sg_spec_free(b);
  sg_spec_free(none);
  sg_spec_free(again);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_nulls_mean_defaults),
      cmocka_unit_test(test_full),
      cmocka_unit_test(test_scale_value_defaults),
      cmocka_unit_test(test_gpu_rules),
      cmocka_unit_test(test_base_is_valid),
      cmocka_unit_test(test_unknown_fields),
      cmocka_unit_test(test_numeric_null_rejected),
      cmocka_unit_test(test_invalid_name),
      cmocka_unit_test(test_invalid_type_runtime_image),
      cmocka_unit_test(test_invalid_command),
      cmocka_unit_test(test_invalid_env),
      cmocka_unit_test(test_env_secret_reference),
      cmocka_unit_test(test_invalid_port),
      cmocka_unit_test(test_invalid_health),
      cmocka_unit_test(test_invalid_gpu),
      cmocka_unit_test(test_invalid_workers),
      cmocka_unit_test(test_invalid_scale),
      cmocka_unit_test(test_not_json),
      cmocka_unit_test(test_error_not_overwritten),
      cmocka_unit_test(test_to_json_every_field),
      cmocka_unit_test(test_to_json_defaults_spelled_out),
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_name_valid),
      cmocka_unit_test(test_policy_name),
      cmocka_unit_test(test_restart_needed),
      cmocka_unit_test(test_async_protocol_defaults),
      cmocka_unit_test(test_async_protocol_fields),
      cmocka_unit_test(test_invalid_async_protocol),
      cmocka_unit_test(test_async_protocol_round_trip),
      cmocka_unit_test(test_async_protocol_restart),
      cmocka_unit_test(test_examples_parse),
      cmocka_unit_test(test_volume_paths),
      cmocka_unit_test(test_volumes),
      cmocka_unit_test(test_volume_env_names),
      cmocka_unit_test(test_volumes_round_trip_and_restart),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
