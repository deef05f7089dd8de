/* sgpu usage: GPU time and cost per endpoint, from GET /v1/usage. */
#include "cli.h"

#include <string.h>

const char sg_usage_help[] =
    "Usage: sgpu usage [NAME] [--from T] [--to T] [--by hour|day|worker]\n"
    "\n"
    "Prints the metered usage of every endpoint (or of NAME): billable GPU-seconds,\n"
    "seconds spent starting, busy and idle, requests served, cost, and cost per\n"
    "1,000 requests, then the total. Workers are billed per second, rounded up.\n"
    "\n"
    "Options:\n"
    "      --from T       start of the period: epoch milliseconds, a duration before now\n"
    "                     (24h, 7d) or a UTC date or time (2026-05-01, 2026-05-01T10:00:00Z);\n"
    "                     default 30d\n"
    "      --to T         end of the period (same forms; default now)\n"
    "  -b, --by G         also break the usage down by hour, day or worker\n";

#define CMD "usage"

enum { OPT_FROM = 1200, OPT_TO };

static void add_param(char **qs, const char *key, const char *value) {
  if (!value)
    return;
  cleanup_free char *esc = sg_client_escape(value);
  char *next = xasprintf("%s%s%s=%s", *qs, **qs ? "&" : "?", key, esc);
  free(*qs);
  *qs = next;
}

static void cell_num(const json_t *j, int digits, char *buf, size_t len) {
  if (json_is_number(j))
    snprintf(buf, len, "%.*f", digits, json_number_value(j));
  else
    snprintf(buf, len, "-");
}

/* One row of the usage table: first cells then the numbers of x. */
static void add_row(struct sg_table *t, const char *const *first, size_t nfirst, const json_t *x) {
  const char *cells[12];
  char num[8][48];
  size_t n = 0;
  for (size_t i = 0; i < nfirst; i++)
    cells[n++] = first[i];
  const json_t *secs = json_object_get(x, "seconds");
  cell_num(json_object_get(x, "gpu_seconds"), 1, num[0], sizeof num[0]);
  cell_num(json_object_get(secs, "starting"), 1, num[1], sizeof num[1]);
  cell_num(json_object_get(secs, "busy"), 1, num[2], sizeof num[2]);
  cell_num(json_object_get(secs, "idle"), 1, num[3], sizeof num[3]);
  cell_num(json_object_get(x, "requests"), 0, num[4], sizeof num[4]);
  cell_num(json_object_get(x, "cost"), 6, num[5], sizeof num[5]);
  cell_num(json_object_get(x, "cost_per_1k_requests"), 6, num[6], sizeof num[6]);
  for (int i = 0; i < 7; i++)
    cells[n++] = num[i];
  sg_table_add(t, cells);
}

int sg_cmd_usage(int argc, char **argv) {
  static const struct option options[] = {SG_CLI_GLOBAL_OPTIONS,
                                          {"from", required_argument, NULL, OPT_FROM},
                                          {"to", required_argument, NULL, OPT_TO},
                                          {"by", required_argument, NULL, 'b'},
                                          {NULL, 0, NULL, 0}};
  const char *from = NULL, *to = NULL, *by = NULL;
  int ch;
  while ((ch = getopt_long(argc, argv, SG_CLI_SHORT "b:", options, NULL)) != -1) {
    if (sg_cli_global_option(ch, optarg))
      continue;
    switch (ch) {
    case 'h':
      sg_cli_print_help(CMD, stdout);
      return SG_EXIT_OK;
    case OPT_FROM:
      from = optarg;
      break;
    case OPT_TO:
      to = optarg;
      break;
    case 'b':
      if (strcmp(optarg, "hour") && strcmp(optarg, "day") && strcmp(optarg, "worker"))
        return sg_cli_usage_error(CMD, "usage: --by must be hour, day or worker");
      by = optarg;
      break;
    default:
      return sg_cli_getopt_error(CMD, ch, argv);
    }
  }
  if (argc - optind > 1)
    return sg_cli_usage_error(CMD, "usage: at most one endpoint name");
  const char *name = optind < argc ? argv[optind] : NULL;

  cleanup_free char *path = xstrdup("");
  add_param(&path, "endpoint", name);
  add_param(&path, "from", from);
  add_param(&path, "to", to);
  add_param(&path, "group", by);
  cleanup_free char *url = xasprintf("/v1/usage%s", path);
  cleanup_client sg_client_t *c = sg_cli_connect();
  if (!c)
    return SG_EXIT_FAIL;
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "GET", url, NULL, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json) {
    fwrite(r.body, 1, r.len, stdout);
    if (r.len && r.body[r.len - 1] != '\n')
      putchar('\n');
    return SG_EXIT_OK;
  }
  json_t *eps = json_object_get(r.json, "endpoints");
  if (!json_is_array(eps)) {
    sg_cli_errorf("unexpected answer from the server: no endpoints list");
    return SG_EXIT_FAIL;
  }
  printf("Usage from %s to %s\n\n", json_string_value(json_object_get(r.json, "from")),
         json_string_value(json_object_get(r.json, "to")));
  static const char *const headers[] = {"ENDPOINT", "GPU",      "GPU-SECONDS", "STARTING-S", "BUSY-S",
                                        "IDLE-S",   "REQUESTS", "COST",        "COST/1K-REQ"};
  cleanup_table struct sg_table *t = sg_table_new(SG_ARRAY_SIZE(headers), headers);
  size_t i;
  json_t *e;
  json_array_foreach(eps, i, e) {
    char gpu[96], ep[128];
    sg_cell(json_object_get(e, "endpoint"), ep, sizeof ep);
    json_int_t count = json_integer_value(json_object_get(e, "gpu_count"));
    if (count > 0)
      snprintf(gpu, sizeof gpu, "%lldx%s", (long long)count, json_string_value(json_object_get(e, "gpu_type")));
    else
      snprintf(gpu, sizeof gpu, "-");
    const char *first[] = {ep, gpu};
    add_row(t, first, 2, e);
  }
  const char *first[] = {"TOTAL", ""};
  add_row(t, first, 2, json_object_get(r.json, "total"));
  sg_table_print(t, stdout);

  json_t *groups = json_object_get(r.json, "groups");
  if (by && json_is_array(groups)) {
    bool worker = !strcmp(by, "worker");
    static const char *const gh_time[] = {"START",  "ENDPOINT", "GPU-SECONDS", "STARTING-S", "BUSY-S",
                                          "IDLE-S", "REQUESTS", "COST",        "COST/1K-REQ"};
    static const char *const gh_worker[] = {"WORKER", "ENDPOINT", "GPU-SECONDS", "STARTING-S", "BUSY-S",
                                            "IDLE-S", "REQUESTS", "COST",        "COST/1K-REQ"};
    cleanup_table struct sg_table *g = sg_table_new(SG_ARRAY_SIZE(gh_time), worker ? gh_worker : gh_time);
    json_t *x;
    json_array_foreach(groups, i, x) {
      char k[128], ep[128];
      sg_cell(json_object_get(x, worker ? "worker" : "start"), k, sizeof k);
      sg_cell(json_object_get(x, "endpoint"), ep, sizeof ep);
      const char *f[] = {k, ep};
      add_row(g, f, 2, x);
    }
    printf("\nBy %s\n\n", by);
    sg_table_print(g, stdout);
  }
  return SG_EXIT_OK;
}
