/* The sgpu CLI's HTTP client and the helpers its commands share.
 *
 * A client holds the resolved server URL and API key and one reusable curl
 * handle. Requests that fail (network error or an HTTP status >= 400) print
 * exactly one line, "sgpu: <message>", to stderr from this module; commands
 * only turn the failure into exit status 1. */
#ifndef SGPU_CLI_CLIENT_H
#define SGPU_CLI_CLIENT_H

#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- memory and cleanup ------------------------------------------------- */

/* Allocation that aborts on failure: running out of memory is not an error path. */
void *xmalloc(size_t n);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static inline void freep(void *p) { free(*(void **)p); }
static inline void curl_slist_freep(struct curl_slist **l) { curl_slist_free_all(*l); }
static inline void fclosep(FILE **f) {
  if (*f)
    fclose(*f);
}
#define cleanup_free __attribute__((cleanup(freep)))
#define cleanup_json __attribute__((cleanup(json_decrefp))) /* jansson >= 2.11 */
#define cleanup_slist __attribute__((cleanup(curl_slist_freep)))
#define cleanup_fclose __attribute__((cleanup(fclosep)))
#define cleanup_response __attribute__((cleanup(sg_response_free)))
#define cleanup_client __attribute__((cleanup(sg_client_close)))
#define cleanup_table __attribute__((cleanup(sg_table_freep)))

#define SG_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Exit statuses of the sgpu command. */
enum {
  SG_EXIT_OK = 0,
  SG_EXIT_FAIL = 1,  /* the API answered an error, or the server could not be reached */
  SG_EXIT_USAGE = 2, /* bad command line or unreadable input file */
};

/* Options every command accepts, before or after its own arguments. */
struct sg_cli_options {
  const char *url;      /* --url */
  const char *key;      /* --key */
  const char *data_dir; /* --data-dir */
  bool json;            /* --json: print the API's JSON instead of tables */
};

extern struct sg_cli_options sg_cli_opts;

enum {
  SG_OPT_URL = 1000,
  SG_OPT_KEY,
  SG_OPT_DATA_DIR,
  SG_OPT_JSON,
};

/* Entries for a command's getopt_long table; handle them with sg_cli_global_option(). */
#define SG_CLI_GLOBAL_OPTIONS                                  \
  {"url", required_argument, NULL, SG_OPT_URL},                \
      {"key", required_argument, NULL, SG_OPT_KEY},            \
      {"data-dir", required_argument, NULL, SG_OPT_DATA_DIR},  \
      {"json", no_argument, NULL, SG_OPT_JSON},                \
      {"help", no_argument, NULL, 'h'}

/* Records a global option returned by getopt_long. Returns true when ch was one. */
bool sg_cli_global_option(int ch, const char *arg);

/* Reports a getopt_long failure (ch is '?' or ':'; short option strings start
 * with ':') for command cmd (NULL: the global options). Returns SG_EXIT_USAGE. */
int sg_cli_getopt_error(const char *cmd, int ch, char **argv);

/* Prints "sgpu: <message>" and, when cmd is not NULL, a pointer to its help.
 * Returns SG_EXIT_USAGE. */
int sg_cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints "sgpu: <message>" to stderr. */
void sg_cli_errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints the help text of command cmd to f. */
void sg_cli_print_help(const char *cmd, FILE *f);

/* ---- client ------------------------------------------------------------ */

struct sg_client {
  char *url; /* base URL, no trailing slash */
  char *key; /* API key, or NULL when none was found */
  const char *key_source; /* where the key came from, for error messages */
  char *key_file;         /* the admin.key file read, or NULL */
  CURL *curl;
  char errbuf[CURL_ERROR_SIZE];
};

/* An answer. body is NUL-terminated; json is the parsed body when it is JSON. */
struct sg_response {
  long status;
  char *body;
  size_t len;
  json_t *json;
};

