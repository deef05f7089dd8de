/*
 * echo-worker: a sample sgpu worker and a test fixture.
 *
 * A small HTTP/1.1 server that links nothing but libc and pthreads, so it can
 * be built static and dropped into an image. One thread per connection.
 *
 *   GET  /health             503 during warm-up or while --health-fail-file exists, else 200
 *   POST /infer              waits the compute delay, answers JSON echoing the body
 *   POST /infer?stream=1     server-sent events, one per token, chunked
 *   GET  /stream?n=&interval_ms=
 *   ANY  /status/NNN         answers with status NNN
 *   ANY  /crash              the process exits with status 3 at once
 *   GET  /env                PORT, CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES, MODEL
 *   GET  /stats              connections accepted since start and open now
 *   POST /run                an async job {"id", "input"} (sgpu's push dispatch): answers
 *                            {"output": ...}. Input fields steer it: "sleep_ms" waits first,
 *                            "fail" answers {"error": <its value>}, "crash" exits the process
 *                            (status 3) without answering, "status" answers that HTTP status,
 *                            "stream" answers that many NDJSON lines {"output": "tok-i"}
 *                            ("interval_ms" apart), "output" is the output as given; else the
 *                            output echoes {"id", "input", "worker_pid"}. With JOBS_RECORD_FILE
 *                            set, the id of every job answered with an output is appended to
 *                            that file (one line "ID PID MS_SINCE_EPOCH") before the answer.
 *   ANY  /close-listener     stops accepting (new connections are refused) and closes
 *                            every connection after its current answer; the process
 *                            keeps running: a worker that vanished from the network
 *   ANY  anything else       echoes method, path, query, headers and body size as JSON
 *
 * Every request is logged to stdout as "METHOD TARGET STATUS DURATIONms".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADER_BYTES (64 * 1024)
#define MAX_HEADERS 1000
#define MAX_BODY_BYTES ((size_t)64 * 1024 * 1024)
#define MAX_DELAY_MS 600000L
#define MAX_STREAM_TOKENS 1000000L
#define MAX_CHUNK_LINE 4096
#define MAX_CONNS 8192
#define MAX_JSON_DEPTH 128
#define IO_TIMEOUT_S 300
#define THREAD_STACK_BYTES (256 * 1024)
#define IN_CAP (MAX_HEADER_BYTES + 4096)

struct config {
  char host[64];
  long port;
  long warmup_ms;
  long delay_ms;
  const char *health_fail_file;
};

static struct config cfg = {.host = "127.0.0.1", .port = 8000};
static int bound_port;
static struct timespec start_time;
static atomic_int active_conns;
static atomic_ulong accepted_conns;  /* connections accepted since start */
static atomic_bool refusing;         /* /close-listener was called */
static int listen_fd = -1;
static uint32_t crc_table[256];

/* ---- small helpers ---------------------------------------------------- */

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) {
    fputs("echo-worker: out of memory\n", stderr);
    abort();
  }
  return q;
}

static char *xstrdup(const char *s) {
  size_t n = strlen(s) + 1;
  return memcpy(xrealloc(NULL, n), s, n);
}

static double elapsed_ms(const struct timespec *since) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)(now.tv_sec - since->tv_sec) * 1e3 + (double)(now.tv_nsec - since->tv_nsec) / 1e6;
}

static void sleep_ms(long ms) {
  if (ms <= 0)
    return;
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

/* Parses a whole decimal string into [min, max]. Returns 0, or -1 when the
 * text is not a number or out of range. */
static int parse_long(const char *s, size_t n, long min, long max, long *out) {
  if (n == 0 || n > 19)
    return -1;
  long v = 0;
  size_t i = 0;
  bool neg = false;
  if (s[0] == '-') {
    neg = true;
    i = 1;
    if (n == 1)
      return -1;
  }
  for (; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return -1;
    if (v > (LONG_MAX - (s[i] - '0')) / 10)
      return -1;
    v = v * 10 + (s[i] - '0');
  }
  if (neg)
    v = -v;
  if (v < min || v > max)
    return -1;
  *out = v;
  return 0;
}

static void crc32_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++)
      c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    crc_table[i] = c;
  }
}

