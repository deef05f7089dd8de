/* The usage writer (see writer.h). Batches are written in the order they
 * were submitted; every record carries absolute values, so the newest write
 * of a record is what the store holds. */
#include "meter/writer.h"

#include "sgpu/batcher.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

struct sg_usage_writer {
  sg_batcher_t *batcher;
  sg_store_t *store;
};

void sg_usage_records_free(sg_usage_record_t *recs, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free((char *)recs[i].worker);
    free((char *)recs[i].endpoint);
    free((char *)recs[i].gpu_type);
  }
  free(recs);
}

static int write_batch(void *ctx, void *items, size_t n) {
  sg_usage_writer_t *w = ctx;
  cleanup_error sg_error_t *err = NULL;
  if (sg_store_usage_put(w->store, items, n, &err) < 0) {
    sg_errlog("%zu usage records not written: %s", n, err->message);
    return -1;
  }
  return 0;
}

static void free_records(void *items, size_t n) { sg_usage_records_free(items, n); }

static const sg_batcher_ops_t ops = {.write = write_batch, .free_items = free_records};

sg_usage_writer_t *sg_usage_writer_start(const char *db_path, sg_error_t **err) {
  sg_store_t *store = sg_store_open(db_path, err);
  if (!store)
    return NULL;
  sg_usage_writer_t *w = xcalloc(1, sizeof(*w));
  w->store = store;
  w->batcher = sg_batcher_start("usage writer", &ops, w, err);
  if (!w->batcher) {
    sg_store_close(store);
    free(w);
    return NULL;
  }
  return w;
}

uint64_t sg_usage_writer_submit(sg_usage_writer_t *w, sg_usage_record_t *recs, size_t n) {
  return sg_batcher_submit(w->batcher, recs, n);
}

void sg_usage_writer_wait(sg_usage_writer_t *w, uint64_t seq) { sg_batcher_wait(w->batcher, seq); }

uint64_t sg_usage_writer_failures(sg_usage_writer_t *w) { return sg_batcher_failures(w->batcher); }

void sg_usage_writer_stop(sg_usage_writer_t *w) {
  if (!w)
    return;
  sg_batcher_stop(w->batcher);
  sg_store_close(w->store);
  free(w);
}
