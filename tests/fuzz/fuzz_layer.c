/* Fuzz target for layer unpacking (sg_layer_unpack_bounded): whatever a layer holds,
 * nothing may land outside the directory it is unpacked into.
 *
 * The input is a layer archive as a registry serves it (tar, or tar under
 * gzip, zstd, xz or bzip2) when it looks like one; otherwise it is a script
 * from which the target writes a tar, so that mutations reach the unpacker
 * rather than the tar checksum. One entry per line, fields separated by one
 * space:
 *   f PATH [CONTENT]   regular file        d PATH          directory
 *   l PATH TARGET      symbolic link       h PATH TARGET   hard link
 *   c PATH             0/0 character device
 *
 * Each input is unpacked into a fresh PARENT/root, next to PARENT/canary (a
 * directory holding one file); the archive lies next to PARENT, at the top of
 * a tmpfs mounted over /tmp. After the unpack, whether it succeeded or not,
 * the canary must be untouched (same entries, content, no overlay xattr),
 * PARENT must hold only root and canary, and the tmpfs only PARENT and the
 * archive. The tree is then removed without following any symbolic link.
 *
 * As unpacking can write anywhere when it is wrong, the target first moves
 * into a mount namespace of its own where every mount is read-only except a
 * tmpfs for its directories (over /tmp) and the directories libFuzzer writes
 * to (its corpus and artifacts); escapes to any other absolute path fail there
 * (read-only), escapes through relative links land in the tmpfs, where they
 * are seen. It exits 77 (skipped) when the host allows no such namespace. */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "sgpu/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define CANARY_TEXT "canary: unpacking must never reach this\n"
#define MAX_SCRIPT_ENTRIES 64

static const char *scratch; /* a tmpfs: holds "in.tar" and "p" */
static char archive_path[32], parent[32], root[64], canary[64], keep[128];

#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x00000001
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif

struct sg_mount_attr {
  uint64_t attr_set, attr_clr, propagation, userns_fd;
};

static void skip(const char *what) {
  fprintf(stderr, "fuzz-layer: skipped: %s: %s (unpacking is only fuzzed inside a read-only mount namespace)\n", what,
          strerror(errno));
  exit(77);
}

static void die(const char *what) {
  fprintf(stderr, "fuzz-layer: %s: %s\n", what, strerror(errno));
  abort();
}

static int write_text(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  ssize_t n = write(fd, text, strlen(text));
  close(fd);
  return n == (ssize_t)strlen(text) ? 0 : -1;
}

static int set_readonly(const char *path, bool readonly, bool recursive) {
  struct sg_mount_attr attr = {0};
  if (readonly)
    attr.attr_set = MOUNT_ATTR_RDONLY;
  else
    attr.attr_clr = MOUNT_ATTR_RDONLY;
  return (int)syscall(SYS_mount_setattr, AT_FDCWD, path, recursive ? AT_RECURSIVE : 0, &attr, sizeof(attr));
}

#define MAX_PATHS 16

/* What the tmpfs must not hide: inputs, corpus and artifact directories. */
static char *visible[MAX_PATHS];
static size_t n_visible;
/* What stays writable: the directories libFuzzer writes to. */
static char *writable[MAX_PATHS];
static size_t n_writable;

static void add_path(const char *path, bool write) {
  char real[PATH_MAX];
  struct stat st;
  if (!realpath(path, real) || stat(real, &st) < 0)
    return;
  if (n_visible < MAX_PATHS)
    visible[n_visible++] = strdup(real);
  if (write && S_ISDIR(st.st_mode) && n_writable < MAX_PATHS)
    writable[n_writable++] = strdup(real);
}

/* From the arguments: the inputs, and the directories libFuzzer writes to
 * (its corpus directories and where artifacts go, by default the working
 * directory). The standalone driver (no -flag=value arguments) writes
 * nothing. */
