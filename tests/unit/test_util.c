/* Core helpers: durations, time formatting, ids, files and directories. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <sys/stat.h>

#include "sgpu/json.h"
#include "sgpu/util.h"

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int setup_dir(void **state) {
  char tmpl[] = "/tmp/sgpu-test-util-XXXXXX";
  char *d = mkdtemp(tmpl);
  if (!d)
    return -1;
  *state = xstrdup(d);
  return 0;
}

static int teardown_dir(void **state) {
  nftw(*state, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(*state);
  return 0;
}

static void test_parse_duration(void **state) {
  (void)state;
  const struct {
    const char *s;
    int64_t ms;
  } cases[] = {
      {"10m", 600000},   {"30s", 30000}, {"2h", 7200000}, {"500ms", 500},  {"1d", 86400000}, {"5", 5000},
      {"0", 0},          {"0s", 0},      {"1.5s", 1500},  {"0.5m", 30000}, {"250ms", 250},   {"1.25h", 4500000},
      {"7d", 604800000}, {"", -1},       {"s", -1},       {"ms", -1},      {"abc", -1},      {"10x", -1},
      {"10 s", -1},      {"10S", -1},    {"10sec", -1},   {"10ms ", -1},   {"-1s", -1},      {"-5", -1},
      {"1e13", -1},      {"inf", -1},    {"infs", -1},    {"nan", -1},     {"nans", -1},     {"NaN", -1},
      {"10mm", -1},      {"1h30m", -1},
  };
  for (size_t i = 0; i < SG_ARRAY_SIZE(cases); i++) {
    int64_t got = sg_parse_duration_ms(cases[i].s);
    if (got != cases[i].ms)
      fail_msg("\"%s\" -> %lld, want %lld", cases[i].s, (long long)got, (long long)cases[i].ms);
  }
  assert_int_equal(sg_parse_duration_ms(NULL), -1);
  /* The largest accepted value and the first one past it. */
  assert_int_equal(sg_parse_duration_ms("1000000000000ms"), 1000000000000LL);
  assert_int_equal(sg_parse_duration_ms("1000000000001ms"), -1);
}

static void test_format_time(void **state) {
  (void)state;
  char buf[32];
  assert_ptr_equal(sg_format_time(0, buf, sizeof(buf)), buf);
  assert_string_equal(buf, "1970-01-01T00:00:00.000Z");
  assert_string_equal(sg_format_time(1700000000123, buf, sizeof(buf)), "2023-11-14T22:13:20.123Z");
  assert_string_equal(sg_format_time(951782400999, buf, sizeof(buf)), "2000-02-29T00:00:00.999Z");
  assert_string_equal(sg_format_time(4102444799001, buf, sizeof(buf)), "2099-12-31T23:59:59.001Z");
  /* A short buffer is truncated, still terminated. */
  char small[11];
  memset(small, 'x', sizeof(small));
  sg_format_time(0, small, sizeof(small));
  assert_string_equal(small, "1970-01-01");
}

static void test_clocks(void **state) {
  (void)state;
  int64_t a = sg_now_ms(), w = sg_wall_ms();
  assert_true(a >= 0);
  assert_true(w > 1600000000000LL);
  usleep(20000);
  int64_t b = sg_now_ms();
  assert_true(b - a >= 19);
  assert_true(b - a < 5000);
}

