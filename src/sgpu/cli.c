/* The helpers the sgpu CLI's commands share; requests go through libsgpu's
 * API client (include/sgpu/client.h) and its errors are printed here. */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define SG_USER_AGENT "sgpu-cli"
/* Bound on JSON input files. */
#define MAX_INPUT_BYTES ((size_t)64 * 1024 * 1024)

struct sg_cli_options sg_cli_opts;
int sg_cli_fail_exit;

/* The exit status a failed request means (see cli.h). */
static int exit_for(const sg_error_t *err) {
  switch (err->status) {
  case SG_ENOTFOUND:
    return SG_EXIT_NOT_FOUND;
  case EACCES:
  case EPERM:
    return SG_EXIT_REFUSED;
  default:
    return SG_EXIT_SERVER;
  }
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
  case 'o':
    if (strcmp(arg, "json") && strcmp(arg, "table"))
      exit(sg_cli_usage_error(NULL, "-o %s: the output format is json or table", arg));
    sg_cli_opts.json = !strcmp(arg, "json");
    return true;
  default:
    return false;
  }
}

/* ---- requests -------------------------------------------------------------------- */

sg_client_t *sg_cli_connect(void) {
  cleanup_error sg_error_t *err = NULL;
  sg_client_flags_t flags = {.url = sg_cli_opts.url, .key = sg_cli_opts.key, .data_dir = sg_cli_opts.data_dir};
  sg_client_target_t t;
  if (sg_client_resolve(&flags, &t, &err) < 0) {
    sg_cli_errorf("%s", err->message);
    sg_cli_fail_exit = SG_EXIT_SERVER;
    return NULL;
  }
  sg_client_options_t opts = {.user_agent = SG_USER_AGENT};
  sg_client_t *c = sg_client_open(&t, &opts, &err);
  sg_client_target_free(&t);
  if (!c) {
    sg_cli_errorf("%s", err->message);
    sg_cli_fail_exit = SG_EXIT_SERVER;
  }
  return c;
}

int sg_cli_call(sg_client_t *c, const char *method, const char *path, json_t *body, sg_client_response_t *resp) {
  cleanup_error sg_error_t *err = NULL;
  if (sg_client_call(c, method, path, body, resp, &err) < 0) {
    sg_cli_errorf("%s", err->message);
    sg_cli_fail_exit = exit_for(err);
    return -1;
  }
  return 0;
}

int sg_cli_stream(sg_client_t *c, sg_client_stream_t *s) {
  cleanup_error sg_error_t *err = NULL;
  if (sg_client_stream(c, s, &err) < 0) {
    sg_cli_errorf("%s", err->message);
    sg_cli_fail_exit = exit_for(err);
    return -1;
  }
  return 0;
}

/* ---- output ------------------------------------------------------------------ */

int sg_print_raw(const sg_client_response_t *r) {
  fwrite(r->body, 1, r->len, stdout);
  if (r->len && r->body[r->len - 1] != '\n')
    putchar('\n');
  return SG_EXIT_OK;
}

int sg_cli_send(sg_client_t *c, const char *method, const char *path, json_t *body, const char *fmt, ...) {
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, method, path, body, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json)
    return sg_print_raw(&r);
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  return SG_EXIT_OK;
}

size_t sg_cli_term_width(void) {
  if (!isatty(STDOUT_FILENO))
    return 0;
  const char *cols = getenv("COLUMNS");
  char *end;
  long n = cols ? strtol(cols, &end, 10) : 0;
  if (cols && *cols && !*end && n > 0)
    return (size_t)n;
  struct winsize ws;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
    return ws.ws_col;
  return 0;
}

void sg_print_json(const json_t *j) {
  cleanup_free char *s = json_dumps(j, JSON_INDENT(2) | JSON_ENCODE_ANY);
  if (!s)
    abort();
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
  size_t cut = f == stdout ? sg_cli_term_width() : 0;
  cleanup_strbuf sg_strbuf_t line = SG_STRBUF_INIT;
  for (size_t r = 0; r < t->nrows; r++) {
    line.len = 0;
    for (size_t c = 0; c < t->ncols; c++) {
      const char *cell = t->cells[r * t->ncols + c];
      if (c + 1 < t->ncols)
        sg_strbuf_appendf(&line, "%-*s  ", (int)width[c], cell);
      else
        sg_strbuf_append(&line, cell);
    }
    size_t n = line.len;
    if (cut && n > cut) {
      n = cut;
      while (n > 0 && ((unsigned char)line.s[n] & 0xC0) == 0x80)
        n--; /* not inside a UTF-8 sequence */
    }
    fwrite(line.s, 1, n, f);
    fputc('\n', f);
  }
}

static size_t sort_col;
static bool sort_desc;
static int row_cmp(const void *a, const void *b) {
  int c = strcmp(((char *const *)a)[sort_col], ((char *const *)b)[sort_col]);
  return sort_desc ? -c : c;
}

void sg_table_sort(struct sg_table *t, size_t col, bool desc) {
  if (t->nrows < 3 || col >= t->ncols)
    return;
  sort_col = col;
  sort_desc = desc;
  qsort(t->cells + t->ncols, t->nrows - 1, t->ncols * sizeof *t->cells, row_cmp);
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
  cleanup_strbuf sg_strbuf_t b = SG_STRBUF_INIT;
  char chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, in)) > 0) {
    if (b.len + n > max) {
      sg_cli_errorf("%s: larger than %zu bytes", is_stdin ? "standard input" : path, max);
      return NULL;
    }
    sg_strbuf_append_n(&b, chunk, n);
  }
  if (ferror(in)) {
    sg_cli_errorf("%s: %s", is_stdin ? "standard input" : path, strerror(errno));
    return NULL;
  }
  *len = b.len;
  return sg_strbuf_steal(&b);
}

json_t *sg_load_json_file(const char *path) {
  const char *name = strcmp(path, "-") == 0 ? "standard input" : path;
  size_t len;
  cleanup_free char *data = sg_load_file(path, MAX_INPUT_BYTES, &len);
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

/* ---- actions ------------------------------------------------------------------- */

int sg_cli_run_action(const char *cmd, const struct sg_cli_action *acts, size_t n, int nargs, char **args) {
  if (nargs < 1) {
    cleanup_strbuf sg_strbuf_t names = SG_STRBUF_INIT;
    for (size_t i = 0; i < n; i++)
      sg_strbuf_appendf(&names, "%s%s", i ? ", " : "", acts[i].name);
    return sg_cli_usage_error(cmd, "%s: needs an action: %s", cmd, names.s);
  }
  const struct sg_cli_action *a = NULL;
  for (size_t i = 0; i < n && !a; i++)
    if (!strcmp(acts[i].name, args[0]))
      a = &acts[i];
  if (!a)
    return sg_cli_usage_error(cmd, "%s: unknown action '%s'", cmd, args[0]);
  if (nargs - 1 < a->min_args || nargs - 1 > a->max_args)
    return sg_cli_usage_error(cmd, "%s %s: takes %s", cmd, a->name, a->usage);
  cleanup_client sg_client_t *c = sg_cli_connect();
  if (!c)
    return SG_EXIT_FAIL;
  return a->fn(c, nargs - 1, args + 1);
}

char *sg_cli_path(const char *a, const char *b, const char *c) {
  if (!b)
    return xasprintf("/v1/%s", a);
  cleanup_free char *eb = sg_client_escape(b);
  if (!c)
    return xasprintf("/v1/%s/%s", a, eb);
  return xasprintf("/v1/%s/%s/%s", a, eb, c);
}
