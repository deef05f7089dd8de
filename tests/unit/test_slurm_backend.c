/* runtime/slurm-cli.c and slurm-parse.c: the command backend against fake
 * sbatch, squeue, scontrol and scancel (shell scripts first in PATH that
 * record their arguments and print what Slurm would), and Slurm's output
 * parsed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/slurm-internal.h"
#include "sgpu/util.h"

static char dir[] = "/tmp/sgpu-test-slurm-backend.XXXXXX";

static void write_tool(const char *name, const char *body) {
  cleanup_free char *path = xasprintf("%s/%s", dir, name);
  cleanup_free char *text = xasprintf("#!/bin/sh\nprintf '%%s\\n' \"$@\" >\"%s/%s.args\"\n%s\n", dir, name, body);
  assert_int_equal(sg_write_file_atomic(path, text, strlen(text), 0755), 0);
}

/* What the fake tool name was last run with, one argument a line. */
static char *args_of(const char *name) {
  cleanup_free char *path = xasprintf("%s/%s.args", dir, name);
  size_t len;
  char *text = sg_read_file(path, 1 << 16, &len);
  assert_non_null(text);
  return text;
}

static int setup(void **state) {
  (void)state;
  if (!mkdtemp(dir))
    return -1;
  const char *path = getenv("PATH");
  cleanup_free char *p = xasprintf("%s:%s", dir, path ? path : "/usr/bin:/bin");
  return setenv("PATH", p, 1);
}

static int teardown(void **state) {
  (void)state;
  cleanup_free char *cmd = xasprintf("rm -rf '%s'", dir);
  return system(cmd) == 0 ? 0 : -1;
}

static void test_unavailable_without_sbatch(void **state) {
  (void)state;
  write_tool("sbatch", "exit 1");
  cleanup_error sg_error_t *err = NULL;
  assert_null(sg_slurm_cli_new(&err));
  assert_non_null(err);
  assert_non_null(strstr(err->message, "sbatch could not be run"));
}

static void test_submit_and_cancel_by_job_id(void **state) {
  (void)state;
  write_tool("sbatch", "[ \"$1\" = --version ] && { echo 'slurm 23.02'; exit 0; }\necho '4242;cluster'");
  write_tool("scancel", "exit 0");
  cleanup_error sg_error_t *err = NULL;
  sg_slurm_backend_t *be = sg_slurm_cli_new(&err);
  assert_non_null(be);
  sg_slurm_submit_t j = {.name = "sgpu.w1",
                         .comment = "sgpu:tag:ep:3",
                         .script = "#!/bin/sh\n",
                         .script_path = "/d/w1.sh",
                         .out_path = "/d/w1.out",
                         .err_path = "/d/w1.err",
                         .dir = "/d",
                         .gres = "gpu:a100:2",
                         .partition = "gpu",
                         .time_limit = "10"};
  char *job_id = NULL, *error = NULL;
  assert_int_equal(be->ops->submit(be, &j, &job_id, &error), 0);
  assert_string_equal(job_id, "4242");
  free(job_id);
  cleanup_free char *sargs = args_of("sbatch");
  assert_string_equal(sargs, "--parsable\n--job-name=sgpu.w1\n--comment=sgpu:tag:ep:3\n--output=/d/w1.out\n"
                             "--error=/d/w1.err\n--chdir=/d\n--no-requeue\n--nodes=1\n--ntasks=1\n--export=ALL\n"
                             "--gres=gpu:a100:2\n--partition=gpu\n--time=10\n/d/w1.sh\n");

  assert_int_equal(be->ops->cancel(be, "4242", true, NULL), 0);
  cleanup_free char *c1 = args_of("scancel");
  assert_string_equal(c1, "--full\n--signal=TERM\n4242\n");
  assert_int_equal(be->ops->cancel(be, "77", false, NULL), 0);
  cleanup_free char *c2 = args_of("scancel");
  assert_string_equal(c2, "77\n");

  write_tool("scancel", "echo 'scancel: error: Kill job error on job id 77: Invalid job id specified' >&2; exit 1");
  assert_int_equal(be->ops->cancel(be, "77", false, &error), -1);
  assert_string_equal(error, "scancel: error: Kill job error on job id 77: Invalid job id specified");
  free(error);
  error = NULL;

  write_tool("sbatch", "echo 'sbatch: error: invalid partition' >&2; exit 1");
  assert_int_equal(be->ops->submit(be, &j, &job_id, &error), -1);
  assert_string_equal(error, "sbatch failed: sbatch: error: invalid partition");
  free(error);
  be->ops->free(be);
}

