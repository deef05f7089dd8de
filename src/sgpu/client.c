/* The sgpu CLI's HTTP client (libcurl) and the helpers its commands share. */
#include "client.h"

#include <ctype.h>
#include <errno.h>
#include <pwd.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define SG_USER_AGENT "sgpu-cli"
/* Bounds on what is read whole: control API answers and error bodies. */
#define MAX_ANSWER_BYTES ((size_t)64 * 1024 * 1024)
#define MAX_ERROR_BYTES ((size_t)64 * 1024)
/* Bound on the url and admin.key files. */
#define MAX_SMALL_FILE 4096
/* Longest error message printed from an answer body. */
#define MAX_MESSAGE 512

struct sg_cli_options sg_cli_opts;

/* ---- memory --------------------------------------------------------------- */

static void oom(void) {
  fputs("sgpu: out of memory\n", stderr);
  abort();
}

void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p)
    oom();
  return p;
}

void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q)
    oom();
  return q;
}

char *xstrdup(const char *s) {
  char *p = strdup(s);
  if (!p)
    oom();
  return p;
}

char *xasprintf(const char *fmt, ...) {
  char *p;
  va_list ap;
  va_start(ap, fmt);
  int r = vasprintf(&p, fmt, ap);
  va_end(ap);
  if (r < 0)
    oom();
  return p;
}

/* A growable byte buffer, always NUL-terminated once anything was appended. */
struct buf {
  char *p;
  size_t len, cap;
};

static void buf_append(struct buf *b, const void *data, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + n + 1)
      cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
  }
  memcpy(b->p + b->len, data, n);
  b->len += n;
  b->p[b->len] = '\0';
}

/* ---- errors and usage ------------------------------------------------------- */

