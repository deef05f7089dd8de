/* The slurm runtime: a worker is one Slurm batch job. Every Slurm command
 * (sbatch, squeue, scontrol, scancel) runs on the thread pool, never on the
 * loop. With slurmrestd configured, jobs are submitted, queried and
 * cancelled (and nodes listed) through its REST API instead, on the same
 * pool threads (slurm-rest.c).
 *
 * The job's script picks a free port on its node, writes "NODE PORT GPUS" to
 * an address file in the runtime's dir (which must be shared with the nodes)
 * and execs the worker with PORT, CUDA_VISIBLE_DEVICES (Slurm's allocation)
 * and "$PORT" in its argv replaced. Its stdout and stderr go to files in the
 * same dir, which are followed while it runs.
 *
 * With an image, sgpud pulls it into its cache first (the job is submitted
 * once it is there) and writes the container's config.json (the oci
 * runtime's, with tokens for the port and GPUs) beside the script. The
 * script enters a private mount namespace, assembles an overlay root from
 * the image's layer dirs (which the nodes see at the same path, or under
 * node_images_dir), fills in the tokens and runs the OCI runtime in the
 * foreground (on a hybrid cgroup layout as oci.c does: without the cgroup2
 * mount, --cgroup-manager=disabled); on exit it removes the container, the
 * mount and the bundle.
 *
 * One poll at a time runs on the pool: squeue for the state of every job
 * (often while a job starts, every second or so after), the address files of
 * started jobs, the new bytes of every output file, and every few seconds the
 * cluster's nodes. Its results are applied on the loop: on_running once a job
 * runs and has written its address, on_exit (after its last output lines)
 * once Slurm says it ended.
 *
 * Jobs are named "sgpu.WORKER_ID" and carry the comment
 * "sgpu:TAG:ENDPOINT:VERSION", TAG being fixed per dir. A stopping sgpud
 * leaves the jobs that run (detach); a new sgpud of the same dir finds every
 * job with its tag: one that runs and has written its address is offered
 * for adoption (sg_slurm_adopt_leftovers: the daemon takes it when its
 * endpoint still exists at that version), every other one is cancelled.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "oci-internal.h"
#include "slurm-internal.h"
#include "sgpu/exec.h"
#include "sgpu/image.h"
#include "sgpu/log.h"
#include "sgpu/pool.h"
#include "sgpu/runtime.h"
#include "sgpu/util.h"

#define MAX_LINE 16384
#define READ_CHUNK (256 * 1024)
#define CMD_TIMEOUT_MS 30000 /* sbatch, scancel, squeue, sacct */
#define CMD_OUTPUT_CAP (4u << 20)
#define FAST_POLL_MS 100 /* while a job is being placed */
#define SLOW_POLL_MS 500 /* otherwise (output) */
#define SQUEUE_EVERY_MS 1000
#define NODES_EVERY_MS 3000
#define MISSING_POLLS 5 /* a job absent this many polls in a row has ended */

enum phase { P_SUBMITTING, P_QUEUED, P_RUNNING, P_ENDED };

typedef struct out_stream {
  off_t off;
  char *partial; /* a line not yet ended */
  size_t plen;
} out_stream_t;

struct sg_instance {
  LIST_ENTRY(sg_instance) link;
  char *id;
  char *job_id; /* NULL until sbatch answered */
  enum phase phase;
  bool running_reported, exit_reported, released;
  bool cancel_after_submit;
  bool detached; /* left running for the next sgpud */
  int missing;
  char *state, *reason, *node, *addr;
  int port;
  int gpus[16];
  int n_gpus;
  int64_t start_wall, end_wall;
  int exit_status;
  char *end_desc;
  char *script_path, *addr_path, *out_path[2];
  out_stream_t out[2];
  /* With an image: the pull in progress, then the image held while the job
   * lives; the submit waits in `pending` until the image is there. */
  char *image;
  sg_image_wait_t *wait;
  sg_image_t *img;
  struct submit_job *pending;
  sg_instance_callbacks_t cbs;
  void *ud;
};

static struct {
  struct event_base *base;
  sg_pool_t *pool;
  char *dir;
  char *tag;
  char *partition, *account, *time_limit;
  char *unavailable;
  sg_images_t *images;
  char *images_dir, *node_images_dir, *oci_runtime;
  sg_slurmrest_t *rest; /* jobs through slurmrestd instead of the commands */
  bool ready;
  struct event *timer;
  bool poll_busy;
  int64_t last_squeue, last_nodes;
  sg_slurm_node_t *nodes;
  size_t n_nodes;
  int64_t nodes_at;
} rt;

static LIST_HEAD(, sg_instance) instances = LIST_HEAD_INITIALIZER(instances);

/* Jobs of an earlier sgpud that may be adopted, found at init. */
typedef struct leftover {
  sg_slurm_leftover_t job;
  char *job_id, *worker_id, *endpoint;
} leftover_t;
static leftover_t *leftovers;
static size_t n_leftovers;

static void schedule_poll(int64_t ms);

/* ---- commands ---- */

/* Runs argv (looked up in PATH) to completion, at most CMD_TIMEOUT_MS, and
 * returns its wait status, or -1 with errno set when it could not run; *out
 * (optional) gets what it printed, stdout and stderr together (at most
 * CMD_OUTPUT_CAP bytes). A command killed at the timeout returns the status
 * of its kill. Blocks: pool threads and startup only. */
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

/* The last non-empty line of text, trimmed, for error messages. */
static char *last_line(const char *text) {
  const char *end = text + strlen(text);
  while (end > text && isspace((unsigned char)end[-1]))
    end--;
  const char *start = end;
  while (start > text && start[-1] != '\n')
    start--;
  return xstrndup(start, (size_t)(end - start));
}

/* The tokens of a job's config.json that its script replaces on the node
 * (slurm-job.sh). */
#define TOKEN_PORT "@SGPU_PORT@"
#define TOKEN_GPUS "@SGPU_GPUS@"
#define TOKEN_NVGPUS "@SGPU_NVGPUS@"

/* ---- submit ---- */

typedef struct submit_job {
  char *id;
  char **argv;
  char *script, *script_path;
  /* With an image: the container's config, written to config_path once the
   * image's user is resolved against its layers (roots, top first). */
  json_t *config;
  char *config_path, *user;
  char **roots;
  char **cargv, **cenvp; /* the container's argv and env, tokens in place */
  json_t *rest_job;      /* slurmrestd: the job's properties (argv unused) */
  char *job_id;          /* out */
  char *error;           /* out */
} submit_job_t;

static void submit_work(void *data) {
  submit_job_t *s = data;
  int r;
  if (s->config) {
    cleanup_error sg_error_t *uerr = NULL;
    if (sg_oci_resolve_user(s->config, s->roots, s->user, &uerr) < 0) {
      s->error = xasprintf("cannot prepare the container: %s", uerr->message);
      return;
    }
    cleanup_free char *text = json_dumps(s->config, JSON_COMPACT);
    r = sg_write_file_atomic(s->config_path, text, strlen(text), 0600);
    if (r < 0) {
      s->error = xasprintf("cannot write %s: %s", s->config_path, strerror(-r));
      return;
    }
  }
  r = sg_write_file_atomic(s->script_path, s->script, strlen(s->script), 0700);
  if (r >= 0 && s->rest_job) {
    json_t *body = json_pack("{s:s, s:O}", "script", s->script, "job", s->rest_job);
    json_t *reply = NULL;
    cleanup_free char *why = NULL;
    long st = sg_slurmrest_call(rt.rest, "POST", "job/submit", body, &reply, &why);
    json_decref(body);
    json_int_t id = json_integer_value(json_object_get(reply, "job_id"));
    if (st >= 200 && st <= 299 && id > 0)
      s->job_id = xasprintf("%lld", (long long)id);
    else
      s->error = xasprintf("slurmrestd refused the job: %s", why ? why : "no job id in its answer");
    json_decref(reply);
    return;
  }
  if (r < 0) {
    s->error = xasprintf("cannot write %s: %s", s->script_path, strerror(-r));
    return;
  }
  cleanup_free char *out = NULL;
  int status = run_cmd(s->argv, &out);
  /* --parsable: "JOBID" or "JOBID;CLUSTER" */
  const char *p = out ? out : "";
  while (*p && isspace((unsigned char)*p))
    p++;
  size_t n = strspn(p, "0123456789");
  if (cmd_ok(status) && n > 0 && n < 32) {
    s->job_id = xstrndup(p, n);
    return;
  }
  cleanup_free char *why = last_line(p);
  s->error = status < 0 ? xasprintf("cannot run sbatch: %s", strerror(errno))
                        : xasprintf("sbatch failed: %s", *why ? why : "no output");
}