static void test_query_list_and_nodes(void **state) {
  (void)state;
  write_tool("sbatch", "echo 'slurm 23.02'");
  write_tool("squeue", "case \"$*\" in\n"
                       "*--jobs*) echo '10|RUNNING|None|n1|2024-05-01T12:00:00|N/A'\n"
                       "          echo '11|FAILED|NonZeroExitCode|n1|2024-05-01T12:00:00|2024-05-01T12:01:00' ;;\n"
                       "*) echo '10|RUNNING|2024-05-01T12:00:00|sgpu.w1|sgpu:t:ep:1'\n"
                       "   echo '12|PENDING|N/A|other|a|b|c' ;;\n"
                       "esac");
  write_tool("scontrol",
             "case \"$*\" in\n"
             "*node*) echo 'NodeName=n1 Arch=x State=MIXED Partitions=gpu Gres=gpu:a100:4(S:0) "
             "GresUsed=gpu:a100:1(IDX:0)' ;;\n"
             "*) echo 'JobId=11 ExitCode=3:0 StartTime=2024-05-01T12:00:05 EndTime=2024-05-01T12:01:05' ;;\n"
             "esac");
  cleanup_error sg_error_t *err = NULL;
  sg_slurm_backend_t *be = sg_slurm_cli_new(&err);
  assert_non_null(be);
  sg_slurm_job_info_t jobs[3] = {{.job_id = "10"}, {.job_id = "11"}, {.job_id = "13"}};
  char *error = NULL;
  assert_true(be->ops->query(be, jobs, 3, &error));
  assert_null(error);
  cleanup_free char *qargs = args_of("squeue");
  assert_string_equal(qargs, "--noheader\n--states=all\n--jobs\n10,11,13\n--format=%i|%T|%r|%N|%S|%e\n");
  assert_true(jobs[0].seen);
  assert_string_equal(jobs[0].state, "RUNNING");
  assert_string_equal(jobs[0].node, "n1");
  assert_int_equal(jobs[0].start_wall, sg_slurm_parse_time("2024-05-01T12:00:00"));
  assert_string_equal(jobs[0].exit_code, "");
  assert_true(jobs[1].seen);
  assert_string_equal(jobs[1].reason, "NonZeroExitCode");
  /* An ended job's exit code and exact times come from scontrol. */
  assert_string_equal(jobs[1].exit_code, "3:0");
  assert_int_equal(jobs[1].end_wall, sg_slurm_parse_time("2024-05-01T12:01:05"));
  assert_false(jobs[2].seen);

  sg_slurm_listed_t *listed = NULL;
  size_t n = 0;
  assert_true(be->ops->list(be, &listed, &n));
  assert_int_equal(n, 2);
  assert_string_equal(listed[0].job_id, "10");
  assert_string_equal(listed[0].name, "sgpu.w1");
  assert_string_equal(listed[0].comment, "sgpu:t:ep:1");
  /* The comment is the rest of the line, '|' and all. */
  assert_string_equal(listed[1].comment, "a|b|c");
  assert_int_equal(listed[1].start_wall, 0);
  sg_slurm_listed_free(listed, n);

  sg_runtime_node_t *nodes = NULL;
  size_t nn = 0;
  assert_true(be->ops->nodes(be, &nodes, &nn));
  assert_int_equal(nn, 1);
  assert_string_equal(nodes[0].name, "n1");
  assert_string_equal(nodes[0].state, "MIXED");
  assert_string_equal(nodes[0].gpu_type, "a100");
  assert_int_equal(nodes[0].gpus_total, 4);
  assert_int_equal(nodes[0].gpus_used, 1);
  free(nodes);

  write_tool("squeue", "echo 'squeue: error: slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1");
  assert_false(be->ops->query(be, jobs, 1, &error));
  assert_string_equal(error, "squeue failed: squeue: error: slurm_load_jobs error: Unable to contact slurm controller");
  free(error);
  be->ops->free(be);
}

static void test_parse(void **state) {
  (void)state;
  assert_false(sg_slurm_ended_state(""));
  assert_false(sg_slurm_ended_state("PENDING"));
  assert_false(sg_slurm_ended_state("COMPLETING"));
  assert_true(sg_slurm_ended_state("CANCELLED"));
  assert_true(sg_slurm_ended_state("NODE_FAIL"));
  assert_int_equal(sg_slurm_parse_time("N/A"), 0);
  assert_int_equal(sg_slurm_parse_time("2024-05-01T12:00:01") - sg_slurm_parse_time("2024-05-01T12:00:00"), 1000);
  char v[8];
  assert_true(sg_slurm_field("JobId=1 XExitCode=9 ExitCode=0:15 Y=2", "ExitCode", v, sizeof(v)));
  assert_string_equal(v, "0:15");
  assert_true(sg_slurm_field("A=123456789012", "A", v, sizeof(v)));
  assert_string_equal(v, "1234567");
  assert_false(sg_slurm_field("A=1", "B", v, sizeof(v)));
  char type[16] = "";
  int count;
  sg_slurm_parse_gres("gpu:h100:2(S:0),gpu:1,nogpu:3", type, sizeof(type), &count);
  assert_string_equal(type, "h100");
  assert_int_equal(count, 3);
  cleanup_free char *last = sg_slurm_last_line("one\ntwo  \n\n");
  assert_string_equal(last, "two");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unavailable_without_sbatch),
      cmocka_unit_test(test_submit_and_cancel_by_job_id),
      cmocka_unit_test(test_query_list_and_nodes),
      cmocka_unit_test(test_parse),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