/* RFC 7386, appendix A's examples and nested nulls. */
static void test_json_merge_patch(void **state) {
  (void)state;
  static const char *const cases[][3] = {
      {"{\"a\":\"b\"}", "{\"a\":\"c\"}", "{\"a\":\"c\"}"},
      {"{\"a\":\"b\"}", "{\"b\":\"c\"}", "{\"a\":\"b\",\"b\":\"c\"}"},
      {"{\"a\":\"b\"}", "{\"a\":null}", "{}"},
      {"{\"a\":\"b\",\"b\":\"c\"}", "{\"a\":null}", "{\"b\":\"c\"}"},
      {"{\"a\":[\"b\"]}", "{\"a\":\"c\"}", "{\"a\":\"c\"}"},
      {"{\"a\":\"c\"}", "{\"a\":[\"b\"]}", "{\"a\":[\"b\"]}"},
      {"{\"a\":{\"b\":\"c\"}}", "{\"a\":{\"b\":\"d\",\"c\":null}}", "{\"a\":{\"b\":\"d\"}}"},
      {"{\"a\":[{\"b\":\"c\"}]}", "{\"a\":[1]}", "{\"a\":[1]}"},
      {"{\"e\":null}", "{\"a\":1}", "{\"e\":null,\"a\":1}"},
      {"{}", "{\"a\":{\"bb\":{\"ccc\":null}}}", "{\"a\":{\"bb\":{}}}"},
      {"{\"a\":{\"x\":1,\"y\":2}}", "{\"a\":{\"y\":null}}", "{\"a\":{\"x\":1}}"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    json_t *target = json_loads(cases[i][0], 0, NULL);
    json_t *patch = json_loads(cases[i][1], 0, NULL);
    json_t *want = json_loads(cases[i][2], 0, NULL);
    sg_json_merge_patch(target, patch);
    if (!json_equal(target, want)) {
      char *got = json_dumps(target, JSON_COMPACT);
      fail_msg("case %zu: got %s, want %s", i, got, cases[i][2]);
    }
    json_decref(target);
    json_decref(patch);
    json_decref(want);
  }
}

static void test_new_id(void **state) {
  (void)state;
  char *ids[64];
  for (size_t i = 0; i < SG_ARRAY_SIZE(ids); i++) {
    ids[i] = sg_new_id("w-");
    assert_int_equal(strlen(ids[i]), 14);
    assert_true(sg_str_has_prefix(ids[i], "w-"));
    for (const char *c = ids[i] + 2; *c; c++)
      if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f')))
        fail_msg("id %s has a character outside lowercase hex", ids[i]);
    for (size_t j = 0; j < i; j++)
      assert_string_not_equal(ids[i], ids[j]);
  }
  for (size_t i = 0; i < SG_ARRAY_SIZE(ids); i++)
    free(ids[i]);
  char *bare = sg_new_id("");
  assert_int_equal(strlen(bare), 12);
  free(bare);
}

static void test_random_bytes(void **state) {
  (void)state;
  unsigned char a[32] = {0}, b[32] = {0};
  assert_int_equal(sg_random_bytes(a, sizeof(a)), 0);
  assert_int_equal(sg_random_bytes(b, sizeof(b)), 0);
  assert_memory_not_equal(a, b, sizeof(a));
  assert_int_equal(sg_random_bytes(a, 0), 0);
}

static void test_strings(void **state) {
  (void)state;
  assert_true(sg_str_has_prefix("/v1/endpoints", "/v1/"));
  assert_true(sg_str_has_prefix("abc", ""));
  assert_true(sg_str_has_prefix("abc", "abc"));
  assert_false(sg_str_has_prefix("ab", "abc"));
  assert_false(sg_str_has_prefix("xabc", "abc"));
  char *s = xasprintf("%s-%d", "w", 42);
  assert_string_equal(s, "w-42");
  free(s);
  s = xstrndup("abcdef", 3);
  assert_string_equal(s, "abc");
  free(s);
  int arr[7];
  assert_int_equal(SG_ARRAY_SIZE(arr), 7);
  char *p = xstrdup("x");
  char *q = steal_pointer(&p);
  assert_null(p);
  assert_string_equal(q, "x");
  free(q);
}

static void test_write_read_file(void **state) {
  const char *dir = *state;
  char *path = xasprintf("%s/f.txt", dir);
  const char data[] = "hello\0world";
  assert_int_equal(sg_write_file_atomic(path, data, sizeof(data) - 1, 0600), 0);
  size_t len = 0;
  char *got = sg_read_file(path, 1 << 20, &len);
  assert_non_null(got);
  assert_int_equal(len, sizeof(data) - 1);
  assert_memory_equal(got, data, len);
  assert_int_equal(got[len], '\0');
  free(got);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0600);

  /* Overwrite with other content and mode; no temp file is left. */
  assert_int_equal(sg_write_file_atomic(path, "x", 1, 0644), 0);
  got = sg_read_file(path, 1 << 20, &len);
  assert_string_equal(got, "x");
  assert_int_equal(len, 1);
  free(got);
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0644);
  DIR *dh = opendir(dir);
  assert_non_null(dh);
  int entries = 0;
  for (struct dirent *e; (e = readdir(dh));)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
      entries++;
  closedir(dh);
  assert_int_equal(entries, 1);

  /* Empty files. */
  assert_int_equal(sg_write_file_atomic(path, "", 0, 0600), 0);
  got = sg_read_file(path, 16, &len);
  assert_non_null(got);
  assert_int_equal(len, 0);
  assert_string_equal(got, "");
  free(got);

  /* len_out may be NULL. */
  assert_int_equal(sg_write_file_atomic(path, "abc", 3, 0600), 0);
  got = sg_read_file(path, 16, NULL);
  assert_string_equal(got, "abc");
  free(got);
  free(path);
}