static void cancel_sync(const char *job_id, bool term);
static void submit_cmd(char **argv);

static void submit_job_free(submit_job_t *s) {
  sg_strv_free(s->argv);
  sg_strv_free(s->roots);
  sg_strv_free(s->cargv);
  sg_strv_free(s->cenvp);
  json_decref(s->config);
  json_decref(s->rest_job);
  free(s->config_path);
  free(s->user);
  free(s->id);
  free(s->script);
  free(s->script_path);
  free(s->job_id);
  free(s->error);
  free(s);
}

static void instance_free(sg_instance_t *inst) {
  if (inst->wait)
    sg_images_cancel(inst->wait);
  if (inst->img && rt.images)
    sg_images_unuse(rt.images, inst->img);
  if (inst->pending)
    submit_job_free(inst->pending);
  free(inst->image);
  free(inst->id);
  free(inst->job_id);
  free(inst->state);
  free(inst->reason);
  free(inst->node);
  free(inst->addr);
  free(inst->end_desc);
  free(inst->script_path);
  free(inst->addr_path);
  for (int i = 0; i < 2; i++) {
    free(inst->out_path[i]);
    free(inst->out[i].partial);
  }
  free(inst);
}

static sg_instance_t *find(const char *id) {
  sg_instance_t *inst;
  LIST_FOREACH(inst, &instances, link) {
    if (!strcmp(inst->id, id))
      return inst;
  }
  return NULL;
}

static void set_str(char **slot, const char *v) {
  if (*slot && v && !strcmp(*slot, v))
    return;
  free(*slot);
  *slot = v ? xstrdup(v) : NULL;
}

static char **cancel_argv(const char *job_id, bool term) {
  char **argv = xcalloc(6, sizeof(char *));
  int n = 0;
  argv[n++] = xstrdup("scancel");
  if (term) {
    argv[n++] = xstrdup("--full");
    argv[n++] = xstrdup("--signal=TERM");
  }
  argv[n++] = xstrdup(job_id);
  return argv;
}

static void submit_done(void *data, bool cancelled) {
  submit_job_t *s = data;
  sg_instance_t *inst = find(s->id);
  if (inst && !cancelled) {
    if (s->job_id) {
      inst->job_id = steal_pointer(&s->job_id);
      inst->phase = P_QUEUED;
      set_str(&inst->state, "PENDING");
      if (inst->released) {
        cancel_sync(inst->job_id, false);
      } else if (inst->cancel_after_submit) {
        submit_cmd(cancel_argv(inst->job_id, false));
      }
      schedule_poll(0);
    } else {
      inst->phase = P_ENDED;
      inst->exit_reported = true;
      if (!inst->released)
        inst->cbs.on_fail(inst->ud, s->error ? s->error : "sbatch failed");
    }
  } else if (inst && s->job_id) {
    cancel_sync(s->job_id, false); /* shutdown */
  }
  if (inst && inst->released) {
    LIST_REMOVE(inst, link);
    instance_free(inst);
  }
  submit_job_free(s);
}

static const sg_pool_job_ops_t submit_ops = {submit_work, submit_done};

/* ---- fire-and-forget commands (scancel) ---- */

typedef struct cmd_job {
  char **argv;
  char *out;
  int status;
} cmd_job_t;

/* scancel's argv ("scancel [--full --signal=TERM] JOBID") through
 * slurmrestd: DELETE job/JOBID, with the signal when one is named. Returns a
 * status as run_cmd does. */
static int rest_cancel(char *const *argv, char **out) {
  const char *job_id = NULL;
  bool term = false;
  for (char *const *a = argv + 1; *a; a++) {
    if (!strcmp(*a, "--signal=TERM"))
      term = true;
    else if (**a != '-')
      job_id = *a;
  }
  if (!job_id)
    return -1;
  cleanup_free char *path = xasprintf("job/%s%s", job_id, term ? "?signal=SIGTERM" : "");
  char *why = NULL;
  long st = sg_slurmrest_call(rt.rest, "DELETE", path, NULL, NULL, &why);
  if (out)
    *out = why ? why : xstrdup("");
  else
    free(why);
  return st >= 200 && st <= 299 ? 0 : 1 << 8;
}

static void cmd_work(void *data) {
  cmd_job_t *c = data;
  c->status = rt.rest && !strcmp(c->argv[0], "scancel") ? rest_cancel(c->argv, &c->out) : run_cmd(c->argv, &c->out);
}

static void cmd_done(void *data, bool cancelled) {
  cmd_job_t *c = data;
  if (!cancelled && !cmd_ok(c->status)) {
    cleanup_free char *why = last_line(c->out ? c->out : "");
    sg_warn("%s %s failed: %s", c->argv[0], c->argv[1] ? c->argv[1] : "", why);
  }
  sg_strv_free(c->argv);
  free(c->out);
  free(c);
}

static const sg_pool_job_ops_t cmd_ops = {cmd_work, cmd_done};

static void submit_cmd(char **argv) {
  cmd_job_t *c = xcalloc(1, sizeof(*c));
  c->argv = argv;
  sg_pool_submit(rt.pool, &cmd_ops, c);
}

/* Cancels a job now (blocks; shutdown only). */
static void cancel_sync(const char *job_id, bool term) {
  char **argv = cancel_argv(job_id, term);
  if (rt.rest)
    rest_cancel(argv, NULL);
  else
    run_cmd(argv, NULL);
  sg_strv_free(argv);
}

/* ---- poll ---- */

typedef struct poll_item {
  char *id, *job_id, *addr_path, *out_path[2];
  off_t off[2];
  bool want_addr;
  /* out */
  char *chunk[2];
  size_t chunk_len[2];
  bool seen; /* in squeue's answer */
  char state[32], reason[128], node[128];
  int64_t start_wall, end_wall;
  char exit_code[32];
  bool have_addr;
  char addr_node[128], addr[64];
  int port;
  int gpus[16];
  int n_gpus;
} poll_item_t;

typedef struct poll_job {
  poll_item_t *items;
  size_t n;
  bool squeue, nodes;
  bool squeue_ok;
  char *squeue_error;
  sg_slurm_node_t *node_list;
  size_t n_nodes;
  bool nodes_ok;
} poll_job_t;

/* Slurm's local time "2024-05-01T12:00:00" as ms since the epoch; 0 for none.
 */
static int64_t parse_time(const char *s) {
  struct tm tm = {0};
  const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
  if (!end || *end)
    return 0;
  tm.tm_isdst = -1;
  time_t t = mktime(&tm);
  return t < 0 ? 0 : (int64_t)t * 1000;
}

