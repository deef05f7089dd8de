/* sgpu jobs: the jobs of an async endpoint through the job API (/v2) and
 * their list (/v1/endpoints/NAME/jobs). */
#include "cli.h"

#include <string.h>
#include <time.h>

const char sg_jobs_help[] = "Usage: sgpu jobs run ENDPOINT --input JSON|@FILE [--sync [--wait SECS]]\n"
                            "       sgpu jobs status ENDPOINT ID\n"
                            "       sgpu jobs cancel ENDPOINT ID\n"
                            "       sgpu jobs retry ENDPOINT ID\n"
                            "       sgpu jobs purge ENDPOINT\n"
                            "       sgpu jobs list ENDPOINT [--status STATE] [--limit N] [--before MS]\n"
                            "\n"
                            "run queues a job with that input and prints its id; with --sync it waits for the\n"
                            "job's end and prints its output (exit 1 when the job did not complete). status\n"
                            "prints the job; cancel ends a queued or running job; retry runs a FAILED or\n"
                            "TIMED_OUT job again; purge cancels every queued job; list shows the jobs, newest\n"
                            "first.\n"
                            "\n"
                            "Options:\n"
                            "  --input JSON     the job's input: JSON text, @FILE, or @- for standard input\n"
                            "  --sync           wait for the job to end\n"
                            "  --wait SECS      with --sync: give up waiting after SECS (the job goes on; exit 1)\n"
                            "  --status STATE   list: only IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, CANCELLED\n"
                            "                   or TIMED_OUT jobs\n"
                            "  --limit N        list: at most N jobs (1-1000, default 100)\n"
                            "  --before MS      list: jobs submitted before this time (epoch ms; to page)\n";

#define CMD "jobs"
#define MAX_INPUT_BYTES ((size_t)64 * 1024 * 1024)
#define RUNSYNC_WAIT_MS 60000

enum { OPT_INPUT = 1, OPT_SYNC, OPT_WAIT, OPT_STATUS, OPT_LIMIT, OPT_BEFORE };

static struct {
  const char *input;
  json_t *input_json; /* --input parsed */
  bool sync;
  double wait_s; /* 0: no limit */
  const char *status;
  long limit;
  long long before;
} o;

static char *job_path(const char *ep, const char *action, const char *id) {
  cleanup_free char *e = sg_client_escape(ep);
  if (!id)
    return xasprintf("/v2/%s/%s", e, action);
  cleanup_free char *i = sg_client_escape(id);
  return xasprintf("/v2/%s/%s/%s", e, action, i);
}

static bool is_final(const char *status) {
  return status && (!strcmp(status, "COMPLETED") || !strcmp(status, "FAILED") || !strcmp(status, "CANCELLED") ||
                    !strcmp(status, "TIMED_OUT"));
}

/* Prints a finished job: its output (table mode) or the JSON; exit 1 when it
 * did not complete, with its error. */
static int print_final(const sg_client_response_t *r) {
  const char *status = json_string_value(json_object_get(r->json, "status"));
  bool completed = status && !strcmp(status, "COMPLETED");
  if (sg_cli_opts.json)
    sg_print_raw(r);
  else if (completed)
    sg_print_json(json_object_get(r->json, "output") ? json_object_get(r->json, "output") : json_null());
  if (completed)
    return SG_EXIT_OK;
  cleanup_free char *e = json_dumps(json_object_get(r->json, "error"), JSON_COMPACT | JSON_ENCODE_ANY);
  sg_cli_errorf("job %s %s%s%s", json_string_value(json_object_get(r->json, "id")), status ? status : "ended",
                e ? ": " : "", e ? e : "");
  return SG_EXIT_FAIL;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0)
    ;
}

/* Parses --input (JSON text, @FILE, @- for standard input). Returns NULL
 * after printing why. */
static json_t *load_input(const char *arg) {
  json_error_t jerr;
  json_t *input;
  if (arg[0] == '@') {
    size_t len;
    cleanup_free char *text = sg_load_file(arg[1] ? arg + 1 : "-", MAX_INPUT_BYTES, &len);
    if (!text)
      return NULL;
    input = json_loadb(text, len, JSON_DECODE_ANY, &jerr);
  } else {
    input = json_loads(arg, JSON_DECODE_ANY, &jerr);
  }
  if (!input)
    sg_cli_errorf("jobs run: --input is not JSON: line %d: %s", jerr.line, jerr.text);
  return input;
}