static void find_paths(int argc, char **argv) {
  bool libfuzzer = false, artifacts = false;
  for (int i = 1; i < argc; i++)
    if (argv[i][0] == '-' && strchr(argv[i], '='))
      libfuzzer = true;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = NULL;
    if (!strncmp(a, "-artifact_prefix=", 17))
      v = a + 17;
    else if (!strncmp(a, "-exact_artifact_path=", 21))
      v = a + 21;
    if (v) {
      artifacts = true;
      char dir[PATH_MAX];
      snprintf(dir, sizeof(dir), "%s", v);
      char *slash = strrchr(dir, '/');
      if (slash)
        slash[1] = '\0';
      add_path(slash ? dir : ".", libfuzzer);
    } else if (a[0] != '-') {
      add_path(a, libfuzzer);
    }
  }
  if (libfuzzer && !artifacts)
    add_path(".", true);
}

static bool under(const char *path, const char *dir) {
  size_t n = strlen(dir);
  return !strncmp(path, dir, n) && (!path[n] || path[n] == '/');
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  find_paths(*argc, *argv);
  /* The tmpfs covers a directory that exists everywhere and holds none of
   * those paths; nothing of it remains once the process ends. */
  static const char *const places[] = {"/tmp", "/var/tmp", "/mnt"};
  for (size_t i = 0; i < sizeof(places) / sizeof(places[0]) && !scratch; i++) {
    struct stat st;
    bool holds = false;
    for (size_t k = 0; k < n_visible; k++)
      holds |= under(visible[k], places[i]);
    if (stat(places[i], &st) == 0 && S_ISDIR(st.st_mode) && !holds)
      scratch = places[i];
  }
  if (!scratch) {
    errno = ENOENT;
    skip("no directory for the tmpfs");
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max; /* removal holds a descriptor per directory level */
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  uid_t uid = getuid();
  gid_t gid = getgid();
  if (unshare(CLONE_NEWNS) < 0) {
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS) < 0)
      skip("unshare");
    char map[64];
    snprintf(map, sizeof(map), "0 %u 1", (unsigned)uid);
    if (write_text("/proc/self/uid_map", map) < 0)
      skip("uid_map");
    write_text("/proc/self/setgroups", "deny");
    snprintf(map, sizeof(map), "0 %u 1", (unsigned)gid);
    if (write_text("/proc/self/gid_map", map) < 0)
      skip("gid_map");
  }
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
    skip("making mounts private");
  if (mount("sgpu-fuzz", scratch, "tmpfs", MS_NOSUID, "size=256m,mode=0700") < 0)
    skip("tmpfs");
  for (size_t k = 0; k < n_writable; k++)
    if (mount(writable[k], writable[k], NULL, MS_BIND, NULL) < 0)
      skip("binding a corpus or artifact directory");
  if (set_readonly("/", true, true) < 0)
    skip("making / read-only");
  if (set_readonly(scratch, false, false) < 0)
    skip("making the tmpfs writable");
  for (size_t k = 0; k < n_writable; k++)
    if (set_readonly(writable[k], false, false) < 0)
      skip("making a corpus or artifact directory writable");

  snprintf(archive_path, sizeof(archive_path), "%s/in.tar", scratch);
  snprintf(parent, sizeof(parent), "%s/p", scratch);
  snprintf(root, sizeof(root), "%s/root", parent);
  snprintf(canary, sizeof(canary), "%s/canary", parent);
  snprintf(keep, sizeof(keep), "%s/keep", canary);
  return 0;
}

static bool looks_like_archive(const uint8_t *d, size_t n) {
  if (n >= 512 && !memcmp(d + 257, "ustar", 5))
    return true;
  static const struct {
    const char *magic;
    size_t len;
  } m[] = {{"\x1f\x8b", 2},
           {"\x28\xb5\x2f\xfd", 4},
           {"\xfd"
            "7zXZ",
            5},
           {"BZh", 3}};
  for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++)
    if (n >= m[i].len && !memcmp(d, m[i].magic, m[i].len))
      return true;
  return false;
}