static uint32_t crc32_of(const char *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++)
    c = crc_table[(c ^ (unsigned char)p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

/* ---- growable buffer ---------------------------------------------------- */

struct buf {
  char *p;
  size_t len, cap;
};

static void buf_reserve(struct buf *b, size_t extra) {
  if (b->len + extra + 1 <= b->cap)
    return;
  size_t n = b->cap ? b->cap : 512;
  while (n < b->len + extra + 1)
    n *= 2;
  b->p = xrealloc(b->p, n);
  b->cap = n;
}

static void buf_add(struct buf *b, const void *d, size_t n) {
  buf_reserve(b, n);
  memcpy(b->p + b->len, d, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void buf_adds(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

__attribute__((format(printf, 2, 3))) static void buf_printf(struct buf *b, const char *fmt, ...) {
  buf_reserve(b, 128);
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
  va_end(ap);
  if (n < 0)
    return;
  if ((size_t)n >= b->cap - b->len) {
    buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
  }
  b->len += (size_t)n;
}

static void buf_free(struct buf *b) {
  free(b->p);
  *b = (struct buf){0};
}

/* ---- JSON output and validation -------------------------------------- */

/* Length of the well-formed UTF-8 sequence at s, or 0 when it is not one. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  if (c < 0x80)
    return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF)
    len = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0)
      lo = 0xA0;
    else if (c == 0xED)
      hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0)
      lo = 0x90;
    else if (c == 0xF4)
      hi = 0x8F;
  } else
    return 0;
  if (n < len || s[1] < lo || s[1] > hi)
    return 0;
  for (size_t i = 2; i < len; i++)
    if (s[i] < 0x80 || s[i] > 0xBF)
      return 0;
  return len;
}

static bool utf8_valid(const char *p, size_t n) {
  const unsigned char *s = (const unsigned char *)p;
  size_t i = 0;
  while (i < n) {
    size_t k = utf8_seq(s + i, n - i);
    if (!k)
      return false;
    i += k;
  }
  return true;
}

/* Appends p[0..n) as a quoted JSON string; bytes that are not UTF-8 become U+FFFD. */
static void buf_json_str(struct buf *b, const char *p, size_t n) {
  const unsigned char *s = (const unsigned char *)p;
  buf_reserve(b, n + 2);
  buf_add(b, "\"", 1);
  size_t i = 0;
  while (i < n) {
    unsigned char c = s[i];
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      buf_add(b, e, 2);
      i++;
    } else if (c < 0x20) {
      switch (c) {
      case '\n': buf_add(b, "\\n", 2); break;
      case '\r': buf_add(b, "\\r", 2); break;
      case '\t': buf_add(b, "\\t", 2); break;
      default: buf_printf(b, "\\u%04x", c); break;
      }
      i++;
    } else {
      size_t k = utf8_seq(s + i, n - i);
      if (k) {
        buf_add(b, s + i, k);
        i += k;
      } else {
        buf_add(b, "\\ufffd", 6);
        i++;
      }
    }
  }
  buf_add(b, "\"", 1);
}

static void buf_json_cstr(struct buf *b, const char *s) {
  if (s)
    buf_json_str(b, s, strlen(s));
  else
    buf_adds(b, "null");
}

struct jparse {
  const char *s, *e;
  int depth;
};

static void j_ws(struct jparse *p) {
  while (p->s < p->e && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r'))
    p->s++;
}

static bool j_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool j_digit(const struct jparse *p) { return p->s < p->e && *p->s >= '0' && *p->s <= '9'; }

static bool j_string(struct jparse *p) {
  if (p->s >= p->e || *p->s != '"')
    return false;
  p->s++;
  while (p->s < p->e) {
    unsigned char c = (unsigned char)*p->s++;
    if (c == '"')
      return true;
    if (c < 0x20)
      return false;
    if (c == '\\') {
      if (p->s >= p->e)
        return false;
      char esc = *p->s++;
      if (esc == 'u') {
        if (p->e - p->s < 4)
          return false;
        for (int i = 0; i < 4; i++)
          if (!j_hex(p->s[i]))
            return false;
        p->s += 4;
      } else if (!strchr("\"\\/bfnrt", esc) || esc == '\0') {
        return false;
      }
    }
  }
  return false;
}

static bool j_number(struct jparse *p) {
  if (p->s < p->e && *p->s == '-')
    p->s++;
  if (!j_digit(p))
    return false;
  if (*p->s == '0')
    p->s++;
  else
    while (j_digit(p))
      p->s++;
  if (p->s < p->e && *p->s == '.') {
    p->s++;
    if (!j_digit(p))
      return false;
    while (j_digit(p))
      p->s++;
  }
  if (p->s < p->e && (*p->s == 'e' || *p->s == 'E')) {
    p->s++;
    if (p->s < p->e && (*p->s == '+' || *p->s == '-'))
      p->s++;
    if (!j_digit(p))
      return false;
    while (j_digit(p))
      p->s++;
  }
  return true;
}

static bool j_literal(struct jparse *p, const char *lit) {
  size_t n = strlen(lit);
  if ((size_t)(p->e - p->s) < n || memcmp(p->s, lit, n) != 0)
    return false;
  p->s += n;
  return true;
}

static bool j_value(struct jparse *p);

static bool j_container(struct jparse *p, char open, char close) {
  if (++p->depth > MAX_JSON_DEPTH)
    return false;
  p->s++; /* the opening bracket */
  j_ws(p);
  if (p->s < p->e && *p->s == close) {
    p->s++;
    p->depth--;
    return true;
  }
  for (;;) {
    if (open == '{') {
      if (!j_string(p))
        return false;
      j_ws(p);
      if (p->s >= p->e || *p->s != ':')
        return false;
      p->s++;
      j_ws(p);
    }
    if (!j_value(p))
      return false;
    j_ws(p);
    if (p->s >= p->e)
      return false;
    if (*p->s == close) {
      p->s++;
      p->depth--;
      return true;
    }
    if (*p->s != ',')
      return false;
    p->s++;
    j_ws(p);
  }
}

static bool j_value(struct jparse *p) {
  if (p->s >= p->e)
    return false;
  switch (*p->s) {
  case '{': return j_container(p, '{', '}');
  case '[': return j_container(p, '[', ']');
  case '"': return j_string(p);
  case 't': return j_literal(p, "true");
  case 'f': return j_literal(p, "false");
  case 'n': return j_literal(p, "null");
  default: return j_number(p);
  }
}

/* True when s[0..n) is one JSON value (RFC 8259) in valid UTF-8. */
static bool json_valid(const char *s, size_t n) {
  struct jparse p = {s, s + n, 0};
  j_ws(&p);
  if (!j_value(&p))
    return false;
  j_ws(&p);
  return p.s == p.e && utf8_valid(s, n);
}

/* ---- connections and requests ------------------------------------------ */

struct conn {
  int fd;
  char *in;
  size_t start, end; /* unread input is in[start..end) */
};

struct header {
  char *name, *value;
};

struct request {
  struct timespec t0;
  char *head;   /* owned copy of the request head; the pointers below point into it */
  char *method; /* NULL until the request line parsed */
  char *target;
  char *pathbuf; /* owned; path and query point into it */
  char *path, *query;
  int minor;
  struct header *hdrs;
  size_t nhdrs;
  char *body;
  size_t body_len;
  bool keep_alive;
  bool is_head;
};

static void request_free(struct request *r) {
  free(r->head);
  free(r->pathbuf);
  free(r->hdrs);
  free(r->body);
}

static const char *header_get(const struct request *r, const char *name) {
  const char *v = NULL;
  for (size_t i = 0; i < r->nhdrs; i++)
    if (strcasecmp(r->hdrs[i].name, name) == 0)
      v = r->hdrs[i].value;
  return v;
}

/* True when the comma-separated header value list contains token (any case). */
static bool list_has_token(const char *list, const char *token) {
  size_t tn = strlen(token);
  const char *p = list;
  while (p && *p) {
    while (*p == ' ' || *p == '\t' || *p == ',')
      p++;
    const char *e = p;
    while (*e && *e != ',')
      e++;
    const char *t = e;
    while (t > p && (t[-1] == ' ' || t[-1] == '\t'))
      t--;
    if ((size_t)(t - p) == tn && strncasecmp(p, token, tn) == 0)
      return true;
    p = e;
  }
  return false;
}

/* Reads more input. Returns bytes read, 0 at end of stream, -1 on error or
 * timeout, -2 when the input buffer is full. */
static ssize_t conn_fill(struct conn *c) {
  if (c->start == c->end) {
    c->start = c->end = 0;
  } else if (c->end == IN_CAP && c->start > 0) {
    memmove(c->in, c->in + c->start, c->end - c->start);
    c->end -= c->start;
    c->start = 0;
  }
  if (c->end == IN_CAP)
    return -2;
  for (;;) {
    ssize_t n = recv(c->fd, c->in + c->end, IN_CAP - c->end, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n > 0)
      c->end += (size_t)n;
    return n;
  }
}

static int send_all_iov(int fd, struct iovec *iov, int cnt) {
  while (cnt > 0) {
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)cnt};
    ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    size_t left = (size_t)n;
    while (cnt > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      iov++;
      cnt--;
    }
    if (cnt > 0) {
      iov->iov_base = (char *)iov->iov_base + left;
      iov->iov_len -= left;
    }
  }
  return 0;
}

static int send_all(int fd, const void *p, size_t n) {
  struct iovec iov = {(void *)p, n};
  return send_all_iov(fd, &iov, 1);
}

/* Reads the request head (request line and headers, blank line included) and
 * moves it into r->head. Returns 0, -1 when the peer went away or timed out
 * before a request started, or 431 when the head is too large. */
static int read_head(struct conn *c, struct request *r) {
  size_t scan = 0; /* offset from c->start already searched */
  bool started = c->start < c->end;
  for (;;) {
    if (scan == 0)
      while (c->start < c->end && (c->in[c->start] == '\r' || c->in[c->start] == '\n'))
        c->start++;
    size_t avail = c->end - c->start;
    const char *s = c->in + c->start;
    size_t i = scan;
    for (; i < avail; i++) {
      if (s[i] != '\n')
        continue;
      if (i + 1 >= avail)
        break;
      size_t hl = 0;
      if (s[i + 1] == '\n')
        hl = i + 2;
      else if (s[i + 1] == '\r') {
        if (i + 2 >= avail)
          break;
        if (s[i + 2] == '\n')
          hl = i + 3;
      }
      if (hl) {
        if (hl > MAX_HEADER_BYTES)
          return 431;
        if (memchr(s, '\0', hl))
          return 400;
        r->head = xrealloc(NULL, hl + 1);
        memcpy(r->head, s, hl);
        r->head[hl] = '\0';
        c->start += hl;
        return 0;
      }
    }
    scan = i;
    if (avail > MAX_HEADER_BYTES)
      return 431;
    ssize_t n = conn_fill(c);
    if (n == -2)
      return 431;
    if (n <= 0)
      return -1;
    if (!started) {
      clock_gettime(CLOCK_MONOTONIC, &r->t0);
      started = true;
    }
  }
}

static bool is_tchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Parses r->head in place. Returns 0 or an HTTP error status. */
static int parse_head(struct request *r) {
  char *p = r->head;
  char *eol = strchr(p, '\n');
  *eol = '\0';
  if (eol > p && eol[-1] == '\r')
    eol[-1] = '\0';
  char *next = eol + 1;

  char *sp1 = strchr(p, ' ');
  if (!sp1)
    return 400;
  *sp1 = '\0';
  char *sp2 = strchr(sp1 + 1, ' ');
  if (!sp2)
    return 400;
  *sp2 = '\0';
  char *method = p, *target = sp1 + 1, *version = sp2 + 1;
  if (!*method || !*target)
    return 400;
  for (char *m = method; *m; m++)
    if (!is_tchar((unsigned char)*m))
      return 400;
  for (char *t = target; *t; t++)
    if ((unsigned char)*t <= 0x20 || *t == 0x7F)
      return 400;
  r->method = method;
  r->target = target;
  r->is_head = strcmp(method, "HEAD") == 0;
  if (strncmp(version, "HTTP/", 5) != 0 || strlen(version) != 8 || version[6] != '.' ||
      version[5] < '0' || version[5] > '9' || version[7] < '0' || version[7] > '9')
    return 400;
  if (version[5] != '1')
    return 505;
  r->minor = version[7] - '0';

  const char *path = target;
  if (strncasecmp(path, "http://", 7) == 0 || strncasecmp(path, "https://", 8) == 0) {
    path = strstr(path, "://") + 3;
    path = strchr(path, '/');
    if (!path)
      path = "/";
  } else if (*path != '/' && strcmp(path, "*") != 0) {
    return 400;
  }
  r->pathbuf = xstrdup(path);
  r->path = r->pathbuf;
  char *q = strchr(r->pathbuf, '?');
  if (q) {
    *q = '\0';
    r->query = q + 1;
  } else {
    r->query = r->pathbuf + strlen(r->pathbuf);
  }

  size_t cap = 0;
  for (p = next; *p; p = next) {
    eol = strchr(p, '\n');
    *eol = '\0';
    next = eol + 1;
    if (eol > p && eol[-1] == '\r')
      *--eol = '\0';
    if (p == eol)
      break;
    if (*p == ' ' || *p == '\t')
      return 400; /* obsolete line folding */
    char *colon = strchr(p, ':');
    if (!colon || colon == p)
      return 400;
    for (char *n = p; n < colon; n++)
      if (!is_tchar((unsigned char)*n))
        return 400;
    *colon = '\0';
    char *v = colon + 1;
    while (*v == ' ' || *v == '\t')
      v++;
    char *ve = v + strlen(v);
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
      *--ve = '\0';
    if (r->nhdrs == MAX_HEADERS)
      return 431;
    if (r->nhdrs == cap) {
      cap = cap ? cap * 2 : 16;
      r->hdrs = xrealloc(r->hdrs, cap * sizeof *r->hdrs);
    }
    r->hdrs[r->nhdrs++] = (struct header){p, v};
  }

  const char *conn = header_get(r, "Connection");
  if (r->minor >= 1)
    r->keep_alive = !(conn && list_has_token(conn, "close"));
  else
    r->keep_alive = conn && list_has_token(conn, "keep-alive");
  return 0;
}

/* Copies exactly n body bytes into dst, buffered input first. Returns 0 or -1. */
static int read_exact(struct conn *c, char *dst, size_t n) {
  size_t have = c->end - c->start;
  size_t take = have < n ? have : n;
  memcpy(dst, c->in + c->start, take);
  c->start += take;
  dst += take;
  n -= take;
  while (n > 0) {
    ssize_t got = recv(c->fd, dst, n, 0);
    if (got < 0 && errno == EINTR)
      continue;
    if (got <= 0)
      return -1;
    dst += got;
    n -= (size_t)got;
  }
  return 0;
}

/* Reads one line of at most max bytes; *line points into the input buffer and
 * stays valid until the next read. Returns 0, -1 on end of stream, 400 when too long. */
static int read_line(struct conn *c, size_t max, char **line, size_t *len) {
  size_t scan = 0;
  for (;;) {
    char *s = c->in + c->start;
    char *nl = memchr(s + scan, '\n', c->end - c->start - scan);
    if (nl) {
      size_t l = (size_t)(nl - s);
      c->start += l + 1;
      if (l > 0 && s[l - 1] == '\r')
        l--;
      *line = s;
      *len = l;
      return 0;
    }
    scan = c->end - c->start;
    if (scan > max)
      return 400;
    ssize_t n = conn_fill(c);
    if (n == -2)
      return 400;
    if (n <= 0)
      return -1;
  }
}

static int read_chunked(struct conn *c, struct request *r) {
  struct buf b = {0};
  int rc;
  for (;;) {
    char *line;
    size_t len;
    if ((rc = read_line(c, MAX_CHUNK_LINE, &line, &len)) != 0)
      goto fail;
    size_t i = 0, size = 0;
    for (; i < len && j_hex(line[i]); i++) {
      char h = line[i];
      unsigned d = (unsigned)(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
      if (size > (MAX_BODY_BYTES >> 4)) {
        rc = 413;
        goto fail;
      }
      size = size * 16 + d;
    }
    if (i == 0 || (i < len && line[i] != ';' && line[i] != ' ' && line[i] != '\t')) {
      rc = 400;
      goto fail;
    }
    if (size == 0)
      break;
    if (b.len + size > MAX_BODY_BYTES) {
      rc = 413;
      goto fail;
    }
    buf_reserve(&b, size);
    if (read_exact(c, b.p + b.len, size) < 0) {
      rc = -1;
      goto fail;
    }
    b.len += size;
    if ((rc = read_line(c, MAX_CHUNK_LINE, &line, &len)) != 0)
      goto fail;
    if (len != 0) {
      rc = 400;
      goto fail;
    }
  }
  for (size_t trailers = 0;;) {
    char *line;
    size_t len;
    if ((rc = read_line(c, MAX_CHUNK_LINE, &line, &len)) != 0)
      goto fail;
    if (len == 0)
      break;
    trailers += len;
    if (trailers > MAX_HEADER_BYTES) {
      rc = 431;
      goto fail;
    }
  }
  r->body = b.p;
  r->body_len = b.len;
  return 0;
fail:
  buf_free(&b);
  return rc;
}

static int read_body(struct conn *c, struct request *r) {
  const char *te = NULL, *cl = NULL;
  for (size_t i = 0; i < r->nhdrs; i++) {
    if (strcasecmp(r->hdrs[i].name, "Transfer-Encoding") == 0) {
      te = r->hdrs[i].value;
    } else if (strcasecmp(r->hdrs[i].name, "Content-Length") == 0) {
      if (cl && strcmp(cl, r->hdrs[i].value) != 0)
        return 400;
      cl = r->hdrs[i].value;
    }
  }
  bool chunked = false;
  size_t length = 0;
  if (te) {
    const char *last = strrchr(te, ',');
    last = last ? last + 1 : te;
    while (*last == ' ' || *last == '\t')
      last++;
    if (strcasecmp(last, "chunked") != 0)
      return 501;
    chunked = true;
    if (cl)
      r->keep_alive = false;
  } else if (cl) {
    long v;
    if (parse_long(cl, strlen(cl), 0, LONG_MAX, &v) < 0)
      return 400;
    if ((unsigned long)v > MAX_BODY_BYTES)
      return 413;
    length = (size_t)v;
  }
  if (!chunked && length == 0)
    return 0;

  const char *expect = header_get(r, "Expect");
  if (expect && r->minor >= 1 && strcasecmp(expect, "100-continue") == 0 && c->start == c->end) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (send_all(c->fd, cont, sizeof cont - 1) < 0)
      return -1;
  }
  if (chunked)
    return read_chunked(c, r);
  r->body = xrealloc(NULL, length + 1);
  if (read_exact(c, r->body, length) < 0)
    return -1;
  r->body[length] = '\0';
  r->body_len = length;
  return 0;
}

/* ---- responses ---------------------------------------------------------- */

static const char *reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 101: return "Switching Protocols";
  case 102: return "Processing";
  case 103: return "Early Hints";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 413: return "Content Too Large";
  case 422: return "Unprocessable Content";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default: return "Status";
  }
}

static void log_request(const struct request *r, int status) {
  printf("%s %s %d %.1fms\n", r->method ? r->method : "-", r->target ? r->target : "-", status,
         elapsed_ms(&r->t0));
}

/* Sends a whole response in one write. body may be NULL for an empty body.
 * Returns 0, or -1 when the peer is gone. */
static int respond(struct conn *c, struct request *r, int status, const char *ctype,
                   const char *body, size_t len) {
  bool no_body = status == 204 || status == 304;
  struct buf h = {0};
  buf_printf(&h, "HTTP/1.%d %d %s\r\nServer: echo-worker\r\n", r->minor == 0 ? 0 : 1, status,
             reason(status));
  if (!no_body) {
    if (ctype)
      buf_printf(&h, "Content-Type: %s\r\n", ctype);
    buf_printf(&h, "Content-Length: %zu\r\n", len);
  }
  if (!r->keep_alive)
    buf_adds(&h, "Connection: close\r\n");
  else if (r->minor == 0)
    buf_adds(&h, "Connection: keep-alive\r\n");
  buf_adds(&h, "\r\n");
  struct iovec iov[2] = {{h.p, h.len}, {(void *)body, body ? len : 0}};
  int cnt = (r->is_head || no_body || !body || !len) ? 1 : 2;
  int rc = send_all_iov(c->fd, iov, cnt);
  buf_free(&h);
  log_request(r, status);
  return rc;
}

static int respond_json(struct conn *c, struct request *r, int status, struct buf *b) {
  buf_adds(b, "\n");
  int rc = respond(c, r, status, "application/json", b->p, b->len);
  buf_free(b);
  return rc;
}

static int respond_error(struct conn *c, struct request *r, int status, const char *msg) {
  struct buf b = {0};
  buf_printf(&b, "{\"error\":{\"status\":%d,\"message\":", status);
  buf_json_cstr(&b, msg);
  buf_adds(&b, "}}");
  return respond_json(c, r, status, &b);
}

/* Finds name=value in the query string; *val points into it. Returns true when present. */
static bool query_get(const char *query, const char *name, const char **val, size_t *vlen) {
  size_t nl = strlen(name);
  const char *p = query;
  while (*p) {
    const char *e = strchr(p, '&');
    if (!e)
      e = p + strlen(p);
    const char *eq = memchr(p, '=', (size_t)(e - p));
    const char *ke = eq ? eq : e;
    if ((size_t)(ke - p) == nl && memcmp(p, name, nl) == 0) {
      *val = eq ? eq + 1 : e;
      *vlen = (size_t)(e - *val);
      return true;
    }
    p = *e ? e + 1 : e;
  }
  return false;
}

/* Reads query parameter name as an integer in [0, max]. Returns 0 (with *out
 * left alone when absent) or -1 when present but invalid. */
static int query_long(const struct request *r, const char *name, long max, long *out) {
  const char *v;
  size_t n;
  if (!query_get(r->query, name, &v, &n))
    return 0;
  return parse_long(v, n, 0, max, out);
}

/* ---- handlers ------------------------------------------------------------ */

static int handle_health(struct conn *c, struct request *r) {
  struct buf b = {0};
  int status = 200;
  if (elapsed_ms(&start_time) < (double)cfg.warmup_ms) {
    status = 503;
    buf_adds(&b, "{\"status\":\"loading\"}");
  } else if (cfg.health_fail_file && access(cfg.health_fail_file, F_OK) == 0) {
    status = 503;
    buf_adds(&b, "{\"status\":\"unhealthy\"}");
  } else {
    buf_adds(&b, "{\"status\":\"ok\"}");
  }
  return respond_json(c, r, status, &b);
}

static int handle_infer(struct conn *c, struct request *r) {
  long delay = cfg.delay_ms;
  if (query_long(r, "delay_ms", MAX_DELAY_MS, &delay) < 0)
    return respond_error(c, r, 400, "delay_ms: must be an integer between 0 and 600000");
  sleep_ms(delay);
  const char *gpus = getenv("CUDA_VISIBLE_DEVICES");
  const char *model = getenv("MODEL");
  struct buf b = {0};
  buf_printf(&b, "{\"worker_pid\":%ld,\"port\":%d,\"bytes\":%zu,\"delay_ms\":%ld,\"echo\":",
             (long)getpid(), bound_port, r->body_len, delay);
  if (r->body_len && json_valid(r->body, r->body_len))
    buf_add(&b, r->body, r->body_len);
  else
    buf_json_str(&b, r->body ? r->body : "", r->body_len);
  buf_adds(&b, ",\"gpus\":");
  buf_json_cstr(&b, gpus ? gpus : "");
  buf_adds(&b, ",\"model\":");
  buf_json_cstr(&b, model ? model : "");
  buf_adds(&b, "}");
  return respond_json(c, r, 200, &b);
}

static int send_chunk(struct conn *c, const struct request *r, const char *data, size_t len) {
  if (r->minor == 0)
    return send_all(c->fd, data, len);
  char hdr[32];
  int hn = snprintf(hdr, sizeof hdr, "%zx\r\n", len);
  struct iovec iov[3] = {{hdr, (size_t)hn}, {(void *)data, len}, {"\r\n", 2}};
  return send_all_iov(c->fd, iov, 3);
}

/* Streams n server-sent events, interval_ms apart, then "data: [DONE]".
 * HTTP/1.0 clients get the events unchunked and the connection closes. */
static int handle_stream(struct conn *c, struct request *r, long initial_delay) {
  long n = 5, interval = 50, delay = initial_delay;
  if (query_long(r, "n", MAX_STREAM_TOKENS, &n) < 0)
    return respond_error(c, r, 400, "n: must be an integer between 0 and 1000000");
  if (query_long(r, "interval_ms", MAX_DELAY_MS, &interval) < 0)
    return respond_error(c, r, 400, "interval_ms: must be an integer between 0 and 600000");
  if (query_long(r, "delay_ms", MAX_DELAY_MS, &delay) < 0)
    return respond_error(c, r, 400, "delay_ms: must be an integer between 0 and 600000");
  sleep_ms(delay);

  if (r->minor == 0)
    r->keep_alive = false;
  struct buf h = {0};
  buf_printf(&h,
             "HTTP/1.%d 200 OK\r\nServer: echo-worker\r\nContent-Type: text/event-stream\r\n"
             "Cache-Control: no-cache\r\n%s%s\r\n",
             r->minor == 0 ? 0 : 1, r->minor == 0 ? "" : "Transfer-Encoding: chunked\r\n",
             r->keep_alive ? "" : "Connection: close\r\n");
  int rc = send_all(c->fd, h.p, h.len);
  buf_free(&h);
  if (rc == 0 && !r->is_head) {
    for (long i = 0; i < n && rc == 0; i++) {
      if (i > 0)
        sleep_ms(interval);
      char ev[96];
      int len = snprintf(ev, sizeof ev, "data: {\"token\":%ld,\"text\":\"tok-%ld\"}\n\n", i, i);
      rc = send_chunk(c, r, ev, (size_t)len);
    }
    if (rc == 0) {
      static const char done[] = "data: [DONE]\n\n";
      if (r->minor == 0)
        rc = send_all(c->fd, done, sizeof done - 1);
      else {
        static const char last[] = "e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n";
        rc = send_all(c->fd, last, sizeof last - 1);
      }
    }
  }
  log_request(r, 200);
  return rc;
}

static int handle_status(struct conn *c, struct request *r) {
  const char *code = r->path + strlen("/status/");
  long status;
  if (parse_long(code, strlen(code), 100, 599, &status) < 0 || strlen(code) != 3)
    return respond_error(c, r, 400, "status must be an integer between 100 and 599");
  struct buf b = {0};
  if (status < 200) {
    /* An informational answer is interim: the final answer 200 follows. */
    if (status == 101)
      return respond_error(c, r, 400, "101 is only sent in answer to an upgrade");
    if (r->minor >= 1) {
      char interim[64];
      int n = snprintf(interim, sizeof interim, "HTTP/1.1 %ld %s\r\n\r\n", status,
                       reason((int)status));
      if (send_all(c->fd, interim, (size_t)n) < 0)
        return -1;
    }
    buf_printf(&b, "{\"status\":200,\"informational\":%ld}", status);
    return respond_json(c, r, 200, &b);
  }
  buf_printf(&b, "{\"status\":%ld}", status);
  return respond_json(c, r, (int)status, &b);
}

static int handle_env(struct conn *c, struct request *r) {
  static const char *const names[] = {"PORT", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
                                      "MODEL"};
  struct buf b = {0};
  buf_printf(&b, "{\"pid\":%ld", (long)getpid());
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    buf_printf(&b, ",\"%s\":", names[i]);
    buf_json_cstr(&b, getenv(names[i]));
  }
  buf_adds(&b, "}");
  return respond_json(c, r, 200, &b);
}

