/* sgpu secrets: set, list and remove secrets; values go to the server and
 * are never printed. */
#include "cli.h"

#include <string.h>

const char sg_secrets_help[] = "Usage: sgpu secrets list\n"
                               "       sgpu secrets set NAME [--value VALUE|@FILE]\n"
                               "       sgpu secrets rm NAME\n"
                               "\n"
                               "Stores a secret (created, or its value replaced), lists the secrets (names\n"
                               "and times only: no command shows a value), or removes one. Specs reference a\n"
                               "secret in env as {\"secret\": \"NAME\"}. The value comes from --value, from\n"
                               "@FILE, or from standard input; from a file or standard input one final\n"
                               "newline is removed.\n"
                               "\n"
                               "Options:\n"
                               "  --value VALUE    the value, or @FILE to read it from FILE\n";

#define CMD "secrets"
#define MAX_SECRET_BYTES ((size_t)65536)

enum { OPT_VALUE = 1 };

static const char *value_arg;

char *sg_cli_secret_value(const char *arg, size_t max, size_t *len) {
  if (arg && arg[0] != '@') {
    *len = strlen(arg);
    return xstrdup(arg);
  }
  char *v = sg_load_file(arg ? arg + 1 : "-", max, len);
  if (v && *len && v[*len - 1] == '\n')
    v[--*len] = '\0';
  return v;
}

static int secrets_list(sg_client_t *c, int nargs, char **args) {
  (void)nargs, (void)args;
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "GET", "/v1/secrets", NULL, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json)
    return sg_print_raw(&r);
  json_t *list = json_object_get(r.json, "secrets");
  if (!json_is_array(list)) {
    sg_cli_errorf("unexpected answer from the server: no secrets list");
    return SG_EXIT_FAIL;
  }
  static const char *const headers[] = {"NAME", "CREATED", "UPDATED"};
  cleanup_table struct sg_table *t = sg_table_new(SG_ARRAY_SIZE(headers), headers);
  size_t i;
  json_t *s;
  json_array_foreach(list, i, s) {
    char name[128], created[64], updated[64];
    sg_cell(json_object_get(s, "name"), name, sizeof name);
    sg_cell(json_object_get(s, "created_at"), created, sizeof created);
    sg_cell(json_object_get(s, "updated_at"), updated, sizeof updated);
    const char *cells[] = {name, created, updated};
    sg_table_add(t, cells);
  }
  sg_table_print(t, stdout);
  return SG_EXIT_OK;
}

static int secrets_set(sg_client_t *c, int nargs, char **args) {
  (void)nargs;
  size_t len;
  cleanup_free char *value = sg_cli_secret_value(value_arg, MAX_SECRET_BYTES, &len);
  if (!value)
    return SG_EXIT_USAGE;
  cleanup_json json_t *body = json_pack("{s:s%}", "value", value, len);
  explicit_bzero(value, len);
  cleanup_free char *path = sg_cli_path("secrets", args[0], NULL);
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "PUT", path, body, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json)
    return sg_print_raw(&r);
  printf("secret %s %s\n", args[0], r.status == 201 ? "created" : "updated");
  return SG_EXIT_OK;
}

static int secrets_rm(sg_client_t *c, int nargs, char **args) {
  (void)nargs;
  cleanup_free char *path = sg_cli_path("secrets", args[0], NULL);
  return sg_cli_send(c, "DELETE", path, NULL, "secret %s removed\n", args[0]);
}

static const struct sg_cli_action actions[] = {
    {"list", 0, 0, secrets_list, "no arguments"},
    {"set", 1, 1, secrets_set, "one secret NAME"},
    {"rm", 1, 1, secrets_rm, "one secret NAME"},
};

int sg_cmd_secrets(int argc, char **argv) {
  static const struct option options[] = {
      SG_CLI_GLOBAL_OPTIONS, {"value", required_argument, NULL, OPT_VALUE}, {NULL, 0, NULL, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, SG_CLI_SHORT "", options, NULL)) != -1) {
    if (sg_cli_global_option(ch, optarg))
      continue;
    switch (ch) {
    case 'h':
      sg_cli_print_help(CMD, stdout);
      return SG_EXIT_OK;
    case OPT_VALUE:
      value_arg = optarg;
      continue;
    default:
      return sg_cli_getopt_error(CMD, ch, argv);
    }
  }
  int nargs = argc - optind;
  char **args = argv + optind;
  if (value_arg && (nargs < 1 || strcmp(args[0], "set")))
    return sg_cli_usage_error(CMD, "secrets: --value is for set");
  return sg_cli_run_action(CMD, actions, SG_ARRAY_SIZE(actions), nargs, args);
}
