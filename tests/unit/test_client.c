/* The API client's target resolution: which URL and key win, and that the
 * default data directory is the one sgpud uses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ftw.h>
#include <sys/stat.h>

#include "sgpu/client.h"
#include "sgpu/daemon.h"
#include "sgpu/util.h"

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

/* A fresh directory with a url and an admin.key file as sgpud writes them,
 * and an environment without SGPU_* variables. */
static int setup(void **state) {
  char tmpl[] = "/tmp/sgpu-test-client-XXXXXX";
  char *d = mkdtemp(tmpl);
  if (!d)
    return -1;
  cleanup_free char *url = xasprintf("%s/url", d);
  cleanup_free char *key = xasprintf("%s/admin.key", d);
  if (sg_write_file_atomic(url, "http://127.0.0.1:7000\n", 22, 0600) < 0 ||
      sg_write_file_atomic(key, "  sk-file \n", 11, 0600) < 0)
    return -1;
  unsetenv("SGPU_URL");
  unsetenv("SGPU_API_KEY");
  unsetenv("SGPU_DATA_DIR");
  *state = xstrdup(d);
  return 0;
}

static int teardown(void **state) {
  nftw(*state, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(*state);
  unsetenv("SGPU_URL");
  unsetenv("SGPU_API_KEY");
  unsetenv("SGPU_DATA_DIR");
  return 0;
}

static void test_files_in_data_dir(void **state) {
  const char *dir = *state;
  sg_client_flags_t flags = {.data_dir = dir};
  sg_client_target_t t;
  cleanup_error sg_error_t *err = NULL;
  assert_int_equal(sg_client_resolve(&flags, &t, &err), 0);
  assert_string_equal(t.url, "http://127.0.0.1:7000");
  assert_string_equal(t.key, "sk-file");
  cleanup_free char *key_path = xasprintf("%s/admin.key", dir);
  assert_string_equal(t.key_source, key_path);
  assert_string_equal(t.data_dir, dir);
  sg_client_target_free(&t);

  /* SGPU_DATA_DIR names the directory when no flag does. */
  setenv("SGPU_DATA_DIR", dir, 1);
  assert_int_equal(sg_client_resolve(NULL, &t, &err), 0);
  assert_string_equal(t.url, "http://127.0.0.1:7000");
  assert_string_equal(t.key, "sk-file");
  sg_client_target_free(&t);
}

static void test_env_over_file(void **state) {
  sg_client_flags_t flags = {.data_dir = *state};
  sg_client_target_t t;
  cleanup_error sg_error_t *err = NULL;
  setenv("SGPU_URL", "env-host:9/", 1);
  setenv("SGPU_API_KEY", "sk-env", 1);
  assert_int_equal(sg_client_resolve(&flags, &t, &err), 0);
  assert_string_equal(t.url, "http://env-host:9");
  assert_string_equal(t.key, "sk-env");
  assert_string_equal(t.key_source, "SGPU_API_KEY");
  sg_client_target_free(&t);

  /* An empty SGPU_URL is absent; an empty SGPU_API_KEY is a key (none sent
   * although admin.key holds one). */
  setenv("SGPU_URL", "", 1);
  setenv("SGPU_API_KEY", "", 1);
  assert_int_equal(sg_client_resolve(&flags, &t, &err), 0);
  assert_string_equal(t.url, "http://127.0.0.1:7000");
  assert_string_equal(t.key, "");
  assert_string_equal(t.key_source, "SGPU_API_KEY");
  sg_client_target_free(&t);
}

static void test_flags_over_env(void **state) {
  sg_client_flags_t flags = {.data_dir = *state, .url = "https://flag-host/", .key = "sk-flag"};
  sg_client_target_t t;
  cleanup_error sg_error_t *err = NULL;
  setenv("SGPU_URL", "http://env-host:9", 1);
  setenv("SGPU_API_KEY", "sk-env", 1);
  assert_int_equal(sg_client_resolve(&flags, &t, &err), 0);
  assert_string_equal(t.url, "https://flag-host");
  assert_string_equal(t.key, "sk-flag");
  assert_string_equal(t.key_source, "--key");
  sg_client_target_free(&t);
}

static void test_no_url(void **state) {
  cleanup_free char *empty = xasprintf("%s/empty", (char *)*state);
  assert_int_equal(sg_mkdir_p(empty, 0700), 0);
  sg_client_flags_t flags = {.data_dir = empty};
  sg_client_target_t t;
  cleanup_error sg_error_t *err = NULL;
  assert_true(sg_client_resolve(&flags, &t, &err) < 0);
  assert_non_null(err);
  cleanup_free char *want = xasprintf("(%s/url not found)", empty);
  assert_non_null(strstr(err->message, want));
  assert_null(t.url);
  assert_null(t.key);
}

/* The client looks where sgpud writes: the same default directory under
 * every combination of SGPU_DATA_DIR and HOME, an unset or empty HOME
 * included. */
static void test_default_data_dir_is_the_daemons(void **state) {
  const char *dir = *state;
  cleanup_free char *old_home = getenv("HOME") ? xstrdup(getenv("HOME")) : NULL;
  struct {
    const char *data_dir_env; /* NULL: unset */
    const char *home;         /* NULL: unset */
    const char *want;
  } cases[] = {
      {dir, "/nonexistent-home", dir},
      {"", "/home/someone", "/home/someone/.sgpu"},
      {NULL, "/home/someone", "/home/someone/.sgpu"},
      {NULL, "", "./.sgpu"},
      {NULL, NULL, "./.sgpu"},
  };
  for (size_t i = 0; i < SG_ARRAY_SIZE(cases); i++) {
    if (cases[i].data_dir_env)
      setenv("SGPU_DATA_DIR", cases[i].data_dir_env, 1);
    else
      unsetenv("SGPU_DATA_DIR");
    if (cases[i].home)
      setenv("HOME", cases[i].home, 1);
    else
      unsetenv("HOME");
    setenv("SGPU_URL", "http://127.0.0.1:1", 1);

    sg_daemon_config_t cfg;
    sg_daemon_config_defaults(&cfg);
    sg_client_target_t t;
    cleanup_error sg_error_t *err = NULL;
    assert_int_equal(sg_client_resolve(NULL, &t, &err), 0);
    assert_string_equal(cfg.data_dir, cases[i].want);
    assert_string_equal(t.data_dir, cfg.data_dir);
    sg_client_target_free(&t);
    sg_daemon_config_clear(&cfg);
  }
  if (old_home)
    setenv("HOME", old_home, 1);
  else
    unsetenv("HOME");
}

/* A server that cannot be reached is an error naming it, not an answer. */
static void test_unreachable_server(void **state) {
  (void)state;
  cleanup_error sg_error_t *err = NULL;
  cleanup_client sg_client_t *c = sg_client_new("http://127.0.0.1:1", "k", "--key", NULL, &err);
  assert_non_null(c);
  sg_client_response_t r;
  assert_true(sg_client_call(c, "GET", "/v1/endpoints", NULL, &r, &err) < 0);
  assert_non_null(err);
  assert_true(sg_str_has_prefix(err->message, "http://127.0.0.1:1: "));
  assert_null(r.body);
}

static void test_escape(void **state) {
  (void)state;
  cleanup_free char *e = sg_client_escape("a b/c?d=é~_.-");
  assert_string_equal(e, "a%20b%2Fc%3Fd%3D%C3%A9~_.-");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_files_in_data_dir, setup, teardown),
      cmocka_unit_test_setup_teardown(test_env_over_file, setup, teardown),
      cmocka_unit_test_setup_teardown(test_flags_over_env, setup, teardown),
      cmocka_unit_test_setup_teardown(test_no_url, setup, teardown),
      cmocka_unit_test_setup_teardown(test_default_data_dir_is_the_daemons, setup, teardown),
      cmocka_unit_test(test_unreachable_server),
      cmocka_unit_test(test_escape),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