/* The value of " KEY=" in a one-line scontrol record, up to the next space. */
static bool field(const char *rec, const char *key, char *out, size_t len) {
  size_t kl = strlen(key);
  for (const char *p = rec; (p = strstr(p, key)); p += kl) {
    if ((p == rec || p[-1] == ' ') && p[kl] == '=') {
      const char *v = p + kl + 1;
      size_t n = strcspn(v, " \n");
      if (n >= len)
        n = len - 1;
      memcpy(out, v, n);
      out[n] = '\0';
      return true;
    }
  }
  out[0] = '\0';
  return false;
}

static void copy_field(char *dst, size_t len, const char *src, size_t n) {
  if (n >= len)
    n = len - 1;
  memcpy(dst, src, n);
  dst[n] = '\0';
}

/* Slurm's wait status of a job as "CODE:SIGNAL", as squeue shows it. */
static void exit_code_text(json_int_t st, char *out, size_t len) {
  snprintf(out, len, "%d:%d", (int)((st >> 8) & 0xff), (int)(st & 0x7f));
}

/* One job as slurmrestd describes it, into it. */
static void rest_job_item(json_t *job, poll_item_t *it) {
  const char *state = json_string_value(json_object_get(job, "job_state"));
  const char *reason = json_string_value(json_object_get(job, "state_reason"));
  const char *nodes = json_string_value(json_object_get(job, "nodes"));
  it->seen = true;
  copy_field(it->state, sizeof(it->state), state ? state : "", state ? strlen(state) : 0);
  copy_field(it->reason, sizeof(it->reason), reason ? reason : "None", reason ? strlen(reason) : 4);
  copy_field(it->node, sizeof(it->node), nodes ? nodes : "", nodes ? strlen(nodes) : 0);
  json_int_t start = json_integer_value(json_object_get(job, "start_time"));
  json_int_t end = json_integer_value(json_object_get(job, "end_time"));
  it->start_wall = strcmp(it->state, "PENDING") && start > 0 ? (int64_t)start * 1000 : 0;
  it->end_wall = end > 0 ? (int64_t)end * 1000 : 0;
  exit_code_text(json_integer_value(json_object_get(job, "exit_code")), it->exit_code, sizeof(it->exit_code));
}

/* The state of every item's job through slurmrestd: GET job/ID each. */
static void rest_squeue(poll_job_t *pj) {
  for (size_t i = 0; i < pj->n; i++) {
    poll_item_t *it = &pj->items[i];
    cleanup_free char *path = xasprintf("job/%s", it->job_id);
    json_t *reply = NULL;
    cleanup_free char *why = NULL;
    long st = sg_slurmrest_call(rt.rest, "GET", path, NULL, &reply, &why);
    json_t *job = json_array_get(json_object_get(reply, "jobs"), 0);
    if (st >= 200 && st <= 299 && job) {
      pj->squeue_ok = true;
      rest_job_item(job, it);
    } else if (st > 0 && why && strstr(why, "Invalid job id")) {
      pj->squeue_ok = true; /* gone from Slurm */
    } else if (!pj->squeue_error) {
      pj->squeue_error = xasprintf("slurmrestd: job %s: %s", it->job_id, why ? why : "no answer");
    }
    json_decref(reply);
  }
}

static void run_squeue(poll_job_t *pj) {
  if (rt.rest) {
    rest_squeue(pj);
    return;
  }
  size_t cap = 64;
  for (size_t i = 0; i < pj->n; i++)
    cap += strlen(pj->items[i].job_id) + 1;
  cleanup_free char *ids = xcalloc(1, cap);
  for (size_t i = 0; i < pj->n; i++) {
    if (i)
      strcat(ids, ",");
    strcat(ids, pj->items[i].job_id);
  }
  char *argv[] = {"squeue", "--noheader", "--states=all", "--jobs", ids, "--format=%i|%T|%r|%N|%S|%e", NULL};
  cleanup_free char *out = NULL;
  int status = run_cmd(argv, &out);
  if (!cmd_ok(status) && !(out && strstr(out, "Invalid job id"))) {
    cleanup_free char *why = last_line(out ? out : "");
    pj->squeue_error =
        status < 0 ? xasprintf("cannot run squeue: %s", strerror(errno)) : xasprintf("squeue failed: %s", why);
    return;
  }
  pj->squeue_ok = true;
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
    for (size_t i = 0; i < pj->n; i++) {
      poll_item_t *it = &pj->items[i];
      if (strcmp(it->job_id, f[0]))
        continue;
      it->seen = true;
      copy_field(it->state, sizeof(it->state), f[1], strlen(f[1]));
      copy_field(it->reason, sizeof(it->reason), f[2], strlen(f[2]));
      copy_field(it->node, sizeof(it->node), f[3], strlen(f[3]));
      it->start_wall = strcmp(it->state, "PENDING") ? parse_time(f[4]) : 0;
      it->end_wall = parse_time(f[5]);
    }
  }
}

static bool ended_state(const char *s) {
  return *s && strcmp(s, "PENDING") && strcmp(s, "RUNNING") && strcmp(s, "CONFIGURING") && strcmp(s, "COMPLETING") &&
         strcmp(s, "SUSPENDED") && strcmp(s, "REQUEUED") && strcmp(s, "RESIZING") && strcmp(s, "SIGNALING") &&
         strcmp(s, "STAGE_OUT");
}

/* For an ended job: its exit code and exact times from scontrol. */
static void read_end(poll_item_t *it) {
  char *argv[] = {"scontrol", "--oneliner", "show", "job", it->job_id, NULL};
  cleanup_free char *out = NULL;
  if (!cmd_ok(run_cmd(argv, &out)) || !out)
    return;
  char v[64];
  field(out, "ExitCode", it->exit_code, sizeof(it->exit_code));
  if (field(out, "StartTime", v, sizeof(v)) && parse_time(v))
    it->start_wall = parse_time(v);
  if (field(out, "EndTime", v, sizeof(v)) && parse_time(v))
    it->end_wall = parse_time(v);
}

static void read_addr(poll_item_t *it) {
  size_t len;
  cleanup_free char *text = sg_read_file(it->addr_path, 4096, &len);
  if (!text)
    return;
  char node[128], gpus[256];
  int port;
  if (sscanf(text, "%127s %d %255s", node, &port, gpus) != 3 || port <= 0 || port > 65535)
    return;
  it->n_gpus = 0;
  if (strcmp(gpus, "-")) {
    for (char *tok = strtok(gpus, ","); tok && it->n_gpus < 16; tok = strtok(NULL, ","))
      it->gpus[it->n_gpus++] = atoi(tok);
  }
  /* The node's name as the cluster resolves it. */
  struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
  if (getaddrinfo(node, NULL, &hints, &res) != 0 || !res)
    return;
  inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, it->addr, sizeof(it->addr));
  freeaddrinfo(res);
  snprintf(it->addr_node, sizeof(it->addr_node), "%s", node);
  it->port = port;
  it->have_addr = true;
}

static void read_output(poll_item_t *it) {
  for (int i = 0; i < 2; i++) {
    cleanup_close int fd = open(it->out_path[i], O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      continue;
    char *buf = xmalloc(READ_CHUNK);
    ssize_t n;
    do
      n = pread(fd, buf, READ_CHUNK, it->off[i]);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
      it->chunk[i] = buf;
      it->chunk_len[i] = (size_t)n;
    } else {
      free(buf);
    }
  }
}

