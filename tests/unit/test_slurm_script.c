/* runtime/slurm-script.c: a slurm worker's batch script, run here with sh.
 * Hostile spec values (quotes, $(...), backquotes, newlines, "$PORT" among
 * them) reach the worker byte for byte and never run as shell. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/slurm-internal.h"
#include "sgpu/exec.h"
#include "sgpu/util.h"

static char dir[] = "/tmp/sgpu-test-slurm-script.XXXXXX";
static char *canary;

/* Values that would run `touch CANARY` if any reached the shell unquoted. */
static char **hostile_values(void) {
  char **v = xcalloc(9, sizeof(char *));
  v[0] = xasprintf("$(touch %s)", canary);
  v[1] = xasprintf("`touch %s`", canary);
  v[2] = xasprintf("'; touch %s; '", canary);
  v[3] = xasprintf("\"; touch %s; \"", canary);
  v[4] = xasprintf("line one\nline two'\n$(touch %s)\n", canary);
  v[5] = xstrdup("it's \\ ${HOME} \"$HOME\" * ?");
  v[6] = xasprintf("'\\''; touch %s #", canary);
  v[7] = xstrdup("");
  return v;
}

/* Runs script with sh and a bare environment; returns its stdout, *len its
 * length. */
static char *run_script(const char *script, const char *name, size_t *len) {
  cleanup_free char *path = xasprintf("%s/%s", dir, name);
  assert_int_equal(sg_write_file_atomic(path, script, strlen(script), 0700), 0);
  char *argv[] = {"/bin/sh", path, NULL};
  char *envp[] = {"PATH=/usr/local/bin:/usr/bin:/bin", NULL};
  sg_exec_opts_t opts = {.envp = envp, .timeout_ms = 20000, .out_cap = 1 << 20};
  sg_exec_result_t res;
  cleanup_error sg_error_t *err = NULL;
  assert_int_equal(sg_exec_run(argv, &opts, &res, &err), 0);
  if (!sg_exec_status_ok(res.status))
    fail_msg("script failed (%d): %s", res.status, res.err ? res.err : "");
  *len = res.out_len;
  char *out = res.out ? steal_pointer(&res.out) : xstrdup("");
  sg_exec_result_clear(&res);
  return out;
}

static int setup(void **state) {
  (void)state;
  if (!mkdtemp(dir))
    return -1;
  canary = xasprintf("%s/canary", dir);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  cleanup_free char *cmd = xasprintf("rm -rf '%s'", dir);
  free(canary);
  return system(cmd) == 0 ? 0 : -1;
}

/* Appends s and a NUL to buf. */
static void add0(sg_strbuf_t *buf, const char *s) { sg_strbuf_append_n(buf, s, strlen(s) + 1); }

/* A command worker: every argument and environment value arrives as it was
 * given, "$PORT" in an argument becomes the port written to the address
 * file, and nothing runs as shell. */
static void test_command_values_reach_worker_unchanged(void **state) {
  (void)state;
  char **v = hostile_values();
  size_t nv = 0;
  while (v[nv])
    nv++;
  /* sh -c prints its arguments, then the environment's values, each NUL
   * terminated. */
  const char *prog = "for a; do printf '%s\\0' \"$a\"; done; "
                     "printf '%s\\0' \"$H0\" \"$H1\" \"$H2\" \"$H3\" \"$H4\" \"$H5\" \"$H6\" \"$H7\" \"$PORT\"";
  char **argv = xcalloc(nv + 6, sizeof(char *));
  size_t n = 0;
  argv[n++] = xstrdup("/bin/sh");
  argv[n++] = xstrdup("-c");
  argv[n++] = xstrdup(prog);
  argv[n++] = xstrdup("sh");
  for (size_t i = 0; i < nv; i++)
    argv[n++] = xstrdup(v[i]);
  argv[n++] = xstrdup("a'$PORT'b$PORT");
  char **envp = xcalloc(nv + 4, sizeof(char *));
  size_t m = 0;
  for (size_t i = 0; i < nv; i++)
    envp[m++] = xasprintf("H%zu=%s", i, v[i]);
  envp[m++] = xasprintf("BAD NAME=$(touch %s)", canary);
  envp[m++] = xasprintf("1X=$(touch %s)", canary);
  envp[m++] = xstrdup("PORT=1");
  cleanup_free char *addr = xasprintf("%s/w1.addr", dir);
  sg_slurm_script_t p = {.addr_path = addr, .argv = argv, .envp = envp};
  cleanup_free char *script = sg_slurm_script(&p);
  size_t out_len;
  cleanup_free char *out = run_script(script, "w1.sh", &out_len);

  size_t alen;
  cleanup_free char *addr_text = sg_read_file(addr, 4096, &alen);
  assert_non_null(addr_text);
  char node[256], gpus[64];
  int port = 0;
  assert_int_equal(sscanf(addr_text, "%255s %d %63s", node, &port, gpus), 3);
  assert_true(port > 0 && port <= 65535);
  assert_string_equal(gpus, "-");

  cleanup_strbuf sg_strbuf_t want = SG_STRBUF_INIT;
  for (size_t i = 0; i < nv; i++)
    add0(&want, v[i]);
  cleanup_free char *ported = xasprintf("a'%d'b%d", port, port);
  add0(&want, ported);
  for (size_t i = 0; i < nv; i++)
    add0(&want, v[i]);
  cleanup_free char *port_s = xasprintf("%d", port);
  add0(&want, port_s);
  assert_int_equal(out_len, want.len);
  assert_memory_equal(out, want.s, want.len);
  assert_int_not_equal(access(canary, F_OK), 0);
  sg_strv_free(argv);
  sg_strv_free(envp);
  sg_strv_free(v);
}

