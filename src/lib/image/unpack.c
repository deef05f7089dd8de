/* Layer unpacking with libarchive. Each layer goes into its own directory,
 * stacked later as an overlayfs lower layer, so OCI whiteouts become overlay
 * whiteouts: ".wh.NAME" a 0/0 character device NAME, ".wh..wh..opq" the
 * trusted.overlay.opaque xattr on its directory.
 *
 * Every filesystem operation stays inside the layer directory whatever the
 * entries say. Entry paths are cleaned first ("." and leading "/" dropped,
 * ".." refused). The directory an entry goes into is then opened beneath the
 * root without following any symbolic link (openat2 with RESOLVE_BENEATH and
 * RESOLVE_NO_SYMLINKS, or a walk one component at a time with O_NOFOLLOW
 * where openat2 is missing), creating what is missing; an entry below a
 * symbolic link is refused. Whiteouts, opaque markers and hard links are
 * applied on that directory's descriptor (mknodat, unlinkat, fsetxattr,
 * linkat); other entries are written by libarchive, whose secure-symlink and
 * no-".." checks apply on top. Only one thread writes a layer directory, so
 * what was checked stays true while the entry is written. */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

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

#define RM_MAX_DEPTH 128
#define ENTRY_OVERHEAD 512 /* what one entry counts against a size bound besides its data */

static atomic_bool no_openat2;

/* Opens the directory rel (a cleaned path: no "", "." or ".." component;
 * "" is the root) beneath rootfd without following any symbolic link, and
 * creates the directories missing on the way when create. Returns a
 * descriptor or -errno (ELOOP or ENOTDIR where a component is a symbolic
 * link or not a directory). */
