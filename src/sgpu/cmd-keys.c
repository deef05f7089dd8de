/* sgpu keys: create, list and revoke API keys. */
#include "cli.h"

#include <string.h>

const char sg_keys_help[] = "Usage: sgpu keys create NAME --scope SCOPE [--scope SCOPE]... [--endpoint NAME]...\n"
                            "                        [--expires WHEN] [--rate N] [--burst M]\n"
                            "       sgpu keys list\n"
                            "       sgpu keys revoke NAME\n"
                            "\n"
                            "Creates an API key and prints its secret (shown this once: sgpud keeps only\n"
                            "its hash), lists the keys (never their secrets), or revokes one at once.\n"
                            "\n"
                            "  --scope SCOPE      admin, deploy, invoke or read (repeat for several)\n"
                            "  --endpoint NAME    limit the key to this endpoint (repeat for several)\n"
                            "  --expires WHEN     a duration from now (30d, 12h), an RFC 3339 UTC time\n"
                            "                     (2027-01-01T00:00:00Z) or epoch milliseconds\n"
                            "  --rate N           at most N requests a second (token bucket)\n"
                            "  --burst M          requests allowed at once above the rate (default: N rounded up)\n";

#define CMD "keys"

enum { OPT_SCOPE = 1, OPT_ENDPOINT, OPT_EXPIRES, OPT_RATE, OPT_BURST };

static int list_keys(sg_client_t *c) {
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "GET", "/v1/api-keys", NULL, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json)
    return sg_print_raw(&r);
  json_t *list = json_object_get(r.json, "api_keys");
  if (!json_is_array(list)) {
    sg_cli_errorf("unexpected answer from the server: no api_keys list");
    return SG_EXIT_FAIL;
  }
  static const char *const headers[] = {"NAME", "PREFIX", "SCOPES", "ENDPOINTS", "CREATED", "LAST USED", "EXPIRES"};
  cleanup_table struct sg_table *t = sg_table_new(SG_ARRAY_SIZE(headers), headers);
  size_t i;
  json_t *k;
  json_array_foreach(list, i, k) {
    char name[128], prefix[64], scopes[128], eps[1024], created[64], used[64], expires[64];
    sg_cell(json_object_get(k, "name"), name, sizeof name);
    sg_cell(json_object_get(k, "prefix"), prefix, sizeof prefix);
    sg_cell(json_object_get(k, "scopes"), scopes, sizeof scopes);
    sg_cell(json_object_get(k, "endpoints"), eps, sizeof eps);
    sg_cell(json_object_get(k, "created_at"), created, sizeof created);
    sg_cell(json_object_get(k, "last_used_at"), used, sizeof used);
    sg_cell(json_object_get(k, "expires_at"), expires, sizeof expires);
    const char *cells[] = {name, prefix, scopes, eps, created, used, expires};
    sg_table_add(t, cells);
  }
  sg_table_print(t, stdout);
  return SG_EXIT_OK;
}

static int revoke_key(sg_client_t *c, const char *name) {
  cleanup_free char *path = sg_cli_path("api-keys", name, NULL);
  return sg_cli_send(c, "DELETE", path, NULL, "API key %s revoked\n", name);
}

static int create_key(sg_client_t *c, json_t *body) {
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "POST", "/v1/api-keys", body, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json)
    return sg_print_raw(&r);
  const char *key = json_string_value(json_object_get(r.json, "key"));
  if (!key) {
    sg_cli_errorf("unexpected answer from the server: no key");
    return SG_EXIT_FAIL;
  }
  printf("%s\n", key); /* the secret, shown this once */
  return SG_EXIT_OK;
}

/* --expires: a duration from now, epoch ms, or a time for the server to parse. */
static json_t *expires_json(const char *s) {
  int64_t dur = sg_parse_duration_ms(s);
  if (dur > 0)
    return json_integer(sg_wall_ms() + dur);
  char *end;
  long long v = strtoll(s, &end, 10);
  if (*s && !*end && v > 0)
    return json_integer(v);
  return json_string(s);
}