void sg_cli_errorf(const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fputs("sgpu: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

int sg_cli_usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fputs("sgpu: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  if (cmd)
    fprintf(stderr, "Run 'sgpu help %s' for usage.\n", cmd);
  return SG_EXIT_USAGE;
}

int sg_cli_getopt_error(const char *cmd, int ch, char **argv) {
  char opt[64];
  if (optopt > 0 && optopt < 128 && isgraph(optopt))
    snprintf(opt, sizeof opt, "-%c", optopt);
  else
    snprintf(opt, sizeof opt, "%s", optind > 0 ? argv[optind - 1] : "?");
  const char *what = ch == ':' ? "needs a value" : "is not known";
  if (!cmd)
    return sg_cli_usage_error(NULL, "option %s %s; run 'sgpu help' for usage", opt, what);
  return sg_cli_usage_error(cmd, "%s: option %s %s", cmd, opt, what);
}

bool sg_cli_global_option(int ch, const char *arg) {
  switch (ch) {
  case SG_OPT_URL:
    sg_cli_opts.url = arg;
    return true;
  case SG_OPT_KEY:
    sg_cli_opts.key = arg;
    return true;
  case SG_OPT_DATA_DIR:
    sg_cli_opts.data_dir = arg;
    return true;
  case SG_OPT_JSON:
    sg_cli_opts.json = true;
    return true;
  default:
    return false;
  }
}

/* ---- configuration -------------------------------------------------------- */

/* Returns s with leading and trailing white space removed (in place). */
static char *trim(char *s) {
  while (isspace((unsigned char)*s))
    s++;
  size_t n = strlen(s);
  while (n > 0 && isspace((unsigned char)s[n - 1]))
    s[--n] = '\0';
  return s;
}

static char *data_dir(void) {
  if (sg_cli_opts.data_dir && *sg_cli_opts.data_dir)
    return xstrdup(sg_cli_opts.data_dir);
  const char *env = getenv("SGPU_DATA_DIR");
  if (env && *env)
    return xstrdup(env);
  const char *home = getenv("HOME");
  if (!home || !*home) {
    struct passwd *pw = getpwuid(getuid());
    home = pw ? pw->pw_dir : NULL;
  }
  return home ? xasprintf("%s/.sgpu", home) : NULL;
}

/* Reads the first non-empty content of dir/name, trimmed. NULL when the file
 * is missing, unreadable or empty. */
static char *read_setting(const char *dir, const char *name) {
  if (!dir)
    return NULL;
  cleanup_free char *path = xasprintf("%s/%s", dir, name);
  cleanup_fclose FILE *f = fopen(path, "re");
  if (!f)
    return NULL;
  char data[MAX_SMALL_FILE];
  size_t n = fread(data, 1, sizeof data - 1, f);
  data[n] = '\0';
  char *v = trim(data);
  return *v ? xstrdup(v) : NULL;
}

static char *normalize_url(const char *raw) {
  cleanup_free char *copy = xstrdup(raw);
  char *u = trim(copy);
  size_t n = strlen(u);
  while (n > 0 && u[n - 1] == '/')
    u[--n] = '\0';
  if (strstr(u, "://"))
    return xstrdup(u);
  return xasprintf("http://%s", u);
}

int sg_client_open(struct sg_client *c) {
  memset(c, 0, sizeof *c);
  cleanup_free char *dir = data_dir();
  cleanup_free char *url = NULL;

  if (sg_cli_opts.url && *sg_cli_opts.url)
    url = xstrdup(sg_cli_opts.url);
  else if (getenv("SGPU_URL") && *getenv("SGPU_URL"))
    url = xstrdup(getenv("SGPU_URL"));
  else
    url = read_setting(dir, "url");
  if (!url) {
    sg_cli_errorf("no server URL: pass --url, set SGPU_URL, or point --data-dir at sgpud's data "
                  "directory (%s/url not found)",
                  dir ? dir : "$HOME/.sgpu");
    return -1;
  }

  if (sg_cli_opts.key) {
    c->key = xstrdup(sg_cli_opts.key);
    c->key_source = "--key";
  } else if (getenv("SGPU_API_KEY")) {
    c->key = xstrdup(getenv("SGPU_API_KEY"));
    c->key_source = "SGPU_API_KEY";
  } else if ((c->key = read_setting(dir, "admin.key"))) {
    c->key_file = xasprintf("%s/admin.key", dir);
    c->key_source = c->key_file;
  }

  c->url = normalize_url(url);
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    sg_cli_errorf("cannot initialise libcurl");
    sg_client_close(c);
    return -1;
  }
  c->curl = curl_easy_init();
  if (!c->curl) {
    sg_cli_errorf("cannot initialise libcurl");
    sg_client_close(c);
    return -1;
  }
  return 0;
}

void sg_client_close(struct sg_client *c) {
  if (c->curl) {
    curl_easy_cleanup(c->curl);
    curl_global_cleanup();
  }
  free(c->url);
  free(c->key);
  free(c->key_file);
  memset(c, 0, sizeof *c);
}

/* ---- errors from answers -------------------------------------------------- */

/* Copies the first MAX_MESSAGE bytes of text to out, one line (control
 * characters become spaces), white space trimmed. */
static void one_line(const char *text, size_t len, char *out, size_t outlen) {
  size_t j = 0;
  for (size_t i = 0; i < len && j + 1 < outlen; i++) {
    unsigned char ch = (unsigned char)text[i];
    out[j++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
  }
  out[j] = '\0';
  char *t = trim(out);
  memmove(out, t, strlen(t) + 1);
}

/* Prints the error of an answer with status >= 400. */
static void print_answer_error(const struct sg_client *c, long status, const char *body, size_t len) {
  char msg[MAX_MESSAGE + 64] = "";
  cleanup_json json_t *j = body && len ? json_loadb(body, len, 0, NULL) : NULL;
  json_t *err = json_object_get(j, "error");
  const char *m = json_string_value(json_object_get(err, "message"));
  if (!m)
    m = json_string_value(err);
  if (m && *m) {
    one_line(m, strlen(m), msg, sizeof msg);
  } else if (body && len) {
    char text[MAX_MESSAGE + 1];
    one_line(body, len, text, sizeof text);
    snprintf(msg, sizeof msg, "HTTP %ld: %s", status, text);
  } else {
    snprintf(msg, sizeof msg, "HTTP %ld", status);
  }
  if (status == 401 && c->key_source)
    sg_cli_errorf("%s (key from %s)", msg, c->key_source);
  else if (status == 401)
    sg_cli_errorf("%s (no API key: pass --key, set SGPU_API_KEY, or use --data-dir)", msg);
  else
    sg_cli_errorf("%s", msg);
}

static void print_transfer_error(const struct sg_client *c, CURLcode rc) {
  const char *why = c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc);
  char text[MAX_MESSAGE + 1];
  one_line(why, strlen(why), text, sizeof text);
  sg_cli_errorf("%s: %s", c->url, text);
}

/* ---- requests --------------------------------------------------------------- */

/* Resets the handle and sets what every request shares. Stores in *headers
 * the header list (extra appended) that the caller must keep, and free, once
 * the transfer is over. */
static void prepare(struct sg_client *c, const char *method, const char *path,
                    const struct curl_slist *extra, const char *body, size_t body_len,
                    struct curl_slist **headers_out) {
  CURL *h = c->curl;
  curl_easy_reset(h);
  c->errbuf[0] = '\0';
  cleanup_free char *url = xasprintf("%s%s", c->url, path);
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->errbuf);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_USERAGENT, SG_USER_AGENT);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");

  struct curl_slist *headers = NULL;
  if (c->key) {
    cleanup_free char *auth = xasprintf("Authorization: Bearer %s", c->key);
    headers = curl_slist_append(headers, auth);
  }
  /* The answer to a large body must not wait for a 100 Continue. */
  headers = curl_slist_append(headers, "Expect:");
  for (const struct curl_slist *l = extra; l; l = l->next)
    headers = curl_slist_append(headers, l->data);
  if (!headers)
    oom();
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  *headers_out = headers;

  if (strcmp(method, "HEAD") == 0) {
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  } else if (body) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    if (strcmp(method, "POST") != 0)
      curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  } else if (strcmp(method, "GET") != 0) {
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  }
}

