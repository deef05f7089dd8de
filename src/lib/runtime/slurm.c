/* The slurm runtime: a worker is one Slurm batch job. Slurm is reached
 * through a backend (slurm-internal.h): its commands (sbatch, squeue,
 * scontrol, scancel; slurm-cli.c) or, with slurmrestd configured, its REST
 * API (slurm-rest.c). Every backend call runs on the thread pool, never on
 * the loop (startup and shutdown excepted).
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
 * for adoption (the adopt op: the daemon takes it when its
 * endpoint still exists at that version), every other one is cancelled.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "oci-internal.h"
#include "slurm-internal.h"
#include "sgpu/daemon.h"
#include "sgpu/image.h"
#include "sgpu/log.h"
#include "sgpu/pool.h"
#include "sgpu/runtime.h"
#include "sgpu/util.h"

#define MAX_LINE 16384
#define READ_CHUNK (256 * 1024)
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

/* Jobs of an earlier sgpud that may be adopted, found at init. */
typedef struct leftover {
  sg_slurm_leftover_t job;
  char *job_id, *worker_id, *endpoint;
} leftover_t;

/* The runtime's context: one per process, set up by init, emptied by
 * shutdown (all zero: not set up). Loop thread. */
static struct {
  struct event_base *base;
  sg_pool_t *pool;
  char *dir;
  char *tag;
  char *partition, *account, *time_limit;
  char *unavailable;
  sg_images_t *images;
  char *images_dir, *node_images_dir, *oci_runtime;
  sg_slurm_backend_t *be; /* how Slurm is reached; NULL when it cannot be */
  bool ready;
  LIST_HEAD(, sg_instance) instances;
  leftover_t *leftovers; /* until the adopt op */
  size_t n_leftovers;
  struct event *timer;
  bool poll_busy;
  int64_t last_squeue, last_nodes;
  sg_slurm_node_t *nodes;
  size_t n_nodes;
  int64_t nodes_at;
} rt;

static void schedule_poll(int64_t ms);

/* The tokens of a job's config.json that its script replaces on the node
 * (slurm-job.sh). */
#define TOKEN_PORT "@SGPU_PORT@"
#define TOKEN_GPUS "@SGPU_GPUS@"
#define TOKEN_NVGPUS "@SGPU_NVGPUS@"

/* ---- submit ---- */

typedef struct submit_job {
  char *id;
  char *script, *script_path;
  /* sbatch's options (sg_slurm_submit_t) */
  char *name, *comment, *out_path, *err_path, *gres, *partition, *account, *time_limit;
  /* With an image: the container's config, written to config_path once the
   * image's user is resolved against its layers (roots, top first). */
  json_t *config;
  char *config_path, *user;
  char **roots;
  char **cargv, **cenvp; /* the container's argv and env, tokens in place */
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
  if (r < 0) {
    s->error = xasprintf("cannot write %s: %s", s->script_path, strerror(-r));
    return;
  }
  sg_slurm_submit_t j = {s->name, s->comment, s->script,    s->script_path, s->out_path,  s->err_path,
                         rt.dir,  s->gres,    s->partition, s->account,     s->time_limit};
  rt.be->ops->submit(rt.be, &j, &s->job_id, &s->error);
}

static void cancel_sync(const char *job_id, bool term);
static void cancel_async(const char *job_id, bool term);

