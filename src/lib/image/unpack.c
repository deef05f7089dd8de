/* Layer unpacking with libarchive. Each layer goes into its own directory,
 * stacked later as an overlayfs lower layer, so OCI whiteouts become overlay
 * whiteouts: ".wh.NAME" a 0/0 character device NAME, ".wh..wh..opq" the
 * trusted.overlay.opaque xattr on its directory. Paths are made absolute
 * under the destination (the process's working directory is shared by every
 * thread) after refusing any that would leave it. */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include "sgpu/image.h"
#include "sgpu/util.h"

#define WH_PREFIX ".wh."
#define WH_OPAQUE ".wh..wh..opq"

sg_whiteout_t sg_whiteout_classify(const char *path, char **target) {
  if (target)
    *target = NULL;
  const char *slash = strrchr(path, '/');
  const char *base = slash ? slash + 1 : path;
  size_t dirlen = slash ? (size_t)(slash - path) : 0;
  if (!strcmp(base, WH_OPAQUE)) {
    if (target)
      *target = xstrndup(path, dirlen);
    return SG_WH_OPAQUE;
  }
  if (!sg_str_has_prefix(base, WH_PREFIX) || !base[strlen(WH_PREFIX)])
    return SG_WH_NONE;
  if (target)
    *target = xasprintf("%.*s%s%s", (int)dirlen, path, dirlen ? "/" : "", base + strlen(WH_PREFIX));
  return SG_WH_FILE;
}

/* Normalizes an entry path: drops "./" and leading "/", refuses "..".
 * NULL when the path is unsafe; "" is the root itself. */
static char *clean_path(const char *p) {
  size_t n = strlen(p);
  char *out = xmalloc(n + 1);
  size_t o = 0;
  while (*p) {
    while (*p == '/')
      p++;
    const char *e = strchr(p, '/');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len == 2 && p[0] == '.' && p[1] == '.') {
      free(out);
      return NULL;
    }
    if (len > 0 && !(len == 1 && p[0] == '.')) {
      if (o)
        out[o++] = '/';
      memcpy(out + o, p, len);
      o += len;
    }
    p += len;
  }
  out[o] = '\0';
  return out;
}

static int make_whiteout(const char *dest, const char *rel, sg_error_t **err) {
  cleanup_free char *path = xasprintf("%s/%s", dest, rel);
  cleanup_free char *dir = xstrdup(path);
  char *slash = strrchr(dir, '/');
  *slash = '\0';
  int r = sg_mkdir_p(dir, 0755);
  if (r < 0)
    return sg_make_error(err, -r, "cannot create %s: %s", dir, strerror(-r));
  sg_rm_rf(path);
  if (mknod(path, S_IFCHR | 0, makedev(0, 0)) < 0)
    return sg_make_error(err, errno, "cannot create whiteout %s: %s", path, strerror(errno));
  return 0;
}

static int make_opaque(const char *dest, const char *rel, sg_error_t **err) {
  cleanup_free char *path = *rel ? xasprintf("%s/%s", dest, rel) : xstrdup(dest);
  int r = sg_mkdir_p(path, 0755);
  if (r < 0)
    return sg_make_error(err, -r, "cannot create %s: %s", path, strerror(-r));
  if (setxattr(path, "trusted.overlay.opaque", "y", 1, 0) < 0)
    return sg_make_error(err, errno, "cannot mark %s opaque: %s", path, strerror(errno));
  return 0;
}

