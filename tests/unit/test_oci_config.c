/* The container config (config.json) a worker's image runs with: at least as
 * strict as Docker's defaults whatever the cgroup layout enforces. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "runtime/oci-internal.h"
#include "sgpu/util.h"

static json_t *config(void) {
  char *env[] = {"A=1", NULL};
  sg_image_t img = {.ref = "example.com/x:latest", .env = env};
  sg_oci_bundle_spec_t b = {.id = "w-test", .img = &img, .rootfs = "rootfs"};
  return sg_oci_config_new(&b);
}

static bool has_string(json_t *arr, const char *s) {
  size_t i;
  json_t *v;
  json_array_foreach(arr, i, v) {
    if (json_is_string(v) && !strcmp(json_string_value(v), s))
      return true;
  }
  return false;
}

static void test_capabilities(void **state) {
  json_t *c = config();
  json_t *caps = json_object_get(json_object_get(c, "process"), "capabilities");
  const char *sets[] = {"bounding", "effective", "permitted"};
  for (size_t i = 0; i < 3; i++) {
    json_t *set = json_object_get(caps, sets[i]);
    assert_true(json_is_array(set));
    assert_true(has_string(set, "CAP_CHOWN"));
    for (const char *const *bad = (const char *const[]){"CAP_MKNOD", "CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE",
                                                        "CAP_SYS_MODULE", "CAP_NET_ADMIN", NULL};
         *bad; bad++)
      if (has_string(set, *bad))
        fail_msg("%s in the %s set", *bad, sets[i]);
  }
  assert_true(json_is_true(json_object_get(json_object_get(c, "process"), "noNewPrivileges")));
  json_decref(c);
}

/* The names a profile allows without conditions on their arguments. */
static bool allows(json_t *profile, const char *name, bool *conditional) {
  size_t i;
  json_t *rule;
  json_array_foreach(json_object_get(profile, "syscalls"), i, rule) {
    if (strcmp(json_string_value(json_object_get(rule, "action")), "SCMP_ACT_ALLOW") ||
        !has_string(json_object_get(rule, "names"), name))
      continue;
    if (json_array_size(json_object_get(rule, "args")) == 0)
      return true;
    *conditional = true;
  }
  return false;
}

static void test_seccomp(void **state) {
  json_t *c = config();
  json_t *p = json_object_get(json_object_get(c, "linux"), "seccomp");
  assert_non_null(p);
  assert_string_equal(json_string_value(json_object_get(p, "defaultAction")), "SCMP_ACT_ERRNO");
  bool cond = false;
  for (const char *const *ok = (const char *const[]){"read", "write", "openat", "mmap", "futex", "execve", "socket",
                                                     "accept4", "epoll_wait", "exit_group", NULL};
       *ok; ok++) {
    cond = false;
    if (!allows(p, *ok, &cond) && !cond)
      fail_msg("%s is not allowed", *ok);
  }
  for (const char *const *bad = (const char *const[]){"mount",
                                                      "umount2",
                                                      "ptrace",
                                                      "kexec_load",
                                                      "kexec_file_load",
                                                      "init_module",
                                                      "finit_module",
                                                      "delete_module",
                                                      "bpf",
                                                      "perf_event_open",
                                                      "keyctl",
                                                      "add_key",
                                                      "request_key",
                                                      "open_by_handle_at",
                                                      "reboot",
                                                      "swapon",
                                                      "swapoff",
                                                      "setns",
                                                      "unshare",
                                                      "userfaultfd",
                                                      "acct",
                                                      "quotactl",
                                                      "settimeofday",
                                                      "clock_settime",
                                                      "pivot_root",
                                                      "process_vm_writev",
                                                      "io_uring_setup",
                                                      "syslog",
                                                      "iopl",
                                                      "ioperm",
                                                      NULL};
       *bad; bad++) {
    cond = false;
    if (allows(p, *bad, &cond) || cond)
      fail_msg("%s is allowed", *bad);
  }
  /* mknod, clone and personality only with safe arguments. */
  const char *conditional[] = {"mknod", "mknodat", "clone", "personality"};
  for (size_t i = 0; i < 4; i++) {
    cond = false;
    assert_false(allows(p, conditional[i], &cond));
    assert_true(cond);
  }
  json_decref(c);
}