static void write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t w = write(fd, p, len);
    if (w <= 0)
      die("write");
    p += w;
    len -= (size_t)w;
  }
}

static la_ssize_t tar_write_cb(struct archive *a, void *ud, const void *buf, size_t len) {
  write_all(*(int *)ud, buf, len);
  return (la_ssize_t)len;
}

/* Writes the tar that the script in d describes to fd. */
static void write_script_tar(const uint8_t *d, size_t n, int fd) {
  struct archive *a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  archive_write_set_bytes_in_last_block(a, 1);
  if (archive_write_open(a, &fd, NULL, tar_write_cb, NULL) != ARCHIVE_OK)
    die("archive_write_open");
  struct archive_entry *e = archive_entry_new();
  size_t entries = 0;
  for (size_t at = 0; at < n && entries < MAX_SCRIPT_ENTRIES;) {
    const uint8_t *nl = memchr(d + at, '\n', n - at);
    size_t len = nl ? (size_t)(nl - (d + at)) : n - at;
    char line[1024];
    if (len >= sizeof(line))
      len = sizeof(line) - 1;
    memcpy(line, d + at, len);
    line[len] = '\0';
    at = nl ? (size_t)(nl - d) + 1 : n;
    if (strlen(line) < 3 || line[1] != ' ')
      continue;
    char type = line[0];
    char *path = line + 2;
    char *arg = strchr(path, ' ');
    if (arg)
      *arg++ = '\0';
    archive_entry_clear(e);
    archive_entry_set_pathname(e, path);
    archive_entry_set_mtime(e, 1700000000, 0);
    const char *content = NULL;
    switch (type) {
    case 'f':
      content = arg ? arg : "";
      archive_entry_set_filetype(e, AE_IFREG);
      archive_entry_set_perm(e, 0644);
      archive_entry_set_size(e, (la_int64_t)strlen(content));
      break;
    case 'd':
      archive_entry_set_filetype(e, AE_IFDIR);
      archive_entry_set_perm(e, 0755);
      break;
    case 'l':
      if (!arg)
        continue;
      archive_entry_set_filetype(e, AE_IFLNK);
      archive_entry_set_perm(e, 0777);
      archive_entry_set_symlink(e, arg);
      break;
    case 'h':
      if (!arg)
        continue;
      archive_entry_set_filetype(e, AE_IFREG);
      archive_entry_set_perm(e, 0644);
      archive_entry_set_hardlink(e, arg);
      break;
    case 'c':
      archive_entry_set_filetype(e, AE_IFCHR);
      archive_entry_set_perm(e, 0);
      archive_entry_set_rdev(e, 0);
      break;
    default:
      continue;
    }
    if (archive_write_header(a, e) < ARCHIVE_WARN)
      continue; /* a name the format cannot hold */
    if (content && *content)
      archive_write_data(a, content, strlen(content));
    entries++;
  }
  archive_entry_free(e);
  archive_write_close(a);
  archive_write_free(a);
}

/* Removes the entries of the directory open as dfd, never following a
 * symbolic link (every step is relative to a directory opened O_NOFOLLOW). */