static int handle_stats(struct conn *c, struct request *r) {
  struct buf b = {0};
  buf_printf(&b, "{\"pid\":%ld,\"connections_accepted\":%lu,\"connections_open\":%d,\"refusing\":%s}",
             (long)getpid(), (unsigned long)atomic_load(&accepted_conns), atomic_load(&active_conns),
             atomic_load(&refusing) ? "true" : "false");
  return respond_json(c, r, 200, &b);
}

static int handle_echo(struct conn *c, struct request *r) {
  struct buf b = {0};
  buf_adds(&b, "{\"method\":");
  buf_json_cstr(&b, r->method);
  buf_adds(&b, ",\"target\":");
  buf_json_cstr(&b, r->target);
  buf_adds(&b, ",\"path\":");
  buf_json_cstr(&b, r->path);
  buf_adds(&b, ",\"query\":");
  buf_json_cstr(&b, r->query);
  buf_printf(&b, ",\"http_version\":\"1.%d\",\"headers\":{", r->minor);
  /* Names are lowercased; repeated fields are joined with ", ". */
  bool first = true;
  for (size_t i = 0; i < r->nhdrs; i++) {
    bool seen = false;
    for (size_t j = 0; j < i && !seen; j++)
      seen = strcasecmp(r->hdrs[j].name, r->hdrs[i].name) == 0;
    if (seen)
      continue;
    if (!first)
      buf_adds(&b, ",");
    first = false;
    char *lower = xstrdup(r->hdrs[i].name);
    for (char *p = lower; *p; p++)
      if (*p >= 'A' && *p <= 'Z')
        *p = (char)(*p + 32);
    buf_json_cstr(&b, lower);
    free(lower);
    struct buf v = {0};
    for (size_t j = i; j < r->nhdrs; j++) {
      if (strcasecmp(r->hdrs[j].name, r->hdrs[i].name) != 0)
        continue;
      if (v.len)
        buf_adds(&v, ", ");
      buf_adds(&v, r->hdrs[j].value);
    }
    buf_adds(&b, ":");
    buf_json_str(&b, v.p ? v.p : "", v.len);
    buf_free(&v);
  }
  buf_adds(&b, "},\"header_list\":[");
  for (size_t i = 0; i < r->nhdrs; i++) {
    buf_adds(&b, i ? ",[" : "[");
    buf_json_cstr(&b, r->hdrs[i].name);
    buf_adds(&b, ",");
    buf_json_cstr(&b, r->hdrs[i].value);
    buf_adds(&b, "]");
  }
  buf_printf(&b, "],\"body_length\":%zu,\"body_crc32\":\"%08" PRIx32 "\",\"worker_pid\":%ld,"
                 "\"port\":%d}",
             r->body_len, crc32_of(r->body ? r->body : "", r->body_len), (long)getpid(),
             bound_port);
  return respond_json(c, r, 200, &b);
}

