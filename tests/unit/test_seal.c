/* Sealing (core/seal.c): AES-256-GCM values round-trip; a changed byte, a
 * different associated data (another name) or another key makes unsealing
 * fail; each seal takes a fresh nonce; the key file is made once (mode 0600,
 * 32 bytes), read back, and refused when short or unreadable. */
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

#include "sgpu/seal.h"
#include "sgpu/util.h"

static void set_key(unsigned char key[SG_SEAL_KEY_LEN], unsigned char first) {
  for (int i = 0; i < SG_SEAL_KEY_LEN; i++)
    key[i] = (unsigned char)(first + i);
}

static void test_round_trip(void **state) {
  (void)state;
  unsigned char key[SG_SEAL_KEY_LEN];
  set_key(key, 3);
  const char *values[] = {"", "p", "hunter2-and-a-long-token-value-0123456789abcdef"};
  for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
    unsigned char *sealed = NULL;
    size_t len = 0;
    sg_error_t *err = NULL;
    assert_int_equal(sg_seal(key, "secret:hf", values[i], strlen(values[i]), &sealed, &len, &err), 0);
    assert_int_equal(len, strlen(values[i]) + SG_SEAL_OVERHEAD);
    assert_int_equal(sealed[0], SG_SEAL_VERSION);
    if (strlen(values[i]) >= 16) /* the plain text is not in the sealed bytes (a byte may be, by chance) */
      assert_null(memmem(sealed, len, values[i], strlen(values[i])));
    char *plain = NULL;
    size_t plain_len = 0;
    assert_int_equal(sg_unseal(key, "secret:hf", sealed, len, &plain, &plain_len, &err), 0);
    assert_string_equal(plain, values[i]);
    assert_int_equal(plain_len, strlen(values[i]));
    sg_unsealed_free(plain);
    free(sealed);
  }
  /* 64 KiB of binary-free text. */
  char *big = xmalloc(65537);
  memset(big, 'v', 65536);
  big[65536] = '\0';
  unsigned char *sealed = NULL;
  size_t len = 0;
  assert_int_equal(sg_seal(key, "a", big, 65536, &sealed, &len, NULL), 0);
  char *plain = NULL;
  assert_int_equal(sg_unseal(key, "a", sealed, len, &plain, NULL, NULL), 0);
  assert_string_equal(plain, big);
  sg_unsealed_free(plain);
  free(sealed);
  free(big);
}

static void test_fresh_nonce(void **state) {
  (void)state;
  unsigned char key[SG_SEAL_KEY_LEN];
  set_key(key, 9);
  unsigned char *a = NULL, *b = NULL;
  size_t la = 0, lb = 0;
  assert_int_equal(sg_seal(key, "x", "same", 4, &a, &la, NULL), 0);
  assert_int_equal(sg_seal(key, "x", "same", 4, &b, &lb, NULL), 0);
  assert_int_equal(la, lb);
  assert_memory_not_equal(a, b, la);
  assert_memory_not_equal(a + 1, b + 1, 12); /* the nonces differ */
  free(a);
  free(b);
}

static void expect_refused(const unsigned char key[SG_SEAL_KEY_LEN], const char *ad, const unsigned char *sealed,
                           size_t len) {
  char *plain = NULL;
  sg_error_t *err = NULL;
  assert_true(sg_unseal(key, ad, sealed, len, &plain, NULL, &err) < 0);
  assert_null(plain);
  assert_non_null(err);
  assert_int_equal(err->status, SG_EINVAL);
  sg_error_free(err);
}

static void test_tamper(void **state) {
  (void)state;
  unsigned char key[SG_SEAL_KEY_LEN];
  set_key(key, 1);
  unsigned char *sealed = NULL;
  size_t len = 0;
  assert_int_equal(sg_seal(key, "secret:hf", "token-value", 11, &sealed, &len, NULL), 0);
  /* Every byte, flipped in turn: version, nonce, ciphertext, tag. */
  for (size_t i = 0; i < len; i++) {
    sealed[i] ^= 0x01;
    expect_refused(key, "secret:hf", sealed, len);
    sealed[i] ^= 0x01;
  }
  /* Cut short, or shorter than the overhead. */
  expect_refused(key, "secret:hf", sealed, len - 1);
  expect_refused(key, "secret:hf", sealed, SG_SEAL_OVERHEAD - 1);
  expect_refused(key, "secret:hf", sealed, 0);
  /* Untouched, it still opens. */
  char *plain = NULL;
  assert_int_equal(sg_unseal(key, "secret:hf", sealed, len, &plain, NULL, NULL), 0);
  assert_string_equal(plain, "token-value");
  sg_unsealed_free(plain);
  free(sealed);
}

