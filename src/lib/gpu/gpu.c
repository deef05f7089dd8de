#include "sgpu/gpu.h"

#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sgpu/log.h"
#include "sgpu/util.h"

static sg_gpu_t *add_gpu(sg_gpu_inventory_t *inv, const char *type, const char *name, const char *uuid,
                         const char *source) {
  inv->gpus = xrealloc(inv->gpus, (inv->n + 1) * sizeof(sg_gpu_t));
  sg_gpu_t *g = &inv->gpus[inv->n];
  memset(g, 0, sizeof(*g));
  g->index = (int)inv->n;
  g->type = xstrdup(type);
  g->name = xstrdup(name);
  g->uuid = uuid ? xstrdup(uuid) : NULL;
  g->source = source;
  inv->n++;
  return g;
}

int sg_gpu_declare(sg_gpu_inventory_t *inv, const char *declared, sg_error_t **err) {
  cleanup_free char *copy = xstrdup(declared);
  char *save = NULL;
  for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    char *colon = strchr(tok, ':');
    if (!colon || colon == tok)
      return sg_make_error(err, SG_EINVAL, "gpus: expected TYPE:COUNT, got \"%s\"", tok);
    *colon = '\0';
    for (char *c = tok; *c; c++)
      if (!(islower((unsigned char)*c) || isdigit((unsigned char)*c) || *c == '-' || *c == '_'))
        return sg_make_error(err, SG_EINVAL, "gpus: type \"%s\" must be of [a-z0-9_-]", tok);
    char *end;
    errno = 0;
    long n = strtol(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || n < 0 || n > 1024)
      return sg_make_error(err, SG_EINVAL, "gpus: count of \"%s\" must be 0..1024", tok);
    for (long i = 0; i < n; i++)
      add_gpu(inv, tok, tok, NULL, "declared");
  }
  return 0;
}

char *sg_gpu_type_from_name(const char *name) {
  /* Take the first word after an optional vendor prefix that contains a digit:
   * "NVIDIA A100-SXM4-80GB" -> "a100", "Tesla V100-PCIE-16GB" -> "v100",
   * "NVIDIA GeForce RTX 4090" -> "rtx4090" is not attempted: "4090". */
  const char *p = name;
  while (*p) {
    while (*p == ' ')
      p++;
    const char *w = p;
    while (*p && *p != ' ')
      p++;
    size_t len = (size_t)(p - w);
    bool digit = false;
    for (size_t i = 0; i < len; i++)
      digit |= isdigit((unsigned char)w[i]) != 0;
    if (digit) {
      char *t = xstrndup(w, len);
      char *dash = strchr(t, '-');
      if (dash)
        *dash = '\0';
      for (char *c = t; *c; c++)
        *c = (char)tolower((unsigned char)*c);
      return t;
    }
  }
  char *t = xstrdup(*name ? name : "gpu");
  for (char *c = t; *c; c++)
    *c = isalnum((unsigned char)*c) ? (char)tolower((unsigned char)*c) : '-';
  return t;
}

/* NVML entry points used, declared here so that no NVIDIA header is needed. */
typedef int (*nvml_init_fn)(void);
typedef int (*nvml_count_fn)(unsigned int *);
typedef int (*nvml_handle_fn)(unsigned int, void **);
typedef int (*nvml_str_fn)(void *, char *, unsigned int);
/* nvmlMemory_t (version 1): bytes. */
typedef struct nvml_memory {
  unsigned long long total, free, used;
} nvml_memory_t;
typedef int (*nvml_memory_fn)(void *, nvml_memory_t *);