/* Finds key in the top-level JSON object s[0..n) (keys compared as written);
 * *v and *vn get its value's text. Returns true when found. */
static bool json_member(const char *s, size_t n, const char *key, const char **v, size_t *vn) {
  struct jparse p = {s, s + n, 0};
  j_ws(&p);
  if (p.s >= p.e || *p.s != '{')
    return false;
  p.s++;
  size_t kl = strlen(key);
  for (;;) {
    j_ws(&p);
    const char *ks = p.s;
    if (!j_string(&p))
      return false;
    bool match = (size_t)(p.s - ks) == kl + 2 && memcmp(ks + 1, key, kl) == 0;
    j_ws(&p);
    if (p.s >= p.e || *p.s != ':')
      return false;
    p.s++;
    j_ws(&p);
    const char *vs = p.s;
    if (!j_value(&p))
      return false;
    if (match) {
      *v = vs;
      *vn = (size_t)(p.s - vs);
      return true;
    }
    j_ws(&p);
    if (p.s >= p.e || *p.s != ',')
      return false;
    p.s++;
  }
}

/* A member holding a non-negative integer; def when absent or not one. */
static long json_member_long(const char *s, size_t n, const char *key, long max, long def) {
  const char *v;
  size_t vn;
  long out;
  if (!json_member(s, n, key, &v, &vn) || parse_long(v, vn, 0, max, &out) < 0)
    return def;
  return out;
}

