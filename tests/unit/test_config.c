/* The daemon's config file: every key of the table in daemon/config.c loads
 * with a valid value, alone and all together; values out of bounds are errors
 * naming the key and its bounds; the defaults are the documented ones; an
 * unknown key is an error naming it; docs/API.md lists exactly the table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon/config.h"
#include "sgpu/daemon.h"
#include "sgpu/log.h"
#include "sgpu/error.h"
#include "sgpu/util.h"

/* Each documented key with a valid value (JSON text). */
static const struct {
  const char *key, *value;
} keys[] = {
    {"listen", "\"127.0.0.1:9999\""},
    {"data_dir", "\"/tmp/sgpu-config-test\""},
    {"gpus", "\"a100:2\""},
    {"log_level", "\"debug\""},
    {"stop_grace_s", "5"},
    {"max_body_bytes", "2097152"},
    {"log_keep_lines", "1000"},
    {"header_timeout_s", "5"},
    {"idle_timeout_s", "30"},
    {"io_timeout_s", "30"},
    {"max_header_bytes", "32768"},
    {"max_headers", "50"},
    {"max_connections", "100"},
    {"webhook_allow", "[\"public\", \"10.0.0.0/8\"]"},
    {"webhook_retry_s", "5"},
    {"jobs_max_batch", "16"},
    {"prices", "{\"a100\": 0.0004}"},
    {"meter_checkpoint_s", "1"},
    {"log_max_bytes", "1000000"},
    {"log_max_age_s", "3600"},
    {"log_retention", "{\"noisy\": {\"max_lines\": 5000, \"max_bytes\": 1000000, \"max_age_s\": 3600}}"},
    {"log_trim_interval_s", "10"},
    {"log_rate_lines_s", "100"},
    {"log_burst_lines", "1000"},
    {"web_dir", "\"/tmp\""},
    {"oci_runtime", "\"crun\""},
    {"cdi_dir", "\"/etc/cdi\""},
    {"insecure_registries", "[\"127.0.0.1:5000\"]"},
    {"volume_host_paths", "[\"/srv/models\"]"},
    {"image_cache_max_bytes", "1073741824"},
    {"image_max_layer_bytes", "1073741824"},
    {"image_max_unpacked_bytes", "2147483648"},
    {"default_runtime", "\"process\""},
    {"slurm", "{\"partition\": \"gpu\"}"},
    {"run_as", "\"nobody\""},
    {"oci_userns", "false"},
    {"advertise_url", "\"http://10.0.0.5:8080\""},
};