static void submit_job_free(submit_job_t *s) {
  sg_strv_free(s->roots);
  sg_strv_free(s->cargv);
  sg_strv_free(s->cenvp);
  json_decref(s->config);
  free(s->name);
  free(s->comment);
  free(s->out_path);
  free(s->err_path);
  free(s->gres);
  free(s->partition);
  free(s->account);
  free(s->time_limit);
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
  LIST_FOREACH(inst, &rt.instances, link) {
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
        cancel_async(inst->job_id, false);
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

/* ---- cancels that nobody waits for ---- */

typedef struct cancel_job {
  char *job_id;
  bool term;
  int r;
  char *error;
} cancel_job_t;

static void cancel_work(void *data) {
  cancel_job_t *c = data;
  c->r = rt.be->ops->cancel(rt.be, c->job_id, c->term, &c->error);
}

static void cancel_done(void *data, bool cancelled) {
  cancel_job_t *c = data;
  if (!cancelled && c->r < 0)
    sg_warn("slurm: cancelling job %s through %s failed: %s", c->job_id, rt.be ? rt.be->ops->name : "Slurm",
            c->error ? c->error : "");
  free(c->job_id);
  free(c->error);
  free(c);
}

static const sg_pool_job_ops_t cancel_ops = {cancel_work, cancel_done};

/* Cancels a job on the pool (the loop goes on). */
static void cancel_async(const char *job_id, bool term) {
  cancel_job_t *c = xcalloc(1, sizeof(*c));
  c->job_id = xstrdup(job_id);
  c->term = term;
  sg_pool_submit(rt.pool, &cancel_ops, c);
}

/* Cancels a job now (blocks; startup and shutdown only). */
static void cancel_sync(const char *job_id, bool term) {
  if (rt.be)
    rt.be->ops->cancel(rt.be, job_id, term, NULL);
}

/* ---- poll ---- */

typedef struct poll_item {
  char *id, *job_id, *addr_path, *out_path[2];
  off_t off[2];
  bool want_addr;
  /* out */
  char *chunk[2];
  size_t chunk_len[2];
  bool have_addr;
  char addr_node[128], addr[64];
  int port;
  int gpus[16];
  int n_gpus;
} poll_item_t;

typedef struct poll_job {
  poll_item_t *items;
  sg_slurm_job_info_t *jobs; /* the state of items[i]'s job in jobs[i] */
  size_t n;
  bool squeue, nodes;
  bool squeue_ok;
  char *squeue_error;
  sg_runtime_node_t *node_list;
  size_t n_nodes;
  bool nodes_ok;
} poll_job_t;

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

static void poll_work(void *data) {
  poll_job_t *pj = data;
  if (pj->squeue && pj->n > 0)
    pj->squeue_ok = rt.be->ops->query(rt.be, pj->jobs, pj->n, &pj->squeue_error);
  for (size_t i = 0; i < pj->n; i++) {
    poll_item_t *it = &pj->items[i];
    const sg_slurm_job_info_t *job = &pj->jobs[i];
    if (it->want_addr && job->seen && !strcmp(job->state, "RUNNING"))
      read_addr(it);
    /* Output after the state: what the job wrote before it ended is read
     * before its end is reported. */
    read_output(it);
  }
  if (pj->nodes)
    pj->nodes_ok = rt.be->ops->nodes(rt.be, &pj->node_list, &pj->n_nodes);
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

static void apply(poll_job_t *pj, poll_item_t *it, const sg_slurm_job_info_t *job) {
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
  if (!job->seen) {
    if (++inst->missing >= MISSING_POLLS) {
      set_str(&inst->state, "UNKNOWN");
      set_str(&inst->end_desc, "no longer known to Slurm");
      inst->exit_status = 0;
      report_end(inst);
    }
    return;
  }
  inst->missing = 0;
  set_str(&inst->state, job->state);
  set_str(&inst->reason, strcmp(job->reason, "None") ? job->reason : NULL);
  if (*job->node)
    set_str(&inst->node, job->node);
  if (job->start_wall)
    inst->start_wall = job->start_wall;
  if (sg_slurm_ended_state(job->state)) {
    inst->end_wall = job->end_wall;
    inst->exit_status = wait_status(job->exit_code);
    free(inst->end_desc);
    inst->end_desc = xasprintf("%s%s%s, exit code %s", job->state, inst->reason ? " " : "",
                               inst->reason ? inst->reason : "", *job->exit_code ? job->exit_code : "unknown");
    report_end(inst);
    return;
  }
  if (!strcmp(job->state, "RUNNING"))
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
  free(pj->jobs);
  free(pj->squeue_error);
  free(pj->node_list);
  free(pj);
}

static bool placing(void) {
  sg_instance_t *inst;
  LIST_FOREACH(inst, &rt.instances, link) {
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
      apply(pj, &pj->items[i], &pj->jobs[i]);
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
  LIST_FOREACH(inst, &rt.instances, link) {
    if (!inst->job_id || inst->exit_reported)
      continue;
    pj->items = xrealloc(pj->items, (pj->n + 1) * sizeof(*pj->items));
    pj->jobs = xrealloc(pj->jobs, (pj->n + 1) * sizeof(*pj->jobs));
    poll_item_t *it = &pj->items[pj->n];
    memset(it, 0, sizeof(*it));
    memset(&pj->jobs[pj->n++], 0, sizeof(*pj->jobs));
    it->id = xstrdup(inst->id);
    it->job_id = xstrdup(inst->job_id);
    it->addr_path = xstrdup(inst->addr_path);
    for (int k = 0; k < 2; k++) {
      it->out_path[k] = xstrdup(inst->out_path[k]);
      it->off[k] = inst->out[k].off;
    }
    it->want_addr = !inst->running_reported;
  }
  for (size_t i = 0; i < pj->n; i++)
    pj->jobs[i].job_id = pj->items[i].job_id;
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
  s->name = xasprintf("sgpu.%s", l->id);
  s->comment = xasprintf("sgpu:%s:%s:%d", rt.tag, l->endpoint ? l->endpoint : "", l->version);
  s->out_path = xstrdup(inst->out_path[0]);
  s->err_path = xstrdup(inst->out_path[1]);
  if (l->gpu_count > 0)
    s->gres = l->gpu_type ? xasprintf("gpu:%s:%d", l->gpu_type, l->gpu_count) : xasprintf("gpu:%d", l->gpu_count);
  const char *part = l->partition ? l->partition : rt.partition;
  const char *acct = l->account ? l->account : rt.account;
  const char *tl = l->time_limit ? l->time_limit : rt.time_limit;
  s->partition = part ? xstrdup(part) : NULL;
  s->account = acct ? xstrdup(acct) : NULL;
  s->time_limit = tl ? xstrdup(tl) : NULL;
  LIST_INSERT_HEAD(&rt.instances, inst, link);
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
  sg_image_t *img = sg_images_get(rt.images, l->image, l->auth, pulled, inst, &inst->wait);
  if (img) {
    inst->img = img;
    sg_images_use(rt.images, img);
    submit_image(inst);
  } else {
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
  cancel_async(inst->job_id, term);
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

static int init_op(const sg_runtime_host_t *host, sg_error_t **err);
static void adopt(sg_instance_t *(*take)(void *ctx, const sg_leftover_t *job), void *ctx);
static sg_instance_t *adopt_instance(const sg_leftover_t *job, const sg_instance_callbacks_t *cbs, void *ud);
static const sg_runtime_node_t *nodes(size_t *n, int64_t *age_ms);

/* Jobs left by an earlier sgpud are found at init (not by pid) and offered
 * through adopt; images are optional (run with the OCI runtime on the node). */
const sg_runtime_ops_t sg_slurm_runtime = {
    .name = "slurm",
    .caps = SG_RUNTIME_OWN_GPUS | SG_RUNTIME_IMAGES,
    .init = init_op,
    .stop = sg_slurm_runtime_drop_images,
    .shutdown = sg_slurm_runtime_shutdown,
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
static void find_leftovers(void) {
  sg_slurm_listed_t *jobs = NULL;
  size_t n = 0;
  if (!rt.be->ops->list(rt.be, &jobs, &n)) {
    sg_warn("slurm: cannot list the jobs an earlier sgpud left");
    sg_slurm_listed_free(jobs, n);
    return;
  }
  cleanup_free char *prefix = xasprintf("sgpu:%s:", rt.tag);
  int cancelled = 0;
  for (size_t i = 0; i < n; i++) {
    sg_slurm_listed_t *j = &jobs[i];
    if (strncmp(j->comment, prefix, strlen(prefix)))
      continue;
    char *ep = j->comment + strlen(prefix); /* ENDPOINT:VERSION */
    const char *id = !strncmp(j->name, "sgpu.", 5) ? j->name + 5 : "";
    char *colon = strrchr(ep, ':');
    char *end = NULL;
    long version = colon ? strtol(colon + 1, &end, 10) : 0;
    cleanup_free char *addr_path = xasprintf("%s/%s.addr", rt.dir, id);
    bool adoptable = !strcmp(j->state, "RUNNING") && *id && !strchr(id, '/') && colon && end && !*end && version > 0 &&
                     version <= INT32_MAX && access(addr_path, R_OK) == 0;
    if (!adoptable) {
      sg_info("slurm: cancelling job %s (%s) left by an earlier sgpud", j->job_id, j->state);
      cancel_sync(j->job_id, false);
      cancelled++;
      continue;
    }
    *colon = '\0';
    rt.leftovers = xrealloc(rt.leftovers, (rt.n_leftovers + 1) * sizeof(*rt.leftovers));
    leftover_t *lo = &rt.leftovers[rt.n_leftovers++];
    lo->job_id = xstrdup(j->job_id);
    lo->worker_id = xstrdup(id);
    lo->endpoint = xstrdup(ep);
    lo->job = (sg_slurm_leftover_t){lo->job_id, lo->worker_id, lo->endpoint, (int)version, j->start_wall};
  }
  sg_slurm_listed_free(jobs, n);
  if (cancelled)
    sg_info("slurm: cancelled %d job(s) left by an earlier sgpud", cancelled);
}

static void adopt(sg_instance_t *(*take)(void *ctx, const sg_leftover_t *job), void *ctx) {
  for (size_t i = 0; i < rt.n_leftovers; i++) {
    leftover_t *lo = &rt.leftovers[i];
    if (!rt.ready || !take(ctx, &lo->job)) {
      sg_info("slurm: cancelling job %s of worker %s left by an earlier sgpud (endpoint %s gone or changed)",
              lo->job_id, lo->worker_id, lo->endpoint);
      cancel_sync(lo->job_id, false);
    }
    free(lo->job_id);
    free(lo->worker_id);
    free(lo->endpoint);
  }
  free(rt.leftovers);
  rt.leftovers = NULL;
  rt.n_leftovers = 0;
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
  LIST_INSERT_HEAD(&rt.instances, inst, link);
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
  cleanup_error sg_error_t *berr = NULL;
  rt.be = cfg->rest_url ? sg_slurm_rest_new(cfg->rest_url, cfg->rest_user, cfg->rest_token, cfg->rest_key_file,
                                            cfg->rest_api, &berr)
                        : sg_slurm_cli_new(&berr);
  if (!rt.be) {
    rt.unavailable = xstrdup(berr->message);
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

/* The init op: only when the daemon's config names Slurm (a "slurm" object
 * or default_runtime) or an earlier sgpud used DIR (DATA_DIR/slurm unless
 * slurm.dir), whose jobs are then looked for. */
static int init_op(const sg_runtime_host_t *host, sg_error_t **err) {
  const sg_daemon_config_t *c = host->cfg;
  cleanup_free char *dir = c->slurm.dir ? xstrdup(c->slurm.dir) : xasprintf("%s/slurm", c->data_dir);
  struct stat st;
  bool used = stat(dir, &st) == 0;
  if (!c->slurm.configured && !used)
    return 0;
  cleanup_free char *images_dir = xasprintf("%s/images", c->data_dir);
  sg_slurm_config_t sc = {dir,          c->slurm.partition, c->slurm.account,   c->slurm.time_limit, true,
                          host->images, images_dir,         c->slurm.image_dir, c->oci_runtime};
  struct passwd *pw = getpwuid(geteuid());
  cleanup_free char *user = xstrdup(c->slurm.rest_user ? c->slurm.rest_user : pw ? pw->pw_name : "root");
  if (c->slurm.rest_url) {
    sc.rest_url = c->slurm.rest_url;
    sc.rest_user = user;
    sc.rest_token = c->slurm.rest_token;
    sc.rest_key_file = c->slurm.rest_key_file;
    sc.rest_api = c->slurm.rest_api;
  }
  return sg_slurm_runtime_init(host->base, host->pool, &sc, err);
}

void sg_slurm_runtime_drop_images(void) {
  sg_instance_t *inst;
  LIST_FOREACH(inst, &rt.instances, link) {
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
  for (size_t i = 0; i < rt.n_leftovers; i++) {
    free(rt.leftovers[i].job_id);
    free(rt.leftovers[i].worker_id);
    free(rt.leftovers[i].endpoint);
  }
  free(rt.leftovers);
  rt.leftovers = NULL;
  rt.n_leftovers = 0;
  sg_instance_t *inst;
  while ((inst = LIST_FIRST(&rt.instances))) {
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
  if (rt.be)
    rt.be->ops->free(rt.be);
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
