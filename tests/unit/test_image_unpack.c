/* Layer unpacking: OCI whiteouts become overlayfs whiteouts, entries that
 * would leave the root are refused. */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include <cmocka.h>

#include "sgpu/image.h"
#include "sgpu/util.h"

static void test_classify(void **state) {
  (void)state;
  char *t = NULL;
  assert_int_equal(sg_whiteout_classify("etc/passwd", &t), SG_WH_NONE);
  assert_null(t);
  assert_int_equal(sg_whiteout_classify("etc/.wh.passwd", &t), SG_WH_FILE);
  assert_string_equal(t, "etc/passwd");
  free(t);
  assert_int_equal(sg_whiteout_classify(".wh.top", &t), SG_WH_FILE);
  assert_string_equal(t, "top");
  free(t);
  assert_int_equal(sg_whiteout_classify("usr/lib/.wh..wh..opq", &t), SG_WH_OPAQUE);
  assert_string_equal(t, "usr/lib");
  free(t);
  assert_int_equal(sg_whiteout_classify(".wh..wh..opq", &t), SG_WH_OPAQUE);
  assert_string_equal(t, "");
  free(t);
  assert_int_equal(sg_whiteout_classify("a/.wh.", &t), SG_WH_NONE);
  assert_int_equal(sg_whiteout_classify("a/x.wh.y", &t), SG_WH_NONE);
}

typedef struct entry {
  const char *path;
  int type; /* AE_IFREG, AE_IFDIR, AE_IFLNK */
  const char *data;
} entry_t;

static void write_tar(const char *path, const entry_t *e, size_t n, bool gzip) {
  struct archive *a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  if (gzip)
    archive_write_add_filter_gzip(a);
  assert_int_equal(archive_write_open_filename(a, path), ARCHIVE_OK);
  for (size_t i = 0; i < n; i++) {
    struct archive_entry *ae = archive_entry_new();
    archive_entry_set_pathname(ae, e[i].path);
    archive_entry_set_filetype(ae, (unsigned)e[i].type);
    archive_entry_set_perm(ae, e[i].type == AE_IFDIR ? 0755 : 0644);
    size_t len = e[i].data && e[i].type == AE_IFREG ? strlen(e[i].data) : 0;
    if (e[i].type == AE_IFLNK)
      archive_entry_set_symlink(ae, e[i].data);
    archive_entry_set_size(ae, (la_int64_t)len);
    archive_write_header(a, ae);
    if (len)
      archive_write_data(a, e[i].data, len);
    archive_entry_free(ae);
  }
  archive_write_close(a);
  archive_write_free(a);
}

static char *tmpdir(void) {
  char tmpl[] = "/tmp/sgpu-unpack-XXXXXX";
  assert_non_null(mkdtemp(tmpl));
  return xstrdup(tmpl);
}

static void test_unpack_whiteouts(void **state) {
  (void)state;
  char *dir = tmpdir();
  char *tar = xasprintf("%s/layer.tar.gz", dir);
  char *dest = xasprintf("%s/root", dir);
  mkdir(dest, 0755);
  const entry_t entries[] = {
      {"./", AE_IFDIR, NULL},
      {"./etc/", AE_IFDIR, NULL},
      {"./etc/hostname", AE_IFREG, "sgpu\n"},
      {"./etc/.wh.old.conf", AE_IFREG, NULL},
      {"./usr/lib/.wh..wh..opq", AE_IFREG, NULL},
      {"./usr/lib/kept", AE_IFREG, "x"},
      {"./bin/sh", AE_IFLNK, "/bin/busybox"},
  };
  write_tar(tar, entries, SG_ARRAY_SIZE(entries), true);
  sg_error_t *err = NULL;
  int64_t bytes = -1;
  int rc = sg_layer_unpack(tar, dest, &bytes, &err);
  if (rc != 0 && err && (err->status == EPERM || err->status == ENOTSUP)) {
    /* Whiteouts need CAP_MKNOD and trusted xattrs (root). */
    sg_error_free(err);
    sg_rm_rf(dir);
    free(tar), free(dest), free(dir);
    skip();
  }
  if (rc != 0)
    fail_msg("unpack: %s", err->message);
  assert_int_equal(bytes, 6);
  char *p = xasprintf("%s/etc/hostname", dest);
  size_t len;
  char *content = sg_read_file(p, 64, &len);
  assert_string_equal(content, "sgpu\n");
  free(content);
  free(p);
  struct stat st;
  p = xasprintf("%s/etc/old.conf", dest);
  assert_int_equal(lstat(p, &st), 0);
  assert_true(S_ISCHR(st.st_mode));
  assert_int_equal(major(st.st_rdev), 0);
  assert_int_equal(minor(st.st_rdev), 0);
  free(p);
  p = xasprintf("%s/etc/.wh.old.conf", dest);
  assert_int_not_equal(lstat(p, &st), 0);
  free(p);
  p = xasprintf("%s/usr/lib", dest);
  char v[4] = "";
  assert_int_equal(getxattr(p, "trusted.overlay.opaque", v, sizeof(v)), 1);
  assert_int_equal(v[0], 'y');
  free(p);
  p = xasprintf("%s/usr/lib/.wh..wh..opq", dest);
  assert_int_not_equal(lstat(p, &st), 0);
  free(p);
  p = xasprintf("%s/bin/sh", dest);
  assert_int_equal(lstat(p, &st), 0);
  assert_true(S_ISLNK(st.st_mode));
  free(p);
  assert_int_equal(sg_rm_rf(dir), 0);
  free(tar), free(dest), free(dir);
}

static void test_unpack_refuses_escape(void **state) {
  (void)state;
  char *dir = tmpdir();
  char *tar = xasprintf("%s/layer.tar", dir);
  char *dest = xasprintf("%s/root", dir);
  mkdir(dest, 0755);
  const entry_t entries[] = {{"../escaped", AE_IFREG, "x"}};
  write_tar(tar, entries, 1, false);
  sg_error_t *err = NULL;
  assert_int_not_equal(sg_layer_unpack(tar, dest, NULL, &err), 0);
  assert_non_null(strstr(err->message, "refused"));
  sg_error_free(err);
  char *p = xasprintf("%s/escaped", dir);
  struct stat st;
  assert_int_not_equal(lstat(p, &st), 0);
  free(p);
  /* Not a tar at all. */
  sg_write_file_atomic(tar, "garbage", 7, 0600);
  err = NULL;
  assert_int_not_equal(sg_layer_unpack(tar, dest, NULL, &err), 0);
  sg_error_free(err);
  sg_rm_rf(dir);
  free(tar), free(dest), free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_classify),
      cmocka_unit_test(test_unpack_whiteouts),
      cmocka_unit_test(test_unpack_refuses_escape),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