static void test_wrong_ad_and_key(void **state) {
  (void)state;
  unsigned char key[SG_SEAL_KEY_LEN], other[SG_SEAL_KEY_LEN];
  set_key(key, 1);
  set_key(other, 2);
  unsigned char *sealed = NULL;
  size_t len = 0;
  assert_int_equal(sg_seal(key, "secret:hf", "v", 1, &sealed, &len, NULL), 0);
  /* Moved to another row: another name. */
  expect_refused(key, "secret:hg", sealed, len);
  expect_refused(key, "secret:h", sealed, len);
  expect_refused(key, "registry_auth:hf", sealed, len);
  expect_refused(key, "", sealed, len);
  /* Another key file. */
  expect_refused(other, "secret:hf", sealed, len);
  free(sealed);
}

static char *temp_dir(void) {
  char tmpl[] = "/tmp/sgpu-seal-XXXXXX";
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
  char *path = xasprintf("%s/secret.key", dir);
  unsigned char k1[SG_SEAL_KEY_LEN], k2[SG_SEAL_KEY_LEN];
  sg_error_t *err = NULL;
  assert_int_equal(sg_seal_key_load(path, k1, &err), 0);
  assert_null(err);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_size, SG_SEAL_KEY_LEN);
  assert_int_equal(st.st_mode & 0777, 0600);
  char *tmp = xasprintf("%s.tmp.%d", path, (int)getpid());
  assert_int_equal(access(tmp, F_OK), -1);
  /* Read back at the next load: a value sealed before opens after. */
  memset(k2, 0, sizeof(k2));
  assert_int_equal(sg_seal_key_load(path, k2, &err), 0);
  assert_memory_equal(k1, k2, SG_SEAL_KEY_LEN);
  unsigned char *sealed = NULL;
  size_t len = 0;
  assert_int_equal(sg_seal(k1, "n", "kept", 4, &sealed, &len, NULL), 0);
  char *plain = NULL;
  assert_int_equal(sg_unseal(k2, "n", sealed, len, &plain, NULL, NULL), 0);
  assert_string_equal(plain, "kept");
  sg_unsealed_free(plain);
  free(sealed);
  /* Short, long and empty files are refused with a message naming the file. */
  size_t sizes[] = {0, 16, SG_SEAL_KEY_LEN - 1, SG_SEAL_KEY_LEN + 1};
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
    write_bytes(path, sizes[i]);
    assert_true(sg_seal_key_load(path, k2, &err) < 0);
    assert_non_null(err);
    assert_non_null(strstr(err->message, path));
    sg_error_free(err);
    err = NULL;
  }
  /* A file of exactly 32 bytes is the key. */
  write_bytes(path, SG_SEAL_KEY_LEN);
  assert_int_equal(sg_seal_key_load(path, k2, &err), 0);
  unsigned char want[SG_SEAL_KEY_LEN];
  memset(want, 'k', sizeof(want));
  assert_memory_equal(k2, want, SG_SEAL_KEY_LEN);
  /* Unreadable (a directory in its place). */
  unlink(path);
  assert_int_equal(mkdir(path, 0700), 0);
  assert_true(sg_seal_key_load(path, k2, &err) < 0);
  assert_non_null(strstr(err->message, path));
  sg_error_free(err);
  rmdir(path);
  rmdir(dir);
  free(tmp);
  free(path);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),       cmocka_unit_test(test_fresh_nonce), cmocka_unit_test(test_tamper),
      cmocka_unit_test(test_wrong_ad_and_key), cmocka_unit_test(test_key_file),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