static void test_write_file_errors(void **state) {
  const char *dir = *state;
  char *path = xasprintf("%s/missing/f.txt", dir);
  assert_int_equal(sg_write_file_atomic(path, "x", 1, 0600), -ENOENT);
  free(path);
  errno = 0;
  path = xasprintf("%s/nope", dir);
  assert_null(sg_read_file(path, 100, NULL));
  assert_int_equal(errno, ENOENT);
  free(path);
}

/* Files of max bytes or more are refused with EFBIG, at every size. */
static void test_read_file_max(void **state) {
  const char *dir = *state;
  char *path = xasprintf("%s/big", dir);
  const size_t sizes[] = {10, 100, 4095, 4096, 5000, 8191, 8192, 100000};
  char *data = xmalloc(300000);
  for (size_t i = 0; i < 300000; i++)
    data[i] = (char)('a' + i % 26);
  for (size_t k = 0; k < SG_ARRAY_SIZE(sizes); k++) {
    size_t max = sizes[k];
    /* max - 1 bytes fit */
    assert_int_equal(sg_write_file_atomic(path, data, max - 1, 0600), 0);
    size_t len = 0;
    char *got = sg_read_file(path, max, &len);
    if (!got)
      fail_msg("%zu bytes refused with max %zu", max - 1, max);
    assert_int_equal(len, max - 1);
    assert_memory_equal(got, data, len);
    free(got);
    /* max bytes and more do not */
    const size_t over[] = {max, max + 1, 2 * max + 7};
    for (size_t j = 0; j < SG_ARRAY_SIZE(over); j++) {
      assert_int_equal(sg_write_file_atomic(path, data, over[j], 0600), 0);
      errno = 0;
      got = sg_read_file(path, max, &len);
      if (got)
        fail_msg("%zu bytes read with max %zu", over[j], max);
      assert_int_equal(errno, EFBIG);
    }
  }
  free(data);
  free(path);
}

static void test_mkdir_p(void **state) {
  const char *dir = *state;
  char *deep = xasprintf("%s/a/b/c", dir);
  assert_int_equal(sg_mkdir_p(deep, 0700), 0);
  struct stat st;
  assert_int_equal(stat(deep, &st), 0);
  assert_true(S_ISDIR(st.st_mode));
  assert_int_equal(st.st_mode & 0777, 0700);
  char *mid = xasprintf("%s/a/b", dir);
  assert_int_equal(stat(mid, &st), 0);
  assert_true(S_ISDIR(st.st_mode));
  /* Existing: fine. */
  assert_int_equal(sg_mkdir_p(deep, 0700), 0);
  assert_int_equal(sg_mkdir_p(mid, 0700), 0);
  /* Trailing slash. */
  char *slash = xasprintf("%s/x/y/", dir);
  assert_int_equal(sg_mkdir_p(slash, 0750), 0);
  char *y = xasprintf("%s/x/y", dir);
  assert_int_equal(stat(y, &st), 0);
  assert_true(S_ISDIR(st.st_mode));

  /* A file in the way is an error, as a parent or as the last part. */
  char *file = xasprintf("%s/file", dir);
  assert_int_equal(sg_write_file_atomic(file, "x", 1, 0600), 0);
  char *under = xasprintf("%s/file/sub", dir);
  assert_int_equal(sg_mkdir_p(under, 0700), -ENOTDIR);
  assert_int_equal(sg_mkdir_p(file, 0700), -ENOTDIR);
  free(deep);
  free(mid);
  free(slash);
  free(y);
  free(file);
  free(under);
}

static void test_mkdir_p_relative(void **state) {
  const char *dir = *state;
  char cwd[4096];
  assert_non_null(getcwd(cwd, sizeof(cwd)));
  assert_int_equal(chdir(dir), 0);
  int r = sg_mkdir_p("rel/one", 0700);
  struct stat st;
  int s = stat("rel/one", &st);
  assert_int_equal(chdir(cwd), 0);
  assert_int_equal(r, 0);
  assert_int_equal(s, 0);
  assert_true(S_ISDIR(st.st_mode));
}