struct whole_ctx {
  struct buf buf;
  size_t max;
  bool too_large;
};

static size_t whole_write(char *data, size_t size, size_t n, void *ud) {
  struct whole_ctx *w = ud;
  size_t len = size * n;
  if (w->buf.len + len > w->max) {
    w->too_large = true;
    return 0;
  }
  buf_append(&w->buf, data, len);
  return len;
}

int sg_client_request(struct sg_client *c, const char *method, const char *path, json_t *body,
                      struct sg_response *resp) {
  memset(resp, 0, sizeof *resp);
  cleanup_free char *payload = body ? json_dumps(body, JSON_COMPACT) : NULL;
  if (body && !payload)
    oom();
  cleanup_slist struct curl_slist *extra = NULL;
  if (payload)
    extra = curl_slist_append(NULL, "Content-Type: application/json");
  extra = curl_slist_append(extra, "Accept: application/json");
  cleanup_slist struct curl_slist *headers = NULL;
  prepare(c, method, path, extra, payload, payload ? strlen(payload) : 0, &headers);

  struct whole_ctx w = {.max = MAX_ANSWER_BYTES};
  curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, whole_write);
  curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &w);
  curl_easy_setopt(c->curl, CURLOPT_TIMEOUT, 120L);
  CURLcode rc = curl_easy_perform(c->curl);
  if (rc != CURLE_OK) {
    if (w.too_large)
      sg_cli_errorf("%s%s: answer larger than %zu bytes", c->url, path, w.max);
    else
      print_transfer_error(c, rc);
    free(w.buf.p);
    return -1;
  }
  long status = 0;
  curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);
  if (status >= 400) {
    print_answer_error(c, status, w.buf.p, w.buf.len);
    free(w.buf.p);
    return -1;
  }
  resp->status = status;
  resp->body = w.buf.p ? w.buf.p : xstrdup("");
  resp->len = w.buf.len;
  resp->json = resp->len ? json_loadb(resp->body, resp->len, 0, NULL) : NULL;
  return 0;
}

void sg_response_free(struct sg_response *resp) {
  free(resp->body);
  json_decref(resp->json);
  memset(resp, 0, sizeof *resp);
}

/* ---- streamed requests -------------------------------------------------------- */

