/* sgpu: the command-line client of sgpud. Parses the global options and runs
 * one command from the table below. */
#include "cli.h"

#include <string.h>

#ifndef SGPU_VERSION
#define SGPU_VERSION "0.1.0"
#endif

static int cmd_help(int argc, char **argv);
static int cmd_completion(int argc, char **argv);

static const char completion_help[] = "Usage: sgpu completion bash\n"
                                      "\n"
                                      "Prints a bash completion script for sgpu, made from its table of commands.\n"
                                      "Load it with: source <(sgpu completion bash)\n";

static const char help_help[] = "Usage: sgpu help [COMMAND]\n"
                                "\n"
                                "Shows the list of commands, or the help of one command.\n";

struct command {
  const char *name;
  int (*handler)(int argc, char **argv);
  const char *help;
  const char *summary;
  const char *actions; /* the words after the command, for completion (space-separated) */
};

static const struct command commands[] = {
    {"endpoint", sg_cmd_endpoint, sg_endpoint_help, "create, list, show, update and delete endpoints",
     "create list get update patch versions rollback delete"},
    {"invoke", sg_cmd_invoke, sg_invoke_help, "send a request to an endpoint and print its answer", NULL},
    {"jobs", sg_cmd_jobs, sg_jobs_help, "run, list, watch, cancel and retry the jobs of an async endpoint",
     "run status cancel retry purge list"},
    {"workers", sg_cmd_workers, sg_workers_help, "list the workers of an endpoint, or stop one", "stop"},
    {"logs", sg_cmd_logs, sg_logs_help, "show or follow the logs of an endpoint", NULL},
    {"images", sg_cmd_images, sg_images_help, "list, pull (preheat) and remove cached images", "list pull rm"},
    {"registry-auth", sg_cmd_registry_auth, sg_registry_auth_help, "store, list and remove registry credentials",
     "list set rm"},
    {"secrets", sg_cmd_secrets, sg_secrets_help, "set, list and remove secrets (values are never shown)",
     "list set rm"},
    {"volumes", sg_cmd_volumes, sg_volumes_help, "create, list, remove and upload into volumes",
     "list create rm upload"},
    {"nodes", sg_cmd_nodes, sg_nodes_help, "list the GPUs of the nodes and who holds them", NULL},
    {"usage", sg_cmd_usage, sg_usage_help, "show GPU time and cost per endpoint", NULL},
    {"keys", sg_cmd_keys, sg_keys_help, "create, list and revoke API keys", "create list revoke"},
    {"completion", cmd_completion, completion_help, "print a shell completion script (bash)", "bash"},
    {"help", cmd_help, help_help, "show help", NULL},
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
    "  -o, --output F   F is json (the API's JSON as it answered) or table (default)\n"
    "  --json           the same as -o json\n"
    "  -h, --help       show help\n";

static void print_usage(FILE *f) {
  fputs("Usage: sgpu [GLOBAL OPTIONS] COMMAND [ARGS]\n"
        "\n"
        "Commands:\n",
        f);
  for (size_t i = 0; i < SG_ARRAY_SIZE(commands); i++)
    fprintf(f, "  %-13s %s\n", commands[i].name, commands[i].summary);
  fputc('\n', f);
  fputs(global_help, f);
  fputs("  -V, --version    show the version\n"
        "\n"
        "Run 'sgpu help COMMAND' for the options of a command.\n"
        "Exit status:\n"
        "  0  success\n"
        "  1  another failure (a job that did not complete, an unexpected answer)\n"
        "  2  bad command line or unreadable input file (the server is not asked)\n"
        "  3  not found: the server answered 404 (no such endpoint, job, image, ...)\n"
        "  4  refused: the server answered another 4xx (invalid input, bad key, wrong\n"
        "     scope, conflict, rate limit)\n"
        "  5  server error: the server answered 5xx, or could not be reached\n",
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

/* The completion script: the commands and their actions come from commands[]. */
static int cmd_completion(int argc, char **argv) {
  if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
    sg_cli_print_help("completion", stdout);
    return SG_EXIT_OK;
  }
  if (argc != 2 || strcmp(argv[1], "bash"))
    return sg_cli_usage_error("completion", "completion: needs the shell: bash");
  printf("# bash completion for sgpu (generated by 'sgpu completion bash')\n"
         "_sgpu() {\n"
         "  local cur=\"${COMP_WORDS[COMP_CWORD]}\" cmd=\"\" i\n"
         "  for ((i = 1; i < COMP_CWORD; i++)); do\n"
         "    case \"${COMP_WORDS[i]}\" in\n"
         "      --url|--key|--data-dir|-o|--output) ((i++)) ;;\n"
         "      -*) ;;\n"
         "      *) cmd=\"${COMP_WORDS[i]}\"; break ;;\n"
         "    esac\n"
         "  done\n"
         "  if [[ $cur == -* ]]; then\n"
         "    COMPREPLY=($(compgen -W \"--url --key --data-dir --output --json --help\" -- \"$cur\"))\n"
         "    return\n"
         "  fi\n"
         "  case \"$cmd\" in\n"
         "    \"\") COMPREPLY=($(compgen -W \"");
  for (size_t i = 0; i < SG_ARRAY_SIZE(commands); i++)
    printf("%s%s", i ? " " : "", commands[i].name);
  printf("\" -- \"$cur\")) ;;\n");
  for (size_t i = 0; i < SG_ARRAY_SIZE(commands); i++) {
    const char *words = commands[i].actions;
    if (commands[i].handler == cmd_help) {
      printf("    help) COMPREPLY=($(compgen -W \"");
      for (size_t k = 0; k < SG_ARRAY_SIZE(commands); k++)
        printf("%s%s", k ? " " : "", commands[k].name);
      printf("\" -- \"$cur\")) ;;\n");
    } else if (words) {
      printf("    %s) [[ $((COMP_CWORD - i)) -eq 1 ]] && COMPREPLY=($(compgen -W \"%s\" -- \"$cur\")) ;;\n",
             commands[i].name, words);
    }
  }
  printf("  esac\n"
         "}\n"
         "complete -F _sgpu sgpu\n");
  return SG_EXIT_OK;
}

int main(int argc, char **argv) {
  static const struct option options[] = {
      SG_CLI_GLOBAL_OPTIONS, {"version", no_argument, NULL, 'V'}, {NULL, 0, NULL, 0}};
  int ch;
  /* '+': stop at the command name; what follows belongs to the command. */
  while ((ch = getopt_long(argc, argv, "+:ho:V", options, NULL)) != -1) {
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
  if (ret == SG_EXIT_FAIL && sg_cli_fail_exit)
    ret = sg_cli_fail_exit; /* a failed request says which failure */
  if (fflush(stdout) != 0 && ret == SG_EXIT_OK) {
    sg_cli_errorf("cannot write the output");
    ret = SG_EXIT_FAIL;
  }
  return ret;
}