/* A container worker: its id, config path, runtime and layer dirs are what
 * the script's variables hold, whatever they contain. */
static void test_image_values_are_quoted(void **state) {
  (void)state;
  char **v = hostile_values();
  char *lower[] = {v[0], v[4], NULL};
  cleanup_free char *addr = xasprintf("%s/w2.addr", dir);
  sg_slurm_script_t p = {.addr_path = addr, .cid = v[2], .config_path = v[3], .oci_runtime = v[5], .lower = lower};
  cleanup_free char *script = sg_slurm_script(&p);
  /* Up to the parameters only (the rest would enter a mount namespace and
   * run the OCI runtime), then print them. */
  const char *rest = strstr(script, "\nif [ -n \"$sgpu_image\" ]");
  assert_non_null(rest);
  cleanup_strbuf sg_strbuf_t s = SG_STRBUF_INIT;
  sg_strbuf_append_n(&s, script, (size_t)(rest - script) + 1);
  sg_strbuf_append(&s, "printf '%s\\0' \"$sgpu_image\" \"$sgpu_addr_file\" \"$sgpu_cid\" \"$sgpu_config\" "
                       "\"$sgpu_runtime\" \"$sgpu_lower\"\n");
  size_t out_len;
  cleanup_free char *out = run_script(s.s, "w2.sh", &out_len);
  cleanup_strbuf sg_strbuf_t want = SG_STRBUF_INIT;
  add0(&want, "1");
  add0(&want, addr);
  add0(&want, v[2]);
  add0(&want, v[3]);
  add0(&want, v[5]);
  cleanup_free char *l = xasprintf("%s:%s", v[0], v[4]);
  add0(&want, l);
  assert_int_equal(out_len, want.len);
  assert_memory_equal(out, want.s, want.len);
  assert_int_not_equal(access(canary, F_OK), 0);
  sg_strv_free(v);
}

/* The whole script is valid sh in both forms. */
static void test_script_parses(void **state) {
  (void)state;
  char *argv[] = {"/bin/true", NULL};
  char *lower[] = {"/a", "/b", NULL};
  sg_slurm_script_t cmd = {.addr_path = "/x/a.addr", .argv = argv};
  sg_slurm_script_t img = {
      .addr_path = "/x/a.addr", .cid = "w", .config_path = "/x/w.json", .oci_runtime = "crun", .lower = lower};
  sg_slurm_script_t *ps[] = {&cmd, &img};
  for (int i = 0; i < 2; i++) {
    cleanup_free char *script = sg_slurm_script(ps[i]);
    assert_null(strstr(script, "@SGPU_JOB_PARAMS@"));
    assert_non_null(strstr(script, "sgpu_addr_file='/x/a.addr'\n"));
    cleanup_free char *path = xasprintf("%s/parse%d.sh", dir, i);
    assert_int_equal(sg_write_file_atomic(path, script, strlen(script), 0600), 0);
    char *check[] = {"/bin/sh", "-n", path, NULL};
    sg_exec_opts_t opts = {.timeout_ms = 10000, .out_cap = 4096, .flags = SG_EXEC_MERGE_STDERR};
    sg_exec_result_t res;
    cleanup_error sg_error_t *err = NULL;
    assert_int_equal(sg_exec_run(check, &opts, &res, &err), 0);
    if (!sg_exec_status_ok(res.status))
      fail_msg("sh -n: %s", res.out ? res.out : "");
    sg_exec_result_clear(&res);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_command_values_reach_worker_unchanged),
      cmocka_unit_test(test_image_values_are_quoted),
      cmocka_unit_test(test_script_parses),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
