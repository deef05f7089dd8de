/* sgpu logs: query or follow the logs of an endpoint (NDJSON from the API). */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <time.h>

const char sg_logs_help[] = "Usage: sgpu logs NAME [--worker ID] [--stream S] [--request-id ID]\n"
                            "                 [--since T] [--until T] [-q TEXT] [--limit N] [-f]\n"
                            "\n"
                            "Prints the log lines of endpoint NAME (its workers' stdout and stderr and the\n"
                            "platform's events) as TIME WORKER STREAM LINE, oldest first; --json prints each\n"
                            "line as the API's JSON object.\n"
                            "\n"
                            "Options:\n"
                            "  -w, --worker ID    only the lines of worker ID\n"
                            "  -s, --stream S     only stream S: stdout, stderr or event\n"
                            "  -r, --request-id ID\n"
                            "                     only the lines stored with request (or job) id ID\n"
                            "      --since T      lines from T on: epoch milliseconds or a duration before now\n"
                            "                     (30s, 10m, 2h)\n"
                            "      --until T      lines up to T (same forms)\n"
                            "  -q, --grep TEXT    only lines that contain TEXT\n"
                            "  -n, --limit N      the newest N lines (the server's default is 1000)\n"
                            "  -f, --follow       keep printing new lines as they come, until interrupted or\n"
                            "                     the endpoint is deleted (then exit 0 with a message)\n";

#define CMD "logs"
/* A longer line is printed as it is, unparsed. */
#define MAX_LINE ((size_t)1024 * 1024)

enum { OPT_SINCE = 1100, OPT_UNTIL };

struct logs_query {
  const char *worker, *stream, *request_id, *since, *until, *q, *limit;
  bool follow;
};

struct logs_out {
  char *line; /* the incomplete line carried over between pieces */
  size_t len, cap;
  long long last_ts; /* ts of the newest line printed, -1 before any */
  bool failed;       /* standard output could not be written */
};