static int do_run(sg_client_t *c, int nargs, char **args) {
  (void)nargs;
  cleanup_json json_t *body = json_pack("{s:O}", "input", o.input_json);
  int64_t deadline = o.wait_s > 0 ? sg_wall_ms() + (int64_t)(o.wait_s * 1000) : 0;
  cleanup_free char *path = NULL;
  if (o.sync) {
    long wait = RUNSYNC_WAIT_MS;
    if (deadline && o.wait_s * 1000 < wait)
      wait = (long)(o.wait_s * 1000);
    cleanup_free char *base = job_path(args[0], "runsync", NULL);
    path = xasprintf("%s?wait=%ld", base, wait);
  } else {
    path = job_path(args[0], "run", NULL);
  }
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "POST", path, body, &r) < 0)
    return SG_EXIT_FAIL;
  const char *id = json_string_value(json_object_get(r.json, "id"));
  if (!id) {
    sg_cli_errorf("unexpected answer from the server: no job id");
    return SG_EXIT_FAIL;
  }
  if (!o.sync) {
    if (sg_cli_opts.json)
      return sg_print_raw(&r);
    printf("%s\n", id);
    return SG_EXIT_OK;
  }
  cleanup_free char *job_id = xstrdup(id);
  cleanup_free char *status_path = job_path(args[0], "status", job_id);
  long pause = 200;
  while (!is_final(json_string_value(json_object_get(r.json, "status")))) {
    if (deadline && sg_wall_ms() >= deadline) {
      if (sg_cli_opts.json)
        sg_print_raw(&r);
      sg_cli_errorf("job %s is still %s after %gs", job_id, json_string_value(json_object_get(r.json, "status")),
                    o.wait_s);
      return SG_EXIT_FAIL;
    }
    sleep_ms(pause);
    if (pause < 2000)
      pause *= 2;
    sg_client_response_free(&r);
    if (sg_cli_call(c, "GET", status_path, NULL, &r) < 0)
      return SG_EXIT_FAIL;
  }
  return print_final(&r);
}

static int do_status(sg_client_t *c, int nargs, char **args) {
  (void)nargs;
  cleanup_free char *path = job_path(args[0], "status", args[1]);
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "GET", path, NULL, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json || !r.json)
    return sg_print_raw(&r);
  sg_print_json(r.json);
  return SG_EXIT_OK;
}

/* cancel, retry: one line with the job's state. */
static int job_action(sg_client_t *c, const char *action, char **args) {
  cleanup_free char *path = job_path(args[0], action, args[1]);
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "POST", path, NULL, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json)
    return sg_print_raw(&r);
  char status[32];
  printf("job %s %s\n", args[1], sg_cell(json_object_get(r.json, "status"), status, sizeof status));
  return SG_EXIT_OK;
}

static int do_cancel(sg_client_t *c, int nargs, char **args) {
  (void)nargs;
  return job_action(c, "cancel", args);
}

static int do_retry(sg_client_t *c, int nargs, char **args) {
  (void)nargs;
  return job_action(c, "retry", args);
}

static int do_purge(sg_client_t *c, int nargs, char **args) {
  (void)nargs;
  cleanup_free char *path = job_path(args[0], "purge-queue", NULL);
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "POST", path, NULL, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json)
    return sg_print_raw(&r);
  char n[32];
  printf("%s queued jobs of %s cancelled\n", sg_cell(json_object_get(r.json, "removed"), n, sizeof n), args[0]);
  return SG_EXIT_OK;
}

static int do_list(sg_client_t *c, int nargs, char **args) {
  (void)nargs;
  cleanup_free char *base = sg_cli_path("endpoints", args[0], "jobs");
  cleanup_strbuf sg_strbuf_t path = SG_STRBUF_INIT;
  sg_strbuf_appendf(&path, "%s?limit=%ld", base, o.limit ? o.limit : 100);
  if (o.status) {
    cleanup_free char *s = sg_client_escape(o.status);
    sg_strbuf_appendf(&path, "&status=%s", s);
  }
  if (o.before)
    sg_strbuf_appendf(&path, "&before=%lld", o.before);
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "GET", path.s, NULL, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json)
    return sg_print_raw(&r);
  json_t *list = json_object_get(r.json, "jobs");
  if (!json_is_array(list)) {
    sg_cli_errorf("unexpected answer from the server: no jobs list");
    return SG_EXIT_FAIL;
  }
  static const char *const headers[] = {"ID", "STATUS", "CREATED", "DELAY ms", "EXEC ms", "RETRIES", "WORKER"};
  cleanup_table struct sg_table *t = sg_table_new(SG_ARRAY_SIZE(headers), headers);
  size_t i;
  json_t *j;
  json_array_foreach(list, i, j) {
    char id[64], status[32], created[64], delay[32], exec[32], retries[32], worker[64];
    sg_cell(json_object_get(j, "id"), id, sizeof id);
    sg_cell(json_object_get(j, "status"), status, sizeof status);
    json_t *ca = json_object_get(j, "createdAt");
    if (json_is_integer(ca))
      sg_format_time(json_integer_value(ca), created, sizeof created);
    else
      sg_cell(ca, created, sizeof created);
    sg_cell(json_object_get(j, "delayTime"), delay, sizeof delay);
    sg_cell(json_object_get(j, "executionTime"), exec, sizeof exec);
    sg_cell(json_object_get(j, "retries"), retries, sizeof retries);
    sg_cell(json_object_get(j, "workerId"), worker, sizeof worker);
    const char *cells[] = {id, status, created, delay, exec, retries, worker};
    sg_table_add(t, cells);
  }
  sg_table_print(t, stdout);
  return SG_EXIT_OK;
}