/* "gpu:a100:4(S:0)" -> type a100, count 4; "gpu:a100:2(IDX:0-1)" -> count 2. */
static void parse_gres(const char *g, char *type, size_t tlen, int *count) {
  *count = 0;
  for (const char *p = g; (p = strstr(p, "gpu:")); p += 4) {
    if (p != g && p[-1] != ',')
      continue;
    const char *a = p + 4;
    const char *colon = strchr(a, ':');
    const char *stop = a + strcspn(a, ",(");
    if (colon && colon < stop) {
      if (type && !*type)
        copy_field(type, tlen, a, (size_t)(colon - a));
      *count += atoi(colon + 1);
    } else {
      *count += atoi(a);
    }
  }
}

static void rest_nodes(poll_job_t *pj) {
  json_t *reply = NULL;
  long st = sg_slurmrest_call(rt.rest, "GET", "nodes", NULL, &reply, NULL);
  json_t *nodes = json_object_get(reply, "nodes");
  if (st < 200 || st > 299 || !json_is_array(nodes)) {
    json_decref(reply);
    return;
  }
  pj->nodes_ok = true;
  size_t i;
  json_t *x;
  json_array_foreach(nodes, i, x) {
    sg_slurm_node_t n = {0};
    const char *name = json_string_value(json_object_get(x, "name"));
    if (!name)
      continue;
    snprintf(n.name, sizeof(n.name), "%s", name);
    json_t *state = json_object_get(x, "state");
    snprintf(n.state, sizeof(n.state), "%s", json_is_string(state) ? json_string_value(state) : "");
    for (char *c = n.state; *c; c++)
      *c = (char)toupper((unsigned char)*c);
    json_t *parts = json_object_get(x, "partitions");
    size_t k;
    json_t *p;
    json_array_foreach(parts, k, p) {
      size_t used = strlen(n.partitions);
      snprintf(n.partitions + used, sizeof(n.partitions) - used, "%s%s", k ? "," : "",
               json_string_value(p) ? json_string_value(p) : "");
    }
    const char *g = json_string_value(json_object_get(x, "gres"));
    parse_gres(g ? g : "", n.gpu_type, sizeof(n.gpu_type), &n.gpus_total);
    g = json_string_value(json_object_get(x, "gres_used"));
    parse_gres(g ? g : "", NULL, 0, &n.gpus_used);
    pj->node_list = xrealloc(pj->node_list, (pj->n_nodes + 1) * sizeof(*pj->node_list));
    pj->node_list[pj->n_nodes++] = n;
  }
  json_decref(reply);
}

static void run_nodes(poll_job_t *pj) {
  if (rt.rest) {
    rest_nodes(pj);
    return;
  }
  char *argv[] = {"scontrol", "--oneliner", "--details", "show", "node", NULL};
  cleanup_free char *out = NULL;
  if (!cmd_ok(run_cmd(argv, &out)) || !out)
    return;
  pj->nodes_ok = true;
  for (char *line = out, *next; *line; line = next) {
    next = strchr(line, '\n');
    if (next)
      *next++ = '\0';
    else
      next = line + strlen(line);
    sg_slurm_node_t n = {0};
    if (!field(line, "NodeName", n.name, sizeof(n.name)))
      continue;
    field(line, "State", n.state, sizeof(n.state));
    field(line, "Partitions", n.partitions, sizeof(n.partitions));
    char g[512];
    field(line, "Gres", g, sizeof(g));
    parse_gres(g, n.gpu_type, sizeof(n.gpu_type), &n.gpus_total);
    field(line, "GresUsed", g, sizeof(g));
    parse_gres(g, NULL, 0, &n.gpus_used);
    pj->node_list = xrealloc(pj->node_list, (pj->n_nodes + 1) * sizeof(*pj->node_list));
    pj->node_list[pj->n_nodes++] = n;
  }
}

static void poll_work(void *data) {
  poll_job_t *pj = data;
  if (pj->squeue && pj->n > 0)
    run_squeue(pj);
  for (size_t i = 0; i < pj->n; i++) {
    poll_item_t *it = &pj->items[i];
    if (it->seen && ended_state(it->state) && !rt.rest)
      read_end(it);
    if (it->want_addr && it->seen && !strcmp(it->state, "RUNNING"))
      read_addr(it);
    /* Output after the state: what the job wrote before it ended is read
     * before its end is reported. */
    read_output(it);
  }
  if (pj->nodes)
    run_nodes(pj);
}

/* Hands complete lines of a chunk to on_line; keeps the rest. */
static void deliver(sg_instance_t *inst, int i, const char *data, size_t len, bool eof) {
  out_stream_t *o = &inst->out[i];
  const char *stream = i == 0 ? "stdout" : "stderr";
  o->partial = xrealloc(o->partial, o->plen + len + 1);
  memcpy(o->partial + o->plen, data, len);
  o->plen += len;
  size_t start = 0;
  for (size_t k = 0; k < o->plen; k++) {
    if (o->partial[k] != '\n' && k - start < MAX_LINE)
      continue;
    size_t l = k - start;
    bool nl = o->partial[k] == '\n';
    if (l > 0 && o->partial[start + l - 1] == '\r')
      l--;
    o->partial[start + l] = '\0';
    if (!inst->released)
      inst->cbs.on_line(inst->ud, stream, o->partial + start, l);
    start = nl ? k + 1 : k;
  }
  if (eof && start < o->plen) {
    o->partial[o->plen] = '\0';
    if (!inst->released)
      inst->cbs.on_line(inst->ud, stream, o->partial + start, o->plen - start);
    start = o->plen;
  }
  memmove(o->partial, o->partial + start, o->plen - start);
  o->plen -= start;
}

/* Slurm's "CODE:SIGNAL" as a wait status. */
static int wait_status(const char *exit_code) {
  int code = 0, sig = 0;
  if (sscanf(exit_code, "%d:%d", &code, &sig) < 1)
    return 0;
  if (sig > 0 && sig < 128)
    return sig; /* WIFSIGNALED */
  return (code & 0xff) << 8;
}

static void report_end(sg_instance_t *inst) {
  if (inst->exit_reported)
    return;
  inst->exit_reported = true;
  inst->phase = P_ENDED;
  for (int i = 0; i < 2; i++)
    deliver(inst, i, "", 0, true);
  if (inst->released)
    return;
  if (!inst->running_reported) {
    cleanup_free char *msg = xasprintf("Slurm job %s ended before the worker started: %s", inst->job_id,
                                       inst->end_desc ? inst->end_desc : "unknown");
    /* A job that ran (its script failed) reports an exit; one that never ran, a
     * failed start. */
    if (inst->start_wall) {
      inst->cbs.on_line(inst->ud, "stderr", msg, strlen(msg));
      inst->cbs.on_exit(inst->ud, inst->exit_status);
    } else {
      inst->cbs.on_fail(inst->ud, msg);
    }
    return;
  }
  cleanup_free char *msg = xasprintf("Slurm job %s ended: %s", inst->job_id, inst->end_desc);
  inst->cbs.on_line(inst->ud, "stderr", msg, strlen(msg));
  inst->cbs.on_exit(inst->ud, inst->exit_status);
}