static void record_job(const char *id, size_t n) {
  const char *path = getenv("JOBS_RECORD_FILE");
  if (!path || !*path)
    return;
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  char line[256];
  int len = snprintf(line, sizeof line, "%.*s %ld %lld\n", (int)(n > 128 ? 128 : n), id, (long)getpid(),
                     (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000);
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    return;
  if (write(fd, line, (size_t)len) < 0) {
  }
  close(fd);
}

static int handle_run(struct conn *c, struct request *r) {
  const char *body = r->body ? r->body : "";
  size_t blen = r->body_len;
  const char *id = "", *input = "null";
  size_t idn = 0, inn = 4;
  if (!json_valid(body, blen) || !json_member(body, blen, "input", &input, &inn))
    return respond_error(c, r, 400, "body must be a JSON object {\"id\", \"input\"}");
  if (json_member(body, blen, "id", &id, &idn) && idn >= 2 && id[0] == '"') {
    id++;
    idn -= 2;
  }
  sleep_ms(json_member_long(input, inn, "sleep_ms", MAX_DELAY_MS, 0));
  const char *v;
  size_t vn;
  if (json_member(input, inn, "crash", &v, &vn) && !(vn == 5 && !memcmp(v, "false", 5))) {
    printf("%s %s job %.*s: crashing (exit 3)\n", r->method, r->target, (int)idn, id);
    fflush(stdout);
    _exit(3);
  }
  long status = json_member_long(input, inn, "status", 599, 200);
  struct buf b = {0};
  if (status < 200 || status > 299) {
    buf_printf(&b, "{\"status\":%ld}", status);
    return respond_json(c, r, (int)status, &b);
  }
  if (json_member(input, inn, "fail", &v, &vn)) {
    buf_adds(&b, "{\"error\":");
    buf_add(&b, v, vn);
    buf_adds(&b, "}");
    return respond_json(c, r, 200, &b);
  }
  long tokens = json_member_long(input, inn, "stream", MAX_STREAM_TOKENS, -1);
  if (tokens >= 0) {
    long interval = json_member_long(input, inn, "interval_ms", MAX_DELAY_MS, 20);
    record_job(id, idn);
    struct buf h = {0};
    buf_printf(&h, "HTTP/1.1 200 OK\r\nServer: echo-worker\r\nContent-Type: application/x-ndjson\r\n"
                   "Transfer-Encoding: chunked\r\n%s\r\n",
               r->keep_alive ? "" : "Connection: close\r\n");
    int rc = send_all(c->fd, h.p, h.len);
    buf_free(&h);
    for (long i = 0; i < tokens && rc == 0; i++) {
      if (i > 0)
        sleep_ms(interval);
      char line[64];
      int len = snprintf(line, sizeof line, "{\"output\":\"tok-%ld\"}\n", i);
      rc = send_chunk(c, r, line, (size_t)len);
    }
    if (rc == 0)
      rc = send_all(c->fd, "0\r\n\r\n", 5);
    log_request(r, 200);
    return rc;
  }
  record_job(id, idn);
  if (json_member(input, inn, "output", &v, &vn)) {
    buf_adds(&b, "{\"output\":");
    buf_add(&b, v, vn);
    buf_adds(&b, "}");
  } else {
    buf_adds(&b, "{\"output\":{\"id\":");
    buf_json_str(&b, id, idn);
    buf_adds(&b, ",\"input\":");
    buf_add(&b, input, inn);
    buf_printf(&b, ",\"worker_pid\":%ld}}", (long)getpid());
  }
  return respond_json(c, r, 200, &b);
}

static int dispatch(struct conn *c, struct request *r) {
  const char *path = r->path;
  if (strcmp(path, "/health") == 0)
    return handle_health(c, r);
  if (strcmp(path, "/infer") == 0) {
    const char *v;
    size_t n;
    if (query_get(r->query, "stream", &v, &n) && !(n == 1 && v[0] == '0') &&
        !(n == 5 && memcmp(v, "false", 5) == 0))
      return handle_stream(c, r, cfg.delay_ms);
    return handle_infer(c, r);
  }
  if (strcmp(path, "/stream") == 0)
    return handle_stream(c, r, 0);
  if (strcmp(path, "/run") == 0 && strcmp(r->method, "POST") == 0)
    return handle_run(c, r);
  if (strncmp(path, "/status/", 8) == 0)
    return handle_status(c, r);
  if (strcmp(path, "/crash") == 0) {
    printf("%s %s crashing (exit 3)\n", r->method, r->target);
    fflush(stdout);
    _exit(3);
  }
  if (strcmp(path, "/env") == 0)
    return handle_env(c, r);
  if (strcmp(path, "/stats") == 0)
    return handle_stats(c, r);
  if (strcmp(path, "/close-listener") == 0) {
    atomic_store(&refusing, true);
    shutdown(listen_fd, SHUT_RDWR); /* wakes accept(); connects are refused from now on */
    r->keep_alive = false;
    return handle_stats(c, r);
  }
  return handle_echo(c, r);
}

/* Closes after an error answer: stops sending, then drains what the client may
 * still be sending for a short while so that the answer is not lost to a reset. */
static void lingering_close(int fd) {
  shutdown(fd, SHUT_WR);
  struct timeval tv = {.tv_sec = 1};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char sink[16384];
  size_t total = 0;
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  while (total < ((size_t)4 << 20) && elapsed_ms(&t0) < 2000) {
    ssize_t n = recv(fd, sink, sizeof sink, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    total += (size_t)n;
  }
}

static void *conn_main(void *arg) {
  struct conn *c = arg;
  for (;;) {
    struct request r = {.minor = 1};
    clock_gettime(CLOCK_MONOTONIC, &r.t0);
    int rc = read_head(c, &r);
    if (rc == 0)
      rc = parse_head(&r);
    if (rc == 0)
      rc = read_body(c, &r);
    if (rc < 0) {
      request_free(&r);
      break;
    }
    if (rc > 0) {
      r.keep_alive = false;
      const char *msg = rc == 431   ? "request head too large"
                        : rc == 413 ? "request body too large"
                        : rc == 501 ? "unsupported transfer-encoding"
                        : rc == 505 ? "unsupported HTTP version"
                                    : "malformed request";
      r.is_head = false;
      respond_error(c, &r, rc, msg);
      request_free(&r);
      lingering_close(c->fd);
      break;
    }
    if (atomic_load(&refusing))
      r.keep_alive = false;
    rc = dispatch(c, &r);
    bool again = rc == 0 && r.keep_alive && !atomic_load(&refusing);
    request_free(&r);
    if (!again)
      break;
  }
  close(c->fd);
  free(c->in);
  free(c);
  atomic_fetch_sub(&active_conns, 1);
  return NULL;
}

/* ---- start-up ------------------------------------------------------------- */

static void usage(FILE *f) {
  fputs("usage: echo-worker [--host ADDR] [--port N] [--warmup-ms N] [--delay-ms N]\n"
        "                   [--health-fail-file PATH]\n"
        "\n"
        "  --host ADDR              address to listen on (default 127.0.0.1)\n"
        "  --port N                 port (env PORT, default 8000; 0 picks a free one)\n"
        "  --warmup-ms N            /health answers 503 for N ms after start (env WARMUP_MS)\n"
        "  --delay-ms N             compute delay of /infer (env DELAY_MS)\n"
        "  --health-fail-file PATH  /health answers 503 while PATH exists (env HEALTH_FAIL_FILE)\n",
        f);
}

static void option_long(const char *name, const char *s, long min, long max, long *out) {
  if (parse_long(s, strlen(s), min, max, out) < 0) {
    fprintf(stderr, "echo-worker: %s: must be an integer between %ld and %ld\n", name, min, max);
    exit(2);
  }
}

static void parse_options(int argc, char **argv) {
  const char *e;
  if ((e = getenv("PORT")) && *e)
    option_long("PORT", e, 0, 65535, &cfg.port);
  if ((e = getenv("WARMUP_MS")) && *e)
    option_long("WARMUP_MS", e, 0, LONG_MAX / 2, &cfg.warmup_ms);
  if ((e = getenv("DELAY_MS")) && *e)
    option_long("DELAY_MS", e, 0, MAX_DELAY_MS, &cfg.delay_ms);
  if ((e = getenv("HEALTH_FAIL_FILE")) && *e)
    cfg.health_fail_file = e;

  enum { OPT_WARMUP = 256, OPT_DELAY, OPT_FAILFILE };
  static const struct option opts[] = {
      {"host", required_argument, NULL, 'H'},
      {"port", required_argument, NULL, 'p'},
      {"warmup-ms", required_argument, NULL, OPT_WARMUP},
      {"delay-ms", required_argument, NULL, OPT_DELAY},
      {"health-fail-file", required_argument, NULL, OPT_FAILFILE},
      {"help", no_argument, NULL, 'h'},
      {0},
  };
  int ch;
  while ((ch = getopt_long(argc, argv, "hH:p:", opts, NULL)) != -1) {
    switch (ch) {
    case 'H':
      if (strlen(optarg) >= sizeof cfg.host) {
        fprintf(stderr, "echo-worker: --host: too long\n");
        exit(2);
      }
      strcpy(cfg.host, optarg);
      break;
    case 'p': option_long("--port", optarg, 0, 65535, &cfg.port); break;
    case OPT_WARMUP: option_long("--warmup-ms", optarg, 0, LONG_MAX / 2, &cfg.warmup_ms); break;
    case OPT_DELAY: option_long("--delay-ms", optarg, 0, MAX_DELAY_MS, &cfg.delay_ms); break;
    case OPT_FAILFILE: cfg.health_fail_file = optarg; break;
    case 'h': usage(stdout); exit(0);
    default: usage(stderr); exit(2);
    }
  }
  if (optind < argc) {
    fprintf(stderr, "echo-worker: unexpected argument '%s'\n", argv[optind]);
    usage(stderr);
    exit(2);
  }
}

/* Binds and listens on cfg.host:cfg.port (IPv4 or IPv6 literal, or "localhost").
 * Exits with status 1 on failure. */
static int listen_socket(void) {
  struct sockaddr_storage ss = {0};
  socklen_t slen;
  const char *host = strcmp(cfg.host, "localhost") == 0 ? "127.0.0.1" : cfg.host;
  struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)cfg.port);
    slen = sizeof *s4;
  } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons((uint16_t)cfg.port);
    slen = sizeof *s6;
  } else {
    fprintf(stderr, "echo-worker: --host: '%s' is not an IP address\n", cfg.host);
    exit(2);
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
      bind(fd, (struct sockaddr *)&ss, slen) < 0 || listen(fd, 4096) < 0) {
    fprintf(stderr, "echo-worker: listen on %s:%ld: %s\n", cfg.host, cfg.port, strerror(errno));
    exit(1);
  }
  struct sockaddr_storage got;
  socklen_t glen = sizeof got;
  if (getsockname(fd, (struct sockaddr *)&got, &glen) == 0)
    bound_port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                                  : ((struct sockaddr_in *)&got)->sin_port);
  return fd;
}

