/* sgpud as a library: configure, run the event loop, tear down. */
#ifndef SGPU_DAEMON_H
#define SGPU_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sgpu/error.h"

typedef struct sg_daemon sg_daemon_t;

typedef struct sg_daemon_config {
  char *listen;        /* "127.0.0.1:8080" */
  char *data_dir;
  char *gpus;          /* declared GPUs "a100:4", or NULL to discover */
  char *gpus_fallback; /* declared when nothing is found ("a100:4") */
  int log_level;
  bool sample_endpoint; /* create "echo" on an empty store */
  double stop_grace_s;  /* SIGTERM -> SIGKILL */
  size_t max_body;      /* invocation body limit in bytes */
  int64_t log_keep_lines; /* per endpoint */
  double header_timeout_s; /* a request's head must arrive within this */
  double idle_timeout_s;   /* idle keep-alive client connections are closed after this */
  double io_timeout_s;     /* a body read or answer write stalled this long ends the connection */
} sg_daemon_config_t;

/* Fills cfg with the embedded defaults. */
void sg_daemon_config_defaults(sg_daemon_config_t *cfg);
/* Applies a JSON config file over cfg. */
int sg_daemon_config_load(sg_daemon_config_t *cfg, const char *path, sg_error_t **err);
void sg_daemon_config_clear(sg_daemon_config_t *cfg);

/* Opens the store, binds the listener, reconciles leftovers. Takes cfg. */
sg_daemon_t *sg_daemon_new(sg_daemon_config_t *cfg, sg_error_t **err);
/* Runs until SIGTERM/SIGINT; stops every worker before returning. */
int sg_daemon_run(sg_daemon_t *d);
void sg_daemon_free(sg_daemon_t *d);

#endif
