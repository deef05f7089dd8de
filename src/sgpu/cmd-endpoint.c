/* sgpu endpoint: create, list, get, update, patch and delete endpoints; list
 * their kept versions and roll back to one. */
#include "cli.h"

#include <string.h>

const char sg_endpoint_help[] = "Usage: sgpu endpoint create -f SPEC.json\n"
                                "       sgpu endpoint list\n"
                                "       sgpu endpoint get NAME\n"
                                "       sgpu endpoint update NAME -f SPEC.json\n"
                                "       sgpu endpoint patch NAME -f PATCH.json\n"
                                "       sgpu endpoint versions NAME\n"
                                "       sgpu endpoint rollback NAME VERSION\n"
                                "       sgpu endpoint delete NAME\n"
                                "\n"
                                "Manages endpoints. create sends a new spec; update replaces the spec of NAME\n"
                                "(its version is bumped; workers are replaced one by one when the change needs\n"
                                "it, else they go on); patch applies a JSON merge patch (RFC 7386) to the spec;\n"
                                "versions lists the kept specs; rollback makes a new version with the spec of\n"
                                "VERSION; get prints the endpoint with its status as JSON (status.state: serving,\n"
                                "starting, scaled_to_zero, crash_loop, image_pull_failed, unschedulable; list\n"
                                "shows it as STATE); delete stops its workers and removes it.\n"
                                "list shows NAME, TYPE (sync or async), STATE, READY/DESIRED workers, IN FLIGHT\n"
                                "and QUEUED requests (jobs for async) and LAST ERROR; on a terminal, lines are\n"
                                "cut to its width ($COLUMNS, else the terminal's).\n"
                                "\n"
                                "Options:\n"
                                "  -f, --file FILE  the endpoint spec (JSON); '-' reads standard input\n";

#define CMD "endpoint"

struct endpoint_args {
  const char *file;
  int nargs;
  char **args; /* the positional arguments after the action */
};

static char *endpoint_path(const char *name) {
  cleanup_free char *esc = sg_client_escape(name);
  return xasprintf("/v1/endpoints/%s", esc);
}

static json_t *get_path(const json_t *j, const char *a, const char *b) {
  json_t *v = json_object_get(j, a);
  return b ? json_object_get(v, b) : v;
}

static void add_row(struct sg_table *t, const json_t *ep) {
  char name[128], type[16], state[32], ready[64], in_flight[32], queued[32], last_error[1024];
  char a[32], b[32];

  sg_cell(json_object_get(ep, "name"), name, sizeof name);
  sg_cell(json_object_get(ep, "type"), type, sizeof type);
  const json_t *st = json_object_get(ep, "status");
  sg_cell(json_object_get(st, "state"), state, sizeof state);
  snprintf(ready, sizeof ready, "%s/%s", sg_cell(get_path(st, "workers", "ready"), a, sizeof a),
           sg_cell(json_object_get(st, "desired"), b, sizeof b));
  sg_cell(json_object_get(st, "in_flight"), in_flight, sizeof in_flight);
  sg_cell(json_object_get(st, "queued"), queued, sizeof queued);
  sg_cell(json_object_get(st, "last_error"), last_error, sizeof last_error);
  for (char *p = last_error; *p; p++)
    if (*p == '\n' || *p == '\r' || *p == '\t')
      *p = ' '; /* one line per endpoint */

  const char *cells[] = {name, type, state, ready, in_flight, queued, last_error};
  sg_table_add(t, cells);
}

static int do_list(sg_client_t *c) {
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "GET", "/v1/endpoints", NULL, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json)
    return sg_print_raw(&r);
  json_t *list = json_object_get(r.json, "endpoints");
  if (!json_is_array(list)) {
    sg_cli_errorf("unexpected answer from the server: no endpoints list");
    return SG_EXIT_FAIL;
  }
  static const char *const headers[] = {"NAME", "TYPE", "STATE", "READY/DESIRED", "IN FLIGHT", "QUEUED", "LAST ERROR"};
  cleanup_table struct sg_table *t = sg_table_new(SG_ARRAY_SIZE(headers), headers);
  size_t i;
  json_t *ep;
  json_array_foreach(list, i, ep) add_row(t, ep);
  sg_table_print(t, stdout);
  return SG_EXIT_OK;
}

