/* Read-only connections for query threads (see store.h): a free list under
 * a mutex; a connection is opened when none is free and kept for reuse. */
#include <pthread.h>

#include "sgpu/store.h"
#include "sgpu/util.h"

struct sg_store_readers {
  pthread_mutex_t mu;
  char *path;
  sg_store_t **free; /* idle connections */
  size_t n, cap;
};

sg_store_readers_t *sg_store_readers_new(const char *path) {
  sg_store_readers_t *r = xcalloc(1, sizeof(*r));
  pthread_mutex_init(&r->mu, NULL);
  r->path = xstrdup(path);
  return r;
}

sg_store_t *sg_store_readers_take(sg_store_readers_t *r, sg_error_t **err) {
  pthread_mutex_lock(&r->mu);
  sg_store_t *s = r->n ? r->free[--r->n] : NULL;
  pthread_mutex_unlock(&r->mu);
  return s ? s : sg_store_open_readonly(r->path, err);
}

void sg_store_readers_put(sg_store_readers_t *r, sg_store_t *s) {
  pthread_mutex_lock(&r->mu);
  if (r->n == r->cap) {
    r->cap = r->cap ? 2 * r->cap : 4;
    r->free = xrealloc(r->free, r->cap * sizeof(*r->free));
  }
  r->free[r->n++] = s;
  pthread_mutex_unlock(&r->mu);
}

void sg_store_readers_free(sg_store_readers_t *r) {
  if (!r)
    return;
  for (size_t i = 0; i < r->n; i++)
    sg_store_close(r->free[i]);
  free(r->free);
  free(r->path);
  pthread_mutex_destroy(&r->mu);
  free(r);
}
