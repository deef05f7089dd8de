/* The daemon's config file: every key docs/API.md lists loads with a valid
 * value, alone and all together; an unknown key is an error naming it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "sgpu/daemon.h"
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
    {"image_cache_max_bytes", "1073741824"},
    {"image_max_layer_bytes", "1073741824"},
    {"image_max_unpacked_bytes", "2147483648"},
    {"default_runtime", "\"process\""},
    {"slurm", "{\"partition\": \"gpu\"}"},
    {"run_as", "\"nobody\""},
    {"oci_userns", "false"},
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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_each_key_alone),
      cmocka_unit_test(test_all_keys_together),
      cmocka_unit_test(test_unknown_key),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
