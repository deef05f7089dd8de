/* The OCI runtime config (config.json) of a worker's container, shared by
 * the runtimes that run images: oci (crun on this machine) and slurm (crun
 * on the job's node). */
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "oci-internal.h"
#include "sgpu/json.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

static json_t *strings(const char *const *v) {
  json_t *a = json_array();
  for (; v && *v; v++)
    json_array_append_new(a, json_string(*v));
  return a;
}

/* Docker's default capabilities less CAP_MKNOD (no device nodes, whatever
 * the cgroup layout enforces) and CAP_NET_RAW (containers share the host's
 * network: raw sockets would see every worker's loopback traffic). */
static const char *const default_caps[] = {
    "CAP_CHOWN",  "CAP_DAC_OVERRIDE", "CAP_FSETID",  "CAP_FOWNER",           "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP",      "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
    "CAP_KILL",   "CAP_AUDIT_WRITE",  NULL};

/* Docker's masked and read-only paths. */
static const char *const masked_paths[] = {"/proc/acpi",
                                           "/proc/asound",
                                           "/proc/kcore",
                                           "/proc/keys",
                                           "/proc/latency_stats",
                                           "/proc/timer_list",
                                           "/proc/timer_stats",
                                           "/proc/sched_debug",
                                           "/proc/scsi",
                                           "/sys/firmware",
                                           "/sys/devices/virtual/powercap",
                                           NULL};
static const char *const readonly_paths[] = {"/proc/bus",           "/proc/fs", "/proc/irq", "/proc/sys",
                                             "/proc/sysrq-trigger", NULL};

/* The device cgroup: nothing but the standard nodes (null, zero, full,
 * random, urandom, tty, ptmx and the pty slaves); CDI adds a worker's GPUs. */
static json_t *device_rules(void) {
  static const struct {
    int major, minor; /* -1: any */
  } allowed[] = {{1, 3}, {1, 5}, {1, 7}, {1, 8}, {1, 9}, {5, 0}, {5, 2}, {136, -1}};
  json_t *rules = json_pack("[{s:b, s:s}]", "allow", 0, "access", "rwm");
  for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++) {
    json_t *r = json_pack("{s:b, s:s, s:I, s:s}", "allow", 1, "type", "c", "major", (json_int_t)allowed[i].major,
                          "access", "rwm");
    if (allowed[i].minor >= 0)
      json_object_set_new(r, "minor", json_integer(allowed[i].minor));
    json_array_append_new(rules, r);
  }
  return rules;
}

json_t *sg_oci_seccomp_profile(void) {
  json_error_t jerr;
  json_t *p = json_loadb(sg_seccomp_default_json, sg_seccomp_default_json_len, 0, &jerr);
  if (!p) {
    /* Built in and checked by the unit tests: a broken one is a build defect. */
    sg_errlog("the built-in seccomp profile does not parse: line %d: %s", jerr.line, jerr.text);
    abort();
  }
  return p;
}

static json_t *mount_entry(const char *dst, const char *type, const char *src, const char *const *opts) {
  return json_pack("{s:s, s:s, s:s, s:o}", "destination", dst, "type", type, "source", src, "options", strings(opts));
}