static void rm_under(int dfd) {
  DIR *dir = fdopendir(dfd);
  if (!dir)
    die("fdopendir");
  for (;;) {
    rewinddir(dir);
    bool removed = false;
    struct dirent *de;
    while ((de = readdir(dir))) {
      if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
        continue;
      struct stat st;
      if (fstatat(dirfd(dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        die("fstatat");
      if (S_ISDIR(st.st_mode)) {
        int sub = openat(dirfd(dir), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0)
          die("openat");
        fchmod(sub, 0700); /* a directory without write permission still empties */
        rm_under(sub);
        if (unlinkat(dirfd(dir), de->d_name, AT_REMOVEDIR) < 0)
          die("rmdir");
      } else if (unlinkat(dirfd(dir), de->d_name, 0) < 0) {
        die("unlink");
      }
      removed = true;
    }
    if (!removed)
      break;
  }
  closedir(dir);
}

static void rm_tree(const char *path) {
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT)
      return;
    die("open");
  }
  rm_under(fd);
}

/* The names in dir, sorted, as "a,b,c" into out; false when dir is not a
 * directory any more. */
static bool list_dir(const char *dir, char *out, size_t cap) {
  out[0] = '\0';
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
  if (!d) {
    if (fd >= 0)
      close(fd);
    return false;
  }
  char names[16][NAME_MAX + 1];
  size_t n = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
      continue;
    if (n == 16)
      break;
    snprintf(names[n++], sizeof(names[0]), "%s", de->d_name);
  }
  closedir(d);
  qsort(names, n, sizeof(names[0]), (int (*)(const void *, const void *))strcmp);
  for (size_t i = 0; i < n; i++) {
    strncat(out, i ? "," : "", cap - strlen(out) - 1);
    strncat(out, names[i], cap - strlen(out) - 1);
  }
  return true;
}

static void escaped(const char *what, const char *detail) {
  fprintf(stderr, "fuzz-layer: the unpack reached outside its root: %s%s%s\n", what, detail ? ": " : "",
          detail ? detail : "");
  abort();
}

static void check_contained(void) {
  char names[16 * (NAME_MAX + 2)];
  if (!list_dir(scratch, names, sizeof(names)) || strcmp(names, "in.tar,p"))
    escaped("the parent's parent holds", names);
  if (!list_dir(parent, names, sizeof(names)) || strcmp(names, "canary,root"))
    escaped("the parent holds", names);
  if (!list_dir(canary, names, sizeof(names)) || strcmp(names, "keep"))
    escaped("the canary is not a directory holding only keep", names);
  struct stat st;
  if (lstat(canary, &st) < 0 || !S_ISDIR(st.st_mode) || (st.st_mode & 07777) != 0755)
    escaped("the canary directory changed", NULL);
  if (lstat(keep, &st) < 0 || !S_ISREG(st.st_mode) || (st.st_mode & 07777) != 0644 || st.st_nlink != 1 ||
      st.st_size != (off_t)strlen(CANARY_TEXT))
    escaped("the canary file changed", NULL);
  char buf[sizeof(CANARY_TEXT)];
  int fd = open(keep, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0 || read(fd, buf, sizeof(buf)) != (ssize_t)strlen(CANARY_TEXT) ||
      memcmp(buf, CANARY_TEXT, strlen(CANARY_TEXT)))
    escaped("the canary file's content changed", NULL);
  close(fd);
  const char *const dirs[] = {scratch, parent, canary};
  for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
    char x[8];
    if (lgetxattr(dirs[i], "trusted.overlay.opaque", x, sizeof(x)) >= 0)
      escaped("an opaque xattr was set on", dirs[i]);
  }
  if (lstat(root, &st) < 0 || !S_ISDIR(st.st_mode))
    escaped("the root is no longer a directory", NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > (1 << 20))
    return 0;
  if (mkdir(parent, 0755) < 0 || mkdir(root, 0755) < 0 || mkdir(canary, 0755) < 0)
    die("mkdir");
  chmod(canary, 0755); /* whatever the umask */
  int fd = open(keep, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    die("canary");
  fchmod(fd, 0644);
  write_all(fd, CANARY_TEXT, strlen(CANARY_TEXT));
  close(fd);

  fd = open(archive_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    die("archive");
  if (looks_like_archive(data, size))
    write_all(fd, data, size);
  else
    write_script_tar(data, size, fd);
  close(fd);

  sg_error_t *err = NULL;
  int64_t bytes = -1;
  int r = sg_layer_unpack_bounded(archive_path, root, 64 << 20, &bytes, &err);
  if (r < 0 ? !err || !err->message : err != NULL)
    abort();
  if (bytes < 0)
    abort();
  sg_error_free(err);

  check_contained();
  rm_tree(parent);
  if (rmdir(parent) < 0)
    die("rmdir");
  return 0;
}