static void print_line(struct logs_out *o, const char *line, size_t len) {
  while (len > 0 && line[len - 1] == '\r')
    len--;
  if (len == 0)
    return;
  cleanup_json json_t *j = json_loadb(line, len, 0, NULL);
  json_t *ts = json_object_get(j, "ts");
  if (json_is_integer(ts) && json_integer_value(ts) > o->last_ts)
    o->last_ts = json_integer_value(ts);
  if (!json_is_object(j) || sg_cli_opts.json) {
    fwrite(line, 1, len, stdout);
    putchar('\n');
    return;
  }
  char time_s[64], worker[64], stream[32];
  const json_t *t = json_object_get(j, "time");
  if (json_is_string(t)) {
    sg_cell(t, time_s, sizeof time_s);
  } else if (json_is_integer(ts)) {
    time_t secs = (time_t)(json_integer_value(ts) / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(time_s, sizeof time_s, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(time_s + n, sizeof time_s - n, ".%03dZ", (int)(json_integer_value(ts) % 1000));
  } else {
    snprintf(time_s, sizeof time_s, "-");
  }
  sg_cell(json_object_get(j, "worker"), worker, sizeof worker);
  sg_cell(json_object_get(j, "stream"), stream, sizeof stream);
  const char *text = json_string_value(json_object_get(j, "line"));
  printf("%s %s %s %s\n", time_s, worker, stream, text ? text : "");
}

static int on_data(const char *data, size_t len, void *ud) {
  struct logs_out *o = ud;
  while (len > 0) {
    const char *nl = memchr(data, '\n', len);
    size_t n = nl ? (size_t)(nl - data) : len;
    if (o->len + n > MAX_LINE) {
      print_line(o, o->line, o->len);
      o->len = 0;
    }
    if (o->len == 0 && nl) {
      print_line(o, data, n);
    } else {
      if (o->len + n + 1 > o->cap) {
        o->cap = o->len + n + 1 > 2 * o->cap ? o->len + n + 1 : 2 * o->cap;
        o->line = xrealloc(o->line, o->cap);
      }
      memcpy(o->line + o->len, data, n);
      o->len += n;
      if (nl) {
        print_line(o, o->line, o->len);
        o->len = 0;
      }
    }
    data += nl ? n + 1 : n;
    len -= nl ? n + 1 : n;
  }
  if (fflush(stdout) != 0) {
    o->failed = true;
    return -1;
  }
  return 0;
}

static void add_param(char **qs, const char *key, const char *value) {
  if (!value)
    return;
  cleanup_free char *esc = sg_client_escape(value);
  char *next = xasprintf("%s%s%s=%s", *qs, **qs ? "&" : "?", key, esc);
  free(*qs);
  *qs = next;
}

static char *logs_path(const char *name, const struct logs_query *q, long long since_ts) {
  cleanup_free char *esc = sg_client_escape(name);
  cleanup_free char *qs = xstrdup("");
  char since_buf[32];
  const char *since = q->since;
  if (since_ts >= 0) {
    snprintf(since_buf, sizeof since_buf, "%lld", since_ts);
    since = since_buf;
  }
  add_param(&qs, "worker", q->worker);
  add_param(&qs, "stream", q->stream);
  add_param(&qs, "request_id", q->request_id);
  add_param(&qs, "since", since);
  add_param(&qs, "until", q->until);
  add_param(&qs, "q", q->q);
  add_param(&qs, "limit", q->limit);
  if (q->follow)
    add_param(&qs, "follow", "1");
  return xasprintf("/v1/endpoints/%s/logs%s", esc, qs);
}

static bool is_count(const char *s) {
  if (!*s || strlen(s) > 9)
    return false;
  for (; *s; s++)
    if (!isdigit((unsigned char)*s))
      return false;
  return true;
}

/* True when the server says there is no endpoint name (sgpud ends a
 * follow's answer when its endpoint is deleted). Other failures say no: the
 * follow then tries again. */
static bool endpoint_gone(sg_client_t *c, const char *name) {
  cleanup_free char *esc = sg_client_escape(name);
  cleanup_free char *path = xasprintf("/v1/endpoints/%s", esc);
  cleanup_response sg_client_response_t r = {0};
  cleanup_error sg_error_t *err = NULL;
  return sg_client_call(c, "GET", path, NULL, &r, &err) < 0 && err->status == SG_ENOTFOUND;
}

int sg_cmd_logs(int argc, char **argv) {
  static const struct option options[] = {SG_CLI_GLOBAL_OPTIONS,
                                          {"worker", required_argument, NULL, 'w'},
                                          {"stream", required_argument, NULL, 's'},
                                          {"request-id", required_argument, NULL, 'r'},
                                          {"since", required_argument, NULL, OPT_SINCE},
                                          {"until", required_argument, NULL, OPT_UNTIL},
                                          {"grep", required_argument, NULL, 'q'},
                                          {"limit", required_argument, NULL, 'n'},
                                          {"follow", no_argument, NULL, 'f'},
                                          {NULL, 0, NULL, 0}};
  struct logs_query q = {0};
  int ch;
  while ((ch = getopt_long(argc, argv, SG_CLI_SHORT "w:s:r:q:n:f", options, NULL)) != -1) {
    if (sg_cli_global_option(ch, optarg))
      continue;
    switch (ch) {
    case 'h':
      sg_cli_print_help(CMD, stdout);
      return SG_EXIT_OK;
    case 'w':
      q.worker = optarg;
      break;
    case 's':
      if (strcmp(optarg, "stdout") != 0 && strcmp(optarg, "stderr") != 0 && strcmp(optarg, "event") != 0)
        return sg_cli_usage_error(CMD, "logs: --stream takes stdout, stderr or event, not '%s'", optarg);
      q.stream = optarg;
      break;
    case 'r':
      q.request_id = optarg;
      break;
    case OPT_SINCE:
      q.since = optarg;
      break;
    case OPT_UNTIL:
      q.until = optarg;
      break;
    case 'q':
      q.q = optarg;
      break;
    case 'n':
      if (!is_count(optarg))
        return sg_cli_usage_error(CMD, "logs: --limit takes a number of lines, not '%s'", optarg);
      q.limit = optarg;
      break;
    case 'f':
      q.follow = true;
      break;
    default:
      return sg_cli_getopt_error(CMD, ch, argv);
    }
  }
  if (argc - optind != 1)
    return sg_cli_usage_error(CMD, "logs: needs one endpoint NAME");
  const char *name = argv[optind];

  cleanup_client sg_client_t *c = sg_cli_connect();
  if (!c)
    return SG_EXIT_FAIL;
  cleanup_slist struct curl_slist *headers = curl_slist_append(NULL, "Accept: application/x-ndjson");
  struct logs_out out = {.last_ts = -1};
  int ret = SG_EXIT_OK;
  for (;;) {
    /* Following again after the server closed the answer resumes after the
     * newest line already printed. */
    cleanup_free char *path = logs_path(name, &q, out.last_ts >= 0 ? out.last_ts + 1 : -1);
    sg_client_stream_t s = {
        .method = "GET",
        .path = path,
        .headers = headers,
        .timeout_s = q.follow ? 0 : 300,
        .on_data = on_data,
        .ud = &out,
    };
    if (sg_cli_stream(c, &s) < 0) {
      ret = SG_EXIT_FAIL;
      break;
    }
    if (out.len > 0) {
      print_line(&out, out.line, out.len);
      out.len = 0;
      fflush(stdout);
    }
    if (!q.follow || out.failed)
      break;
    if (endpoint_gone(c, name)) {
      sg_cli_errorf("endpoint %s was deleted; the logs end here", name);
      break;
    }
    struct timespec pause = {.tv_sec = 1};
    while (nanosleep(&pause, &pause) < 0 && errno == EINTR) {
    }
  }
  free(out.line);
  return ret;
}