static char *write_config(const char *text) {
  char *path = xstrdup("/tmp/sgpu-config-XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  return path;
}

static int load(const char *text, sg_error_t **err) {
  char *path = write_config(text);
  sg_daemon_config_t cfg;
  sg_daemon_config_defaults(&cfg);
  int r = sg_daemon_config_load(&cfg, path, err);
  sg_daemon_config_clear(&cfg);
  unlink(path);
  free(path);
  return r;
}

static void test_each_key_alone(void **state) {
  for (size_t i = 0; i < SG_ARRAY_SIZE(keys); i++) {
    char *text = xasprintf("{\"%s\": %s}", keys[i].key, keys[i].value);
    sg_error_t *err = NULL;
    int r = load(text, &err);
    if (r != 0)
      fail_msg("%s: %s", text, err ? err->message : "(no message)");
    free(text);
  }
}

static void test_all_keys_together(void **state) {
  char *text = xstrdup("{");
  for (size_t i = 0; i < SG_ARRAY_SIZE(keys); i++) {
    char *next = xasprintf("%s%s\"%s\": %s", text, i ? ", " : "", keys[i].key, keys[i].value);
    free(text);
    text = next;
  }
  char *whole = xasprintf("%s}", text);
  sg_error_t *err = NULL;
  int r = load(whole, &err);
  if (r != 0)
    fail_msg("%s", err ? err->message : "(no message)");
  free(whole);
  free(text);
}

static void test_unknown_key(void **state) {
  sg_error_t *err = NULL;
  assert_true(load("{\"listen\": \"127.0.0.1:1\", \"no_such_key\": 1}", &err) < 0);
  assert_non_null(err);
  assert_non_null(strstr(err->message, "no_such_key"));
  sg_error_free(err);
}

/* The test's list above and the daemon's table name the same keys. */
static void test_table_keys_are_tested(void **state) {
  for (size_t i = 0; i < sg_config_nkeys; i++) {
    bool found = false;
    for (size_t j = 0; j < SG_ARRAY_SIZE(keys) && !found; j++)
      found = !strcmp(keys[j].key, sg_config_keys[i].key);
    if (!found)
      fail_msg("config key %s has no valid value in this test's keys[]", sg_config_keys[i].key);
  }
  for (size_t j = 0; j < SG_ARRAY_SIZE(keys); j++)
    if (!sg_config_find(keys[j].key))
      fail_msg("keys[] names %s, which is not in the daemon's table", keys[j].key);
}

static void expect_error(const char *text, const char *part1, const char *part2) {
  sg_error_t *err = NULL;
  if (load(text, &err) == 0)
    fail_msg("%s loaded", text);
  assert_non_null(err);
  if (!strstr(err->message, part1) || (part2 && !strstr(err->message, part2)))
    fail_msg("%s: \"%s\" does not name %s %s", text, err->message, part1, part2 ? part2 : "");
  sg_error_free(err);
}

static void expect_ok(const char *text) {
  sg_error_t *err = NULL;
  if (load(text, &err) != 0)
    fail_msg("%s: %s", text, err ? err->message : "(no message)");
}

/* Every numeric key takes its bounds and rejects what lies beyond them, and
 * a value of the wrong type, with an error naming the key and the bounds. */
static void test_bounds(void **state) {
  for (size_t i = 0; i < sg_config_nkeys; i++) {
    const sg_config_key_t *k = &sg_config_keys[i];
    char *text, *bounds;
    switch (k->type) {
    case SG_CFG_INT:
    case SG_CFG_INT64:
    case SG_CFG_SIZE:
      bounds = k->imax == INT64_MAX ? xasprintf(">= %lld", (long long)k->imin)
                                    : xasprintf("%lld..%lld", (long long)k->imin, (long long)k->imax);
      text = xasprintf("{\"%s\": %lld}", k->key, (long long)k->imin);
      expect_ok(text);
      free(text);
      text = xasprintf("{\"%s\": %lld}", k->key, (long long)k->imin - 1);
      expect_error(text, k->key, bounds);
      free(text);
      if (k->imax != INT64_MAX) {
        text = xasprintf("{\"%s\": %lld}", k->key, (long long)k->imax);
        expect_ok(text);
        free(text);
        text = xasprintf("{\"%s\": %lld}", k->key, (long long)k->imax + 1);
        expect_error(text, k->key, bounds);
        free(text);
      }
      text = xasprintf("{\"%s\": \"%lld\"}", k->key, (long long)k->imin);
      expect_error(text, k->key, "integer");
      free(text);
      text = xasprintf("{\"%s\": %lld.5}", k->key, (long long)k->imin);
      expect_error(text, k->key, "integer");
      free(text);
      free(bounds);
      break;
    case SG_CFG_DOUBLE:
      bounds = xasprintf("%g..%g", k->dmin, k->dmax);
      text = xasprintf("{\"%s\": %.17g}", k->key, k->dmin);
      expect_ok(text);
      free(text);
      text = xasprintf("{\"%s\": %.17g}", k->key, k->dmax);
      expect_ok(text);
      free(text);
      text = xasprintf("{\"%s\": %.17g}", k->key, k->dmin - 0.001);
      expect_error(text, k->key, bounds);
      free(text);
      text = xasprintf("{\"%s\": %.17g}", k->key, k->dmax * 1.001 + 1);
      expect_error(text, k->key, bounds);
      free(text);
      text = xasprintf("{\"%s\": \"1\"}", k->key);
      expect_error(text, k->key, "number");
      free(text);
      free(bounds);
      break;
    case SG_CFG_STRING:
      text = xasprintf("{\"%s\": 1}", k->key);
      expect_error(text, k->key, "string");
      free(text);
      if (k->imin) {
        text = xasprintf("{\"%s\": \"\"}", k->key);
        expect_error(text, k->key, "non-empty");
        free(text);
      }
      if (k->imax) {
        char *s = xcalloc((size_t)k->imax + 2, 1);
        memset(s, 'a', (size_t)k->imax);
        text = xasprintf("{\"%s\": \"%s\"}", k->key, s);
        expect_ok(text);
        free(text);
        s[k->imax] = 'a';
        text = xasprintf("{\"%s\": \"%s\"}", k->key, s);
        expect_error(text, k->key, "at most");
        free(text);
        free(s);
      }
      break;
    case SG_CFG_BOOL:
    case SG_CFG_ENUM:
      text = xasprintf("{\"%s\": \"no such value\"}", k->key);
      expect_error(text, k->key, NULL);
      free(text);
      break;
    case SG_CFG_STRV: {
      text = xasprintf("{\"%s\": \"x\"}", k->key);
      expect_error(text, k->key, "array");
      free(text);
      text = xasprintf("{\"%s\": [1]}", k->key);
      expect_error(text, k->key, "[0] must be a string");
      free(text);
      char *many = xstrdup("[");
      for (int64_t j = 0; j <= k->imax; j++) {
        char *next = xasprintf("%s%s\"127.0.0.1\"", many, j ? ", " : "");
        free(many);
        many = next;
      }
      text = xasprintf("{\"%s\": %s]}", k->key, many);
      expect_error(text, k->key, "at most");
      free(text);
      free(many);
      break;
    }
    case SG_CFG_CUSTOM:
      text = xasprintf("{\"%s\": 1}", k->key);
      expect_error(text, k->key, NULL);
      free(text);
      break;
    }
  }
  /* Element checks and messages kept from before the table. */
  expect_error("{\"insecure_registries\": [\"a/b\"]}", "insecure_registries[0]", "host[:port]");
  expect_error("{\"webhook_allow\": [\"public\", \"not an address\"]}", "not an address", NULL);
  expect_error("{\"default_runtime\": \"docker\"}", "default_runtime", "\"process\", \"oci\" or \"slurm\"");
  expect_error("{\"oci_userns\": 1}", "oci_userns must be true or false", NULL);
  expect_error("{\"log_level\": \"verbose\"}", "log_level must be debug, info, warn or error", NULL);
  expect_error("{\"max_connections\": -1}",
               "max_connections must be an integer 0..10000000 (0: sized from RLIMIT_NOFILE)", NULL);
}

/* The defaults are those the daemon always had (docs/API.md states them). */
static void test_defaults(void **state) {
  sg_daemon_config_t cfg;
  sg_daemon_config_defaults(&cfg);
  assert_string_equal(cfg.listen, "127.0.0.1:8080");
  assert_non_null(cfg.data_dir);
  assert_null(cfg.gpus);
  assert_string_equal(cfg.gpus_fallback, "a100:4");
  assert_int_equal(cfg.log_level, SG_LOG_INFO);
  assert_true(cfg.stop_grace_s == 10);
  assert_int_equal(cfg.max_body, 20u << 20);
  assert_int_equal(cfg.log_keep_lines, 100000);
  assert_true(cfg.header_timeout_s == 10 && cfg.idle_timeout_s == 75 && cfg.io_timeout_s == 60);
  assert_int_equal(cfg.max_header_bytes, 64 * 1024);
  assert_int_equal(cfg.max_headers, 100);
  assert_int_equal(cfg.max_connections, 0);
  assert_int_equal(cfg.n_webhook_allow, 1);
  assert_string_equal(cfg.webhook_allow[0], "public");
  assert_null(cfg.webhook_allow[1]);
  assert_true(cfg.webhook_retry_s == 10);
  assert_int_equal(cfg.jobs_max_batch, 0);
  assert_string_equal(cfg.prices, "");
  assert_true(cfg.meter_checkpoint_s == 2);
  assert_int_equal(cfg.log_max_bytes, 256ll << 20);
  assert_true(cfg.log_max_age_s == 7 * 86400);
  assert_null(cfg.log_retention);
  assert_true(cfg.log_trim_interval_s == 30 && cfg.log_rate_lines_s == 2000 && cfg.log_burst_lines == 10000);
  assert_null(cfg.web_dir);
  assert_null(cfg.oci_runtime);
  assert_null(cfg.cdi_dir);
  assert_null(cfg.insecure_registries);
  assert_int_equal(cfg.oci_userns, -1);
  assert_int_equal(cfg.image_cache_max_bytes, 100ll << 30);
  assert_int_equal(cfg.image_max_layer_bytes, 64ll << 30);
  assert_int_equal(cfg.image_max_unpacked_bytes, 64ll << 30);
  assert_null(cfg.run_as);
  assert_null(cfg.default_runtime);
  assert_false(cfg.slurm.configured);
  /* and each numeric default lies within its own bounds */
  for (size_t i = 0; i < sg_config_nkeys; i++) {
    const sg_config_key_t *k = &sg_config_keys[i];
    if (k->type == SG_CFG_DOUBLE && (k->ddef < k->dmin || k->ddef > k->dmax))
      fail_msg("default of %s is out of its bounds", k->key);
    if ((k->type == SG_CFG_INT || k->type == SG_CFG_INT64 || k->type == SG_CFG_SIZE) &&
        (k->idef < k->imin || k->idef > k->imax))
      fail_msg("default of %s is out of its bounds", k->key);
  }
  sg_daemon_config_clear(&cfg);
}

/* Values land in their fields (the offsets of the table are right). */
/* advertise_url: a http(s) URL, trailing slashes dropped, "" unsets it;
 * anything else is refused naming the key. */
static void test_advertise_url(void **state) {
  static const struct {
    const char *value, *want; /* want NULL: unset */
  } good[] = {
      {"\"http://10.0.0.5:8080\"", "http://10.0.0.5:8080"},
      {"\"https://sgpu.example.org/\"", "https://sgpu.example.org"},
      {"\"http://[fd00::5]:8080/sgpu//\"", "http://[fd00::5]:8080/sgpu"},
      {"\"\"", NULL},
  };
  for (size_t i = 0; i < SG_ARRAY_SIZE(good); i++) {
    char *text = xasprintf("{\"advertise_url\": %s}", good[i].value);
    char *path = write_config(text);
    sg_daemon_config_t cfg;
    sg_daemon_config_defaults(&cfg);
    assert_null(cfg.advertise_url);
    cfg.advertise_url = xstrdup("http://before");
    sg_error_t *err = NULL;
    if (sg_daemon_config_load(&cfg, path, &err) != 0)
      fail_msg("%s: %s", text, err->message);
    if (good[i].want)
      assert_string_equal(cfg.advertise_url, good[i].want);
    else
      assert_null(cfg.advertise_url);
    sg_daemon_config_clear(&cfg);
    unlink(path);
    free(path);
    free(text);
  }
  static const char *const bad[] = {"\"10.0.0.5:8080\"",
                                    "\"ftp://h\"",
                                    "\"http://\"",
                                    "\"http:///x\"",
                                    "\"http://h?x=1\"",
                                    "\"http://h#f\"",
                                    "\"http://h w\"",
                                    "\"http://h\\n\"",
                                    "8080",
                                    "\"http://:8080\"",
                                    "null"};
  for (size_t i = 0; i < SG_ARRAY_SIZE(bad); i++) {
    char *text = xasprintf("{\"advertise_url\": %s}", bad[i]);
    expect_error(text, "advertise_url", NULL);
    free(text);
  }
}

static void test_values_land(void **state) {
  char *path = write_config("{\"max_body_bytes\": 2048, \"log_level\": \"warn\", \"stop_grace_s\": 1.5,"
                            " \"jobs_max_batch\": 7, \"oci_userns\": true, \"webhook_allow\": [],"
                            " \"insecure_registries\": [\"r:5000\"], \"log_max_bytes\": 0,"
                            " \"default_runtime\": \"slurm\", \"cdi_dir\": \"/x\"}");
  sg_daemon_config_t cfg;
  sg_daemon_config_defaults(&cfg);
  sg_error_t *err = NULL;
  assert_int_equal(sg_daemon_config_load(&cfg, path, &err), 0);
  assert_int_equal(cfg.max_body, 2048);
  assert_int_equal(cfg.log_level, SG_LOG_WARN);
  assert_true(cfg.stop_grace_s == 1.5);
  assert_int_equal(cfg.jobs_max_batch, 7);
  assert_int_equal(cfg.oci_userns, 1);
  assert_int_equal(cfg.n_webhook_allow, 0);
  assert_null(cfg.webhook_allow[0]);
  assert_string_equal(cfg.insecure_registries[0], "r:5000");
  assert_null(cfg.insecure_registries[1]);
  assert_int_equal(cfg.log_max_bytes, 0);
  assert_string_equal(cfg.default_runtime, "slurm");
  assert_true(cfg.slurm.configured);
  assert_string_equal(cfg.cdi_dir, "/x");
  sg_daemon_config_clear(&cfg);
  unlink(path);
  free(path);
}

/* The rows of the key table ("| `key` | ...") in docs/API.md's "Daemon
 * configuration" section, as a NULL-terminated list (the caller frees). */
static char **doc_rows(size_t *n) {
  const char *path = SG_SOURCE_ROOT "/docs/API.md";
  FILE *f = fopen(path, "re");
  if (!f)
    fail_msg("cannot open %s", path);
  char **rows = NULL;
  *n = 0;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  bool in = false;
  while ((len = getline(&line, &cap, f)) > 0) {
    if (len && line[len - 1] == '\n')
      line[--len] = 0;
    if (!strncmp(line, "## ", 3))
      in = !strcmp(line, "## Daemon configuration");
    else if (in && !strncmp(line, "| `", 3)) {
      rows = xrealloc(rows, (*n + 2) * sizeof(char *));
      rows[(*n)++] = xstrdup(line);
      rows[*n] = NULL;
    }
  }
  free(line);
  fclose(f);
  return rows;
}

/* docs/API.md lists every key of the table, as `sgpud --help-config` prints
 * it, and no key the table lacks. */
static void test_docs_match_the_table(void **state) {
  size_t n;
  char **rows = doc_rows(&n);
  assert_true(n > 0);
  for (size_t i = 0; i < sg_config_nkeys; i++) {
    char *want = sg_config_row(&sg_config_keys[i]);
    bool found = false;
    for (size_t j = 0; j < n && !found; j++)
      found = !strcmp(rows[j], want);
    if (!found)
      fail_msg("docs/API.md, Daemon configuration: no row or an outdated one for %s; the row is\n%s\n"
               "(sgpud --help-config prints the whole table)",
               sg_config_keys[i].key, want);
    free(want);
  }
  for (size_t j = 0; j < n; j++) {
    char key[128] = "";
    if (sscanf(rows[j], "| `%127[^`]`", key) != 1 || !sg_config_find(key))
      fail_msg("docs/API.md, Daemon configuration: a row names a key the daemon lacks: %s", rows[j]);
    free(rows[j]);
  }
  free(rows);
}

/* The help prints one row per key after the header. */
static void test_help_prints_every_key(void **state) {
  char *buf = NULL;
  size_t size = 0;
  FILE *f = open_memstream(&buf, &size);
  assert_non_null(f);
  sg_daemon_config_help(f);
  fclose(f);
  size_t lines = 0;
  for (char *p = buf; *p; p++)
    lines += *p == '\n';
  assert_int_equal(lines, sg_config_nkeys + 2);
  for (size_t i = 0; i < sg_config_nkeys; i++) {
    char *want = xasprintf("| `%s` |", sg_config_keys[i].key);
    assert_non_null(strstr(buf, want));
    free(want);
  }
  free(buf);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_each_key_alone),
      cmocka_unit_test(test_all_keys_together),
      cmocka_unit_test(test_unknown_key),
      cmocka_unit_test(test_table_keys_are_tested),
      cmocka_unit_test(test_bounds),
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_values_land),
      cmocka_unit_test(test_advertise_url),
      cmocka_unit_test(test_docs_match_the_table),
      cmocka_unit_test(test_help_prints_every_key),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