/* Owns SIGTERM and SIGINT (blocked in every other thread) and announces the end
 * of warm-up. Exits the process with status 0 on a termination signal. */
static void *signal_main(void *arg) {
  sigset_t *set = arg;
  bool loaded = cfg.warmup_ms == 0;
  for (;;) {
    int sig;
    if (!loaded) {
      double left = (double)cfg.warmup_ms - elapsed_ms(&start_time);
      if (left <= 0) {
        printf("model loaded\n");
        loaded = true;
        continue;
      }
      long ms = (long)left + 1;
      struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
      sig = sigtimedwait(set, NULL, &ts);
      if (sig < 0)
        continue;
    } else if (sigwait(set, &sig) != 0) {
      continue;
    }
    printf("shutting down\n");
    fflush(stdout);
    _exit(0);
  }
  return NULL;
}

int main(int argc, char **argv) {
  clock_gettime(CLOCK_MONOTONIC, &start_time);
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN);
  crc32_init();
  parse_options(argc, argv);

  static sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, NULL);

  int lfd = listen_fd = listen_socket();
  printf("listening on %s:%d (pid %ld)\n", cfg.host, bound_port, (long)getpid());
  if (cfg.warmup_ms == 0)
    printf("model loaded\n");

  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, THREAD_STACK_BYTES);
  pthread_t tid;
  if (pthread_create(&tid, &attr, signal_main, &set) != 0) {
    fprintf(stderr, "echo-worker: cannot start the signal thread\n");
    return 1;
  }

  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0 && atomic_load(&refusing)) {
      for (;;)
        pause(); /* serve what is open; the signal thread ends the process */
    }
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      if (errno != EMFILE && errno != ENFILE && errno != ENOBUFS && errno != ENOMEM)
        fprintf(stderr, "echo-worker: accept: %s\n", strerror(errno));
      sleep_ms(10);
      continue;
    }
    atomic_fetch_add(&accepted_conns, 1);
    if (atomic_fetch_add(&active_conns, 1) >= MAX_CONNS) {
      atomic_fetch_sub(&active_conns, 1);
      close(fd);
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct conn *c = xrealloc(NULL, sizeof *c);
    *c = (struct conn){.fd = fd, .in = xrealloc(NULL, IN_CAP)};
    if (pthread_create(&tid, &attr, conn_main, c) != 0) {
      close(fd);
      free(c->in);
      free(c);
      atomic_fetch_sub(&active_conns, 1);
      sleep_ms(1);
    }
  }
}
