/* The slurm runtime's backend of Slurm's commands: sbatch, squeue, scontrol
 * and scancel, looked up in PATH, each run through sg_exec_run (own process
 * group, output cap, CMD_TIMEOUT_MS after which its group is killed). Every
 * op blocks: pool threads and startup only. */
#include <ctype.h>
#include <errno.h>
#include <string.h>

#include "slurm-internal.h"
#include "sgpu/exec.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define CMD_TIMEOUT_MS 30000 /* sbatch, scancel, squeue, scontrol */
#define CMD_OUTPUT_CAP (4u << 20)

/* Runs argv to completion, at most CMD_TIMEOUT_MS, and returns its wait
 * status, or -1 with errno set when it could not run; *out (optional) gets
 * what it printed, stdout and stderr together (at most CMD_OUTPUT_CAP
 * bytes). A command killed at the timeout returns the status of its kill. */
static int run_cmd(char *const *argv, char **out) {
  sg_exec_opts_t opts = {.timeout_ms = CMD_TIMEOUT_MS, .out_cap = CMD_OUTPUT_CAP, .flags = SG_EXEC_MERGE_STDERR};
  sg_exec_result_t res;
  cleanup_error sg_error_t *err = NULL;
  int r = sg_exec_run(argv, &opts, &res, &err);
  int status = res.status;
  if (r < 0)
    sg_warn("slurm: %s", err->message);
  if (r < 0 && !res.timed_out) {
    errno = -r;
    status = -1;
  }
  if (out)
    *out = res.out ? steal_pointer(&res.out) : xstrdup("");
  sg_exec_result_clear(&res);
  return status;
}

static bool cmd_ok(int status) { return sg_exec_status_ok(status); }

static int submit(sg_slurm_backend_t *be, const sg_slurm_submit_t *j, char **job_id, char **error) {
  (void)be;
  char *argv[20];
  int n = 0;
  cleanup_free char *name = xasprintf("--job-name=%s", j->name);
  cleanup_free char *comment = xasprintf("--comment=%s", j->comment);
  cleanup_free char *out_opt = xasprintf("--output=%s", j->out_path);
  cleanup_free char *err_opt = xasprintf("--error=%s", j->err_path);
  cleanup_free char *chdir_opt = xasprintf("--chdir=%s", j->dir);
  cleanup_free char *gres = j->gres ? xasprintf("--gres=%s", j->gres) : NULL;
  cleanup_free char *part = j->partition ? xasprintf("--partition=%s", j->partition) : NULL;
  cleanup_free char *acct = j->account ? xasprintf("--account=%s", j->account) : NULL;
  cleanup_free char *tl = j->time_limit ? xasprintf("--time=%s", j->time_limit) : NULL;
  argv[n++] = "sbatch";
  argv[n++] = "--parsable";
  argv[n++] = name;
  argv[n++] = comment;
  argv[n++] = out_opt;
  argv[n++] = err_opt;
  argv[n++] = chdir_opt;
  argv[n++] = "--no-requeue";
  argv[n++] = "--nodes=1";
  argv[n++] = "--ntasks=1";
  argv[n++] = "--export=ALL";
  if (gres)
    argv[n++] = gres;
  if (part)
    argv[n++] = part;
  if (acct)
    argv[n++] = acct;
  if (tl)
    argv[n++] = tl;
  argv[n++] = (char *)j->script_path;
  argv[n] = NULL;
  cleanup_free char *out = NULL;
  int status = run_cmd(argv, &out);
  /* --parsable: "JOBID" or "JOBID;CLUSTER" */
  const char *p = out ? out : "";
  while (*p && isspace((unsigned char)*p))
    p++;
  size_t len = strspn(p, "0123456789");
  if (cmd_ok(status) && len > 0 && len < 32) {
    *job_id = xstrndup(p, len);
    return 0;
  }
  cleanup_free char *why = sg_slurm_last_line(p);
  *error = status < 0 ? xasprintf("cannot run sbatch: %s", strerror(errno))
                      : xasprintf("sbatch failed: %s", *why ? why : "no output");
  return -1;
}

static int cancel(sg_slurm_backend_t *be, const char *job_id, bool term, char **error) {
  (void)be;
  char *argv[6];
  int n = 0;
  argv[n++] = "scancel";
  if (term) {
    argv[n++] = "--full";
    argv[n++] = "--signal=TERM";
  }
  argv[n++] = (char *)job_id;
  argv[n] = NULL;
  cleanup_free char *out = NULL;
  int status = run_cmd(argv, &out);
  if (cmd_ok(status))
    return 0;
  if (error)
    *error = status < 0 ? xasprintf("cannot run scancel: %s", strerror(errno)) : sg_slurm_last_line(out ? out : "");
  return -1;
}

/* For an ended job: its exit code and exact times from scontrol. */
static void read_end(sg_slurm_job_info_t *it) {
  char *argv[] = {"scontrol", "--oneliner", "show", "job", (char *)it->job_id, NULL};
  cleanup_free char *out = NULL;
  if (!cmd_ok(run_cmd(argv, &out)) || !out)
    return;
  char v[64];
  sg_slurm_field(out, "ExitCode", it->exit_code, sizeof(it->exit_code));
  if (sg_slurm_field(out, "StartTime", v, sizeof(v)) && sg_slurm_parse_time(v))
    it->start_wall = sg_slurm_parse_time(v);
  if (sg_slurm_field(out, "EndTime", v, sizeof(v)) && sg_slurm_parse_time(v))
    it->end_wall = sg_slurm_parse_time(v);
}