static const struct sg_cli_action actions[] = {
    {"run", 1, 1, do_run, "an ENDPOINT and --input"},
    {"status", 2, 2, do_status, "an ENDPOINT and a job ID"},
    {"cancel", 2, 2, do_cancel, "an ENDPOINT and a job ID"},
    {"retry", 2, 2, do_retry, "an ENDPOINT and a job ID"},
    {"purge", 1, 1, do_purge, "one ENDPOINT"},
    {"list", 1, 1, do_list, "one ENDPOINT"},
};

int sg_cmd_jobs(int argc, char **argv) {
  static const struct option options[] = {SG_CLI_GLOBAL_OPTIONS,
                                          {"input", required_argument, NULL, OPT_INPUT},
                                          {"sync", no_argument, NULL, OPT_SYNC},
                                          {"wait", required_argument, NULL, OPT_WAIT},
                                          {"status", required_argument, NULL, OPT_STATUS},
                                          {"limit", required_argument, NULL, OPT_LIMIT},
                                          {"before", required_argument, NULL, OPT_BEFORE},
                                          {NULL, 0, NULL, 0}};
  int ch;
  char *end;
  while ((ch = getopt_long(argc, argv, SG_CLI_SHORT "", options, NULL)) != -1) {
    if (sg_cli_global_option(ch, optarg))
      continue;
    switch (ch) {
    case 'h':
      sg_cli_print_help(CMD, stdout);
      return SG_EXIT_OK;
    case OPT_INPUT:
      o.input = optarg;
      continue;
    case OPT_SYNC:
      o.sync = true;
      continue;
    case OPT_WAIT:
      o.wait_s = strtod(optarg, &end);
      if (!*optarg || *end || !(o.wait_s > 0))
        return sg_cli_usage_error(CMD, "jobs: --wait must be a number of seconds above 0");
      continue;
    case OPT_STATUS:
      o.status = optarg;
      continue;
    case OPT_LIMIT:
      o.limit = strtol(optarg, &end, 10);
      if (!*optarg || *end || o.limit < 1 || o.limit > 1000)
        return sg_cli_usage_error(CMD, "jobs: --limit must be a whole number from 1 to 1000");
      continue;
    case OPT_BEFORE:
      o.before = strtoll(optarg, &end, 10);
      if (!*optarg || *end || o.before < 1)
        return sg_cli_usage_error(CMD, "jobs: --before must be a time in epoch milliseconds");
      continue;
    default:
      return sg_cli_getopt_error(CMD, ch, argv);
    }
  }
  int nargs = argc - optind;
  char **args = argv + optind;
  const char *action = nargs ? args[0] : "";
  bool run = !strcmp(action, "run"), list = !strcmp(action, "list");
  if (!run && (o.input || o.sync || o.wait_s > 0))
    return sg_cli_usage_error(CMD, "jobs: --input, --sync and --wait are for run");
  if (run && !o.input)
    return sg_cli_usage_error(CMD, "jobs run: needs --input JSON (or @FILE)");
  if (o.wait_s > 0 && !o.sync)
    return sg_cli_usage_error(CMD, "jobs run: --wait needs --sync");
  if (!list && (o.status || o.limit || o.before))
    return sg_cli_usage_error(CMD, "jobs: --status, --limit and --before are for list");
  if (run && !(o.input_json = load_input(o.input)))
    return SG_EXIT_USAGE;
  int ret = sg_cli_run_action(CMD, actions, SG_ARRAY_SIZE(actions), nargs, args);
  json_decref(o.input_json);
  return ret;
}
