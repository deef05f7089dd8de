/* sgpu workers: the workers of an endpoint, and stopping one. */
#include "cli.h"

#include <string.h>

const char sg_workers_help[] = "Usage: sgpu workers NAME\n"
                               "       sgpu workers stop NAME ID\n"
                               "\n"
                               "Lists the workers of endpoint NAME, newest first, recently ended ones included,\n"
                               "or stops worker ID (SIGTERM, then SIGKILL after the grace period).\n";

#define CMD "workers"

static void add_row(struct sg_table *t, const json_t *w) {
  char id[64], state[32], pid[32], port[32], gpus[256], cold[48], in_flight[32], served[32], started[64];
  sg_cell(json_object_get(w, "id"), id, sizeof id);
  sg_cell(json_object_get(w, "state"), state, sizeof state);
  sg_cell(json_object_get(w, "pid"), pid, sizeof pid);
  sg_cell(json_object_get(w, "port"), port, sizeof port);
  sg_cell(json_object_get(w, "gpus"), gpus, sizeof gpus);
  const json_t *cs = json_object_get(w, "cold_start_ms");
  if (json_is_number(cs))
    snprintf(cold, sizeof cold, "%.0f", json_number_value(cs));
  else
    sg_cell(cs, cold, sizeof cold);
  sg_cell(json_object_get(w, "in_flight"), in_flight, sizeof in_flight);
  sg_cell(json_object_get(w, "served"), served, sizeof served);
  sg_cell(json_object_get(w, "started_at"), started, sizeof started);
  const char *cells[] = {id, state, pid, port, gpus, cold, in_flight, served, started};
  sg_table_add(t, cells);
}

static int list_workers(sg_client_t *c, const char *name) {
  cleanup_free char *esc = sg_client_escape(name);
  cleanup_free char *path = xasprintf("/v1/endpoints/%s/workers", esc);
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "GET", path, NULL, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json) {
    fwrite(r.body, 1, r.len, stdout);
    if (r.len && r.body[r.len - 1] != '\n')
      putchar('\n');
    return SG_EXIT_OK;
  }
  json_t *list = json_object_get(r.json, "workers");
  if (!json_is_array(list)) {
    sg_cli_errorf("unexpected answer from the server: no workers list");
    return SG_EXIT_FAIL;
  }
  static const char *const headers[] = {"ID",        "STATE",  "PID",    "PORT", "GPUS", "COLD START ms",
                                        "IN FLIGHT", "SERVED", "STARTED"};
  cleanup_table struct sg_table *t = sg_table_new(SG_ARRAY_SIZE(headers), headers);
  size_t i;
  json_t *w;
  json_array_foreach(list, i, w) add_row(t, w);
  sg_table_sort(t, 8, true); /* STARTED: RFC 3339 UTC times sort as text */
  sg_table_print(t, stdout);
  return SG_EXIT_OK;
}

static int stop_worker(sg_client_t *c, const char *name, const char *id) {
  cleanup_free char *esc_name = sg_client_escape(name);
  cleanup_free char *esc_id = sg_client_escape(id);
  cleanup_free char *path = xasprintf("/v1/endpoints/%s/workers/%s", esc_name, esc_id);
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "DELETE", path, NULL, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json) {
    fwrite(r.body, 1, r.len, stdout);
    if (r.len && r.body[r.len - 1] != '\n')
      putchar('\n');
  } else {
    printf("worker %s of %s stopping\n", id, name);
  }
  return SG_EXIT_OK;
}

int sg_cmd_workers(int argc, char **argv) {
  static const struct option options[] = {SG_CLI_GLOBAL_OPTIONS, {NULL, 0, NULL, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, SG_CLI_SHORT "", options, NULL)) != -1) {
    if (sg_cli_global_option(ch, optarg))
      continue;
    if (ch == 'h') {
      sg_cli_print_help(CMD, stdout);
      return SG_EXIT_OK;
    }
    return sg_cli_getopt_error(CMD, ch, argv);
  }
  int nargs = argc - optind;
  char **args = argv + optind;
  /* "workers stop" alone lists the workers of an endpoint named stop. */
  bool stop = nargs >= 2 && strcmp(args[0], "stop") == 0;
  if (stop && nargs != 3)
    return sg_cli_usage_error(CMD, "workers stop: needs an endpoint NAME and a worker ID");
  if (!stop && nargs != 1)
    return sg_cli_usage_error(CMD, "workers: %s", nargs ? "too many arguments" : "needs an endpoint NAME");

  cleanup_client sg_client_t *c = sg_cli_connect();
  if (!c)
    return SG_EXIT_FAIL;
  return stop ? stop_worker(c, args[1], args[2]) : list_workers(c, args[0]);
}