/* squeue for every job at once, then scontrol for each that ended. */
static bool query(sg_slurm_backend_t *be, sg_slurm_job_info_t *jobs, size_t n, char **error) {
  (void)be;
  sg_strbuf_t ids_buf = SG_STRBUF_INIT;
  for (size_t i = 0; i < n; i++)
    sg_strbuf_appendf(&ids_buf, "%s%s", i ? "," : "", jobs[i].job_id);
  cleanup_free char *ids = sg_strbuf_steal(&ids_buf);
  char *argv[] = {"squeue", "--noheader", "--states=all", "--jobs", ids, "--format=%i|%T|%r|%N|%S|%e", NULL};
  cleanup_free char *out = NULL;
  int status = run_cmd(argv, &out);
  if (!cmd_ok(status) && !(out && strstr(out, "Invalid job id"))) {
    cleanup_free char *why = sg_slurm_last_line(out ? out : "");
    *error = status < 0 ? xasprintf("cannot run squeue: %s", strerror(errno)) : xasprintf("squeue failed: %s", why);
    return false;
  }
  for (char *line = out, *next; line && *line; line = next) {
    next = strchr(line, '\n');
    if (next)
      *next++ = '\0';
    char *f[6] = {0};
    int nf = 0;
    for (char *p = line; nf < 6; nf++) {
      f[nf] = p;
      char *bar = strchr(p, '|');
      if (!bar) {
        nf++;
        break;
      }
      *bar = '\0';
      p = bar + 1;
    }
    if (nf < 6)
      continue;
    for (size_t i = 0; i < n; i++) {
      sg_slurm_job_info_t *it = &jobs[i];
      if (strcmp(it->job_id, f[0]))
        continue;
      it->seen = true;
      sg_slurm_copy(it->state, sizeof(it->state), f[1], strlen(f[1]));
      sg_slurm_copy(it->reason, sizeof(it->reason), f[2], strlen(f[2]));
      sg_slurm_copy(it->node, sizeof(it->node), f[3], strlen(f[3]));
      it->start_wall = strcmp(it->state, "PENDING") ? sg_slurm_parse_time(f[4]) : 0;
      it->end_wall = sg_slurm_parse_time(f[5]);
    }
  }
  for (size_t i = 0; i < n; i++)
    if (jobs[i].seen && sg_slurm_ended_state(jobs[i].state))
      read_end(&jobs[i]);
  return true;
}

/* Ends the line at line with a NUL; returns the next one (at the end: ""). */
static char *cut_line(char *line) {
  char *next = strchr(line, '\n');
  if (!next)
    return line + strlen(line);
  *next = '\0';
  return next + 1;
}

static bool nodes(sg_slurm_backend_t *be, sg_runtime_node_t **list, size_t *count) {
  (void)be;
  char *argv[] = {"scontrol", "--oneliner", "--details", "show", "node", NULL};
  cleanup_free char *out = NULL;
  if (!cmd_ok(run_cmd(argv, &out)) || !out)
    return false;
  for (char *line = out, *next; *line; line = next) {
    next = cut_line(line);
    sg_runtime_node_t x = {0};
    if (!sg_slurm_field(line, "NodeName", x.name, sizeof(x.name)))
      continue;
    sg_slurm_field(line, "State", x.state, sizeof(x.state));
    sg_slurm_field(line, "Partitions", x.partitions, sizeof(x.partitions));
    char g[512];
    sg_slurm_field(line, "Gres", g, sizeof(g));
    sg_slurm_parse_gres(g, x.gpu_type, sizeof(x.gpu_type), &x.gpus_total);
    sg_slurm_field(line, "GresUsed", g, sizeof(g));
    sg_slurm_parse_gres(g, NULL, 0, &x.gpus_used);
    *list = xrealloc(*list, (*count + 1) * sizeof(**list));
    (*list)[(*count)++] = x;
  }
  return true;
}

/* squeue's "%i|%T|%S|%j|%k": the comment last, so that it may hold '|'. */
static bool list(sg_slurm_backend_t *be, sg_slurm_listed_t **jobs, size_t *count) {
  (void)be;
  char *argv[] = {"squeue", "--noheader", "--format=%i|%T|%S|%j|%k", NULL};
  cleanup_free char *out = NULL;
  if (!cmd_ok(run_cmd(argv, &out)) || !out)
    return false;
  for (char *line = out, *next; *line; line = next) {
    next = cut_line(line);
    char *f[4] = {0};
    char *p = line;
    int nf = 0;
    for (; nf < 4 && p; nf++) {
      f[nf] = p;
      p = strchr(p, '|');
      if (p)
        *p++ = '\0';
    }
    if (nf < 4 || !p)
      continue;
    *jobs = xrealloc(*jobs, (*count + 1) * sizeof(**jobs));
    (*jobs)[(*count)++] =
        (sg_slurm_listed_t){xstrdup(f[0]), xstrdup(f[1]), xstrdup(f[3]), xstrdup(p), sg_slurm_parse_time(f[2])};
  }
  return true;
}

static void cli_free(sg_slurm_backend_t *be) { (void)be; }

static const sg_slurm_backend_ops_t cli_ops = {"sbatch", submit, cancel, query, nodes, list, cli_free};
static sg_slurm_backend_t cli = {&cli_ops};

sg_slurm_backend_t *sg_slurm_cli_new(sg_error_t **err) {
  char *argv[] = {"sbatch", "--version", NULL};
  cleanup_free char *out = NULL;
  if (!cmd_ok(run_cmd(argv, &out))) {
    sg_make_error(err, ENOTSUP, "Slurm's sbatch could not be run here (is slurm-client installed and in PATH?)");
    return NULL;
  }
  return &cli;
}

void sg_slurm_listed_free(sg_slurm_listed_t *jobs, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(jobs[i].job_id);
    free(jobs[i].state);
    free(jobs[i].name);
    free(jobs[i].comment);
  }
  free(jobs);
}
