/* A worker that tries, from inside its container, what a hostile image
 * would: device nodes, host devices, mounts, ptrace, namespaces, writes to
 * masked and read-only paths, privileged system calls. It then serves what
 * happened as JSON on every request to $PORT (so /health answers too):
 *
 *   {"attempts": {"NAME": {"ok": BOOL, "errno": N, "detail": "..."}},
 *    "controls": {...same shape...}, "uid": N, "cap_eff": "HEX", "seccomp": "N"}
 *
 * "attempts" must all fail; "controls" are harmless operations that must
 * succeed, so that a probe that cannot do anything does not pass. Every
 * attempt is chosen to be harmless should it succeed: devices are opened
 * read-only and never used, values written back are the values read.
 *
 * Built static (tests/integration/oci-image.sh), no libc beyond glibc. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char out[65536];
static size_t outlen;
static int n_in_section;

static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emit(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(out + outlen, sizeof(out) - outlen, fmt, ap);
  va_end(ap);
  if (n > 0 && (size_t)n < sizeof(out) - outlen)
    outlen += (size_t)n;
}

static void section(const char *name) {
  emit("%s\"%s\": {", outlen > 1 ? "}, " : "", name);
  n_in_section = 0;
}

/* Records one result: ok is whether the operation succeeded; e its errno. */
static void record(const char *name, int ok, int e, const char *detail) {
  emit("%s\"%s\": {\"ok\": %s, \"errno\": %d, \"detail\": \"%s\"}", n_in_section++ ? ", " : "", name,
       ok ? "true" : "false", ok ? 0 : e, detail ? detail : (ok ? "" : strerror(e)));
}

static void check_rc(const char *name, long rc) { record(name, rc >= 0, errno, NULL); }

/* mknod then open (read-only) of a device node at path. */
static void try_node(const char *name, const char *path, mode_t type, unsigned maj, unsigned min) {
  char n1[96], n2[96];
  snprintf(n1, sizeof(n1), "mknod %s", name);
  snprintf(n2, sizeof(n2), "open new node %s", name);
  unlink(path);
  int r = mknod(path, type | 0600, makedev(maj, min));
  record(n1, r == 0, errno, NULL);
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  record(n2, fd >= 0, errno, NULL);
  if (fd >= 0)
    close(fd);
  unlink(path);
}

static void try_open(const char *name, const char *path, int flags) {
  int fd = open(path, flags | O_CLOEXEC | O_NONBLOCK);
  record(name, fd >= 0, errno, NULL);
  if (fd >= 0)
    close(fd);
}

/* Reads path and writes back what it read: harmless if it is allowed. */
static void try_rewrite(const char *name, const char *path) {
  char buf[256] = "";
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
  if (fd >= 0)
    close(fd);
  if (n <= 0) {
    record(name, 0, fd < 0 ? errno : EIO, "cannot read the current value");
    return;
  }
  fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    record(name, 0, errno, NULL);
    return;
  }
  ssize_t w = write(fd, buf, (size_t)n);
  record(name, w >= 0, errno, NULL);
  close(fd);
}

/* A masked file reads as empty (or cannot be opened at all). */
static void try_read_masked(const char *name, const char *path) {
  char buf[64];
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    record(name, 0, errno, NULL);
    return;
  }
  ssize_t n = read(fd, buf, sizeof(buf));
  int e = errno;
  close(fd);
  record(name, n > 0, n < 0 ? e : ENODATA, n > 0 ? "read host data" : NULL);
}

/* Creating a file in a masked directory. */
static void try_create_in(const char *name, const char *dir) {
  char path[256];
  snprintf(path, sizeof(path), "%s/sgpu-probe", dir);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  record(name, fd >= 0, errno, NULL);
  if (fd >= 0) {
    close(fd);
    unlink(path);
  }
}

static void try_ptrace(void) {
  pid_t child = fork();
  if (child == 0) {
    pause();
    _exit(0);
  }
  long r = ptrace(PTRACE_ATTACH, child, NULL, NULL);
  record("ptrace attach (own child)", r == 0, errno, NULL);
  if (r == 0)
    ptrace(PTRACE_DETACH, child, NULL, NULL);
  r = ptrace(PTRACE_ATTACH, 1, NULL, NULL);
  record("ptrace attach pid 1", r == 0, errno, NULL);
  char buf[8];
  struct iovec local = {buf, sizeof(buf)}, remote = {(void *)&try_ptrace, sizeof(buf)};
  ssize_t n = process_vm_readv(child, &local, 1, &remote, 1, 0);
  record("process_vm_readv (own child)", n >= 0, errno, NULL);
  kill(child, SIGKILL);
  waitpid(child, NULL, 0);
}

static void try_clone_ns(const char *name, int flags) {
  /* A raw clone with namespace flags; the child exits at once. */
  long pid = syscall(SYS_clone, (long)(flags | SIGCHLD), 0L, 0L, 0L, 0L);
  if (pid == 0)
    _exit(0);
  record(name, pid > 0, errno, NULL);
  if (pid > 0)
    waitpid((pid_t)pid, NULL, 0);
}