static int do_get(sg_client_t *c, struct endpoint_args *a) {
  cleanup_free char *path = endpoint_path(a->args[0]);
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "GET", path, NULL, &r) < 0)
    return SG_EXIT_FAIL;
  if (r.json && !sg_cli_opts.json)
    sg_print_json(r.json);
  else
    fwrite(r.body, 1, r.len, stdout);
  return SG_EXIT_OK;
}

/* Prints what a create or update answered: the JSON, or one line. */
static void report(const sg_client_response_t *r, const char *verb, const char *fallback_name) {
  if (sg_cli_opts.json || !r->json) {
    fwrite(r->body, 1, r->len, stdout);
    if (r->len && r->body[r->len - 1] != '\n')
      putchar('\n');
    return;
  }
  char name[128], version[32];
  const json_t *jn = json_object_get(r->json, "name");
  sg_cell(json_object_get(r->json, "version"), version, sizeof version);
  const json_t *restart = json_object_get(r->json, "workers_restart");
  printf("endpoint %s %s (version %s)%s\n", jn ? sg_cell(jn, name, sizeof name) : fallback_name, verb, version,
         !restart                ? ""
         : json_is_true(restart) ? "; workers are replaced one by one"
                                 : "; workers go on without a restart");
}

static int do_create(sg_client_t *c, struct endpoint_args *a, json_t *spec) {
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "POST", "/v1/endpoints", spec, &r) < 0)
    return SG_EXIT_FAIL;
  report(&r, "created", json_string_value(json_object_get(spec, "name")));
  return SG_EXIT_OK;
}

static int do_update(sg_client_t *c, struct endpoint_args *a, json_t *spec) {
  /* The spec's name may be left out: it is the one on the command line. */
  if (!json_object_get(spec, "name"))
    json_object_set_new(spec, "name", json_string(a->args[0]));
  cleanup_free char *path = endpoint_path(a->args[0]);
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "PUT", path, spec, &r) < 0)
    return SG_EXIT_FAIL;
  report(&r, "updated", a->args[0]);
  return SG_EXIT_OK;
}

static int do_patch(sg_client_t *c, struct endpoint_args *a, json_t *patch) {
  cleanup_free char *path = endpoint_path(a->args[0]);
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "PATCH", path, patch, &r) < 0)
    return SG_EXIT_FAIL;
  report(&r, "patched", a->args[0]);
  return SG_EXIT_OK;
}

static int do_versions(sg_client_t *c, struct endpoint_args *a) {
  cleanup_free char *base = endpoint_path(a->args[0]);
  cleanup_free char *path = xasprintf("%s/versions", base);
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "GET", path, NULL, &r) < 0)
    return SG_EXIT_FAIL;
  json_t *list = json_object_get(r.json, "versions");
  if (sg_cli_opts.json || !json_is_array(list)) {
    fwrite(r.body, 1, r.len, stdout);
    if (r.len && r.body[r.len - 1] != '\n')
      putchar('\n');
    return SG_EXIT_OK;
  }
  json_int_t current = json_integer_value(json_object_get(r.json, "version"));
  static const char *const headers[] = {"VERSION", "CREATED", "CURRENT", "IMAGE/COMMAND"};
  cleanup_table struct sg_table *t = sg_table_new(SG_ARRAY_SIZE(headers), headers);
  size_t i;
  json_t *v;
  json_array_foreach(list, i, v) {
    char version[32], created[64], what[256];
    sg_cell(json_object_get(v, "version"), version, sizeof version);
    sg_cell(json_object_get(v, "created"), created, sizeof created);
    const json_t *spec = json_object_get(v, "spec");
    const json_t *image = json_object_get(spec, "image");
    sg_cell(json_is_string(image) ? image : json_array_get(json_object_get(spec, "command"), 0), what, sizeof what);
    const char *cells[] = {version, created, json_integer_value(json_object_get(v, "version")) == current ? "*" : "-",
                           what};
    sg_table_add(t, cells);
  }
  sg_table_print(t, stdout);
  return SG_EXIT_OK;
}

static int do_rollback(sg_client_t *c, struct endpoint_args *a, long version) {
  cleanup_free char *base = endpoint_path(a->args[0]);
  cleanup_free char *path = xasprintf("%s/rollback", base);
  cleanup_json json_t *body = json_pack("{s:I}", "version", (json_int_t)version);
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "POST", path, body, &r) < 0)
    return SG_EXIT_FAIL;
  cleanup_free char *verb = xasprintf("rolled back to the spec of version %ld", version);
  report(&r, verb, a->args[0]);
  return SG_EXIT_OK;
}