int sg_layer_unpack(const char *archive_path, const char *dest_in, int64_t *bytes, sg_error_t **err) {
  char dest[PATH_MAX];
  if (!realpath(dest_in, dest))
    return sg_make_error(err, errno, "%s: %s", dest_in, strerror(errno));
  struct archive *a = archive_read_new();
  archive_read_support_filter_all(a);
  archive_read_support_format_tar(a);
  archive_read_support_format_gnutar(a);
  struct archive *w = archive_write_disk_new();
  archive_write_disk_set_options(w, ARCHIVE_EXTRACT_OWNER | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME |
                                        ARCHIVE_EXTRACT_XATTR | ARCHIVE_EXTRACT_SECURE_SYMLINKS |
                                        ARCHIVE_EXTRACT_SECURE_NODOTDOT | ARCHIVE_EXTRACT_UNLINK);
  archive_write_disk_set_standard_lookup(w);
  int ret = 0;
  int64_t total = 0;
  if (archive_read_open_filename(a, archive_path, 1 << 16) != ARCHIVE_OK) {
    ret = sg_make_error(err, EBADMSG, "layer %s: %s", archive_path, archive_error_string(a));
    goto out;
  }
  struct archive_entry *e;
  int rc;
  while ((rc = archive_read_next_header(a, &e)) == ARCHIVE_OK || rc == ARCHIVE_WARN) {
    cleanup_free char *rel = clean_path(archive_entry_pathname(e));
    if (!rel) {
      ret = sg_make_error(err, EBADMSG, "layer entry \"%s\" leaves the root: refused", archive_entry_pathname(e));
      goto out;
    }
    cleanup_free char *target = NULL;
    sg_whiteout_t wh = sg_whiteout_classify(rel, &target);
    if (wh == SG_WH_FILE) {
      if ((ret = make_whiteout(dest, target, err)) < 0)
        goto out;
      continue;
    }
    if (wh == SG_WH_OPAQUE) {
      if ((ret = make_opaque(dest, target, err)) < 0)
        goto out;
      continue;
    }
    cleanup_free char *abs = *rel ? xasprintf("%s/%s", dest, rel) : xstrdup(dest);
    archive_entry_set_pathname(e, abs);
    const char *hl = archive_entry_hardlink(e);
    if (hl) {
      cleanup_free char *hrel = clean_path(hl);
      if (!hrel || !*hrel) {
        ret = sg_make_error(err, EBADMSG, "layer hard link \"%s\" leaves the root: refused", hl);
        goto out;
      }
      cleanup_free char *habs = xasprintf("%s/%s", dest, hrel);
      archive_entry_set_hardlink(e, habs);
    }
    if (archive_entry_filetype(e) == AE_IFREG)
      total += archive_entry_size(e);
    rc = archive_write_header(w, e);
    if (rc < ARCHIVE_WARN) {
      ret = sg_make_error(err, EIO, "layer entry \"%s\": %s", rel, archive_error_string(w));
      goto out;
    }
    if (rc >= ARCHIVE_WARN && archive_entry_size(e) > 0) {
      const void *buf;
      size_t len;
      la_int64_t off;
      while ((rc = archive_read_data_block(a, &buf, &len, &off)) == ARCHIVE_OK)
        if (archive_write_data_block(w, buf, len, off) < ARCHIVE_WARN) {
          ret = sg_make_error(err, EIO, "layer entry \"%s\": %s", rel, archive_error_string(w));
          goto out;
        }
      if (rc != ARCHIVE_EOF) {
        ret = sg_make_error(err, EBADMSG, "layer entry \"%s\": %s", rel, archive_error_string(a));
        goto out;
      }
    }
    if (archive_write_finish_entry(w) < ARCHIVE_WARN) {
      ret = sg_make_error(err, EIO, "layer entry \"%s\": %s", rel, archive_error_string(w));
      goto out;
    }
  }
  if (rc != ARCHIVE_EOF)
    ret = sg_make_error(err, EBADMSG, "layer %s: %s", archive_path, archive_error_string(a));
out:
  if (ret == 0 && archive_write_close(w) != ARCHIVE_OK)
    ret = sg_make_error(err, EIO, "layer %s: %s", archive_path, archive_error_string(w));
  archive_read_free(a);
  archive_write_free(w);
  if (bytes)
    *bytes = total;
  return ret;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  if (flag == FTW_DP)
    return rmdir(path) < 0 && errno != ENOENT ? 0 : 0;
  unlink(path);
  return 0;
}

int sg_rm_rf(const char *path) {
  struct stat st;
  if (lstat(path, &st) < 0)
    return errno == ENOENT ? 0 : -errno;
  if (!S_ISDIR(st.st_mode))
    return unlink(path) < 0 ? -errno : 0;
  nftw(path, rm_one, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
  return access(path, F_OK) == 0 ? -ENOTEMPTY : 0;
}