static void test_paths_mounts_devices(void **state) {
  json_t *c = config();
  json_t *lx = json_object_get(c, "linux");
  json_t *masked = json_object_get(lx, "maskedPaths"), *ro = json_object_get(lx, "readonlyPaths");
  for (const char *const *m =
           (const char *const[]){"/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                                 "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                                 "/sys/devices/virtual/powercap", NULL};
       *m; m++)
    if (!has_string(masked, *m))
      fail_msg("%s is not masked", *m);
  for (const char *const *r =
           (const char *const[]){"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger", NULL};
       *r; r++)
    if (!has_string(ro, *r))
      fail_msg("%s is not read-only", *r);
  /* Every mount but /dev (which holds the standard nodes) is nodev and nosuid. */
  size_t i;
  json_t *m;
  json_array_foreach(json_object_get(c, "mounts"), i, m) {
    const char *dst = json_string_value(json_object_get(m, "destination"));
    json_t *opts = json_object_get(m, "options");
    if (!has_string(opts, "nosuid"))
      fail_msg("%s is not nosuid", dst);
    if (strcmp(dst, "/dev") && strcmp(dst, "/dev/pts") && !has_string(opts, "nodev"))
      fail_msg("%s is not nodev", dst);
  }
  /* No device nodes of the host; the device cgroup denies all but the standard set. */
  assert_int_equal(json_array_size(json_object_get(lx, "devices")), 0);
  json_t *rules = json_object_get(json_object_get(lx, "resources"), "devices");
  json_t *first = json_array_get(rules, 0);
  assert_true(json_is_false(json_object_get(first, "allow")));
  assert_null(json_object_get(first, "type"));
  assert_string_equal(json_string_value(json_object_get(first, "access")), "rwm");
  json_array_foreach(rules, i, m) {
    if (i == 0)
      continue;
    assert_string_equal(json_string_value(json_object_get(m, "type")), "c");
    json_int_t major = json_integer_value(json_object_get(m, "major"));
    assert_true(major == 1 || major == 5 || major == 136);
  }
  /* The host's network, pid/ipc/uts/mount namespaces of its own. */
  const char *want[] = {"pid", "ipc", "uts", "mount"};
  for (size_t k = 0; k < 4; k++) {
    bool found = false;
    json_array_foreach(json_object_get(lx, "namespaces"), i, m) {
      found |= !strcmp(json_string_value(json_object_get(m, "type")), want[k]);
    }
    if (!found)
      fail_msg("no %s namespace", want[k]);
  }
  json_decref(c);
}

static void test_user_namespace(void **state) {
  char *env[] = {NULL};
  sg_image_t img = {.ref = "example.com/x:latest", .env = env};
  sg_oci_bundle_spec_t b = {.id = "w-test", .img = &img, .rootfs = "rootfs", .userns = true};
  json_t *c = sg_oci_config_new(&b);
  json_t *lx = json_object_get(c, "linux");
  bool user = false;
  size_t i;
  json_t *m;
  json_array_foreach(json_object_get(lx, "namespaces"), i, m) {
    user |= !strcmp(json_string_value(json_object_get(m, "type")), "user");
  }
  assert_true(user);
  const char *maps[] = {"uidMappings", "gidMappings"};
  for (int k = 0; k < 2; k++) {
    json_t *map = json_array_get(json_object_get(lx, maps[k]), 0);
    assert_int_equal(json_integer_value(json_object_get(map, "containerID")), 0);
    assert_int_equal(json_integer_value(json_object_get(map, "hostID")), SG_OCI_USERNS_BASE);
    assert_int_equal(json_integer_value(json_object_get(map, "size")), SG_OCI_USERNS_SIZE);
  }
  /* sysfs cannot be mounted without a network namespace of its own: bound, read-only. */
  json_array_foreach(json_object_get(c, "mounts"), i, m) {
    if (!strcmp(json_string_value(json_object_get(m, "destination")), "/sys")) {
      assert_string_equal(json_string_value(json_object_get(m, "type")), "bind");
      assert_true(has_string(json_object_get(m, "options"), "ro"));
      assert_true(has_string(json_object_get(m, "options"), "nodev"));
    }
  }
  assert_non_null(json_object_get(lx, "seccomp"));
  json_decref(c);
  /* Without: none of it. */
  c = config();
  assert_null(json_object_get(json_object_get(c, "linux"), "uidMappings"));
  json_decref(c);
}