struct stream_ctx {
  struct sg_client *c;
  struct sg_stream *s;
  bool checked;   /* the status was looked at */
  bool failed;    /* status >= 400: the body is collected in err */
  bool stopped;   /* on_data asked to stop */
  struct buf err;
};

static size_t stream_write(char *data, size_t size, size_t n, void *ud) {
  struct stream_ctx *x = ud;
  size_t len = size * n;
  if (!x->checked) {
    long status = 0;
    curl_easy_getinfo(x->c->curl, CURLINFO_RESPONSE_CODE, &status);
    x->s->status = status;
    x->failed = status >= 400;
    x->checked = true;
  }
  if (x->failed) {
    if (x->err.len < MAX_ERROR_BYTES)
      buf_append(&x->err, data, len < MAX_ERROR_BYTES - x->err.len ? len : MAX_ERROR_BYTES - x->err.len);
    return len;
  }
  if (len && x->s->on_data(data, len, x->s->ud) != 0) {
    x->stopped = true;
    return 0;
  }
  return len;
}

static size_t stream_header(char *data, size_t size, size_t n, void *ud) {
  struct stream_ctx *x = ud;
  size_t len = size * n, l = len;
  while (l > 0 && (data[l - 1] == '\n' || data[l - 1] == '\r'))
    l--;
  if (l > 0 && x->s->on_header)
    x->s->on_header(data, l, x->s->ud);
  return len;
}

int sg_client_stream(struct sg_client *c, struct sg_stream *s) {
  s->status = 0;
  cleanup_slist struct curl_slist *headers = NULL;
  prepare(c, s->method, s->path, s->headers, s->body, s->body_len, &headers);
  struct stream_ctx x = {.c = c, .s = s};
  curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, stream_write);
  curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &x);
  curl_easy_setopt(c->curl, CURLOPT_HEADERFUNCTION, stream_header);
  curl_easy_setopt(c->curl, CURLOPT_HEADERDATA, &x);
  curl_easy_setopt(c->curl, CURLOPT_TIMEOUT, s->timeout_s > 0 ? s->timeout_s : 0L);
  /* Hand data over as it comes: no decoding that could hold it back. */
  curl_easy_setopt(c->curl, CURLOPT_HTTP_CONTENT_DECODING, 0L);
  curl_easy_setopt(c->curl, CURLOPT_TCP_NODELAY, 1L);
  CURLcode rc = curl_easy_perform(c->curl);
  if (s->status == 0)
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &s->status);

  int ret = 0;
  if (x.stopped) {
    ret = 0;
  } else if (s->status >= 400 && (rc == CURLE_OK || x.failed)) {
    print_answer_error(c, s->status, x.err.p, x.err.len);
    ret = -1;
  } else if (rc != CURLE_OK) {
    print_transfer_error(c, rc);
    ret = -1;
  }
  free(x.err.p);
  return ret;
}

char *sg_url_escape(const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  size_t n = strlen(s);
  char *out = xmalloc(n * 3 + 1), *o = out;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (isalnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~') {
      *o++ = (char)*p;
    } else {
      *o++ = '%';
      *o++ = hex[*p >> 4];
      *o++ = hex[*p & 15];
    }
  }
  *o = '\0';
  return out;
}

/* ---- output ------------------------------------------------------------------ */

void sg_print_json(const json_t *j) {
  cleanup_free char *s = json_dumps(j, JSON_INDENT(2) | JSON_ENCODE_ANY);
  if (!s)
    oom();
  puts(s);
}

const char *sg_cell(const json_t *j, char *buf, size_t len) {
  if (len == 0)
    return buf;
  switch (json_typeof(j)) {
  case JSON_STRING:
    snprintf(buf, len, "%s", json_string_value(j));
    break;
  case JSON_INTEGER:
    snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(j));
    break;
  case JSON_REAL:
    snprintf(buf, len, "%g", json_real_value(j));
    break;
  case JSON_TRUE:
    snprintf(buf, len, "true");
    break;
  case JSON_FALSE:
    snprintf(buf, len, "false");
    break;
  case JSON_ARRAY: {
    size_t used = 0, i;
    json_t *v;
    buf[0] = '\0';
    json_array_foreach(j, i, v) {
      char cell[128];
      sg_cell(v, cell, sizeof cell);
      int w = snprintf(buf + used, len - used, "%s%s", i ? "," : "", cell);
      if (w < 0 || (size_t)w >= len - used)
        break;
      used += (size_t)w;
    }
    if (!buf[0])
      snprintf(buf, len, "-");
    break;
  }
  default:
    snprintf(buf, len, "-");
    break;
  }
  return buf;
}