static void apply(poll_job_t *pj, poll_item_t *it) {
  sg_instance_t *inst = find(it->id);
  if (!inst || inst->exit_reported)
    return;
  for (int i = 0; i < 2; i++) {
    if (it->chunk[i]) {
      inst->out[i].off += (off_t)it->chunk_len[i];
      deliver(inst, i, it->chunk[i], it->chunk_len[i], false);
    }
  }
  if (!pj->squeue_ok)
    return;
  if (!it->seen) {
    if (++inst->missing >= MISSING_POLLS) {
      set_str(&inst->state, "UNKNOWN");
      set_str(&inst->end_desc, "no longer known to Slurm");
      inst->exit_status = 0;
      report_end(inst);
    }
    return;
  }
  inst->missing = 0;
  set_str(&inst->state, it->state);
  set_str(&inst->reason, strcmp(it->reason, "None") ? it->reason : NULL);
  if (*it->node)
    set_str(&inst->node, it->node);
  if (it->start_wall)
    inst->start_wall = it->start_wall;
  if (ended_state(it->state)) {
    inst->end_wall = it->end_wall;
    inst->exit_status = wait_status(it->exit_code);
    free(inst->end_desc);
    inst->end_desc = xasprintf("%s%s%s, exit code %s", it->state, inst->reason ? " " : "",
                               inst->reason ? inst->reason : "", *it->exit_code ? it->exit_code : "unknown");
    report_end(inst);
    return;
  }
  if (!strcmp(it->state, "RUNNING"))
    inst->phase = P_RUNNING;
  if (it->have_addr && !inst->running_reported) {
    set_str(&inst->addr, it->addr);
    set_str(&inst->node, it->addr_node);
    inst->port = it->port;
    inst->n_gpus = it->n_gpus;
    memcpy(inst->gpus, it->gpus, sizeof(inst->gpus));
    inst->running_reported = true;
    if (!inst->released)
      inst->cbs.on_running(inst->ud);
  }
}

static void poll_job_free(poll_job_t *pj) {
  for (size_t i = 0; i < pj->n; i++) {
    poll_item_t *it = &pj->items[i];
    free(it->id);
    free(it->job_id);
    free(it->addr_path);
    for (int k = 0; k < 2; k++) {
      free(it->out_path[k]);
      free(it->chunk[k]);
    }
  }
  free(pj->items);
  free(pj->squeue_error);
  free(pj->node_list);
  free(pj);
}

static bool placing(void) {
  sg_instance_t *inst;
  LIST_FOREACH(inst, &instances, link) {
    if (!inst->exit_reported && !inst->running_reported)
      return true;
  }
  return false;
}

static void poll_done(void *data, bool cancelled) {
  poll_job_t *pj = data;
  rt.poll_busy = false;
  if (!cancelled) {
    if (pj->squeue_error)
      sg_warn("slurm: %s", pj->squeue_error);
    for (size_t i = 0; i < pj->n; i++)
      apply(pj, &pj->items[i]);
    if (pj->nodes_ok) {
      free(rt.nodes);
      rt.nodes = steal_pointer(&pj->node_list);
      rt.n_nodes = pj->n_nodes;
      rt.nodes_at = sg_now_ms();
    }
    schedule_poll(placing() ? FAST_POLL_MS : SLOW_POLL_MS);
  }
  poll_job_free(pj);
}

static const sg_pool_job_ops_t poll_ops = {poll_work, poll_done};

static void poll_cb(evutil_socket_t fd, short what, void *arg) {
  if (rt.poll_busy || !rt.pool)
    return;
  int64_t now = sg_now_ms();
  poll_job_t *pj = xcalloc(1, sizeof(*pj));
  bool fast = placing();
  pj->squeue = fast || now - rt.last_squeue >= SQUEUE_EVERY_MS;
  pj->nodes = now - rt.last_nodes >= NODES_EVERY_MS;
  sg_instance_t *inst;
  LIST_FOREACH(inst, &instances, link) {
    if (!inst->job_id || inst->exit_reported)
      continue;
    pj->items = xrealloc(pj->items, (pj->n + 1) * sizeof(*pj->items));
    poll_item_t *it = &pj->items[pj->n++];
    memset(it, 0, sizeof(*it));
    it->id = xstrdup(inst->id);
    it->job_id = xstrdup(inst->job_id);
    it->addr_path = xstrdup(inst->addr_path);
    for (int k = 0; k < 2; k++) {
      it->out_path[k] = xstrdup(inst->out_path[k]);
      it->off[k] = inst->out[k].off;
    }
    it->want_addr = !inst->running_reported;
  }
  if (pj->n == 0 && !pj->nodes) {
    poll_job_free(pj);
    schedule_poll(SLOW_POLL_MS);
    return;
  }
  if (pj->squeue && pj->n > 0)
    rt.last_squeue = now;
  if (pj->nodes)
    rt.last_nodes = now;
  rt.poll_busy = true;
  sg_pool_submit(rt.pool, &poll_ops, pj);
}

static void schedule_poll(int64_t ms) {
  if (!rt.timer || rt.poll_busy)
    return;
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
  evtimer_add(rt.timer, &tv);
}

/* ---- runtime ops ---- */

/* Replaces every "$PORT" in arg with the port token. */
static char *port_token(const char *arg) {
  sg_strbuf_t out = SG_STRBUF_INIT;
  const char *p = arg;
  for (const char *q; (q = strstr(p, "$PORT")); p = q + 5) {
    sg_strbuf_append_n(&out, p, (size_t)(q - p));
    sg_strbuf_append(&out, TOKEN_PORT);
  }
  sg_strbuf_append(&out, p);
  return sg_strbuf_steal(&out);
}

/* A layer dir as the nodes see it: under node_images_dir instead of
 * sgpud's images dir when they differ. */
static char *node_path(const char *dir) {
  size_t n = rt.images_dir ? strlen(rt.images_dir) : 0;
  if (rt.node_images_dir && n && !strncmp(dir, rt.images_dir, n) && (dir[n] == '/' || !dir[n]))
    return xasprintf("%s%s", rt.node_images_dir, dir + n);
  return xstrdup(dir);
}

/* The image of inst is there: its config, script and the submit. */
static void submit_image(sg_instance_t *inst) {
  submit_job_t *s = steal_pointer(&inst->pending);
  sg_image_t *img = inst->img;
  sg_oci_bundle_spec_t b = {inst->id, img, s->cargv, s->cenvp, "rootfs"};
  s->config = sg_oci_config_new(&b);
  s->user = img->user ? xstrdup(img->user) : NULL;
  s->roots = xcalloc(img->n_layers + 1, sizeof(char *));
  char **lower = xcalloc(img->n_layers + 1, sizeof(char *));
  for (size_t i = 0; i < img->n_layers; i++) {
    s->roots[i] = xstrdup(img->layer_dirs[img->n_layers - 1 - i]);
    lower[i] = node_path(s->roots[i]);
  }
  sg_slurm_script_t sp = {.addr_path = inst->addr_path,
                          .cid = inst->id,
                          .config_path = s->config_path,
                          .oci_runtime = rt.oci_runtime,
                          .lower = lower};
  s->script = sg_slurm_script(&sp);
  sg_strv_free(lower);
  sg_pool_submit(rt.pool, &submit_ops, s);
}

static void pulled(void *ud, sg_image_t *img, const sg_error_t *err) {
  sg_instance_t *inst = ud;
  inst->wait = NULL;
  if (!img) {
    cleanup_free char *msg = xasprintf("image %s: %s", inst->image, err ? err->message : "pull failed");
    inst->phase = P_ENDED;
    inst->exit_reported = true;
    inst->cbs.on_fail(inst->ud, msg);
    return;
  }
  inst->img = img;
  sg_images_use(rt.images, img);
  submit_image(inst);
}

/* A worker stopped while its image was being pulled: its exit, reported
 * from a fresh stack frame. */
static void stopped_in_pull(evutil_socket_t fd, short what, void *arg) {
  char *id = arg;
  sg_instance_t *inst = find(id);
  free(id);
  if (!inst || inst->exit_reported)
    return;
  inst->phase = P_ENDED;
  inst->exit_reported = true;
  set_str(&inst->state, "CANCELLED");
  if (!inst->released)
    inst->cbs.on_exit(inst->ud, SIGTERM);
}

/* Slurm's time format ("M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S") in
 * whole minutes, rounded up; -1 when not one. */