/* Writes path (under dir) with text. */
/* Volumes are bind mounts after the standard ones: nosuid, nodev, ro or rw. */
static void test_volume_mounts(void **state) {
  (void)state;
  sg_image_t img = {.ref = "x"};
  const sg_launch_volume_t vols[] = {{"/data/volumes/hf", "/root/.cache/huggingface", false},
                                     {"/srv/models", "/models", true}};
  sg_oci_bundle_spec_t b = {.id = "w-test", .img = &img, .rootfs = "rootfs", .volumes = vols, .n_volumes = 2};
  json_t *c = sg_oci_config_new(&b);
  json_t *mounts = json_object_get(c, "mounts");
  size_t n = json_array_size(mounts);
  assert_true(n >= 2);
  for (size_t k = 0; k < 2; k++) {
    json_t *m = json_array_get(mounts, n - 2 + k);
    assert_string_equal(json_string_value(json_object_get(m, "destination")), vols[k].path);
    assert_string_equal(json_string_value(json_object_get(m, "source")), vols[k].source);
    assert_string_equal(json_string_value(json_object_get(m, "type")), "bind");
    json_t *opts = json_object_get(m, "options");
    assert_true(has_string(opts, "nosuid") && has_string(opts, "nodev") && has_string(opts, "rbind"));
    assert_true(has_string(opts, k ? "ro" : "rw"));
    assert_false(has_string(opts, k ? "rw" : "ro"));
  }
  json_decref(c);
}

static void put(const char *dir, const char *name, const char *text) {
  char *path = xasprintf("%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
  free(path);
}

static long user_field(json_t *c, const char *key) {
  return (long)json_integer_value(json_object_get(json_object_get(json_object_get(c, "process"), "user"), key));
}

/* The image's user is looked up in its own /etc, whatever its files point at. */
static void test_user_lookup_stays_in_the_image(void **state) {
  char tmpl[] = "/tmp/sgpu-oci-user-XXXXXX";
  assert_non_null(mkdtemp(tmpl));
  char *root = xasprintf("%s/root", tmpl), *etc = xasprintf("%s/root/etc", tmpl);
  assert_int_equal(mkdir(root, 0755), 0);
  assert_int_equal(mkdir(etc, 0755), 0);
  /* A host file the image's passwd points at, by absolute and by relative link. */
  put(tmpl, "host-passwd", "evil:x:4242:4343::/:/bin/sh\n");
  char *abs_target = xasprintf("%s/host-passwd", tmpl);
  char *link = xasprintf("%s/passwd", etc);
  assert_int_equal(symlink(abs_target, link), 0);
  char *roots[] = {root, NULL};
  json_t *c = config();
  sg_error_t *err = NULL;
  assert_true(sg_oci_resolve_user(c, roots, "evil", &err) < 0);
  sg_error_free(err);
  err = NULL;
  unlink(link);
  assert_int_equal(symlink("../../host-passwd", link), 0);
  assert_true(sg_oci_resolve_user(c, roots, "evil", &err) < 0);
  sg_error_free(err);
  err = NULL;
  /* A FIFO as group file: refused at once, never waited on. */
  char *fifo = xasprintf("%s/group", etc);
  assert_int_equal(mkfifo(fifo, 0644), 0);
  unlink(link);
  put(etc, "passwd", "app:x:1000:1000::/home/app:/bin/sh\nbig:x:99999999999:1::/:/bin/sh\n");
  assert_true(sg_oci_resolve_user(c, roots, "app:app", &err) < 0);
  sg_error_free(err);
  err = NULL;
  /* Ids out of range are refused; a link inside the image is followed within it. */
  assert_true(sg_oci_resolve_user(c, roots, "big", &err) < 0);
  sg_error_free(err);
  err = NULL;
  assert_true(sg_oci_resolve_user(c, roots, "4294967296", &err) < 0);
  sg_error_free(err);
  err = NULL;
  assert_int_equal(sg_oci_resolve_user(c, roots, "app", &err), 0);
  assert_int_equal(user_field(c, "uid"), 1000);
  assert_int_equal(user_field(c, "gid"), 1000);
  unlink(link);
  put(etc, "passwd.real", "app:x:1001:1002::/home/app:/bin/sh\n");
  assert_int_equal(symlink("/etc/passwd.real", link), 0);
  assert_int_equal(sg_oci_resolve_user(c, roots, "app", &err), 0);
  assert_int_equal(user_field(c, "uid"), 1001);
  assert_int_equal(user_field(c, "gid"), 1002);
  json_decref(c);
  assert_int_equal(sg_rm_rf(tmpl), 0);
  free(fifo);
  free(link);
  free(abs_target);
  free(etc);
  free(root);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_capabilities),         cmocka_unit_test(test_seccomp),
      cmocka_unit_test(test_paths_mounts_devices), cmocka_unit_test(test_user_namespace),
      cmocka_unit_test(test_volume_mounts),        cmocka_unit_test(test_user_lookup_stays_in_the_image),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