static int discover_nvml(sg_gpu_inventory_t *inv) {
  void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib)
    return 0;
  nvml_init_fn init = (nvml_init_fn)dlsym(lib, "nvmlInit_v2");
  nvml_init_fn shutdown = (nvml_init_fn)dlsym(lib, "nvmlShutdown");
  nvml_count_fn count = (nvml_count_fn)dlsym(lib, "nvmlDeviceGetCount_v2");
  nvml_handle_fn handle = (nvml_handle_fn)dlsym(lib, "nvmlDeviceGetHandleByIndex_v2");
  nvml_str_fn get_name = (nvml_str_fn)dlsym(lib, "nvmlDeviceGetName");
  nvml_str_fn get_uuid = (nvml_str_fn)dlsym(lib, "nvmlDeviceGetUUID");
  nvml_memory_fn get_memory = (nvml_memory_fn)dlsym(lib, "nvmlDeviceGetMemoryInfo"); /* optional */
  int found = 0;
  unsigned int n = 0;
  if (init && shutdown && count && handle && get_name && get_uuid && init() == 0) {
    if (count(&n) == 0) {
      for (unsigned int i = 0; i < n; i++) {
        void *dev;
        char name[96] = "", uuid[96] = "";
        if (handle(i, &dev) != 0 || get_name(dev, name, sizeof(name)) != 0)
          continue;
        get_uuid(dev, uuid, sizeof(uuid));
        cleanup_free char *type = sg_gpu_type_from_name(name);
        sg_gpu_t *g = add_gpu(inv, type, name, uuid[0] ? uuid : NULL, "nvml");
        nvml_memory_t mem = {0};
        if (get_memory && get_memory(dev, &mem) == 0)
          g->memory = mem.total;
        found++;
      }
    }
    shutdown();
  }
  dlclose(lib);
  if (found)
    sg_info("gpu: %d NVIDIA GPU(s) found through NVML", found);
  return found;
}

sg_gpu_inventory_t *sg_gpu_inventory_new(const char *declared, const char *fallback, sg_error_t **err) {
  sg_gpu_inventory_t *inv = xcalloc(1, sizeof(*inv));
  if (declared) {
    if (sg_gpu_declare(inv, declared, err) < 0) {
      sg_gpu_inventory_free(inv);
      return NULL;
    }
    return inv;
  }
  if (discover_nvml(inv) > 0)
    return inv;
  if (fallback) {
    sg_info("gpu: no NVIDIA GPU found; declaring %s", fallback);
    if (sg_gpu_declare(inv, fallback, err) < 0) {
      sg_gpu_inventory_free(inv);
      return NULL;
    }
  }
  return inv;
}

void sg_gpu_inventory_free(sg_gpu_inventory_t *inv) {
  if (!inv)
    return;
  for (size_t i = 0; i < inv->n; i++) {
    free(inv->gpus[i].type);
    free(inv->gpus[i].name);
    free(inv->gpus[i].uuid);
    free(inv->gpus[i].holder);
    free(inv->gpus[i].endpoint);
  }
  free(inv->gpus);
  free(inv);
}

int sg_gpu_free_count(const sg_gpu_inventory_t *inv, const char *type) {
  int n = 0;
  for (size_t i = 0; i < inv->n; i++)
    if (!inv->gpus[i].holder && !strcmp(inv->gpus[i].type, type))
      n++;
  return n;
}

int sg_gpu_total_count(const sg_gpu_inventory_t *inv, const char *type) {
  int n = 0;
  for (size_t i = 0; i < inv->n; i++)
    if (!strcmp(inv->gpus[i].type, type))
      n++;
  return n;
}

int sg_gpu_acquire(sg_gpu_inventory_t *inv, const char *type, int count, const char *holder, const char *endpoint,
                   int *out) {
  if (sg_gpu_free_count(inv, type) < count)
    return -1;
  int got = 0;
  for (size_t i = 0; i < inv->n && got < count; i++) {
    sg_gpu_t *g = &inv->gpus[i];
    if (g->holder || strcmp(g->type, type))
      continue;
    g->holder = xstrdup(holder);
    g->endpoint = xstrdup(endpoint);
    out[got++] = g->index;
  }
  return 0;
}

void sg_gpu_release(sg_gpu_inventory_t *inv, const char *holder) {
  for (size_t i = 0; i < inv->n; i++) {
    sg_gpu_t *g = &inv->gpus[i];
    if (g->holder && !strcmp(g->holder, holder)) {
      free(g->holder);
      free(g->endpoint);
      g->holder = g->endpoint = NULL;
    }
  }
}
