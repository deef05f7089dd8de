/* Fuzz target for the daemon's config file (sg_daemon_config_load), read
 * from a memory file through its /proc/self/fd path as sgpud reads a file.
 *
 * Any input either loads or fails with a message; a config that loads was a
 * JSON object and leaves a consistent config (every webhook_allow entry a
 * valid rule, lists terminated, every number within its key's bounds in the
 * daemon's table). Nothing leaks either way. */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "daemon/config.h"
#include "gateway/jobs-proto.h"
#include "sgpu/daemon.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int mfd = -1;
static char path[64];

/* Whether k's field in cfg lies within k's bounds (the defaults do too). */
static bool within_bounds(const sg_config_key_t *k, const sg_daemon_config_t *cfg) {
  const char *at = (const char *)cfg + k->off;
  int64_t n;
  switch (k->type) {
  case SG_CFG_INT:
    n = *(const int *)at;
    break;
  case SG_CFG_INT64:
    n = *(const int64_t *)at;
    break;
  case SG_CFG_SIZE:
    n = (int64_t) * (const size_t *)at;
    break;
  case SG_CFG_DOUBLE: {
    double x = *(const double *)at;
    return x >= k->dmin && x <= k->dmax;
  }
  default:
    return true;
  }
  return n >= k->imin && n <= k->imax;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (mfd < 0) {
    mfd = memfd_create("sgpu-fuzz-config", MFD_CLOEXEC);
    if (mfd < 0)
      abort();
    snprintf(path, sizeof(path), "/proc/self/fd/%d", mfd);
  }
  if (ftruncate(mfd, 0) < 0 || (size && pwrite(mfd, data, size, 0) != (ssize_t)size))
    abort();

  sg_daemon_config_t cfg;
  sg_daemon_config_defaults(&cfg);
  sg_error_t *err = NULL;
  int r = sg_daemon_config_load(&cfg, path, &err);
  if (r < 0) {
    if (!err || !err->message || !*err->message)
      abort();
    sg_error_free(err);
  } else {
    json_t *j = json_loadb((const char *)data, size, 0, NULL);
    if (err || !json_is_object(j))
      abort();
    json_decref(j);
    if (!cfg.listen || !cfg.data_dir || !cfg.prices || (cfg.n_webhook_allow && !cfg.webhook_allow))
      abort();
    for (size_t i = 0; i < cfg.n_webhook_allow; i++) {
      sg_addr_rule_t rule;
      if (sg_addr_rule_parse(cfg.webhook_allow[i], &rule, NULL) < 0)
        abort();
    }
    if (cfg.webhook_allow && cfg.webhook_allow[cfg.n_webhook_allow])
      abort();
    for (size_t i = 0; i < cfg.n_log_retention; i++)
      if (!cfg.log_retention[i].endpoint)
        abort();
    for (size_t i = 0; i < sg_config_nkeys; i++)
      if (!within_bounds(&sg_config_keys[i], &cfg))
        abort();
  }
  sg_daemon_config_clear(&cfg);
  return 0;
}