/* Resolves URL and key from sg_cli_opts, then SGPU_URL / SGPU_API_KEY, then
 * the files url and admin.key in the data directory (--data-dir, else
 * SGPU_DATA_DIR, else $HOME/.sgpu). Returns 0, or -1 after printing why
 * (no URL anywhere). */
int sg_client_open(struct sg_client *c);
void sg_client_close(struct sg_client *c);

/* Sends method path (path starts with '/') with an optional JSON body and
 * reads the whole answer into *resp. Returns 0 on a 1xx-3xx answer; on a
 * network error or an answer >= 400 prints the error and returns -1, and
 * *resp is released. The caller releases *resp with sg_response_free(). */
int sg_client_request(struct sg_client *c, const char *method, const char *path, json_t *body,
                      struct sg_response *resp);

void sg_response_free(struct sg_response *resp);

/* Receives a piece of a streamed answer; returns 0 to go on, non-zero to stop. */
typedef int (*sg_data_fn)(const char *data, size_t len, void *ud);
/* Receives one header line of the answer (status line included), CRLF removed. */
typedef void (*sg_header_fn)(const char *line, size_t len, void *ud);

/* A streamed request: the answer is handed to on_data as it arrives. */
struct sg_stream {
  const char *method;
  const char *path;
  struct curl_slist *headers; /* extra request headers, owned by the caller */
  const char *body;           /* request body or NULL */
  size_t body_len;
  long timeout_s;             /* 0: no limit */
  sg_data_fn on_data;
  sg_header_fn on_header;     /* optional */
  void *ud;
  long status;                /* out: the answer's status, 0 when none came */
};

/* Runs a streamed request. Answers >= 400 are not passed to on_data: they are
 * read whole and printed as an error. Returns 0 when the answer (status < 400)
 * came in full or on_data stopped it, -1 after printing the error otherwise. */
int sg_client_stream(struct sg_client *c, struct sg_stream *s);

/* Percent-encodes s for a path segment or query value. Caller frees with free(). */
char *sg_url_escape(const char *s);

/* ---- output helpers ------------------------------------------------------ */

/* Prints j as indented JSON followed by a newline. */
void sg_print_json(const json_t *j);

/* Formats a JSON scalar for a table cell into buf: strings as is, numbers,
 * booleans; null or missing as "-"; an array as its cells joined by ","
 * ("-" when empty). Returns buf. */
const char *sg_cell(const json_t *j, char *buf, size_t len);

/* A table printed with columns padded to their widest cell. */
struct sg_table;
struct sg_table *sg_table_new(size_t ncols, const char *const *headers);
/* Appends a row of ncols cells; the strings are copied. */
void sg_table_add(struct sg_table *t, const char *const *cells);
void sg_table_print(const struct sg_table *t, FILE *f);
void sg_table_free(struct sg_table *t);
static inline void sg_table_freep(struct sg_table **t) { sg_table_free(*t); }

/* Reads a JSON object from path ("-": standard input). Returns NULL after
 * printing why. */
json_t *sg_load_json_file(const char *path);

/* Reads a whole file ("-": standard input) of at most max bytes into a
 * NUL-terminated buffer; *len gets its length. Returns NULL after printing
 * why. The caller frees the buffer. */
char *sg_load_file(const char *path, size_t max, size_t *len);

/* ---- commands ------------------------------------------------------------- */

/* Each command receives argv[0] = its name and returns an exit status. */
int sg_cmd_endpoint(int argc, char **argv);
int sg_cmd_invoke(int argc, char **argv);
int sg_cmd_workers(int argc, char **argv);
int sg_cmd_logs(int argc, char **argv);
int sg_cmd_nodes(int argc, char **argv);
int sg_cmd_usage(int argc, char **argv);

extern const char sg_endpoint_help[];
extern const char sg_invoke_help[];
extern const char sg_workers_help[];
extern const char sg_logs_help[];
extern const char sg_nodes_help[];
extern const char sg_usage_help[];

#endif
