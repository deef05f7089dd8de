/* sgpud: parses its command line and runs the daemon library. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "sgpu/daemon.h"
#include "sgpu/log.h"
#include "sgpu/meter.h"
#include "sgpu/util.h"

static const char usage[] =
    "usage: sgpud [--listen HOST:PORT] [--data-dir DIR] [--gpus TYPE:N,...] [--config FILE]\n"
    "             [--log-level debug|info|warn|error] [--sample-endpoint]\n"
    "             [--price TYPE=PRICE,...] [--web-dir DIR] [--help-config] [--list-routes]\n"
    "\n"
    "Runs the sgpu daemon: control API (/v1), gateway (/e/NAME/...), workers.\n"
    "\n"
    "  --listen HOST:PORT   address to serve on (default 127.0.0.1:8080; port 0 picks one)\n"
    "  --data-dir DIR       state, logs and admin.key (default $SGPU_DATA_DIR or ~/.sgpu)\n"
    "  --gpus TYPE:N,...    declare this node's GPUs instead of discovering them through NVML\n"
    "  --config FILE        JSON config file; command-line options override it\n"
    "  --log-level LEVEL    daemon diagnostics on stderr (default info)\n"
    "  --sample-endpoint    create the sample endpoint \"echo\" when the store is empty\n"
    "  --price TYPE=PRICE,... price per GPU-second by GPU type (\"a100=0.0004,default=0.0002\");\n"
    "                       replaces the config file's \"prices\"; applies from this start on\n"
    "  --web-dir DIR        serve the web console from DIR instead of the copy built in\n"
    "  --help-config        print the config file's keys (a Markdown table) and exit\n"
    "  --list-routes        print every route with its methods and scopes, and exit\n";

/* Every client connection, worker connection and log pipe is a descriptor:
 * take all the system allows rather than the shell's soft limit. */
static void raise_nofile_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= rl.rlim_max)
    return;
  rlim_t soft = rl.rlim_cur;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
    sg_warn("cannot raise the open file limit from %llu to %llu", (unsigned long long)soft,
            (unsigned long long)rl.rlim_max);
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"listen", required_argument, NULL, 'l'},
      {"data-dir", required_argument, NULL, 'd'},
      {"gpus", required_argument, NULL, 'g'},
      {"config", required_argument, NULL, 'c'},
      {"log-level", required_argument, NULL, 'v'},
      {"sample-endpoint", no_argument, NULL, 's'},
      {"price", required_argument, NULL, 'p'},
      {"web-dir", required_argument, NULL, 'w'},
      {"help", no_argument, NULL, 'h'},
      {"help-config", no_argument, NULL, 'K'},
      {"list-routes", no_argument, NULL, 'R'},
      {NULL, 0, NULL, 0},
  };
  const char *listen = NULL, *data_dir = NULL, *gpus = NULL, *config = NULL, *prices = NULL, *web_dir = NULL;
  int level = -1;
  bool sample = false;
  int ch;
  while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (ch) {
    case 'l':
      listen = optarg;
      break;
    case 'd':
      data_dir = optarg;
      break;
    case 'g':
      gpus = optarg;
      break;
    case 'c':
      config = optarg;
      break;
    case 'v':
      level = sg_log_parse_level(optarg);
      if (level < 0) {
        fprintf(stderr, "sgpud: --log-level must be debug, info, warn or error\n");
        return 2;
      }
      break;
    case 's':
      sample = true;
      break;
    case 'p':
      prices = optarg;
      break;
    case 'w':
      web_dir = optarg;
      break;
    case 'h':
      fputs(usage, stdout);
      return 0;
    case 'R':
      sg_daemon_list_routes(stdout);
      return 0;
    case 'K':
      sg_daemon_config_help(stdout);
      return 0;
    default:
      fputs(usage, stderr);
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "sgpud: unexpected argument \"%s\"\n%s", argv[optind], usage);
    return 2;
  }

  sg_daemon_config_t cfg;
  sg_daemon_config_defaults(&cfg);
  cleanup_error sg_error_t *err = NULL;
  if (config && sg_daemon_config_load(&cfg, config, &err) < 0) {
    fprintf(stderr, "sgpud: %s\n", err->message);
    sg_daemon_config_clear(&cfg);
    return 2;
  }
  if (listen) {
    free(cfg.listen);
    cfg.listen = xstrdup(listen);
  }
  if (data_dir) {
    free(cfg.data_dir);
    cfg.data_dir = xstrdup(data_dir);
  }
  if (gpus) {
    free(cfg.gpus);
    cfg.gpus = xstrdup(gpus);
  }
  if (level >= 0)
    cfg.log_level = level;
  if (prices) {
    sg_price_table_t t = {0};
    if (sg_price_table_parse(&t, prices, &err) < 0) {
      fprintf(stderr, "sgpud: --price: %s\n", err->message);
      sg_daemon_config_clear(&cfg);
      return 2;
    }
    sg_price_table_clear(&t);
    free(cfg.prices);
    cfg.prices = xstrdup(prices);
  }
  if (web_dir) {
    free(cfg.web_dir);
    cfg.web_dir = xstrdup(web_dir);
  }
  cfg.sample_endpoint |= sample;

  raise_nofile_limit();
  sg_daemon_t *d = sg_daemon_new(&cfg, &err);
  if (!d) {
    fprintf(stderr, "sgpud: %s\n", err->message);
    sg_daemon_config_clear(&cfg);
    return 1;
  }
  int r = sg_daemon_run(d);
  sg_daemon_free(d);
  return r < 0 ? 1 : 0;
}
