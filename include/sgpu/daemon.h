/* sgpud as a library: configure, run the event loop, tear down. */
#ifndef SGPU_DAEMON_H
#define SGPU_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "sgpu/error.h"

typedef struct sg_daemon sg_daemon_t;

/* Log retention of one endpoint (endpoint NULL: every endpoint without its
 * own). A limit of 0 is no limit, -1 the default limit. */
typedef struct sg_log_retention {
  char *endpoint;
  int64_t max_lines;
  int64_t max_bytes; /* bytes of line text */
  double max_age_s;
} sg_log_retention_t;

typedef struct sg_daemon_config {
  char *listen; /* "127.0.0.1:8080" */
  char *data_dir;
  char *gpus;          /* declared GPUs "a100:4", or NULL to discover */
  char *gpus_fallback; /* declared when nothing is found ("a100:4") */
  int log_level;
  bool sample_endpoint;              /* create "echo" on an empty store */
  double stop_grace_s;               /* SIGTERM -> SIGKILL */
  size_t max_body;                   /* invocation body limit in bytes */
  int64_t log_keep_lines;            /* per endpoint */
  double header_timeout_s;           /* a request's head must arrive within this */
  double idle_timeout_s;             /* idle keep-alive client connections are closed after this */
  double io_timeout_s;               /* a body read or answer write stalled this long ends the connection */
  size_t max_header_bytes;           /* request line and headers of one request (431 above) */
  size_t max_headers;                /* header fields of one request (431 above) */
  size_t max_connections;            /* open client connections; 0: sized from RLIMIT_NOFILE */
  char *prices;                      /* "a100=0.0004,default=0.0001": price per GPU-second by type */
  double meter_checkpoint_s;         /* usage records are written at least this often */
  int64_t log_max_bytes;             /* per endpoint, default retention */
  double log_max_age_s;              /* per endpoint, default retention */
  sg_log_retention_t *log_retention; /* per-endpoint retention overrides */
  size_t n_log_retention;
  double log_trim_interval_s; /* how often retention is applied */
  double log_rate_lines_s;    /* per worker; 0: no limit */
  double log_burst_lines;     /* per worker */
  char *web_dir;              /* serve the console from this directory instead of the embedded copy */
  char **webhook_allow;       /* webhook allow-list: "public", addresses, CIDR networks */
  size_t n_webhook_allow;
  double webhook_retry_s;           /* delay between webhook attempts */
  int jobs_max_batch;               /* job writes per commit (0: no bound; 1: one commit per write) */
  char *oci_runtime;                /* OCI runtime binary: "crun" (default) or "runc", or a path */
  char *cdi_dir;                    /* CDI specs of GPUs ("/etc/cdi") */
  char **insecure_registries;       /* registries reached over plain HTTP ("127.0.0.1:5000"); NULL-terminated */
  int oci_userns;                   /* containers in a user namespace: 1, 0, or -1 (default) when the host allows it */
  int64_t image_cache_max_bytes;    /* unpacked layers kept; least recently used images go first (0: no limit) */
  int64_t image_max_layer_bytes;    /* unpacked size of one layer of a pull (0: no limit) */
  int64_t image_max_unpacked_bytes; /* unpacked size of one image's layers together (0: no limit) */
  char *run_as;             /* process workers' user when sgpud is root: NULL/"" sgpu-worker or nobody, "root" */
  char *default_runtime;    /* for specs that name none: "process" (default: "oci" with an image), "oci", "slurm" */
  char *advertise_url;      /* base URL runpod workers reach sgpud at ("http://10.0.0.5:8080"); NULL: from listen */
  char **volume_host_paths; /* directories whose subtrees specs may mount ("host_path"); NULL-terminated */
  struct {
    bool configured; /* a "slurm" object was given, or default_runtime is "slurm" */
    char *dir;       /* job files, shared with the nodes (DATA_DIR/slurm) */
    char *partition; /* defaults for specs that name none */
    char *account;
    char *time_limit;
    char *image_dir;     /* where the nodes see DATA_DIR/images (the same path) */
    char *volume_dir;    /* named volumes of slurm workers, shared with the nodes (slurm dir/volumes) */
    char *rest_url;      /* slurmrestd: jobs through its REST API instead of the commands */
    char *rest_user;     /* the Slurm user (sgpud's own) */
    char *rest_token;    /* a JWT, or */
    char *rest_key_file; /* the auth/jwt key sgpud signs its own with */
    char *rest_api;      /* Slurm API version (the newest slurmrestd offers) */
  } slurm;
} sg_daemon_config_t;

/* Fills cfg with the embedded defaults. */
void sg_daemon_config_defaults(sg_daemon_config_t *cfg);
/* Applies a JSON config file over cfg. */
int sg_daemon_config_load(sg_daemon_config_t *cfg, const char *path, sg_error_t **err);
void sg_daemon_config_clear(sg_daemon_config_t *cfg);
/* Prints every config key (a Markdown table: key, value, default, help). */
void sg_daemon_config_help(FILE *out);

/* Opens the store, binds the listener, reconciles leftovers. Takes cfg. */
sg_daemon_t *sg_daemon_new(sg_daemon_config_t *cfg, sg_error_t **err);
/* Runs until SIGTERM/SIGINT; stops every worker before returning. */
int sg_daemon_run(sg_daemon_t *d);
void sg_daemon_free(sg_daemon_t *d);
/* Prints every route sgpud serves, one a line: "METHODS<TAB>PATTERN<TAB>SCOPES"
 * (and "<TAB>lists-endpoints" for lists filtered to a key's endpoints). */
void sg_daemon_list_routes(FILE *out);

#endif
