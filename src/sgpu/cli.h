/* What the sgpu CLI's commands share: the global options, usage errors,
 * output tables and input files, and the calls into libsgpu's API client
 * (include/sgpu/client.h) that print its errors.
 *
 * Requests that fail (network error or an HTTP status >= 400) print exactly
 * one line, "sgpu: <message>", to stderr from this module and record the exit
 * status that the failure means (sg_cli_fail_exit); commands only return
 * SG_EXIT_FAIL, which main() turns into that status. */
#ifndef SGPU_CLI_H
#define SGPU_CLI_H

#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "sgpu/client.h"
#include "sgpu/util.h"

static inline void curl_slist_freep(struct curl_slist **l) { curl_slist_free_all(*l); }
static inline void cli_json_decrefp(json_t **j) { json_decref(*j); }
#define cleanup_json __attribute__((cleanup(cli_json_decrefp)))
#define cleanup_slist __attribute__((cleanup(curl_slist_freep)))
#define cleanup_response cleanup_client_response
#define cleanup_table __attribute__((cleanup(sg_table_freep)))

/* Exit statuses of the sgpu command (listed in 'sgpu --help'). */
enum {
  SG_EXIT_OK = 0,
  SG_EXIT_FAIL = 1,      /* any other failure (a job that did not complete, an unexpected answer) */
  SG_EXIT_USAGE = 2,     /* bad command line or unreadable input file */
  SG_EXIT_NOT_FOUND = 3, /* the API answered 404 */
  SG_EXIT_REFUSED = 4,   /* the API answered another 4xx: 400, 401, 403, 409, 413, 422, 429 */
  SG_EXIT_SERVER = 5,    /* the API answered 5xx, or the server could not be reached */
};

/* The exit status of the last failed request (0: none failed); main()
 * returns it in place of SG_EXIT_FAIL. */
extern int sg_cli_fail_exit;

/* Options every command accepts, before or after its own arguments. */
struct sg_cli_options {
  const char *url;      /* --url */
  const char *key;      /* --key */
  const char *data_dir; /* --data-dir */
  bool json;            /* --json or -o json: print the API's JSON instead of tables */
};

extern struct sg_cli_options sg_cli_opts;

enum {
  SG_OPT_URL = 1000,
  SG_OPT_KEY,
  SG_OPT_DATA_DIR,
  SG_OPT_JSON,
};

/* Entries for a command's getopt_long table; handle them with sg_cli_global_option(). */
#define SG_CLI_GLOBAL_OPTIONS                                                                                          \
  {"url", required_argument, NULL, SG_OPT_URL}, {"key", required_argument, NULL, SG_OPT_KEY},                          \
      {"data-dir", required_argument, NULL, SG_OPT_DATA_DIR}, {"json", no_argument, NULL, SG_OPT_JSON},                \
      {"output", required_argument, NULL, 'o'}, {                                                                      \
    "help", no_argument, NULL, 'h'                                                                                     \
  }

/* The short options every command accepts (prefix of its getopt string). */
#define SG_CLI_SHORT ":ho:"

/* Records a global option returned by getopt_long. Returns true when ch was
 * one. An -o value other than json or table ends the program (usage). */
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

/* ---- requests ------------------------------------------------------------ */

/* Resolves the server from the global options (sg_client_resolve()) and opens
 * a client. Returns NULL after printing why. */
sg_client_t *sg_cli_connect(void);

/* sg_client_call() that prints the error. Returns 0 or -1. */
int sg_cli_call(sg_client_t *c, const char *method, const char *path, json_t *body, sg_client_response_t *resp);

/* sg_client_stream() that prints the error. Returns 0 or -1. */
int sg_cli_stream(sg_client_t *c, sg_client_stream_t *s);

/* ---- output helpers ------------------------------------------------------ */

/* Prints the answer's body as is, ending with a newline. Returns SG_EXIT_OK. */
int sg_print_raw(const sg_client_response_t *r);

/* One request whose success is told in a line: sg_cli_call(), then the
 * answer as is with -o json, else the line fmt. Returns SG_EXIT_OK, or
 * SG_EXIT_FAIL after printing the error. */
int sg_cli_send(sg_client_t *c, const char *method, const char *path, json_t *body, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* The width to cut table lines to: 0 when standard output is not a
 * terminal (never cut), else $COLUMNS or the terminal's width. */
size_t sg_cli_term_width(void);

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
/* Prints the table; lines are cut to sg_cli_term_width() when f is stdout. */
void sg_table_print(const struct sg_table *t, FILE *f);
/* Sorts the rows (not the headers) by column col, descending when desc. */
void sg_table_sort(struct sg_table *t, size_t col, bool desc);
void sg_table_free(struct sg_table *t);
static inline void sg_table_freep(struct sg_table **t) { sg_table_free(*t); }

/* Reads a JSON object from path ("-": standard input). Returns NULL after
 * printing why. */
json_t *sg_load_json_file(const char *path);

/* Reads a whole file ("-": standard input) of at most max bytes into a
 * NUL-terminated buffer; *len gets its length. Returns NULL after printing
 * why. The caller frees the buffer. */
char *sg_load_file(const char *path, size_t max, size_t *len);

/* A secret from the command line: arg itself, the contents of @FILE, or
 * standard input when arg is NULL (from a file or standard input, one final
 * newline is removed). *len gets its length. Returns NULL after printing
 * why. The caller frees (and should clear) it. */
char *sg_cli_secret_value(const char *arg, size_t max, size_t *len);

/* ---- commands ------------------------------------------------------------- */

/* Each command receives argv[0] = its name and returns an exit status. */
int sg_cmd_endpoint(int argc, char **argv);
int sg_cmd_invoke(int argc, char **argv);
int sg_cmd_workers(int argc, char **argv);
int sg_cmd_logs(int argc, char **argv);
int sg_cmd_nodes(int argc, char **argv);
int sg_cmd_usage(int argc, char **argv);
int sg_cmd_keys(int argc, char **argv);
int sg_cmd_jobs(int argc, char **argv);
int sg_cmd_images(int argc, char **argv);
int sg_cmd_registry_auth(int argc, char **argv);
int sg_cmd_secrets(int argc, char **argv);
int sg_cmd_volumes(int argc, char **argv);

extern const char sg_endpoint_help[];
extern const char sg_invoke_help[];
extern const char sg_workers_help[];
extern const char sg_logs_help[];
extern const char sg_nodes_help[];
extern const char sg_usage_help[];
extern const char sg_keys_help[];
extern const char sg_jobs_help[];
extern const char sg_images_help[];
extern const char sg_registry_auth_help[];
extern const char sg_secrets_help[];
extern const char sg_volumes_help[];

/* Runs one action of a command from its argv (after the options): finds
 * args[0] in acts, checks the count of arguments, connects and calls it. */
struct sg_cli_action {
  const char *name;
  int min_args, max_args; /* besides the action's name */
  int (*fn)(sg_client_t *c, int nargs, char **args);
  const char *usage; /* "NAME VALUE": shown when the count is wrong */
};
int sg_cli_run_action(const char *cmd, const struct sg_cli_action *acts, size_t n, int nargs, char **args);

/* "/v1/<a>/<escaped b>[/<c>]" (b, c may be NULL). Caller frees. */
char *sg_cli_path(const char *a, const char *b, const char *c);

#endif