static int do_delete(sg_client_t *c, struct endpoint_args *a) {
  cleanup_free char *path = endpoint_path(a->args[0]);
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "DELETE", path, NULL, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json)
    fwrite(r.body, 1, r.len, stdout);
  else
    printf("endpoint %s deleted\n", a->args[0]);
  return SG_EXIT_OK;
}

int sg_cmd_endpoint(int argc, char **argv) {
  static const struct option options[] = {
      SG_CLI_GLOBAL_OPTIONS, {"file", required_argument, NULL, 'f'}, {NULL, 0, NULL, 0}};
  struct endpoint_args a = {0};
  int ch;
  while ((ch = getopt_long(argc, argv, SG_CLI_SHORT "f:", options, NULL)) != -1) {
    if (sg_cli_global_option(ch, optarg))
      continue;
    switch (ch) {
    case 'h':
      sg_cli_print_help(CMD, stdout);
      return SG_EXIT_OK;
    case 'f':
      a.file = optarg;
      break;
    default:
      return sg_cli_getopt_error(CMD, ch, argv);
    }
  }
  if (optind >= argc)
    return sg_cli_usage_error(
        CMD, "endpoint: needs an action: create, list, get, update, patch, versions, rollback or delete");
  const char *action = argv[optind];
  a.args = argv + optind + 1;
  a.nargs = argc - optind - 1;

  bool is_create = strcmp(action, "create") == 0, is_update = strcmp(action, "update") == 0;
  bool is_list = strcmp(action, "list") == 0 || strcmp(action, "ls") == 0;
  bool is_get = strcmp(action, "get") == 0 || strcmp(action, "show") == 0;
  bool is_delete = strcmp(action, "delete") == 0 || strcmp(action, "rm") == 0;
  bool is_patch = strcmp(action, "patch") == 0, is_versions = strcmp(action, "versions") == 0;
  bool is_rollback = strcmp(action, "rollback") == 0;
  if (!is_create && !is_update && !is_list && !is_get && !is_delete && !is_patch && !is_versions && !is_rollback)
    return sg_cli_usage_error(CMD, "endpoint: unknown action '%s'", action);

  /* Everything the command line says is checked before the server is asked. */
  cleanup_json json_t *spec = NULL;
  if (is_create || is_update || is_patch) {
    if (is_create && a.nargs != 0)
      return sg_cli_usage_error(CMD, "endpoint create: takes no arguments besides -f SPEC");
    if (!is_create && a.nargs != 1)
      return sg_cli_usage_error(CMD, "endpoint %s: needs one endpoint NAME", action);
    if (!a.file)
      return sg_cli_usage_error(CMD, "endpoint %s: needs -f SPEC.json", action);
    spec = sg_load_json_file(a.file);
    if (!spec)
      return SG_EXIT_USAGE;
  } else if (a.file) {
    return sg_cli_usage_error(CMD, "endpoint %s: -f is for create, update and patch", action);
  }
  if (is_list && a.nargs != 0)
    return sg_cli_usage_error(CMD, "endpoint list: takes no arguments");
  if ((is_get || is_delete || is_versions) && a.nargs != 1)
    return sg_cli_usage_error(CMD, "endpoint %s: needs one endpoint NAME", action);
  long rollback_to = 0;
  if (is_rollback) {
    char *end = NULL;
    if (a.nargs == 2)
      rollback_to = strtol(a.args[1], &end, 10);
    if (a.nargs != 2 || !end || *end || rollback_to < 1 || rollback_to > INT32_MAX)
      return sg_cli_usage_error(CMD, "endpoint rollback: needs an endpoint NAME and a VERSION number");
  }

  cleanup_client sg_client_t *c = sg_cli_connect();
  if (!c)
    return SG_EXIT_FAIL;
  if (is_create)
    return do_create(c, &a, spec);
  if (is_update)
    return do_update(c, &a, spec);
  if (is_patch)
    return do_patch(c, &a, spec);
  if (is_versions)
    return do_versions(c, &a);
  if (is_rollback)
    return do_rollback(c, &a, rollback_to);
  if (is_list)
    return do_list(c);
  if (is_get)
    return do_get(c, &a);
  return do_delete(c, &a);
}