static long time_minutes(const char *t) {
  long d = 0, v[3] = {0, 0, 0};
  int n = 0;
  const char *p = t;
  const char *dash = strchr(t, '-');
  if (dash) {
    d = strtol(t, NULL, 10);
    p = dash + 1;
  }
  for (char *end; n < 3; n++) {
    v[n] = strtol(p, &end, 10);
    if (end == p)
      return -1;
    p = end;
    if (*p != ':')
      break;
    p++;
  }
  if (*p || n > 2)
    return -1;
  long secs;
  if (dash) /* D-H, D-H:M, D-H:M:S */
    secs = ((d * 24 + v[0]) * 60 + (n >= 1 ? v[1] : 0)) * 60 + (n >= 2 ? v[2] : 0);
  else if (n == 0) /* M */
    secs = v[0] * 60;
  else if (n == 1) /* M:S */
    secs = v[0] * 60 + v[1];
  else /* H:M:S */
    secs = (v[0] * 60 + v[1]) * 60 + v[2];
  return (secs + 59) / 60;
}

/* The job's properties for slurmrestd, as start() gives them to sbatch:
 * sgpud's environment (sbatch's --export=ALL) and the same options. */
static json_t *rest_job(const sg_launch_t *l, const sg_instance_t *inst, const char *part, const char *acct,
                        const char *tl) {
  extern char **environ;
  json_t *env = json_object();
  for (char **e = environ; e && *e; e++) {
    const char *eq = strchr(*e, '=');
    if (!eq || eq == *e)
      continue;
    cleanup_free char *k = xstrndup(*e, (size_t)(eq - *e));
    json_object_set_new(env, k, json_string(eq + 1));
  }
  if (!json_object_get(env, "PATH"))
    json_object_set_new(env, "PATH", json_string("/usr/local/bin:/usr/bin:/bin"));
  cleanup_free char *name = xasprintf("sgpu.%s", l->id);
  cleanup_free char *comment = xasprintf("sgpu:%s:%s:%d", rt.tag, l->endpoint ? l->endpoint : "", l->version);
  json_t *j =
      json_pack("{s:s, s:s, s:s, s:s, s:s, s:b, s:[i, i], s:i, s:o}", "name", name, "comment", comment,
                "standard_output", inst->out_path[0], "standard_error", inst->out_path[1], "current_working_directory",
                rt.dir, "requeue", 0, "nodes", 1, 1, "tasks", 1, "environment", env);
  if (l->gpu_count > 0) {
    cleanup_free char *g =
        l->gpu_type ? xasprintf("gpu:%s:%d", l->gpu_type, l->gpu_count) : xasprintf("gpu:%d", l->gpu_count);
    json_object_set_new(j, "gres", json_string(g));
  }
  if (part)
    json_object_set_new(j, "partition", json_string(part));
  if (acct)
    json_object_set_new(j, "account", json_string(acct));
  if (tl && time_minutes(tl) > 0)
    json_object_set_new(j, "time_limit", json_integer(time_minutes(tl)));
  return j;
}

static sg_instance_t *start(struct event_base *base, const sg_launch_t *l, const sg_instance_callbacks_t *cbs, void *ud,
                            sg_error_t **err) {
  if (!rt.ready) {
    sg_make_error(err, ENOTSUP, "%s", rt.unavailable ? rt.unavailable : "the slurm runtime is not set up");
    return NULL;
  }
  if (l->image && !rt.images) {
    sg_make_error(err, ENOTSUP, "the slurm runtime has no image store here");
    return NULL;
  }
  if (!l->image && (!l->argv || !l->argv[0])) {
    sg_make_error(err, EINVAL, "the slurm runtime needs a command");
    return NULL;
  }
  sg_instance_t *inst = xcalloc(1, sizeof(*inst));
  inst->id = xstrdup(l->id);
  inst->cbs = *cbs;
  inst->ud = ud;
  inst->phase = P_SUBMITTING;
  inst->state = xstrdup(l->image ? "PULLING" : "SUBMITTING");
  inst->image = l->image ? xstrdup(l->image) : NULL;
  inst->script_path = xasprintf("%s/%s.sh", rt.dir, l->id);
  inst->addr_path = xasprintf("%s/%s.addr", rt.dir, l->id);
  inst->out_path[0] = xasprintf("%s/%s.out", rt.dir, l->id);
  inst->out_path[1] = xasprintf("%s/%s.err", rt.dir, l->id);

  submit_job_t *s = xcalloc(1, sizeof(*s));
  s->id = xstrdup(l->id);
  s->script_path = xstrdup(inst->script_path);
  if (!l->image) {
    sg_slurm_script_t sp = {.addr_path = inst->addr_path, .argv = l->argv, .envp = l->envp};
    s->script = sg_slurm_script(&sp);
  }
  s->argv = xcalloc(20, sizeof(char *));
  int n = 0;
  s->argv[n++] = xstrdup("sbatch");
  s->argv[n++] = xstrdup("--parsable");
  s->argv[n++] = xasprintf("--job-name=sgpu.%s", l->id);
  s->argv[n++] = xasprintf("--comment=sgpu:%s:%s:%d", rt.tag, l->endpoint ? l->endpoint : "", l->version);
  s->argv[n++] = xasprintf("--output=%s", inst->out_path[0]);
  s->argv[n++] = xasprintf("--error=%s", inst->out_path[1]);
  s->argv[n++] = xasprintf("--chdir=%s", rt.dir);
  s->argv[n++] = xstrdup("--no-requeue");
  s->argv[n++] = xstrdup("--nodes=1");
  s->argv[n++] = xstrdup("--ntasks=1");
  s->argv[n++] = xstrdup("--export=ALL");
  if (l->gpu_count > 0)
    s->argv[n++] = l->gpu_type ? xasprintf("--gres=gpu:%s:%d", l->gpu_type, l->gpu_count)
                               : xasprintf("--gres=gpu:%d", l->gpu_count);
  const char *part = l->partition ? l->partition : rt.partition;
  const char *acct = l->account ? l->account : rt.account;
  const char *tl = l->time_limit ? l->time_limit : rt.time_limit;
  if (part)
    s->argv[n++] = xasprintf("--partition=%s", part);
  if (acct)
    s->argv[n++] = xasprintf("--account=%s", acct);
  if (tl)
    s->argv[n++] = xasprintf("--time=%s", tl);
  s->argv[n++] = xstrdup(inst->script_path);
  if (rt.rest)
    s->rest_job = rest_job(l, inst, part, acct, tl);
  LIST_INSERT_HEAD(&instances, inst, link);
  if (!l->image) {
    sg_pool_submit(rt.pool, &submit_ops, s);
    return inst;
  }
  /* The container's argv ("$PORT" as a token) and env: the spec's, then the
   * contract's variables, filled in on the node. */
  size_t na = 0, ne = 0;
  while (l->argv && l->argv[na])
    na++;
  while (l->envp && l->envp[ne])
    ne++;
  s->cargv = xcalloc(na + 1, sizeof(char *));
  for (size_t i = 0; i < na; i++)
    s->cargv[i] = port_token(l->argv[i]);
  s->cenvp = xcalloc(ne + 5, sizeof(char *));
  size_t k = 0;
  for (size_t i = 0; i < ne; i++)
    if (!sg_slurm_node_sets(l->envp[i]) || !strncmp(l->envp[i], "PATH=", 5) || !strncmp(l->envp[i], "HOME=", 5))
      s->cenvp[k++] = xstrdup(l->envp[i]);
  s->cenvp[k++] = xstrdup("PORT=" TOKEN_PORT);
  s->cenvp[k++] = xstrdup("CUDA_VISIBLE_DEVICES=" TOKEN_GPUS);
  s->cenvp[k++] = xstrdup("NVIDIA_VISIBLE_DEVICES=" TOKEN_NVGPUS);
  s->cenvp[k++] = xstrdup("CUDA_DEVICE_ORDER=PCI_BUS_ID");
  s->config_path = xasprintf("%s/%s.json", rt.dir, l->id);
  inst->pending = s;
  sg_image_t *img = sg_images_lookup(rt.images, l->image);
  if (img) {
    inst->img = img;
    sg_images_use(rt.images, img);
    submit_image(inst);
  } else {
    inst->wait = sg_images_pull(rt.images, l->image, l->auth, pulled, inst);
    if (!inst->wait) {
      LIST_REMOVE(inst, link);
      instance_free(inst);
      sg_make_error(err, EINVAL, "image %s cannot be pulled", l->image);
      return NULL;
    }
  }
  return inst;
}

