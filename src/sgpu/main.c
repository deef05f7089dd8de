/* sgpu: the command-line client of sgpud. Parses the global options and runs
 * one command from the table below. */
#include "cli.h"

#include <string.h>

#ifndef SGPU_VERSION
#define SGPU_VERSION "0.1.0"
#endif

static int cmd_help(int argc, char **argv);

static const char help_help[] = "Usage: sgpu help [COMMAND]\n"
                                "\n"
                                "Shows the list of commands, or the help of one command.\n";

struct command {
  const char *name;
  int (*handler)(int argc, char **argv);
  const char *help;
  const char *summary;
};

static const struct command commands[] = {
    {"endpoint", sg_cmd_endpoint, sg_endpoint_help, "create, list, show, update and delete endpoints"},
    {"invoke", sg_cmd_invoke, sg_invoke_help, "send a request to an endpoint and print its answer"},
    {"workers", sg_cmd_workers, sg_workers_help, "list the workers of an endpoint, or stop one"},
    {"logs", sg_cmd_logs, sg_logs_help, "show or follow the logs of an endpoint"},
    {"nodes", sg_cmd_nodes, sg_nodes_help, "list the GPUs of the nodes and who holds them"},
    {"usage", sg_cmd_usage, sg_usage_help, "show GPU time and cost per endpoint"},
    {"keys", sg_cmd_keys, sg_keys_help, "create, list and revoke API keys"},
    {"help", cmd_help, help_help, "show help"},
};

static const struct command *find_command(const char *name) {
  for (size_t i = 0; i < SG_ARRAY_SIZE(commands); i++)
    if (strcmp(commands[i].name, name) == 0)
      return &commands[i];
  return NULL;
}

static const char global_help[] =
    "Global options (before or after the command):\n"
    "  --url URL        sgpud's address (else $SGPU_URL, else the file url in the data dir)\n"
    "  --key KEY        API key (else $SGPU_API_KEY, else the file admin.key in the data dir)\n"
    "  --data-dir DIR   sgpud's data directory (else $SGPU_DATA_DIR, else $HOME/.sgpu)\n"
    "  --json           print the API's JSON instead of tables\n"
    "  -h, --help       show help\n";

static void print_usage(FILE *f) {
  fputs("Usage: sgpu [GLOBAL OPTIONS] COMMAND [ARGS]\n"
        "\n"
        "Commands:\n",
        f);
  for (size_t i = 0; i < SG_ARRAY_SIZE(commands); i++)
    fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
  fputc('\n', f);
  fputs(global_help, f);
  fputs("  -V, --version    show the version\n"
        "\n"
        "Run 'sgpu help COMMAND' for the options of a command.\n"
        "Exit status: 0 on success, 1 when the server answered an error or could not be\n"
        "reached, 2 on a bad command line or an unreadable input file.\n",
        f);
}

void sg_cli_print_help(const char *cmd, FILE *f) {
  const struct command *c = cmd ? find_command(cmd) : NULL;
  if (!c) {
    print_usage(f);
    return;
  }
  fputs(c->help, f);
  if (c->handler != cmd_help) {
    fputc('\n', f);
    fputs(global_help, f);
  }
}

static int cmd_help(int argc, char **argv) {
  if (argc > 2)
    return sg_cli_usage_error("help", "help: too many arguments");
  if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
    print_usage(stdout);
    return SG_EXIT_OK;
  }
  if (!find_command(argv[1]))
    return sg_cli_usage_error(NULL, "unknown command '%s'; run 'sgpu help' for the list", argv[1]);
  sg_cli_print_help(argv[1], stdout);
  return SG_EXIT_OK;
}

int main(int argc, char **argv) {
  static const struct option options[] = {
      SG_CLI_GLOBAL_OPTIONS, {"version", no_argument, NULL, 'V'}, {NULL, 0, NULL, 0}};
  int ch;
  /* '+': stop at the command name; what follows belongs to the command. */
  while ((ch = getopt_long(argc, argv, "+:hV", options, NULL)) != -1) {
    if (sg_cli_global_option(ch, optarg))
      continue;
    switch (ch) {
    case 'h':
      print_usage(stdout);
      return SG_EXIT_OK;
    case 'V':
      printf("sgpu %s\n", SGPU_VERSION);
      return SG_EXIT_OK;
    default:
      return sg_cli_getopt_error(NULL, ch, argv);
    }
  }
  if (optind >= argc) {
    print_usage(stderr);
    return SG_EXIT_USAGE;
  }
  const struct command *c = find_command(argv[optind]);
  if (!c)
    return sg_cli_usage_error(NULL, "unknown command '%s'; run 'sgpu help' for the list", argv[optind]);
  char **cargv = argv + optind;
  int cargc = argc - optind;
  optind = 0; /* the command parses its own options from cargv[1] on */
  int ret = c->handler(cargc, cargv);
  if (fflush(stdout) != 0 && ret == SG_EXIT_OK) {
    sg_cli_errorf("cannot write the output");
    ret = SG_EXIT_FAIL;
  }
  return ret;
}
