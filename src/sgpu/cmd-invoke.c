/* sgpu invoke: one request to an endpoint through the gateway, the answer
 * streamed to standard output as it arrives. */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

const char sg_invoke_help[] = "Usage: sgpu invoke NAME [PATH] [-X METHOD] [-d DATA | -f FILE] [-H 'NAME: VALUE']...\n"
                              "\n"
                              "Sends a request to /e/NAME/PATH (PATH may carry a query string) and writes the\n"
                              "answer's body to standard output as it arrives, so streamed answers (server-sent\n"
                              "events) show up as they are produced. The method is GET, or POST with a body.\n"
                              "A JSON body is sent as application/json unless -H sets Content-Type.\n"
                              "Exits 3 (404), 4 (another 4xx) or 5 (5xx) after printing the error when the\n"
                              "answer's status is 400 or more.\n"
                              "\n"
                              "Options:\n"
                              "  -X, --method METHOD  request method\n"
                              "  -d, --data DATA      request body\n"
                              "  -f, --file FILE      request body from FILE ('-': standard input)\n"
                              "  -H, --header 'K: V'  extra request header (repeatable)\n"
                              "  -i, --include        print the answer's status line and headers to standard error\n"
                              "  -t, --timeout SECS   give up after SECS seconds (default: no limit)\n";

#define CMD "invoke"
/* Largest body read from a file or standard input. */
#define MAX_BODY_BYTES ((size_t)1024 * 1024 * 1024)

struct invoke_out {
  bool include;
  bool wrote;
  char last;
};

static int on_data(const char *data, size_t len, void *ud) {
  struct invoke_out *o = ud;
  if (fwrite(data, 1, len, stdout) != len || fflush(stdout) != 0)
    return -1; /* the reader went away: stop */
  o->wrote = true;
  o->last = data[len - 1];
  return 0;
}

static void on_header(const char *line, size_t len, void *ud) {
  struct invoke_out *o = ud;
  if (o->include)
    fprintf(stderr, "%.*s\n", (int)len, line);
}

static bool has_header(const struct curl_slist *l, const char *name) {
  size_t n = strlen(name);
  for (; l; l = l->next)
    if (strncasecmp(l->data, name, n) == 0 && l->data[n] == ':')
      return true;
  return false;
}

static bool looks_like_json(const char *body, size_t len) {
  size_t i = 0;
  while (i < len && isspace((unsigned char)body[i]))
    i++;
  if (i == len || (body[i] != '{' && body[i] != '['))
    return false;
  json_t *j = json_loadb(body, len, 0, NULL);
  json_decref(j);
  return j != NULL;
}

static int parse_timeout(const char *s, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < 0 || v > 86400 * 365)
    return -1;
  *out = v;
  return 0;
}

int sg_cmd_invoke(int argc, char **argv) {
  static const struct option options[] = {SG_CLI_GLOBAL_OPTIONS,
                                          {"method", required_argument, NULL, 'X'},
                                          {"request", required_argument, NULL, 'X'},
                                          {"data", required_argument, NULL, 'd'},
                                          {"file", required_argument, NULL, 'f'},
                                          {"header", required_argument, NULL, 'H'},
                                          {"include", no_argument, NULL, 'i'},
                                          {"timeout", required_argument, NULL, 't'},
                                          {NULL, 0, NULL, 0}};
  const char *method = NULL, *data = NULL, *file = NULL;
  long timeout_s = 0;
  struct invoke_out out = {0};
  cleanup_slist struct curl_slist *headers = NULL;
  int ch;
  while ((ch = getopt_long(argc, argv, SG_CLI_SHORT "X:d:f:H:it:", options, NULL)) != -1) {
    if (sg_cli_global_option(ch, optarg))
      continue;
    switch (ch) {
    case 'h':
      sg_cli_print_help(CMD, stdout);
      return SG_EXIT_OK;
    case 'X':
      method = optarg;
      break;
    case 'd':
      data = optarg;
      break;
    case 'f':
      file = optarg;
      break;
    case 'H': {
      const char *colon = strchr(optarg, ':');
      if (!colon || colon == optarg || strpbrk(optarg, "\r\n"))
        return sg_cli_usage_error(CMD, "invoke: -H takes 'Name: value', not '%s'", optarg);
      headers = curl_slist_append(headers, optarg);
      break;
    }
    case 'i':
      out.include = true;
      break;
    case 't':
      if (parse_timeout(optarg, &timeout_s) < 0)
        return sg_cli_usage_error(CMD, "invoke: --timeout takes a number of seconds, not '%s'", optarg);
      break;
    default:
      return sg_cli_getopt_error(CMD, ch, argv);
    }
  }
  int nargs = argc - optind;
  if (nargs < 1)
    return sg_cli_usage_error(CMD, "invoke: needs an endpoint NAME");
  if (nargs > 2)
    return sg_cli_usage_error(CMD, "invoke: too many arguments (NAME [PATH])");
  if (data && file)
    return sg_cli_usage_error(CMD, "invoke: give -d or -f, not both");
  if (method) {
    for (const char *p = method; *p; p++)
      if (!isalpha((unsigned char)*p))
        return sg_cli_usage_error(CMD, "invoke: '%s' is not a method", method);
    if (!*method)
      return sg_cli_usage_error(CMD, "invoke: -X needs a method");
  }
  const char *name = argv[optind];
  const char *rel = nargs == 2 ? argv[optind + 1] : "/";
  if (!*name)
    return sg_cli_usage_error(CMD, "invoke: needs an endpoint NAME");

  cleanup_free char *file_body = NULL;
  size_t body_len = 0;
  const char *body = NULL;
  if (file) {
    file_body = sg_load_file(file, MAX_BODY_BYTES, &body_len);
    if (!file_body)
      return SG_EXIT_USAGE;
    body = file_body;
  } else if (data) {
    body = data;
    body_len = strlen(data);
  }
  if (body && !has_header(headers, "Content-Type"))
    headers = curl_slist_append(headers, looks_like_json(body, body_len) ? "Content-Type: application/json"
                                                                         : "Content-Type: application/octet-stream");

  cleanup_free char *esc = sg_client_escape(name);
  cleanup_free char *path = xasprintf("/e/%s%s%s", esc, rel[0] == '/' ? "" : "/", rel);

  cleanup_client sg_client_t *c = sg_cli_connect();
  if (!c)
    return SG_EXIT_FAIL;
  sg_client_stream_t s = {
      .method = method ? method : (body ? "POST" : "GET"),
      .path = path,
      .headers = headers,
      .body = body,
      .body_len = body_len,
      .timeout_s = timeout_s,
      .on_data = on_data,
      .on_header = on_header,
      .ud = &out,
  };
  int r = sg_cli_stream(c, &s);
  /* A terminal gets its prompt back on a line of its own. */
  if (out.wrote && out.last != '\n' && isatty(STDOUT_FILENO))
    putchar('\n');
  return r < 0 ? SG_EXIT_FAIL : SG_EXIT_OK;
}
