/* Worker tokens (daemon/token.c): HMAC-SHA256 of the worker id under the
 * worker key, the same for the same key and id, different for another id or
 * key; the key file is made once (mode 0600, 32 bytes), read back at later
 * loads, and refused when it has another length or cannot be read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/fleet.h"
#include "sgpu/util.h"

static void set_key(sg_daemon_t *d, unsigned char first) {
  for (int i = 0; i < SG_WORKER_KEY_LEN; i++)
    d->worker_key[i] = (unsigned char)(first + i);
}

static bool lower_hex(const char *s) {
  for (; *s; s++)
    if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
      return false;
  return true;
}

static void test_token_value(void **state) {
  (void)state;
  sg_daemon_t *d = xcalloc(1, sizeof(*d));
  set_key(d, 0);
  char a[SG_WORKER_TOKEN_LEN + 1], b[SG_WORKER_TOKEN_LEN + 1];
  sg_worker_token(d, "w-0123456789ab", a);
  /* HMAC-SHA256(bytes 0..31, "sgpu-worker:w-0123456789ab"), as Python's hmac gives it. */
  assert_string_equal(a, "caf6c815e23f92733fda0493e286dd396655d5a0bf6c679facfe16aeecb6391b");
  assert_int_equal(strlen(a), SG_WORKER_TOKEN_LEN);
  assert_true(lower_hex(a));
  /* Stable across calls. */
  sg_worker_token(d, "w-0123456789ab", b);
  assert_string_equal(a, b);
  /* Another worker, another token. */
  sg_worker_token(d, "w-0123456789ac", b);
  assert_string_not_equal(a, b);
  sg_worker_token(d, "", b);
  assert_string_not_equal(a, b);
  /* Another key, another token for the same worker. */
  set_key(d, 1);
  sg_worker_token(d, "w-0123456789ab", b);
  assert_string_not_equal(a, b);
  free(d);
}

static void test_token_valid(void **state) {
  (void)state;
  sg_daemon_t *d = xcalloc(1, sizeof(*d));
  set_key(d, 7);
  char t[SG_WORKER_TOKEN_LEN + 1];
  sg_worker_token(d, "w-1", t);
  assert_true(sg_worker_token_valid(d, "w-1", t, strlen(t)));
  assert_false(sg_worker_token_valid(d, "w-2", t, strlen(t)));
  assert_false(sg_worker_token_valid(d, "w-1", t, strlen(t) - 1));
  assert_false(sg_worker_token_valid(d, "w-1", "", 0));
  char longer[SG_WORKER_TOKEN_LEN + 2];
  snprintf(longer, sizeof(longer), "%sx", t);
  assert_false(sg_worker_token_valid(d, "w-1", longer, strlen(longer)));
  t[10] = t[10] == '0' ? '1' : '0';
  assert_false(sg_worker_token_valid(d, "w-1", t, strlen(t)));
  free(d);
}

static char *temp_dir(void) {
  char tmpl[] = "/tmp/sgpu-token-XXXXXX";
  assert_non_null(mkdtemp(tmpl));
  return xstrdup(tmpl);
}

static void write_bytes(const char *path, size_t n) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  assert_true(fd >= 0);
  unsigned char buf[64];
  memset(buf, 'k', sizeof(buf));
  assert_int_equal(write(fd, buf, n), (ssize_t)n);
  close(fd);
}

static void test_key_file(void **state) {
  (void)state;
  char *dir = temp_dir();
  char *path = xasprintf("%s/worker.key", dir);
  unsigned char k1[SG_WORKER_KEY_LEN], k2[SG_WORKER_KEY_LEN];
  sg_error_t *err = NULL;
  /* Made on the first load: 32 bytes, mode 0600, no temporary file left. */
  assert_int_equal(sg_worker_key_load(path, k1, &err), 0);
  assert_null(err);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_size, SG_WORKER_KEY_LEN);
  assert_int_equal(st.st_mode & 0777, 0600);
  char *tmp = xasprintf("%s.tmp.%d", path, (int)getpid());
  assert_int_equal(access(tmp, F_OK), -1);
  /* Read back, not made again, at the next load. */
  memset(k2, 0, sizeof(k2));
  assert_int_equal(sg_worker_key_load(path, k2, &err), 0);
  assert_memory_equal(k1, k2, SG_WORKER_KEY_LEN);
  /* Tokens made with it survive a restart (a second daemon loading the file). */
  sg_daemon_t *a = xcalloc(1, sizeof(*a)), *b = xcalloc(1, sizeof(*b));
  memcpy(a->worker_key, k1, SG_WORKER_KEY_LEN);
  memcpy(b->worker_key, k2, SG_WORKER_KEY_LEN);
  char ta[SG_WORKER_TOKEN_LEN + 1], tb[SG_WORKER_TOKEN_LEN + 1];
  sg_worker_token(a, "w-x", ta);
  sg_worker_token(b, "w-x", tb);
  assert_string_equal(ta, tb);
  /* Another data dir, another key. */
  char *dir2 = temp_dir();
  char *path2 = xasprintf("%s/worker.key", dir2);
  assert_int_equal(sg_worker_key_load(path2, k2, &err), 0);
  assert_memory_not_equal(k1, k2, SG_WORKER_KEY_LEN);
  unlink(path2);
  rmdir(dir2);
  free(path2);
  free(dir2);
  free(a);
  free(b);
  free(tmp);
  unlink(path);
  rmdir(dir);
  free(path);
  free(dir);
}

/* A key file of another length, or one that cannot be read, stops the load
 * with an error naming it; the file is left as it was. */
static void test_key_file_refused(void **state) {
  (void)state;
  char *dir = temp_dir();
  char *path = xasprintf("%s/worker.key", dir);
  unsigned char k[SG_WORKER_KEY_LEN];
  static const size_t sizes[] = {0, 1, SG_WORKER_KEY_LEN - 1, SG_WORKER_KEY_LEN + 1, 64};
  for (size_t i = 0; i < SG_ARRAY_SIZE(sizes); i++) {
    write_bytes(path, sizes[i]);
    sg_error_t *err = NULL;
    assert_true(sg_worker_key_load(path, k, &err) < 0);
    assert_non_null(err);
    if (!strstr(err->message, path) || !strstr(err->message, "bytes"))
      fail_msg("size %zu: %s", sizes[i], err->message);
    sg_error_free(err);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, (off_t)sizes[i]);
  }
  unlink(path);
  /* A directory where the file should be: cannot be read. */
  assert_int_equal(mkdir(path, 0700), 0);
  sg_error_t *err = NULL;
  assert_true(sg_worker_key_load(path, k, &err) < 0);
  assert_non_null(err);
  assert_non_null(strstr(err->message, path));
  sg_error_free(err);
  rmdir(path);
  rmdir(dir);
  free(path);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_token_value),
      cmocka_unit_test(test_token_valid),
      cmocka_unit_test(test_key_file),
      cmocka_unit_test(test_key_file_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
