#include "sgpu/util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p)
    abort();
  return p;
}

void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p)
    abort();
  return p;
}

void *xrealloc(void *p, size_t n) {
  p = realloc(p, n ? n : 1);
  if (!p)
    abort();
  return p;
}

char *xstrdup(const char *s) {
  char *p = strdup(s);
  if (!p)
    abort();
  return p;
}

char *xstrndup(const char *s, size_t n) {
  char *p = strndup(s, n);
  if (!p)
    abort();
  return p;
}

char *xasprintf(const char *fmt, ...) {
  va_list ap;
  char *s;
  va_start(ap, fmt);
  int r = vasprintf(&s, fmt, ap);
  va_end(ap);
  if (r < 0)
    abort();
  return s;
}

int64_t sg_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sg_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *sg_format_time(int64_t wall_ms, char *buf, size_t len) {
  time_t secs = (time_t)(wall_ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char base[24];
  strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf, len, "%s.%03dZ", base, (int)(wall_ms % 1000));
  return buf;
}

int64_t sg_parse_duration_ms(const char *s) {
  if (!s || !*s)
    return -1;
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || !(v >= 0 && v <= 1e12)) /* also refuses NaN */
    return -1;
  double mult;
  if (!*end || !strcmp(end, "s"))
    mult = 1000;
  else if (!strcmp(end, "ms"))
    mult = 1;
  else if (!strcmp(end, "m"))
    mult = 60000;
  else if (!strcmp(end, "h"))
    mult = 3600000;
  else if (!strcmp(end, "d"))
    mult = 86400000;
  else
    return -1;
  return (int64_t)(v * mult);
}

int sg_random_bytes(void *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = getrandom((char *)buf + got, n - got, 0);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    got += (size_t)r;
  }
  return 0;
}

char *sg_new_id(const char *prefix) {
  unsigned char raw[6];
  if (sg_random_bytes(raw, sizeof(raw)) < 0)
    abort();
  char hex[13];
  for (size_t i = 0; i < sizeof(raw); i++)
    snprintf(hex + 2 * i, 3, "%02x", raw[i]);
  return xasprintf("%s%s", prefix, hex);
}

int sg_write_file_atomic(const char *path, const char *data, size_t len, int mode) {
  cleanup_free char *tmp = xasprintf("%s.tmp.%d", path, (int)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0)
    return -errno;
  size_t off = 0;
  while (off < len) {
    ssize_t w = write(fd, data + off, len - off);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      int e = errno;
      close(fd);
      unlink(tmp);
      return -e;
    }
    off += (size_t)w;
  }
  if (fchmod(fd, (mode_t)mode) < 0 || fsync(fd) < 0) {
    int e = errno;
    close(fd);
    unlink(tmp);
    return -e;
  }
  close(fd);
  if (rename(tmp, path) < 0) {
    int e = errno;
    unlink(tmp);
    return -e;
  }
  return 0;
}

char *sg_read_file(const char *path, size_t max, size_t *len_out) {
  cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return NULL;
  size_t cap = 4096, len = 0;
  char *buf = xmalloc(cap);
  for (;;) {
    if (len + 1 >= cap) {
      cap *= 2;
      buf = xrealloc(buf, cap);
    }
    ssize_t r = read(fd, buf + len, cap - len - 1);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      free(buf);
      return NULL;
    }
    if (r == 0)
      break;
    len += (size_t)r;
    if (len >= max) {
      free(buf);
      errno = EFBIG;
      return NULL;
    }
  }
  buf[len] = '\0';
  if (len_out)
    *len_out = len;
  return buf;
}

/* mkdir that accepts an existing directory, and only a directory. */
static int make_dir(const char *path, mode_t mode) {
  if (mkdir(path, mode) == 0)
    return 0;
  if (errno != EEXIST)
    return -errno;
  struct stat st;
  if (stat(path, &st) < 0)
    return -errno;
  return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

int sg_mkdir_p(const char *dir, int mode) {
  cleanup_free char *p = xstrdup(dir);
  for (char *s = p + 1; *s; s++) {
    if (*s != '/')
      continue;
    *s = '\0';
    int r = make_dir(p, 0755);
    if (r < 0)
      return r;
    *s = '/';
  }
  return make_dir(p, (mode_t)mode);
}

bool sg_str_has_prefix(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

char *sg_str_trim(char *s) {
  while (isspace((unsigned char)*s))
    s++;
  size_t n = strlen(s);
  while (n > 0 && isspace((unsigned char)s[n - 1]))
    s[--n] = '\0';
  return s;
}

int sg_write_all(int fd, const void *buf, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, buf, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      return -1;
    if (w == 0) {
      errno = EIO;
      return -1;
    }
    buf = (const char *)buf + w;
    n -= (size_t)w;
  }
  return 0;
}

size_t sg_strv_len(char *const *v) {
  size_t n = 0;
  while (v && v[n])
    n++;
  return n;
}

void sg_strv_free(char **v) {
  for (char **p = v; p && *p; p++)
    free(*p);
  free(v);
}

char **sg_strv_dup(char *const *v) {
  size_t n = sg_strv_len(v);
  char **c = xcalloc(n + 1, sizeof(char *));
  for (size_t i = 0; i < n; i++)
    c[i] = xstrdup(v[i]);
  return c;
}

char *sg_strbuf_reserve(sg_strbuf_t *b, size_t extra) {
  if (extra >= SIZE_MAX - b->len)
    abort();
  size_t need = b->len + extra + 1;
  if (need > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
      cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    b->s = xrealloc(b->s, cap);
    b->cap = cap;
  }
  return b->s + b->len;
}

void sg_strbuf_append_n(sg_strbuf_t *b, const char *s, size_t n) {
  char *o = sg_strbuf_reserve(b, n);
  memcpy(o, s, n);
  b->len += n;
  b->s[b->len] = '\0';
}

void sg_strbuf_append(sg_strbuf_t *b, const char *s) { sg_strbuf_append_n(b, s, strlen(s)); }

void sg_strbuf_appendf(sg_strbuf_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0)
    abort();
  char *o = sg_strbuf_reserve(b, (size_t)n);
  va_start(ap, fmt);
  vsnprintf(o, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

char *sg_strbuf_steal(sg_strbuf_t *b) {
  char *s = b->s ? b->s : xstrdup("");
  b->s = NULL;
  b->len = b->cap = 0;
  return s;
}

void sg_strbuf_free(sg_strbuf_t *b) {
  free(b->s);
  b->s = NULL;
  b->len = b->cap = 0;
}

static pthread_t loop_thread;
static bool loop_thread_known;

void sg_loop_thread_set(void) {
  loop_thread = pthread_self();
  __atomic_store_n(&loop_thread_known, true, __ATOMIC_RELEASE);
}

bool sg_on_loop_thread(void) {
  return __atomic_load_n(&loop_thread_known, __ATOMIC_ACQUIRE) && pthread_equal(loop_thread, pthread_self());
}

#ifndef NDEBUG
void sg_assert_not_loop_thread_at(const char *func) {
  if (sg_on_loop_thread()) {
    fprintf(stderr, "sgpu: %s must not run on the event loop thread\n", func);
    abort();
  }
}
#endif
