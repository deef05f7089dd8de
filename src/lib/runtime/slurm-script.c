/* A slurm worker's batch script: the shell of slurm-job.sh (embedded at build
 * time as sg_slurm_job_sh) with its parameter line replaced by the worker's
 * values. Every value is single-quoted for sh (a quote inside becomes '\''),
 * so no spec value (environment, argv, paths) is ever read as shell; only
 * "$PORT" in the command's arguments is left for the shell to expand, as the
 * spec contract says. Pure; any thread. */
#include <ctype.h>
#include <string.h>

#include "slurm-internal.h"
#include "sgpu/util.h"

extern const char sg_slurm_job_sh[];
extern const size_t sg_slurm_job_sh_len;

#define PARAMS_LINE "# @SGPU_JOB_PARAMS@\n"

/* Appends s (n bytes) to buf single-quoted for sh. */
static void append_quoted(sg_strbuf_t *buf, const char *s, size_t n) {
  sg_strbuf_append_n(buf, "'", 1);
  for (const char *end = s + n, *q; s < end; s = q + 1) {
    q = memchr(s, '\'', (size_t)(end - s));
    if (!q) {
      sg_strbuf_append_n(buf, s, (size_t)(end - s));
      break;
    }
    sg_strbuf_append_n(buf, s, (size_t)(q - s));
    sg_strbuf_append_n(buf, "'\\''", 4);
  }
  sg_strbuf_append_n(buf, "'", 1);
}

/* "NAME=" then the value quoted, then a newline. */
static void assign(sg_strbuf_t *buf, const char *name, const char *value) {
  sg_strbuf_append(buf, name);
  sg_strbuf_append(buf, "=");
  append_quoted(buf, value ? value : "", value ? strlen(value) : 0);
  sg_strbuf_append(buf, "\n");
}

/* An argument for sh: quoted pieces, each "$PORT" left for the shell. */
static void append_arg(sg_strbuf_t *buf, const char *arg) {
  const char *p = arg;
  for (const char *q; (q = strstr(p, "$PORT")); p = q + 5) {
    if (q > p)
      append_quoted(buf, p, (size_t)(q - p));
    sg_strbuf_append(buf, "\"$PORT\"");
  }
  if (*p || p == arg)
    append_quoted(buf, p, strlen(p));
}

bool sg_slurm_node_sets(const char *kv) {
  static const char *const keys[] = {
      "PORT=", "CUDA_VISIBLE_DEVICES=", "NVIDIA_VISIBLE_DEVICES=", "CUDA_DEVICE_ORDER=", "PATH=", "HOME=", NULL};
  for (const char *const *k = keys; *k; k++)
    if (!strncmp(kv, *k, strlen(*k)))
      return true;
  return false;
}

/* A name sh accepts in "export NAME=...": a letter or _, then letters,
 * digits and _. */
static bool env_name_ok(const char *s, const char *end) {
  if (s == end || !(isalpha((unsigned char)*s) || *s == '_'))
    return false;
  for (; s < end; s++)
    if (!(isalnum((unsigned char)*s) || *s == '_'))
      return false;
  return true;
}

static void params(sg_strbuf_t *s, const sg_slurm_script_t *p) {
  assign(s, "sgpu_addr_file", p->addr_path);
  if (p->cid) {
    assign(s, "sgpu_image", "1");
    assign(s, "sgpu_cid", p->cid);
    assign(s, "sgpu_config", p->config_path);
    assign(s, "sgpu_runtime", p->oci_runtime);
    cleanup_strbuf sg_strbuf_t l = SG_STRBUF_INIT;
    for (char *const *d = p->lower; d && *d; d++) {
      sg_strbuf_append(&l, d == p->lower ? "" : ":");
      sg_strbuf_append(&l, *d);
    }
    assign(s, "sgpu_lower", l.s ? l.s : "");
    return;
  }
  assign(s, "sgpu_image", "");
  sg_strbuf_append(s, "sgpu_env() {\n  :\n");
  for (char *const *e = p->envp; e && *e; e++) {
    const char *eq = strchr(*e, '=');
    if (!eq || sg_slurm_node_sets(*e) || !env_name_ok(*e, eq))
      continue;
    sg_strbuf_append(s, "  export ");
    sg_strbuf_append_n(s, *e, (size_t)(eq - *e));
    sg_strbuf_append(s, "=");
    append_quoted(s, eq + 1, strlen(eq + 1));
    sg_strbuf_append(s, "\n");
  }
  sg_strbuf_append(s, "}\nsgpu_exec() {\n  exec");
  for (char *const *a = p->argv; a && *a; a++) {
    sg_strbuf_append(s, " ");
    append_arg(s, *a);
  }
  sg_strbuf_append(s, "\n}\n");
}

char *sg_slurm_script(const sg_slurm_script_t *p) {
  const char *t = sg_slurm_job_sh;
  const char *mark = strstr(t, "\n" PARAMS_LINE);
  /* The template is part of the build; a missing line is a build defect. */
  if (!mark)
    abort();
  mark++;
  sg_strbuf_t s = SG_STRBUF_INIT;
  sg_strbuf_append_n(&s, t, (size_t)(mark - t));
  params(&s, p);
  sg_strbuf_append(&s, mark + strlen(PARAMS_LINE));
  return sg_strbuf_steal(&s);
}