/* unshare(flags) (setns into its own network namespace when flags is 0) in
 * a child, so that the probe stays reachable whatever happens. */
static void try_unshare(const char *name, int flags) {
  pid_t pid = fork();
  if (pid == 0) {
    int r;
    if (flags) {
      r = unshare(flags);
    } else {
      int fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
      r = fd >= 0 ? setns(fd, 0) : -1;
    }
    _exit(r == 0 ? 0 : errno > 0 && errno < 256 ? errno : 255);
  }
  int st = 0;
  if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st)) {
    record(name, 0, EIO, "the child did not report");
    return;
  }
  record(name, WEXITSTATUS(st) == 0, WEXITSTATUS(st), NULL);
}

static void probe(void) {
  emit("{\"attempts\": {");
  n_in_section = 0;
  /* Device nodes: where the root is nodev (the image's root, /dev/shm) and
   * where it is not (/dev, a tmpfs that holds the standard nodes). */
  mkdir("/tmp", 01777);
  try_node("loop0 b7:0 in /tmp", "/tmp/loop0", S_IFBLK, 7, 0);
  try_node("loop0 b7:0 in /dev", "/dev/sgpu-loop0", S_IFBLK, 7, 0);
  try_node("zram0 b252:0 in /dev", "/dev/sgpu-zram0", S_IFBLK, 252, 0);
  try_node("tun c10:200 in /dev", "/dev/sgpu-tun", S_IFCHR, 10, 200);
  try_node("mem c1:1 in /dev/shm", "/dev/shm/sgpu-mem", S_IFCHR, 1, 1);
  try_node("sda b8:0 in /dev", "/dev/sgpu-sda", S_IFBLK, 8, 0);
  long r = syscall(SYS_mknodat, AT_FDCWD, "/dev/sgpu-kmsg", (long)(S_IFCHR | 0600), (long)makedev(1, 11));
  record("mknodat kmsg c1:11 in /dev", r == 0, errno, NULL);
  unlink("/dev/sgpu-kmsg");
  /* Host device paths. */
  try_open("open /dev/loop0", "/dev/loop0", O_RDONLY);
  try_open("open /dev/zram0", "/dev/zram0", O_RDONLY);
  try_open("open /dev/net/tun", "/dev/net/tun", O_RDWR);
  try_open("open /dev/sda", "/dev/sda", O_RDONLY);
  try_open("open /dev/mem", "/dev/mem", O_RDONLY);
  try_open("open /dev/kmsg", "/dev/kmsg", O_RDONLY);
  try_open("open /dev/nvidia0", "/dev/nvidia0", O_RDONLY);
  /* Mounts. */
  mkdir("/tmp/mnt", 0700);
  check_rc("mount tmpfs", mount("tmpfs", "/tmp/mnt", "tmpfs", 0, NULL));
  check_rc("mount proc", mount("proc", "/tmp/mnt", "proc", 0, NULL));
  check_rc("remount / rw,dev", mount(NULL, "/", NULL, MS_REMOUNT, NULL));
  check_rc("bind /dev into /tmp", mount("/dev", "/tmp/mnt", NULL, MS_BIND, NULL));
  check_rc("umount /proc/kcore", umount2("/proc/kcore", MNT_DETACH));
  check_rc("umount /sys", umount2("/sys", MNT_DETACH));
  /* ptrace. */
  try_ptrace();
  /* Namespaces. */
  try_unshare("unshare user", CLONE_NEWUSER);
  try_unshare("unshare mount", CLONE_NEWNS);
  try_unshare("unshare net", CLONE_NEWNET);
  try_clone_ns("clone newuser", CLONE_NEWUSER);
  try_clone_ns("clone newns", CLONE_NEWNS);
  try_unshare("setns own net", 0);
  /* Masked and read-only paths. */
  /* Write-only: opening it for writing is the test (nothing is written). */
  try_open("open /proc/sysrq-trigger for writing", "/proc/sysrq-trigger", O_WRONLY);
  try_rewrite("write /proc/sys/kernel/printk_ratelimit", "/proc/sys/kernel/printk_ratelimit");
  try_rewrite("write /proc/sys/vm/overcommit_memory", "/proc/sys/vm/overcommit_memory");
  try_rewrite("write /sys/kernel/mm/transparent_hugepage/enabled", "/sys/kernel/mm/transparent_hugepage/enabled");
  try_read_masked("read /proc/kcore", "/proc/kcore");
  try_read_masked("read /proc/keys", "/proc/keys");
  try_read_masked("read /proc/timer_list", "/proc/timer_list");
  try_read_masked("read /proc/sched_debug", "/proc/sched_debug");
  try_create_in("create in /sys/firmware", "/sys/firmware");
  try_create_in("create in /proc/acpi", "/proc/acpi");
  /* Privileged system calls. */
  check_rc("kexec_load", syscall(SYS_kexec_load, 0L, 0L, 0L, 0L));
  check_rc("init_module", syscall(SYS_init_module, NULL, 0L, ""));
  check_rc("finit_module", syscall(SYS_finit_module, -1, "", 0));
  check_rc("delete_module", syscall(SYS_delete_module, "sgpu_none", O_NONBLOCK));
  check_rc("bpf", syscall(SYS_bpf, 0 /* BPF_MAP_CREATE */, NULL, 0));
  struct perf_event_attr pa = {.type = PERF_TYPE_SOFTWARE, .size = sizeof(pa), .config = PERF_COUNT_SW_CPU_CLOCK};
  long pfd = syscall(SYS_perf_event_open, &pa, 0, -1, -1, 0);
  check_rc("perf_event_open", pfd);
  if (pfd >= 0)
    close((int)pfd);
  check_rc("keyctl", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0));
  check_rc("add_key", syscall(SYS_add_key, "user", "sgpu-probe", "x", 1L, KEY_SPEC_PROCESS_KEYRING));
  check_rc("userfaultfd", syscall(SYS_userfaultfd, O_CLOEXEC));
  check_rc("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, NULL, O_RDONLY));
  check_rc("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/", NULL, NULL, 0));
  check_rc("reboot (bad magic)", syscall(SYS_reboot, 0L, 0L, 0L, NULL));
  check_rc("swapoff", swapoff("/sgpu-no-such-swap"));
  check_rc("acct", syscall(SYS_acct, NULL));
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  check_rc("clock_settime (to now)", clock_settime(CLOCK_REALTIME, &now));
  check_rc("personality ADDR_NO_RANDOMIZE", personality(ADDR_NO_RANDOMIZE) == -1 ? -1 : 0);
  check_rc("io_uring_setup", syscall(SYS_io_uring_setup, 1, NULL));
  int raw = socket(AF_PACKET, SOCK_RAW, htons(3 /* ETH_P_ALL */));
  check_rc("socket AF_PACKET raw", raw);
  if (raw >= 0)
    close(raw);
  check_rc("sethostname", sethostname("sgpu-probe", 10));
  check_rc("chroot + mknod escape",
           chroot("/") == 0 && mknod("/dev/sgpu-x", S_IFCHR | 0600, makedev(1, 1)) == 0 ? 0 : -1);
  unlink("/dev/sgpu-x");

  section("controls");
  int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  record("open /dev/null", fd >= 0 && write(fd, "x", 1) == 1, errno, NULL);
  if (fd >= 0)
    close(fd);
  fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  char b[4];
  record("read /dev/urandom", fd >= 0 && read(fd, b, sizeof(b)) == 4, errno, NULL);
  if (fd >= 0)
    close(fd);
  unlink("/tmp/sgpu-fifo");
  check_rc("mkfifo in /tmp", mkfifo("/tmp/sgpu-fifo", 0600));
  unlink("/tmp/sgpu-fifo");
  check_rc("mknod regular file", mknod("/tmp/sgpu-reg", S_IFREG | 0600, 0));
  unlink("/tmp/sgpu-reg");
  fd = open("/tmp/sgpu-file", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  record("write a file in /tmp", fd >= 0 && write(fd, "x", 1) == 1, errno, NULL);
  if (fd >= 0)
    close(fd);
  check_rc("chown a file", chown("/tmp/sgpu-file", 1, 1));
  unlink("/tmp/sgpu-file");
  pid_t child = fork();
  if (child == 0)
    _exit(0);
  record("fork", child > 0 && waitpid(child, NULL, 0) == child, errno, NULL);
  check_rc("personality query", personality(0xffffffff));

  /* The process's own view. */
  char status[4096] = "", cap[32] = "", sec[8] = "";
  fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ssize_t n = read(fd, status, sizeof(status) - 1);
    if (n > 0)
      status[n] = '\0';
    close(fd);
  }
  char *p = strstr(status, "CapEff:\t");
  if (p)
    sscanf(p + 8, "%31s", cap);
  p = strstr(status, "Seccomp:\t");
  if (p)
    sscanf(p + 9, "%7s", sec);
  emit("}, \"uid\": %d, \"cap_eff\": \"%s\", \"seccomp\": \"%s\"}", (int)getuid(), cap, sec);
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  const char *port = getenv("PORT");
  if (argc > 1 && !strcmp(argv[1], "--version")) {
    puts("isolation-probe");
    return 0;
  }
  probe();
  if (argc > 1 && !strcmp(argv[1], "--print")) {
    puts(out);
    return 0;
  }
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((unsigned short)atoi(port ? port : "8080")),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(s, 16) < 0) {
    perror("isolation-probe: listen");
    return 1;
  }
  printf("isolation-probe: listening on %s\n", port ? port : "8080");
  fflush(stdout);
  for (;;) {
    int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
      continue;
    char req[4096];
    ssize_t n = read(c, req, sizeof(req));
    (void)n;
    char head[128];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n\r\n",
                      outlen);
    if (write(c, head, (size_t)hl) == hl && write(c, out, outlen) == (ssize_t)outlen)
      shutdown(c, SHUT_WR);
    close(c);
  }
}