json_t *sg_oci_config_new(const sg_oci_bundle_spec_t *b) {
  const sg_image_t *img = b->img;
  json_t *args = json_array();
  if (b->argv && b->argv[0]) {
    for (char *const *a = b->argv; *a; a++)
      json_array_append_new(args, json_string(*a));
  } else {
    for (char **a = img->entrypoint; a && *a; a++)
      json_array_append_new(args, json_string(*a));
    for (char **a = img->cmd; a && *a; a++)
      json_array_append_new(args, json_string(*a));
  }
  json_t *env = json_array();
  sg_json_env_set(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
  for (char **e = img->env; e && *e; e++)
    sg_json_env_set(env, *e);
  for (char *const *e = b->envp; e && *e; e++)
    sg_json_env_set(env, *e);
  json_t *caps = strings(default_caps);
  /* Raising a hard limit needs more than the container keeps: stay within ours. */
  struct rlimit nofile = {65536, 65536};
  getrlimit(RLIMIT_NOFILE, &nofile);
  json_t *process =
      json_pack("{s:b, s:{s:i, s:i}, s:o, s:o, s:s, s:{s:O, s:O, s:O}, s:b, s:[{s:s, s:i, s:i}]}", "terminal", 0,
                "user", "uid", 0, "gid", 0, "args", args, "env", env, "cwd", img->workdir ? img->workdir : "/",
                "capabilities", "bounding", caps, "effective", caps, "permitted", caps, "noNewPrivileges", 1, "rlimits",
                "type", "RLIMIT_NOFILE", "hard", (int)nofile.rlim_max, "soft", (int)nofile.rlim_max);
  json_decref(caps);
  json_t *mounts = json_array();
  json_array_append_new(mounts,
                        mount_entry("/proc", "proc", "proc", (const char *const[]){"nosuid", "noexec", "nodev", NULL}));
  json_array_append_new(mounts,
                        mount_entry("/dev", "tmpfs", "tmpfs",
                                    (const char *const[]){"nosuid", "strictatime", "mode=755", "size=65536k", NULL}));
  json_array_append_new(mounts, mount_entry("/dev/pts", "devpts", "devpts",
                                            (const char *const[]){"nosuid", "noexec", "newinstance", "ptmxmode=0666",
                                                                  "mode=0620", NULL}));
  json_array_append_new(
      mounts, mount_entry("/dev/shm", "tmpfs", "shm",
                          (const char *const[]){"nosuid", "noexec", "nodev", "mode=1777", "size=65536k", NULL}));
  json_array_append_new(
      mounts, mount_entry("/dev/mqueue", "mqueue", "mqueue", (const char *const[]){"nosuid", "noexec", "nodev", NULL}));
  if (b->userns)
    json_array_append_new(mounts, mount_entry("/sys", "bind", "/sys",
                                              (const char *const[]){"rbind", "nosuid", "noexec", "nodev", "ro", NULL}));
  else
    json_array_append_new(
        mounts, mount_entry("/sys", "sysfs", "sysfs", (const char *const[]){"nosuid", "noexec", "nodev", "ro", NULL}));
  /* Host network: the host's resolver and hosts files. */
  const char *const bind_ro[] = {"rbind", "ro", "nosuid", "nodev", NULL};
  if (access("/etc/resolv.conf", R_OK) == 0)
    json_array_append_new(mounts, mount_entry("/etc/resolv.conf", "bind", "/etc/resolv.conf", bind_ro));
  if (access("/etc/hosts", R_OK) == 0)
    json_array_append_new(mounts, mount_entry("/etc/hosts", "bind", "/etc/hosts", bind_ro));
  const char *const bind_rw[] = {"rbind", "rw", "nosuid", "nodev", NULL};
  for (int i = 0; i < b->n_volumes; i++)
    json_array_append_new(mounts, mount_entry(b->volumes[i].path, "bind", b->volumes[i].source,
                                              b->volumes[i].read_only ? bind_ro : bind_rw));
  json_t *linux_ =
      json_pack("{s:[{s:s}, {s:s}, {s:s}, {s:s}], s:[], s:{s:o}, s:o, s:o, s:o}", "namespaces", "type", "pid", "type",
                "ipc", "type", "uts", "type", "mount", "devices", "resources", "devices", device_rules(), "maskedPaths",
                strings(masked_paths), "readonlyPaths", strings(readonly_paths), "seccomp", sg_oci_seccomp_profile());
  if (b->userns) {
    json_array_append_new(json_object_get(linux_, "namespaces"), json_pack("{s:s}", "type", "user"));
    json_t *map = json_pack("[{s:i, s:I, s:I}]", "containerID", 0, "hostID", (json_int_t)SG_OCI_USERNS_BASE, "size",
                            (json_int_t)SG_OCI_USERNS_SIZE);
    json_object_set(linux_, "uidMappings", map);
    json_object_set_new(linux_, "gidMappings", map);
  }
  json_t *c = json_pack("{s:s, s:o, s:{s:s, s:b}, s:s, s:o, s:o, s:o}", "ociVersion", "1.0.2", "process", process,
                        "root", "path", b->rootfs, "readonly", 0, "hostname", b->id, "mounts", mounts, "linux", linux_,
                        "annotations", json_pack("{s:s, s:s}", "sgpu.worker", b->id, "sgpu.image", img->ref));
  return c;
}

/* Opens etc/NAME of the image root at rootfd as the container would see it:
 * symbolic links resolve inside that root (openat2 RESOLVE_IN_ROOT) or, where
 * the kernel has no openat2, are not followed at all. Never blocks (a FIFO is
 * opened non-blocking, then refused). A file descriptor, or -1 with errno. */
static int open_in_root(int rootfd, const char *name) {
  cleanup_free char *rel = xasprintf("etc/%s", name);
  struct open_how how = {.flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY,
                         .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV};
  int fd = (int)syscall(SYS_openat2, rootfd, rel, &how, sizeof(how));
  if (fd >= 0 || (errno != ENOSYS && errno != EPERM))
    return fd;
  cleanup_close int etc = openat(rootfd, "etc", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (etc < 0)
    return -1;
  return openat(etc, name, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | O_NOFOLLOW);
}

/* The first of roots (top first) holding etc/NAME, opened; NULL if none, or
 * when it is not a regular file of at most 4 MiB (a whiteout, a device, a
 * FIFO, a link out of the root). */
static FILE *open_etc(char *const *roots, const char *name) {
  for (char *const *r = roots; *r; r++) {
    cleanup_close int rootfd = open(*r, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0)
      return NULL;
    int fd = open_in_root(rootfd, name);
    if (fd < 0) {
      if (errno == ENOENT)
        continue;
      return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > (4 << 20)) {
      close(fd);
      errno = EINVAL;
      return NULL;
    }
    FILE *f = fdopen(fd, "r");
    if (!f)
      close(fd);
    return f;
  }
  return NULL;
}

/* A uid or gid field: 0..4294967294, else -1. */
static long id_value(const char *s) {
  char *end;
  errno = 0;
  long n = strtol(s, &end, 10);
  if (end == s || (*end && *end != ':' && *end != '\n') || errno || n < 0 || n > 4294967294l)
    return -1;
  return n;
}

/* Looks name up in the roots' /etc/passwd (or /etc/group when group). */
static long lookup_id(char *const *roots, const char *name, bool group) {
  if (*name && strspn(name, "0123456789") == strlen(name))
    return id_value(name);
  cleanup_fclose FILE *f = open_etc(roots, group ? "group" : "passwd");
  if (!f)
    return -1;
  char line[1024];
  size_t len = strlen(name);
  while (fgets(line, sizeof(line), f)) {
    if (!strncmp(line, name, len) && line[len] == ':') {
      char *p = strchr(line + len + 1, ':');
      if (p)
        return id_value(p + 1);
    }
  }
  return -1;
}

int sg_oci_resolve_user(json_t *c, char *const *roots, const char *user, sg_error_t **err) {
  if (!user || !*user)
    return 0;
  cleanup_free char *u = xstrdup(user);
  char *colon = strchr(u, ':');
  if (colon)
    *colon++ = '\0';
  long uid = lookup_id(roots, u, false);
  long gid = colon ? lookup_id(roots, colon, true) : 0;
  if (uid < 0 || gid < 0)
    return sg_make_error(err, EINVAL, "image user \"%s\" is not in the image's /etc/passwd or /etc/group", user);
  if (!colon) {
    /* The user's primary group. */
    cleanup_fclose FILE *f = open_etc(roots, "passwd");
    char line[1024];
    while (f && fgets(line, sizeof(line), f)) {
      char *fields[4] = {line};
      int nf = 1;
      for (char *p = line; *p && nf < 4; p++)
        if (*p == ':')
          *p = '\0', fields[nf++] = p + 1;
      if (nf == 4 && id_value(fields[2]) == uid) {
        gid = id_value(fields[3]);
        break;
      }
    }
    if (gid < 0)
      return sg_make_error(err, EINVAL, "image user \"%s\" has an invalid group id in the image's /etc/passwd", user);
  }
  json_t *ju = json_object_get(json_object_get(c, "process"), "user");
  json_object_set_new(ju, "uid", json_integer(uid));
  json_object_set_new(ju, "gid", json_integer(gid));
  return 0;
}