int sg_cmd_keys(int argc, char **argv) {
  static const struct option options[] = {SG_CLI_GLOBAL_OPTIONS,
                                          {"scope", required_argument, NULL, OPT_SCOPE},
                                          {"endpoint", required_argument, NULL, OPT_ENDPOINT},
                                          {"expires", required_argument, NULL, OPT_EXPIRES},
                                          {"rate", required_argument, NULL, OPT_RATE},
                                          {"burst", required_argument, NULL, OPT_BURST},
                                          {NULL, 0, NULL, 0}};
  cleanup_json json_t *scopes = json_array();
  cleanup_json json_t *eps = json_array();
  const char *expires = NULL;
  double rate = 0;
  long long burst = 0;
  int ch;
  char *end;
  while ((ch = getopt_long(argc, argv, SG_CLI_SHORT "", options, NULL)) != -1) {
    if (sg_cli_global_option(ch, optarg))
      continue;
    switch (ch) {
    case 'h':
      sg_cli_print_help(CMD, stdout);
      return SG_EXIT_OK;
    case OPT_SCOPE:
      json_array_append_new(scopes, json_string(optarg));
      continue;
    case OPT_ENDPOINT:
      json_array_append_new(eps, json_string(optarg));
      continue;
    case OPT_EXPIRES:
      expires = optarg;
      continue;
    case OPT_RATE:
      rate = strtod(optarg, &end);
      if (!*optarg || *end || !(rate > 0))
        return sg_cli_usage_error(CMD, "keys: --rate must be a number of requests a second above 0");
      continue;
    case OPT_BURST:
      burst = strtoll(optarg, &end, 10);
      if (!*optarg || *end || burst < 1)
        return sg_cli_usage_error(CMD, "keys: --burst must be a whole number of at least 1");
      continue;
    default:
      return sg_cli_getopt_error(CMD, ch, argv);
    }
  }
  int nargs = argc - optind;
  char **args = argv + optind;
  if (nargs < 1)
    return sg_cli_usage_error(CMD, "keys: needs create, list or revoke");
  bool create = !strcmp(args[0], "create"), list = !strcmp(args[0], "list"), revoke = !strcmp(args[0], "revoke");
  if (!create && !list && !revoke)
    return sg_cli_usage_error(CMD, "keys: unknown action '%s' (create, list or revoke)", args[0]);
  if (list && nargs != 1)
    return sg_cli_usage_error(CMD, "keys list: takes no arguments");
  if ((create || revoke) && nargs != 2)
    return sg_cli_usage_error(CMD, "keys %s: needs one key NAME", args[0]);
  if (!create && (json_array_size(scopes) || json_array_size(eps) || expires || rate > 0 || burst))
    return sg_cli_usage_error(CMD, "keys %s: --scope, --endpoint, --expires, --rate and --burst are for create",
                              args[0]);
  if (create && json_array_size(scopes) == 0)
    return sg_cli_usage_error(CMD, "keys create: needs at least one --scope");
  if (burst && !(rate > 0))
    return sg_cli_usage_error(CMD, "keys create: --burst needs --rate");

  cleanup_client sg_client_t *c = sg_cli_connect();
  if (!c)
    return SG_EXIT_FAIL;
  if (list)
    return list_keys(c);
  if (revoke)
    return revoke_key(c, args[1]);
  cleanup_json json_t *body = json_pack("{s:s, s:O}", "name", args[1], "scopes", scopes);
  if (json_array_size(eps))
    json_object_set(body, "endpoints", eps);
  if (expires)
    json_object_set_new(body, "expires_at", expires_json(expires));
  if (rate > 0) {
    json_t *rl = json_pack("{s:f}", "requests_per_s", rate);
    if (burst)
      json_object_set_new(rl, "burst", json_integer(burst));
    json_object_set_new(body, "rate_limit", rl);
  }
  return create_key(c, body);
}