struct sg_table {
  size_t ncols, nrows, cap;
  char **cells; /* (nrows + 1) * ncols: the headers first */
};

static void table_push(struct sg_table *t, const char *const *cells) {
  if (t->nrows + 1 >= t->cap) {
    t->cap = t->cap ? t->cap * 2 : 16;
    t->cells = xrealloc(t->cells, t->cap * t->ncols * sizeof *t->cells);
  }
  char **row = t->cells + t->nrows * t->ncols;
  for (size_t i = 0; i < t->ncols; i++)
    row[i] = xstrdup(cells[i] ? cells[i] : "-");
  t->nrows++;
}

struct sg_table *sg_table_new(size_t ncols, const char *const *headers) {
  struct sg_table *t = xmalloc(sizeof *t);
  *t = (struct sg_table){.ncols = ncols};
  table_push(t, headers);
  return t;
}

void sg_table_add(struct sg_table *t, const char *const *cells) { table_push(t, cells); }

void sg_table_print(const struct sg_table *t, FILE *f) {
  cleanup_free size_t *width = xmalloc(t->ncols * sizeof *width);
  for (size_t c = 0; c < t->ncols; c++) {
    width[c] = 0;
    for (size_t r = 0; r < t->nrows; r++) {
      size_t w = strlen(t->cells[r * t->ncols + c]);
      if (w > width[c])
        width[c] = w;
    }
  }
  for (size_t r = 0; r < t->nrows; r++) {
    for (size_t c = 0; c < t->ncols; c++) {
      const char *cell = t->cells[r * t->ncols + c];
      if (c + 1 < t->ncols)
        fprintf(f, "%-*s  ", (int)width[c], cell);
      else
        fputs(cell, f);
    }
    fputc('\n', f);
  }
}

void sg_table_free(struct sg_table *t) {
  if (!t)
    return;
  for (size_t i = 0; i < t->nrows * t->ncols; i++)
    free(t->cells[i]);
  free(t->cells);
  free(t);
}

/* ---- input files ----------------------------------------------------------------- */

char *sg_load_file(const char *path, size_t max, size_t *len) {
  bool is_stdin = strcmp(path, "-") == 0;
  cleanup_fclose FILE *f = is_stdin ? NULL : fopen(path, "rbe");
  if (!is_stdin && !f) {
    sg_cli_errorf("%s: %s", path, strerror(errno));
    return NULL;
  }
  FILE *in = is_stdin ? stdin : f;
  struct buf b = {0};
  char chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, in)) > 0) {
    if (b.len + n > max) {
      sg_cli_errorf("%s: larger than %zu bytes", is_stdin ? "standard input" : path, max);
      free(b.p);
      return NULL;
    }
    buf_append(&b, chunk, n);
  }
  if (ferror(in)) {
    sg_cli_errorf("%s: %s", is_stdin ? "standard input" : path, strerror(errno));
    free(b.p);
    return NULL;
  }
  *len = b.len;
  return b.p ? b.p : xstrdup("");
}

json_t *sg_load_json_file(const char *path) {
  const char *name = strcmp(path, "-") == 0 ? "standard input" : path;
  size_t len;
  cleanup_free char *data = sg_load_file(path, MAX_ANSWER_BYTES, &len);
  if (!data)
    return NULL;
  json_error_t jerr;
  json_t *j = json_loadb(data, len, 0, &jerr);
  if (!j) {
    sg_cli_errorf("%s: line %d: %s", name, jerr.line, jerr.text);
    return NULL;
  }
  if (!json_is_object(j)) {
    sg_cli_errorf("%s: not a JSON object", name);
    json_decref(j);
    return NULL;
  }
  return j;
}