static void signal_instance(sg_instance_t *inst, int sig) {
  if (inst->exit_reported || inst->detached)
    return;
  if (inst->wait) {
    sg_images_cancel(inst->wait);
    inst->wait = NULL;
    event_base_once(rt.base, -1, EV_TIMEOUT, stopped_in_pull, xstrdup(inst->id), &(struct timeval){0, 0});
    return;
  }
  if (!inst->job_id) {
    inst->cancel_after_submit = true;
    return;
  }
  /* A pending job has no process to signal: it is cancelled at once. */
  bool term = sig != SIGKILL && inst->phase == P_RUNNING;
  submit_cmd(cancel_argv(inst->job_id, term));
  schedule_poll(0);
}

/* A Slurm job has no process on this machine. */
static pid_t instance_pid(const sg_instance_t *inst) { return 0; }

static void release(sg_instance_t *inst) {
  if (!inst)
    return;
  inst->released = true;
  if (inst->pending) {
    /* The image is still being pulled: nothing was submitted. */
    LIST_REMOVE(inst, link);
    instance_free(inst);
    return;
  }
  if (inst->phase == P_SUBMITTING)
    return; /* freed when sbatch answers */
  if (!inst->exit_reported && !inst->detached && inst->job_id)
    cancel_sync(inst->job_id, false); /* sgpud is going away */
  LIST_REMOVE(inst, link);
  instance_free(inst);
}

/* A job that runs and has written its address can be adopted by the next
 * sgpud; any other is cancelled when sgpud stops. */
static bool detach(sg_instance_t *inst) {
  if (inst->exit_reported || !inst->running_reported || !inst->job_id)
    return false;
  inst->detached = true;
  return true;
}

static void placement(const sg_instance_t *inst, sg_placement_t *out) {
  memset(out, 0, sizeof(*out));
  out->job_id = inst->job_id;
  out->state = inst->state;
  out->reason = inst->reason;
  out->node = inst->node;
  out->addr = inst->addr;
  out->port = inst->port;
  out->n_gpus = inst->n_gpus;
  memcpy(out->gpus, inst->gpus, sizeof(out->gpus));
  out->start_wall = inst->start_wall;
  out->end_wall = inst->end_wall;
}

static void adopt(sg_instance_t *(*take)(void *ctx, const sg_leftover_t *job), void *ctx);
static sg_instance_t *adopt_instance(const sg_leftover_t *job, const sg_instance_callbacks_t *cbs, void *ud);
static const sg_runtime_node_t *nodes(size_t *n, int64_t *age_ms);

/* Jobs left by an earlier sgpud are found at init (not by pid) and offered
 * through adopt; images are optional (run with the OCI runtime on the node). */
const sg_runtime_ops_t sg_slurm_runtime = {
    .name = "slurm",
    .caps = SG_RUNTIME_OWN_GPUS | SG_RUNTIME_IMAGES,
    .unavailable = sg_slurm_unavailable,
    .start = start,
    .signal = signal_instance,
    .pid = instance_pid,
    .release = release,
    .async_start = true,
    .remote = true,
    .placement = placement,
    .detach = detach,
    .adopt = adopt,
    .adopt_instance = adopt_instance,
    .nodes = nodes,
};

/* ---- setup ---- */

/* The dir's tag: random, kept in DIR/tag. */
static char *load_tag(const char *dir, sg_error_t **err) {
  cleanup_free char *path = xasprintf("%s/tag", dir);
  size_t len;
  char *tag = sg_read_file(path, 64, &len);
  if (tag) {
    while (len > 0 && isspace((unsigned char)tag[len - 1]))
      tag[--len] = '\0';
    if (len > 0)
      return tag;
    free(tag);
  }
  cleanup_free char *id = sg_new_id("");
  char *t = xstrndup(id, 12);
  cleanup_free char *line = xasprintf("%s\n", t);
  int r = sg_write_file_atomic(path, line, strlen(line), 0644);
  if (r < 0) {
    free(t);
    sg_make_error(err, -r, "cannot write %s: %s", path, strerror(-r));
    return NULL;
  }
  return t;
}

/* Sorts the jobs an earlier sgpud of this dir left: a running one that
 * wrote its address is kept in leftovers for adoption, every other one is
 * cancelled (blocks; at startup). */
/* Every job slurmrestd knows, as lines of squeue's "%i|%T|%S|%j|%k";
 * NULL when it did not answer. */
static char *rest_job_lines(void) {
  json_t *reply = NULL;
  long st = sg_slurmrest_call(rt.rest, "GET", "jobs", NULL, &reply, NULL);
  json_t *jobs = json_object_get(reply, "jobs");
  if (st < 200 || st > 299 || !json_is_array(jobs)) {
    json_decref(reply);
    return NULL;
  }
  sg_strbuf_t out = SG_STRBUF_INIT;
  size_t i;
  json_t *j;
  json_array_foreach(jobs, i, j) {
    const char *state = json_string_value(json_object_get(j, "job_state"));
    const char *name = json_string_value(json_object_get(j, "name"));
    const char *comment = json_string_value(json_object_get(j, "comment"));
    if (!state || ended_state(state))
      continue;
    time_t start = (time_t)json_integer_value(json_object_get(j, "start_time"));
    char when[32] = "N/A";
    struct tm tm;
    if (start > 0 && localtime_r(&start, &tm))
      strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    sg_strbuf_appendf(&out, "%lld|%s|%s|%s|%s\n", (long long)json_integer_value(json_object_get(j, "job_id")), state,
                      when, name ? name : "", comment ? comment : "");
  }
  json_decref(reply);
  return sg_strbuf_steal(&out);
}

