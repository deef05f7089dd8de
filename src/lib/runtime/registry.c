/* The runtime registry: every runtime built into libsgpu, found by name.
 * The only place that lists them; callers use the ops and capability flags
 * of what sg_runtime_find() returns and never compare runtime names. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "sgpu/runtime.h"
#include "sgpu/util.h"

/* Registry order: the first is the host runtime, names are listed in this
 * order in messages. */
static const sg_runtime_ops_t *const runtimes[] = {&sg_process_runtime, &sg_oci_runtime, &sg_slurm_runtime, NULL};
#define N_RUNTIMES (sizeof(runtimes) / sizeof(runtimes[0]) - 1)

const sg_runtime_ops_t *const *sg_runtime_all(void) { return runtimes; }

const sg_runtime_ops_t *sg_runtime_find(const char *name) {
  if (!name)
    return NULL;
  for (size_t i = 0; i < N_RUNTIMES; i++)
    if (!strcmp(runtimes[i]->name, name))
      return runtimes[i];
  return NULL;
}

static const char *names[N_RUNTIMES + 1];
static pthread_once_t names_once = PTHREAD_ONCE_INIT;

static void fill_names(void) {
  for (size_t i = 0; i < N_RUNTIMES; i++)
    names[i] = runtimes[i]->name;
}

const char *const *sg_runtime_names(void) {
  pthread_once(&names_once, fill_names);
  return names;
}

char *sg_runtime_names_text(void) {
  const char *const *n = sg_runtime_names();
  size_t len = 1;
  for (size_t i = 0; n[i]; i++)
    len += strlen(n[i]) + 6; /* quotes and ", " or " or " */
  char *out = xmalloc(len), *p = out;
  *p = '\0';
  for (size_t i = 0; n[i]; i++)
    p += sprintf(p, "%s\"%s\"", i == 0 ? "" : n[i + 1] ? ", " : " or ", n[i]);
  return out;
}

/* The first runtime with every flag of want and none of avoid. */
static const sg_runtime_ops_t *first_with(unsigned want, unsigned avoid) {
  for (size_t i = 0; i < N_RUNTIMES; i++)
    if ((runtimes[i]->caps & want) == want && !(runtimes[i]->caps & avoid))
      return runtimes[i];
  return runtimes[0];
}

const sg_runtime_ops_t *sg_runtime_default(bool has_image) {
  return has_image ? first_with(SG_RUNTIME_NEEDS_IMAGE, 0) : first_with(SG_RUNTIME_HOST_ENV, 0);
}

const sg_runtime_ops_t *sg_runtime_local(void) { return first_with(SG_RUNTIME_HOST_ENV, SG_RUNTIME_OWN_GPUS); }