static void test_strbuf(void **state) {
  (void)state;
  sg_strbuf_t b = SG_STRBUF_INIT;
  cleanup_free char *empty = sg_strbuf_steal(&b);
  assert_string_equal(empty, "");
  for (int i = 0; i < 1000; i++)
    sg_strbuf_appendf(&b, "%d,", i % 10);
  sg_strbuf_append(&b, "end");
  sg_strbuf_append_n(&b, "xyz", 1);
  assert_int_equal(b.len, 2000 + 4);
  assert_int_equal(strlen(b.s), b.len);
  assert_memory_equal(b.s, "0,1,2,", 6);
  assert_string_equal(b.s + 2000, "endx");
  cleanup_free char *s = sg_strbuf_steal(&b);
  assert_null(b.s);
  assert_int_equal(b.len, 0);
  assert_int_equal(strlen(s), 2004);
  sg_strbuf_append(&b, "again");
  assert_string_equal(b.s, "again");
  sg_strbuf_free(&b);
  assert_null(b.s);
}

static void test_json_env_set(void **state) {
  (void)state;
  cleanup_json json_t *env = json_pack("[s, s, s]", "PATH=/bin", "PATHX=1", "A=");
  sg_json_env_set(env, "PATH=/usr/bin"); /* replaces PATH, not PATHX */
  sg_json_env_set(env, "A=2");           /* replaces an empty value */
  sg_json_env_set(env, "B=3");           /* appends */
  assert_int_equal(json_array_size(env), 4);
  assert_string_equal(json_string_value(json_array_get(env, 0)), "PATH=/usr/bin");
  assert_string_equal(json_string_value(json_array_get(env, 1)), "PATHX=1");
  assert_string_equal(json_string_value(json_array_get(env, 2)), "A=2");
  assert_string_equal(json_string_value(json_array_get(env, 3)), "B=3");
}

static void test_strv_trim_write_all(void **state) {
  (void)state;
  char *const v[] = {"a", "bc", "", NULL};
  char **c = sg_strv_dup(v);
  assert_int_equal(sg_strv_len(c), 3);
  assert_string_equal(c[1], "bc");
  assert_string_equal(c[2], "");
  assert_null(c[3]);
  assert_true(c[0] != v[0]);
  sg_strv_free(c);
  c = sg_strv_dup(NULL);
  assert_non_null(c);
  assert_null(c[0]);
  sg_strv_free(c);
  sg_strv_free(NULL);

  char text[] = " \t padded value \n";
  assert_string_equal(sg_str_trim(text), "padded value");
  char blank[] = "   ";
  assert_string_equal(sg_str_trim(blank), "");

  int p[2];
  assert_int_equal(pipe(p), 0);
  assert_int_equal(sg_write_all(p[1], "hello", 5), 0);
  char buf[8] = {0};
  assert_int_equal(read(p[0], buf, sizeof(buf)), 5);
  assert_string_equal(buf, "hello");
  close(p[0]);
  signal(SIGPIPE, SIG_IGN);
  assert_int_equal(sg_write_all(p[1], "x", 1), -1);
  assert_int_equal(errno, EPIPE);
  close(p[1]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_strbuf),
      cmocka_unit_test(test_strv_trim_write_all),
      cmocka_unit_test(test_json_env_set),
      cmocka_unit_test(test_parse_duration),
      cmocka_unit_test(test_format_time),
      cmocka_unit_test(test_clocks),
      cmocka_unit_test(test_new_id),
      cmocka_unit_test(test_json_merge_patch),
      cmocka_unit_test(test_random_bytes),
      cmocka_unit_test(test_strings),
      cmocka_unit_test_setup_teardown(test_write_read_file, setup_dir, teardown_dir),
      cmocka_unit_test_setup_teardown(test_write_file_errors, setup_dir, teardown_dir),
      cmocka_unit_test_setup_teardown(test_read_file_max, setup_dir, teardown_dir),
      cmocka_unit_test_setup_teardown(test_mkdir_p, setup_dir, teardown_dir),
      cmocka_unit_test_setup_teardown(test_mkdir_p_relative, setup_dir, teardown_dir),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
