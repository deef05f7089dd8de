/* Layer unpacking: OCI whiteouts become overlayfs whiteouts, entries that
 * would leave the root are refused. */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
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

#define HARDLINK 1 /* entry type: a hard link to data */

typedef struct entry {
  const char *path;
  int type; /* AE_IFREG, AE_IFDIR, AE_IFLNK or HARDLINK */
  const char *data;
  int perm; /* 0: 0755 for directories, 0644 otherwise */
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
    archive_entry_set_filetype(ae, e[i].type == HARDLINK ? AE_IFREG : (unsigned)e[i].type);
    archive_entry_set_perm(ae, e[i].perm ? e[i].perm : e[i].type == AE_IFDIR ? 0755 : 0644);
    size_t len = e[i].data && e[i].type == AE_IFREG ? strlen(e[i].data) : 0;
    if (e[i].type == AE_IFLNK)
      archive_entry_set_symlink(ae, e[i].data);
    if (e[i].type == HARDLINK)
      archive_entry_set_hardlink(ae, e[i].data);
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

/* Volumes: plain files and modes open to every worker; what has no place in a
 * volume is refused. */
static int volume_unpack_one(const char *dir, const entry_t *e, size_t n, char **msg) {
  char *tar = xasprintf("%s/up.tar", dir);
  char *dest = xasprintf("%s/vol", dir);
  mkdir(dest, 0777);
  write_tar(tar, e, n, false);
  sg_error_t *err = NULL;
  int rc = sg_volume_unpack(tar, dest, 0, NULL, &err);
  *msg = err ? xstrdup(err->message) : NULL;
  sg_error_free(err);
  free(tar);
  free(dest);
  return rc;
}

static void test_volume_unpack(void **state) {
  (void)state;
  char *dir = tmpdir();
  const entry_t ok[] = {
      {"models/", AE_IFDIR, NULL, 0700},
      {"models/w.bin", AE_IFREG, "weights", 04700},
      {"models/run", AE_IFREG, "#!/bin/sh", 02755},
      {".wh.kept", AE_IFREG, "plain"},
      {"models/link", AE_IFLNK, "w.bin"},
  };
  char *msg = NULL;
  if (volume_unpack_one(dir, ok, SG_ARRAY_SIZE(ok), &msg) != 0)
    fail_msg("volume unpack: %s", msg);
  struct stat st;
  char *p = xasprintf("%s/vol/models", dir);
  assert_int_equal(stat(p, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0777);
  free(p);
  p = xasprintf("%s/vol/models/w.bin", dir);
  assert_int_equal(stat(p, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0777); /* executable: 0777, setuid dropped */
  free(p);
  p = xasprintf("%s/vol/models/run", dir);
  assert_int_equal(stat(p, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0777);
  free(p);
  p = xasprintf("%s/vol/.wh.kept", dir); /* no whiteout in a volume */
  assert_int_equal(lstat(p, &st), 0);
  assert_true(S_ISREG(st.st_mode));
  assert_int_equal(st.st_mode & 07777, 0666);
  free(p);
  const entry_t absolute[] = {{"/etc/x", AE_IFREG, "x"}};
  const entry_t dotdot[] = {{"a/../../x", AE_IFREG, "x"}};
  const entry_t fifo[] = {{"f", AE_IFIFO, NULL}};
  const entry_t chr[] = {{"c", AE_IFCHR, NULL}};
  const entry_t below_link[] = {{"out", AE_IFLNK, "/tmp"}, {"out/planted", AE_IFREG, "x"}};
  const entry_t hard_out[] = {{"h", HARDLINK, "../../etc/passwd"}};
  const struct {
    const entry_t *e;
    size_t n;
  } bad[] = {{absolute, 1}, {dotdot, 1}, {fifo, 1}, {chr, 1}, {below_link, 2}, {hard_out, 1}};
  for (size_t i = 0; i < SG_ARRAY_SIZE(bad); i++) {
    if (volume_unpack_one(dir, bad[i].e, bad[i].n, &msg) == 0)
      fail_msg("case %zu accepted", i);
    assert_non_null(strstr(msg, "refused"));
    free(msg);
  }
  p = xasprintf("%s/vol/f", dir);
  assert_int_not_equal(lstat(p, &st), 0);
  free(p);
  assert_int_not_equal(lstat("/tmp/planted", &st), 0);
  sg_rm_rf(dir);
  free(dir);
}

/* ---- escapes: a canary directory beside the layer must stay as it was ---- */

static char snap_buf[16384];
static size_t snap_len;
static const char *snap_root;

static int snap_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)flag, (void)ftw;
  char xattrs[512] = "";
  ssize_t xn = llistxattr(path, xattrs, sizeof(xattrs) - 1);
  for (ssize_t i = 0; i < xn; i++)
    if (!xattrs[i])
      xattrs[i] = ',';
  int n = snprintf(snap_buf + snap_len, sizeof(snap_buf) - snap_len, "%s %o %lu %lld %lu [%s]\n",
                   path + strlen(snap_root), st->st_mode, (unsigned long)st->st_nlink, (long long)st->st_size,
                   (unsigned long)st->st_rdev, xn > 0 ? xattrs : "");
  assert_true(n > 0 && (size_t)n < sizeof(snap_buf) - snap_len);
  snap_len += (size_t)n;
  return 0;
}

/* What the canary holds (names, types, modes, link counts, sizes, xattrs) and
 * what lies beside the layer directory. Caller frees. */
static char *snapshot(const char *dir, const char *canary) {
  snap_len = 0;
  snap_buf[0] = '\0';
  snap_root = canary;
  assert_int_equal(nftw(canary, snap_one, 16, FTW_PHYS), 0);
  struct dirent **names;
  int n = scandir(dir, &names, NULL, alphasort);
  assert_true(n >= 0);
  for (int i = 0; i < n; i++) {
    size_t len = strlen(names[i]->d_name);
    assert_true(snap_len + len + 2 < sizeof(snap_buf));
    memcpy(snap_buf + snap_len, names[i]->d_name, len);
    snap_len += len;
    snap_buf[snap_len++] = '\n';
    snap_buf[snap_len] = '\0';
    free(names[i]);
  }
  free(names);
  return xstrdup(snap_buf);
}

/* "%C" in s becomes the canary's path. Caller frees. */
static char *subst(const char *s, const char *canary) {
  if (!s)
    return NULL;
  const char *at = strstr(s, "%C");
  return at ? xasprintf("%.*s%s%s", (int)(at - s), s, canary, at + 2) : xstrdup(s);
}

enum { MUST_REFUSE, MUST_SUCCEED, EITHER };

/* Unpacks entries (with %C naming the canary) into DIR/root beside DIR/canary
 * and checks that the canary and DIR's listing did not change. */
static void escape_case(const char *title, const entry_t *in, size_t n, int expect) {
  char *dir = tmpdir();
  char *canary = xasprintf("%s/canary", dir);
  char *dest = xasprintf("%s/root", dir);
  char *tar = xasprintf("%s/layer.tar", dir);
  assert_int_equal(mkdir(canary, 0755), 0);
  assert_int_equal(mkdir(dest, 0755), 0);
  char *p = xasprintf("%s/target", canary);
  assert_int_equal(mkdir(p, 0755), 0);
  free(p);
  p = xasprintf("%s/target/keep", canary);
  assert_int_equal(sg_write_file_atomic(p, "keep", 4, 0644), 0);
  free(p);
  p = xasprintf("%s/secret", canary);
  assert_int_equal(sg_write_file_atomic(p, "secret", 6, 0600), 0);
  free(p);
  entry_t *e = xcalloc(n, sizeof(*e));
  for (size_t i = 0; i < n; i++) {
    e[i] = in[i];
    e[i].path = subst(in[i].path, canary);
    e[i].data = subst(in[i].data, canary);
  }
  write_tar(tar, e, n, false);
  char *before = snapshot(dir, canary);
  sg_error_t *err = NULL;
  int rc = sg_layer_unpack(tar, dest, NULL, &err);
  if (expect == MUST_REFUSE) {
    if (rc == 0)
      fail_msg("%s: unpack succeeded", title);
    if (!strstr(err->message, "refused"))
      fail_msg("%s: unexpected error: %s", title, err->message);
  } else if (expect == MUST_SUCCEED && rc != 0) {
    fail_msg("%s: %s", title, err->message);
  }
  if (err)
    sg_error_free(err);
  char *after = snapshot(dir, canary);
  if (strcmp(before, after))
    fail_msg("%s: the canary changed\nbefore:\n%safter:\n%s", title, before, after);
  free(before);
  free(after);
  for (size_t i = 0; i < n; i++) {
    free((char *)e[i].path);
    free((char *)e[i].data);
  }
  free(e);
  assert_int_equal(sg_rm_rf(dir), 0);
  free(tar), free(dest), free(canary), free(dir);
}

#define CASE(title, expect, ...)                                                                                       \
  do {                                                                                                                 \
    const entry_t es_[] = {__VA_ARGS__};                                                                               \
    escape_case(title, es_, SG_ARRAY_SIZE(es_), expect);                                                               \
  } while (0)

static void test_escape_whiteouts(void **state) {
  (void)state;
  CASE("symlink then whiteout", MUST_REFUSE, {"evil", AE_IFLNK, "%C"}, {"evil/.wh.target", AE_IFREG, NULL});
  CASE("symlink then whiteout of a file", MUST_REFUSE, {"evil", AE_IFLNK, "%C"}, {"evil/.wh.secret", AE_IFREG, NULL});
  CASE("relative symlink then whiteout", MUST_REFUSE, {"up", AE_IFLNK, "../canary"}, {"up/.wh.secret", AE_IFREG, NULL});
  CASE("symlink then opaque below it", MUST_REFUSE, {"evil2", AE_IFLNK, "%C"},
       {"evil2/a/b/.wh..wh..opq", AE_IFREG, NULL});
  CASE("symlink then opaque on it", MUST_REFUSE, {"evil3", AE_IFLNK, "%C"}, {"evil3/.wh..wh..opq", AE_IFREG, NULL});
  CASE("whiteout of ..", MUST_REFUSE, {".wh...", AE_IFREG, NULL});
  CASE("whiteout of .. below a directory", MUST_REFUSE, {"a/", AE_IFDIR, NULL}, {"a/.wh...", AE_IFREG, NULL});
  CASE("whiteout of .", MUST_REFUSE, {"a/", AE_IFDIR, NULL}, {"a/.wh..", AE_IFREG, NULL});
  CASE("whiteout through a symlinked parent", MUST_REFUSE, {"d", AE_IFLNK, "%C"},
       {"d/target/.wh.keep", AE_IFREG, NULL});
}

static void test_escape_hardlinks(void **state) {
  (void)state;
  CASE("hard link to an absolute outside path", MUST_REFUSE, {"hl", HARDLINK, "%C/secret"});
  CASE("hard link with ..", MUST_REFUSE, {"hl", HARDLINK, "../canary/secret"});
  CASE("hard link through a symlink", MUST_REFUSE, {"lnk", AE_IFLNK, "%C"}, {"h", HARDLINK, "lnk/secret"});
  CASE("hard link placed below a symlink", MUST_REFUSE, {"f", AE_IFREG, "x"}, {"lnk", AE_IFLNK, "%C"},
       {"lnk/h", HARDLINK, "f"});
  CASE("hard link inside", MUST_SUCCEED, {"f", AE_IFREG, "x"}, {"h", HARDLINK, "f"});
}

static void test_escape_paths(void **state) {
  (void)state;
  CASE("file below a symlink", MUST_REFUSE, {"evil", AE_IFLNK, "%C"}, {"evil/created", AE_IFREG, "x"});
  CASE("directory below a symlink", MUST_REFUSE, {"evil", AE_IFLNK, "%C"}, {"evil/newdir/", AE_IFDIR, NULL});
  CASE("file below a relative symlink", MUST_REFUSE, {"up", AE_IFLNK, ".."}, {"up/canary/created", AE_IFREG, "x"});
  CASE("symlink chain", MUST_REFUSE, {"b", AE_IFLNK, "%C"}, {"a", AE_IFLNK, "b"}, {"a/chain", AE_IFREG, "x"});
  CASE("dotdot", MUST_REFUSE, {"a/../../canary/dotdot", AE_IFREG, "x"});
  CASE("dotdot first", MUST_REFUSE, {"../canary/dotdot", AE_IFREG, "x"});
  CASE("absolute name", MUST_SUCCEED, {"%C/abs", AE_IFREG, "x"});
  CASE("file replacing a symlink", MUST_SUCCEED, {"s", AE_IFLNK, "%C/secret"}, {"s", AE_IFREG, "overwritten"});
  CASE("directory replacing a symlink", MUST_SUCCEED, {"s", AE_IFLNK, "%C"}, {"s/", AE_IFDIR, NULL, 0777},
       {"s/inside", AE_IFREG, "x"});
  CASE("symlink replacing a directory", EITHER, {"d/", AE_IFDIR, NULL, 0777}, {"d", AE_IFLNK, "%C"});
  CASE("whiteout then symlink", EITHER, {"d/", AE_IFDIR, NULL, 0777}, {".wh.d", AE_IFREG, NULL}, {"d", AE_IFLNK, "%C"});
}

static void test_unpack_bound(void **state) {
  (void)state;
  char *dir = tmpdir();
  char *tar = xasprintf("%s/layer.tar.gz", dir);
  char *dest = xasprintf("%s/root", dir);
  mkdir(dest, 0755);
  char *zeros = xcalloc(1, (1 << 20) + 1);
  memset(zeros, 'z', 1 << 20);
  const entry_t entries[] = {{"a", AE_IFREG, zeros}, {"b", AE_IFREG, zeros}};
  write_tar(tar, entries, SG_ARRAY_SIZE(entries), true);
  sg_error_t *err = NULL;
  int64_t bytes = -1;
  assert_int_equal(sg_layer_unpack_bounded(tar, dest, (1 << 20) + 4096, &bytes, &err), -EFBIG);
  assert_non_null(strstr(err->message, "more than"));
  sg_error_free(err);
  /* the second file was never written */
  char *p = xasprintf("%s/b", dest);
  struct stat st;
  assert_int_not_equal(lstat(p, &st), 0);
  free(p);
  err = NULL;
  assert_int_equal(sg_layer_unpack_bounded(tar, dest, 3 << 20, &bytes, &err), 0);
  assert_int_equal(bytes, 2 << 20);
  free(zeros);
  sg_rm_rf(dir);
  free(tar), free(dest), free(dir);
}

static void test_unpack_drops_overlay_xattrs(void **state) {
  (void)state;
  char *dir = tmpdir();
  char *tar = xasprintf("%s/layer.tar", dir);
  char *dest = xasprintf("%s/root", dir);
  mkdir(dest, 0755);
  struct archive *a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  assert_int_equal(archive_write_open_filename(a, tar), ARCHIVE_OK);
  struct archive_entry *ae = archive_entry_new();
  archive_entry_set_pathname(ae, "d/");
  archive_entry_set_filetype(ae, AE_IFDIR);
  archive_entry_set_perm(ae, 0755);
  archive_entry_xattr_add_entry(ae, "trusted.overlay.opaque", "y", 1);
  archive_entry_xattr_add_entry(ae, "trusted.overlay.redirect", "/etc", 4);
  archive_entry_xattr_add_entry(ae, "user.sgpu.kept", "v", 1);
  assert_int_equal(archive_write_header(a, ae), ARCHIVE_OK);
  archive_entry_free(ae);
  archive_write_close(a);
  archive_write_free(a);
  sg_error_t *err = NULL;
  if (sg_layer_unpack(tar, dest, NULL, &err) != 0)
    fail_msg("unpack: %s", err->message);
  char *p = xasprintf("%s/d", dest);
  char v[8];
  assert_int_equal(getxattr(p, "trusted.overlay.opaque", v, sizeof(v)), -1);
  assert_int_equal(getxattr(p, "trusted.overlay.redirect", v, sizeof(v)), -1);
  if (getxattr(p, "user.sgpu.kept", v, sizeof(v)) < 0 && errno != ENOTSUP)
    fail_msg("user.sgpu.kept was dropped too: %s", strerror(errno));
  free(p);
  sg_rm_rf(dir);
  free(tar), free(dest), free(dir);
}

/* The same escapes where openat2 is missing (an older kernel, or a seccomp
 * filter that answers ENOSYS): the component walk with O_NOFOLLOW holds the
 * line alone. Installs the filter for the rest of the process: run last. */
static void test_escape_without_openat2(void **state) {
#if defined(__x86_64__) || defined(__aarch64__)
#if defined(__x86_64__)
  const unsigned arch = AUDIT_ARCH_X86_64;
#else
  const unsigned arch = AUDIT_ARCH_AARCH64;
#endif
  struct sock_filter prog[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, arch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_openat2, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog fprog = {SG_ARRAY_SIZE(prog), prog};
  assert_int_equal(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
  assert_int_equal(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog), 0);
  struct open_how how = {.flags = O_RDONLY | O_DIRECTORY, .resolve = RESOLVE_BENEATH};
  assert_int_equal(syscall(SYS_openat2, AT_FDCWD, ".", &how, sizeof(how)), -1);
  assert_int_equal(errno, ENOSYS);
  test_escape_whiteouts(state);
  test_escape_hardlinks(state);
  test_escape_paths(state);
  test_unpack_whiteouts(state);
#else
  (void)state;
  skip();
#endif
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_classify),
      cmocka_unit_test(test_unpack_whiteouts),
      cmocka_unit_test(test_unpack_refuses_escape),
      cmocka_unit_test(test_escape_whiteouts),
      cmocka_unit_test(test_escape_hardlinks),
      cmocka_unit_test(test_escape_paths),
      cmocka_unit_test(test_unpack_bound),
      cmocka_unit_test(test_unpack_drops_overlay_xattrs),
      cmocka_unit_test(test_volume_unpack),
      cmocka_unit_test(test_escape_without_openat2), /* last: it keeps its seccomp filter */
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
