/* sgpu nodes: the GPUs of every node and the workers that hold them. */
#include "cli.h"

const char sg_nodes_help[] = "Usage: sgpu nodes\n"
                             "\n"
                             "Lists the GPUs sgpud manages, where they were found (discovered or declared)\n"
                             "and the worker and endpoint holding each one. With more than one node the\n"
                             "table starts with the node's name.\n";

#define CMD "nodes"

int sg_cmd_nodes(int argc, char **argv) {
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
  if (optind != argc)
    return sg_cli_usage_error(CMD, "nodes: takes no arguments");

  cleanup_client sg_client_t *c = sg_cli_connect();
  if (!c)
    return SG_EXIT_FAIL;
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "GET", "/v1/nodes", NULL, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json) {
    fwrite(r.body, 1, r.len, stdout);
    if (r.len && r.body[r.len - 1] != '\n')
      putchar('\n');
    return SG_EXIT_OK;
  }
  json_t *nodes = json_object_get(r.json, "nodes");
  if (!json_is_array(nodes)) {
    sg_cli_errorf("unexpected answer from the server: no nodes list");
    return SG_EXIT_FAIL;
  }

  static const char *const headers[] = {"NODE", "INDEX", "TYPE", "SOURCE", "WORKER", "ENDPOINT"};
  /* One node: its name is left out. */
  size_t skip = json_array_size(nodes) > 1 ? 0 : 1;
  cleanup_table struct sg_table *t = sg_table_new(SG_ARRAY_SIZE(headers) - skip, headers + skip);
  size_t i, k;
  json_t *node, *gpu;
  json_array_foreach(nodes, i, node) {
    json_array_foreach(json_object_get(node, "gpus"), k, gpu) {
      char name[128], index[32], type[64], source[32], worker[64], endpoint[128];
      sg_cell(json_object_get(node, "name"), name, sizeof name);
      sg_cell(json_object_get(gpu, "index"), index, sizeof index);
      sg_cell(json_object_get(gpu, "type"), type, sizeof type);
      sg_cell(json_object_get(gpu, "source"), source, sizeof source);
      sg_cell(json_object_get(gpu, "worker"), worker, sizeof worker);
      sg_cell(json_object_get(gpu, "endpoint"), endpoint, sizeof endpoint);
      const char *cells[] = {name, index, type, source, worker, endpoint};
      sg_table_add(t, cells + skip);
    }
  }
  sg_table_print(t, stdout);
  return SG_EXIT_OK;
}
