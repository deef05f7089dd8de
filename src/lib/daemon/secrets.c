/* Secrets as the loop keeps them: each one's value sealed as stored
 * (sgpu/seal.h), loaded before the loop serves and then changed only by
 * sg_daemon_secret_set/forget after the store thread wrote the same change,
 * so neither the API nor a worker start reads SQLite on the loop. A value is
 * unsealed only for a worker start (sg_daemon_secret_value: one AES-GCM pass
 * over at most SG_SECRET_MAX_VALUE bytes) and wiped right after, so the
 * daemon's memory holds plain values only while a worker is being started.
 * Loop thread. */
#include <openssl/crypto.h>

#include "daemon/fleet.h"
#include "sgpu/log.h"
#include "sgpu/secrets-store.h"
#include "sgpu/util.h"

typedef struct secret_entry {
  char *name;
  unsigned char *sealed;
  size_t sealed_len;
  int64_t created_ms, updated_ms;
} secret_entry_t;

struct sg_secret_cache {
  secret_entry_t *v;
  size_t n, cap;
};

char *sg_secret_ad(const char *name) { return xasprintf("secret:%s", name); }

static secret_entry_t *find(sg_daemon_t *d, const char *name) {
  struct sg_secret_cache *c = d->secrets;
  for (size_t i = 0; c && i < c->n; i++)
    if (!strcmp(c->v[i].name, name))
      return &c->v[i];
  return NULL;
}

static void entry_clear(secret_entry_t *e) {
  free(e->name);
  free(e->sealed);
}

void sg_daemon_secret_set(sg_daemon_t *d, const sg_secret_record_t *rec) {
  if (!d->secrets)
    d->secrets = xcalloc(1, sizeof(*d->secrets));
  struct sg_secret_cache *c = d->secrets;
  secret_entry_t *e = find(d, rec->name);
  int64_t created = rec->created_ms;
  if (e) {
    created = e->created_ms;
    entry_clear(e);
  } else {
    if (c->n == c->cap) {
      c->cap = c->cap ? 2 * c->cap : 8;
      c->v = xrealloc(c->v, c->cap * sizeof(*c->v));
    }
    size_t i = c->n++;
    /* In name order, as the store lists them. */
    while (i > 0 && strcmp(c->v[i - 1].name, rec->name) > 0) {
      c->v[i] = c->v[i - 1];
      i--;
    }
    e = &c->v[i];
  }
  e->name = xstrdup(rec->name);
  e->sealed = xmalloc(rec->sealed_len ? rec->sealed_len : 1);
  memcpy(e->sealed, rec->sealed, rec->sealed_len);
  e->sealed_len = rec->sealed_len;
  e->created_ms = created;
  e->updated_ms = rec->updated_ms;
}

bool sg_daemon_secret_forget(sg_daemon_t *d, const char *name) {
  secret_entry_t *e = find(d, name);
  if (!e)
    return false;
  struct sg_secret_cache *c = d->secrets;
  size_t i = (size_t)(e - c->v);
  entry_clear(e);
  memmove(&c->v[i], &c->v[i + 1], (c->n - i - 1) * sizeof(*c->v));
  c->n--;
  return true;
}

static sg_secret_record_t entry_record(const secret_entry_t *e) {
  sg_secret_record_t r = {e->name, e->sealed, e->sealed_len, e->created_ms, e->updated_ms};
  return r;
}

int sg_daemon_secret_get(sg_daemon_t *d, const char *name, sg_secret_record_t *out, sg_error_t **err) {
  secret_entry_t *e = find(d, name);
  if (!e)
    return sg_make_error(err, SG_ENOTFOUND, "secret %s not found", name);
  *out = entry_record(e);
  return 0;
}

void sg_daemon_secret_each(sg_daemon_t *d, void (*cb)(void *ud, const sg_secret_record_t *rec), void *ud) {
  struct sg_secret_cache *c = d->secrets;
  for (size_t i = 0; c && i < c->n; i++) {
    sg_secret_record_t r = entry_record(&c->v[i]);
    cb(ud, &r);
  }
}

char *sg_daemon_secret_value(sg_daemon_t *d, const char *name, sg_error_t **err) {
  secret_entry_t *e = find(d, name);
  if (!e) {
    sg_make_error(err, SG_ENOTFOUND, "secret %s not found", name);
    return NULL;
  }
  cleanup_free char *ad = sg_secret_ad(name);
  char *plain = NULL;
  if (sg_unseal(d->secret_key, ad, e->sealed, e->sealed_len, &plain, NULL, NULL) < 0) {
    sg_make_error(err, SG_EINVAL,
                  "secret %s does not open: its sealed value was changed, or DATA_DIR/secret.key is not the key it "
                  "was sealed under",
                  name);
    return NULL;
  }
  return plain;
}

static void load_one(void *ud, const sg_secret_record_t *r) { sg_daemon_secret_set(ud, r); }

int sg_daemon_secrets_init(sg_daemon_t *d, sg_error_t **err) {
  if (!d->secrets)
    d->secrets = xcalloc(1, sizeof(*d->secrets));
  return sg_store_secret_load(d->store, load_one, d, err);
}

void sg_daemon_secrets_free(sg_daemon_t *d) {
  struct sg_secret_cache *c = d->secrets;
  if (c) {
    for (size_t i = 0; i < c->n; i++)
      entry_clear(&c->v[i]);
    free(c->v);
    free(c);
    d->secrets = NULL;
  }
  OPENSSL_cleanse(d->secret_key, sizeof(d->secret_key));
}