static int dir_open_beneath(int rootfd, const char *rel, bool create) {
  if (!*rel) {
    int fd = fcntl(rootfd, F_DUPFD_CLOEXEC, 0);
    return fd < 0 ? -errno : fd;
  }
  if (!atomic_load(&no_openat2)) {
    struct open_how how = {.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC,
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
    int fd;
    do
      fd = (int)syscall(SYS_openat2, rootfd, rel, &how, sizeof(how));
    while (fd < 0 && errno == EINTR);
    if (fd >= 0)
      return fd;
    if (errno == ENOSYS || errno == EPERM) /* EPERM: a seccomp filter that does not know it */
      atomic_store(&no_openat2, true);
    else if (!(create && errno == ENOENT))
      return -errno;
  }
  int cur = fcntl(rootfd, F_DUPFD_CLOEXEC, 0);
  if (cur < 0)
    return -errno;
  const char *p = rel;
  char name[NAME_MAX + 1];
  while (*p) {
    size_t len = strcspn(p, "/");
    if (len == 0 || len > NAME_MAX) {
      close(cur);
      return len ? -ENAMETOOLONG : -EINVAL;
    }
    memcpy(name, p, len);
    name[len] = '\0';
    p += len;
    if (*p == '/')
      p++;
    if (create && mkdirat(cur, name, 0755) < 0 && errno != EEXIST) {
      int e = errno;
      close(cur);
      return -e;
    }
    int next = openat(cur, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int e = errno;
    close(cur);
    if (next < 0)
      return -e;
    cur = next;
  }
  return cur;
}

/* Removes name in dirfd and everything under it. No symbolic link is
 * followed: each directory is opened with O_NOFOLLOW from its parent's
 * descriptor. Returns 0 (also when name does not exist) or -errno. */
static int rm_rf_at(int dirfd, const char *name, int depth) {
  struct stat st;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
    return errno == ENOENT ? 0 : -errno;
  if (!S_ISDIR(st.st_mode))
    return unlinkat(dirfd, name, 0) < 0 && errno != ENOENT ? -errno : 0;
  if (depth >= RM_MAX_DEPTH)
    return -ELOOP;
  int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  DIR *d = fdopendir(fd);
  if (!d) {
    int e = errno;
    close(fd);
    return -e;
  }
  int r = 0;
  struct dirent *de;
  while (r == 0 && (de = readdir(d)))
    if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
      r = rm_rf_at(fd, de->d_name, depth + 1);
  closedir(d);
  if (r == 0 && unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
    r = -errno;
  return r;
}

/* Splits a cleaned, non-empty rel into its directory (caller frees) and its last component. */
static char *split_parent(const char *rel, const char **base) {
  const char *slash = strrchr(rel, '/');
  *base = slash ? slash + 1 : rel;
  return xstrndup(rel, slash ? (size_t)(slash - rel) : 0);
}

/* Opens the directory an entry goes into; the error names the entry. */
static int open_parent(int rootfd, const char *entry, const char *dir, sg_error_t **err) {
  int fd = dir_open_beneath(rootfd, dir, true);
  if (fd == -ELOOP || fd == -ENOTDIR || fd == -EXDEV)
    return sg_make_error(err, EBADMSG,
                         "layer entry \"%s\": \"%s\" is a symbolic link or not a directory; entries below it would "
                         "leave the layer: refused",
                         entry, dir);
  if (fd < 0)
    return sg_make_error(err, -fd, "layer entry \"%s\": cannot open \"%s\": %s", entry, dir, strerror(-fd));
  return fd;
}

static int make_whiteout(int rootfd, const char *entry, const char *rel, sg_error_t **err) {
  const char *base;
  cleanup_free char *dir = split_parent(rel, &base);
  cleanup_close int fd = open_parent(rootfd, entry, dir, err);
  if (fd < 0)
    return fd;
  int r = rm_rf_at(fd, base, 0);
  if (r < 0)
    return sg_make_error(err, -r, "layer entry \"%s\": cannot remove \"%s\": %s", entry, rel, strerror(-r));
  if (mknodat(fd, base, S_IFCHR | 0, makedev(0, 0)) < 0)
    return sg_make_error(err, errno, "cannot create whiteout %s: %s", rel, strerror(errno));
  return 0;
}

static int make_opaque(int rootfd, const char *entry, const char *rel, sg_error_t **err) {
  cleanup_close int fd = open_parent(rootfd, entry, rel, err);
  if (fd < 0)
    return fd;
  if (fsetxattr(fd, "trusted.overlay.opaque", "y", 1, 0) < 0)
    return sg_make_error(err, errno, "cannot mark %s opaque: %s", *rel ? rel : "/", strerror(errno));
  return 0;
}

/* A hard link to target, both inside the layer: linkat() between the two
 * directories' descriptors, never following a symbolic link. */
static int make_hardlink(int rootfd, const char *entry, const char *rel, const char *target, sg_error_t **err) {
  const char *base, *tbase;
  cleanup_free char *dir = split_parent(rel, &base);
  cleanup_free char *tdir = split_parent(target, &tbase);
  cleanup_close int tfd = dir_open_beneath(rootfd, tdir, false);
  if (tfd < 0)
    return sg_make_error(err, EBADMSG, "layer hard link \"%s\" to \"%s\": the target is not inside the layer: refused",
                         entry, target);
  cleanup_close int fd = open_parent(rootfd, entry, dir, err);
  if (fd < 0)
    return fd;
  struct stat st;
  if (fstatat(fd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISDIR(st.st_mode) && unlinkat(fd, base, 0) < 0)
    return sg_make_error(err, errno, "layer entry \"%s\": cannot replace it: %s", entry, strerror(errno));
  if (linkat(tfd, tbase, fd, base, 0) < 0)
    return sg_make_error(err, errno == ENOENT ? EBADMSG : errno, "layer hard link \"%s\" to \"%s\": %s", entry, target,
                         strerror(errno));
  return 0;
}

static bool overlay_xattr(const char *name) {
  return sg_str_has_prefix(name, "trusted.overlay.") || sg_str_has_prefix(name, "user.overlay.");
}

/* Drops the overlayfs xattrs an entry carries: only unpacking decides what
 * the overlay sees (whiteouts, opaque directories). */
static void drop_overlay_xattrs(struct archive_entry *e) {
  const char *name;
  const void *value;
  size_t size;
  bool any = false;
  int n = archive_entry_xattr_reset(e);
  while (archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK)
    any = any || overlay_xattr(name);
  if (!any)
    return;
  struct kept {
    char *name;
    void *value;
    size_t size;
  } *kept = xcalloc((size_t)n + 1, sizeof(*kept));
  size_t k = 0;
  archive_entry_xattr_reset(e);
  while (archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK && k < (size_t)n) {
    if (overlay_xattr(name))
      continue;
    kept[k].name = xstrdup(name);
    kept[k].value = xmalloc(size + 1);
    memcpy(kept[k].value, value, size);
    kept[k].size = size;
    k++;
  }
  archive_entry_xattr_clear(e);
  for (size_t i = 0; i < k; i++) {
    archive_entry_xattr_add_entry(e, kept[i].name, kept[i].value, kept[i].size);
    free(kept[i].name);
    free(kept[i].value);
  }
  free(kept);
}

int sg_layer_unpack(const char *archive_path, const char *dest_in, int64_t *bytes, sg_error_t **err) {
  return sg_layer_unpack_bounded(archive_path, dest_in, 0, bytes, err);
}

/* Refuses what has no place in a volume: absolute names, devices, FIFOs and
 * sockets; clears setuid, setgid and sticky bits and opens what is left to
 * every user (directories 0777, files 0666 or 0777 when executable), as the
 * volume directory itself is. */
static int volume_entry(struct archive_entry *e, const char *name, sg_error_t **err) {
  if (name[0] == '/')
    return sg_make_error(err, EBADMSG, "entry \"%s\" is an absolute path: refused", name);
  mode_t type = archive_entry_filetype(e);
  if (type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK)
    return sg_make_error(err, EBADMSG, "entry \"%s\" is a device, FIFO or socket: refused", name);
  mode_t perm = archive_entry_perm(e);
  archive_entry_set_perm(e, type == AE_IFDIR ? 0777 : (perm & 0111) ? 0777 : 0666);
  return 0;
}

static int unpack(const char *archive_path, const char *dest_in, int64_t max_bytes, bool volume, int64_t *bytes,
                  sg_error_t **err);

int sg_layer_unpack_bounded(const char *archive_path, const char *dest_in, int64_t max_bytes, int64_t *bytes,
                            sg_error_t **err) {
  return unpack(archive_path, dest_in, max_bytes, false, bytes, err);
}

int sg_volume_unpack(const char *archive_path, const char *dest, int64_t max_bytes, int64_t *bytes, sg_error_t **err) {
  return unpack(archive_path, dest, max_bytes, true, bytes, err);
}

static int unpack(const char *archive_path, const char *dest_in, int64_t max_bytes, bool volume, int64_t *bytes,
                  sg_error_t **err) {
  char dest[PATH_MAX];
  if (bytes)
    *bytes = 0;
  if (!realpath(dest_in, dest))
    return sg_make_error(err, errno, "%s: %s", dest_in, strerror(errno));
  cleanup_close int rootfd = open(dest, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (rootfd < 0)
    return sg_make_error(err, errno, "%s: %s", dest, strerror(errno));
  struct archive *a = archive_read_new();
  archive_read_support_filter_all(a);
  archive_read_support_format_tar(a);
  archive_read_support_format_gnutar(a);
  struct archive *w = archive_write_disk_new();
  int secure = ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_SECURE_NODOTDOT | ARCHIVE_EXTRACT_UNLINK;
  archive_write_disk_set_options(w, volume ? ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME | secure
                                           : ARCHIVE_EXTRACT_OWNER | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME |
                                                 ARCHIVE_EXTRACT_XATTR | secure);
  archive_write_disk_set_standard_lookup(w);
  int ret = 0;
  int64_t total = 0, accounted = 0;
  if (archive_read_open_filename(a, archive_path, 1 << 16) != ARCHIVE_OK) {
    ret = sg_make_error(err, EBADMSG, "layer %s: %s", archive_path, archive_error_string(a));
    goto out;
  }
  struct archive_entry *e;
  int rc;
  while ((rc = archive_read_next_header(a, &e)) == ARCHIVE_OK || rc == ARCHIVE_WARN) {
    const char *name = archive_entry_pathname(e);
    if (volume && (ret = volume_entry(e, name ? name : "", err)) < 0)
      goto out;
    cleanup_free char *rel = clean_path(name ? name : "");
    if (!rel) {
      ret = sg_make_error(err, EBADMSG, "layer entry \"%s\" leaves the root: refused", name);
      goto out;
    }
    int64_t size = archive_entry_filetype(e) == AE_IFREG && archive_entry_size(e) > 0 ? archive_entry_size(e) : 0;
    accounted += ENTRY_OVERHEAD + size;
    if (max_bytes > 0 && accounted > max_bytes) {
      ret = sg_make_error(err, EFBIG, "layer unpacks to more than %lld bytes: refused", (long long)max_bytes);
      goto out;
    }
    cleanup_free char *target = NULL;
    sg_whiteout_t wh = volume ? SG_WH_NONE : sg_whiteout_classify(rel, &target);
    if (wh == SG_WH_FILE) {
      /* ".wh.." and ".wh..." would name the directory itself or its parent */
      cleanup_free char *clean = clean_path(target);
      if (!clean || !*clean || strcmp(clean, target)) {
        ret = sg_make_error(err, EBADMSG, "layer whiteout \"%s\" names no entry of its directory: refused", rel);
        goto out;
      }
    }
    if (wh == SG_WH_FILE) {
      if ((ret = make_whiteout(rootfd, rel, target, err)) < 0)
        goto out;
      continue;
    }
    if (wh == SG_WH_OPAQUE) {
      if ((ret = make_opaque(rootfd, rel, target, err)) < 0)
        goto out;
      continue;
    }
    if (!*rel) /* the root itself: its metadata is the layer directory's own */
      continue;
    const char *hl = archive_entry_hardlink(e);
    if (hl) {
      cleanup_free char *hrel = clean_path(hl);
      if (!hrel || !*hrel) {
        ret = sg_make_error(err, EBADMSG, "layer hard link \"%s\" leaves the root: refused", hl);
        goto out;
      }
      if ((ret = make_hardlink(rootfd, rel, rel, hrel, err)) < 0)
        goto out;
      continue;
    }
    /* The entry's directory is checked (and made) beneath the root; a
     * symbolic link in the entry's own place is replaced, never followed. */
    {
      const char *base;
      cleanup_free char *dir = split_parent(rel, &base);
      cleanup_close int pfd = open_parent(rootfd, rel, dir, err);
      if (pfd < 0) {
        ret = pfd;
        goto out;
      }
      struct stat st;
      if (fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode) && unlinkat(pfd, base, 0) < 0) {
        ret = sg_make_error(err, errno, "layer entry \"%s\": cannot replace it: %s", rel, strerror(errno));
        goto out;
      }
    }
    drop_overlay_xattrs(e);
    cleanup_free char *abs = xasprintf("%s/%s", dest, rel);
    archive_entry_set_pathname(e, abs);
    total += size;
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