static void find_leftovers(void) {
  char *argv[] = {"squeue", "--noheader", "--format=%i|%T|%S|%j|%k", NULL};
  cleanup_free char *out = NULL;
  if (rt.rest)
    out = rest_job_lines();
  if (rt.rest ? !out : (!cmd_ok(run_cmd(argv, &out)) || !out)) {
    sg_warn("slurm: cannot list the jobs an earlier sgpud left");
    return;
  }
  cleanup_free char *prefix = xasprintf("sgpu:%s:", rt.tag);
  int cancelled = 0;
  for (char *line = out, *next; *line; line = next) {
    next = strchr(line, '\n');
    if (next)
      *next++ = '\0';
    else
      next = line + strlen(line);
    char *f[5] = {0};
    char *p = line;
    int nf = 0;
    for (; nf < 4 && p; nf++) {
      f[nf] = p;
      p = strchr(p, '|');
      if (p)
        *p++ = '\0';
    }
    if (nf < 4 || !p || strncmp(p, prefix, strlen(prefix)))
      continue;
    f[4] = p + strlen(prefix); /* ENDPOINT:VERSION */
    const char *id = !strncmp(f[3], "sgpu.", 5) ? f[3] + 5 : "";
    char *colon = strrchr(f[4], ':');
    char *end = NULL;
    long version = colon ? strtol(colon + 1, &end, 10) : 0;
    cleanup_free char *addr_path = xasprintf("%s/%s.addr", rt.dir, id);
    bool adoptable = !strcmp(f[1], "RUNNING") && *id && !strchr(id, '/') && colon && end && !*end && version > 0 &&
                     version <= INT32_MAX && access(addr_path, R_OK) == 0;
    if (!adoptable) {
      sg_info("slurm: cancelling job %s (%s) left by an earlier sgpud", f[0], f[1]);
      cancel_sync(f[0], false);
      cancelled++;
      continue;
    }
    *colon = '\0';
    leftovers = xrealloc(leftovers, (n_leftovers + 1) * sizeof(*leftovers));
    leftover_t *lo = &leftovers[n_leftovers++];
    lo->job_id = xstrdup(f[0]);
    lo->worker_id = xstrdup(id);
    lo->endpoint = xstrdup(f[4]);
    lo->job = (sg_slurm_leftover_t){lo->job_id, lo->worker_id, lo->endpoint, (int)version, parse_time(f[2])};
  }
  if (cancelled)
    sg_info("slurm: cancelled %d job(s) left by an earlier sgpud", cancelled);
}

static void adopt(sg_instance_t *(*take)(void *ctx, const sg_leftover_t *job), void *ctx) {
  for (size_t i = 0; i < n_leftovers; i++) {
    leftover_t *lo = &leftovers[i];
    if (!rt.ready || !take(ctx, &lo->job)) {
      sg_info("slurm: cancelling job %s of worker %s left by an earlier sgpud (endpoint %s gone or changed)",
              lo->job_id, lo->worker_id, lo->endpoint);
      cancel_sync(lo->job_id, false);
    }
    free(lo->job_id);
    free(lo->worker_id);
    free(lo->endpoint);
  }
  free(leftovers);
  leftovers = NULL;
  n_leftovers = 0;
}

static sg_instance_t *adopt_instance(const sg_leftover_t *job, const sg_instance_callbacks_t *cbs, void *ud) {
  sg_instance_t *inst = xcalloc(1, sizeof(*inst));
  inst->id = xstrdup(job->worker_id);
  inst->job_id = xstrdup(job->job_id);
  inst->cbs = *cbs;
  inst->ud = ud;
  inst->phase = P_RUNNING;
  inst->state = xstrdup("RUNNING");
  inst->start_wall = job->start_wall;
  inst->script_path = xasprintf("%s/%s.sh", rt.dir, job->worker_id);
  inst->addr_path = xasprintf("%s/%s.addr", rt.dir, job->worker_id);
  inst->out_path[0] = xasprintf("%s/%s.out", rt.dir, job->worker_id);
  inst->out_path[1] = xasprintf("%s/%s.err", rt.dir, job->worker_id);
  for (int i = 0; i < 2; i++) {
    struct stat st;
    if (stat(inst->out_path[i], &st) == 0)
      inst->out[i].off = st.st_size;
  }
  LIST_INSERT_HEAD(&instances, inst, link);
  sg_info("slurm: adopted job %s of worker %s", job->job_id, job->worker_id);
  schedule_poll(0);
  return inst;
}

int sg_slurm_runtime_init(struct event_base *base, sg_pool_t *pool, const sg_slurm_config_t *cfg, sg_error_t **err) {
  rt.base = base;
  rt.pool = pool;
  rt.dir = xstrdup(cfg->dir);
  rt.partition = cfg->partition ? xstrdup(cfg->partition) : NULL;
  rt.account = cfg->account ? xstrdup(cfg->account) : NULL;
  rt.time_limit = cfg->time_limit ? xstrdup(cfg->time_limit) : NULL;
  rt.images = cfg->images;
  rt.images_dir = cfg->images_dir ? xstrdup(cfg->images_dir) : NULL;
  rt.node_images_dir = cfg->node_images_dir ? xstrdup(cfg->node_images_dir) : NULL;
  rt.oci_runtime = xstrdup(cfg->oci_runtime && *cfg->oci_runtime ? cfg->oci_runtime : "crun");
  int r = sg_mkdir_p(rt.dir, 0755);
  if (r < 0)
    return sg_make_error(err, -r, "cannot create %s: %s", rt.dir, strerror(-r));
  rt.tag = load_tag(rt.dir, err);
  if (!rt.tag)
    return -1;
  if (cfg->rest_url) {
    cleanup_error sg_error_t *rerr = NULL;
    rt.rest =
        sg_slurmrest_new(cfg->rest_url, cfg->rest_user, cfg->rest_token, cfg->rest_key_file, cfg->rest_api, &rerr);
    if (!rt.rest) {
      rt.unavailable = xasprintf("slurmrestd cannot be used: %s", rerr->message);
      sg_info("slurm runtime unavailable: %s", rt.unavailable);
      return 0;
    }
    sg_info("slurm: jobs through slurmrestd at %s (API %s) as %s", cfg->rest_url, sg_slurmrest_api(rt.rest),
            cfg->rest_user);
  }
  char *argv[] = {"sbatch", "--version", NULL};
  cleanup_free char *out = NULL;
  if (!rt.rest && !cmd_ok(run_cmd(argv, &out))) {
    rt.unavailable = xstrdup("Slurm's sbatch could not be run here (is "
                             "slurm-client installed and in PATH?)");
    sg_info("slurm runtime unavailable: %s", rt.unavailable);
    return 0;
  }
  rt.ready = true;
  rt.timer = evtimer_new(base, poll_cb, NULL);
  if (cfg->cleanup)
    find_leftovers();
  schedule_poll(0);
  return 0;
}

void sg_slurm_runtime_drop_images(void) {
  sg_instance_t *inst;
  LIST_FOREACH(inst, &instances, link) {
    if (inst->wait)
      sg_images_cancel(inst->wait);
    inst->wait = NULL;
    if (inst->img && rt.images)
      sg_images_unuse(rt.images, inst->img);
    inst->img = NULL;
  }
  rt.images = NULL;
}

void sg_slurm_runtime_shutdown(void) {
  /* Leftovers never offered (sgpud did not finish starting) are left for the
   * next sgpud to adopt. */
  for (size_t i = 0; i < n_leftovers; i++) {
    free(leftovers[i].job_id);
    free(leftovers[i].worker_id);
    free(leftovers[i].endpoint);
  }
  free(leftovers);
  leftovers = NULL;
  n_leftovers = 0;
  sg_instance_t *inst;
  while ((inst = LIST_FIRST(&instances))) {
    if (!inst->exit_reported && !inst->detached && inst->job_id)
      cancel_sync(inst->job_id, false);
    LIST_REMOVE(inst, link);
    instance_free(inst);
  }
  if (rt.timer)
    event_free(rt.timer);
  free(rt.dir);
  free(rt.tag);
  free(rt.partition);
  free(rt.account);
  free(rt.time_limit);
  free(rt.images_dir);
  free(rt.node_images_dir);
  free(rt.oci_runtime);
  sg_slurmrest_free(rt.rest);
  free(rt.unavailable);
  free(rt.nodes);
  memset(&rt, 0, sizeof(rt));
}

const char *sg_slurm_unavailable(void) {
  return rt.ready ? NULL : rt.unavailable ? rt.unavailable : "the slurm runtime is not set up";
}

static const sg_runtime_node_t *nodes(size_t *n, int64_t *age_ms) {
  *n = rt.n_nodes;
  *age_ms = rt.nodes_at ? sg_now_ms() - rt.nodes_at : -1;
  return rt.nodes;
}
