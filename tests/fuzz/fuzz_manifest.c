/* Fuzz target for registry manifests and image indexes (sg_manifest_parse),
 * fed the way sg_registry_manifest() feeds them: the body as JSON, read as an
 * index (picking linux/amd64) and, as the picked manifest, with indexes
 * refused.
 *
 * A failure carries a message and leaves the result empty. A picked digest
 * is a valid one. A parsed manifest has a valid config digest and valid
 * layers, and survives the round trip: written back as a manifest, it parses
 * to the same thing. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sgpu/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const sg_image_ref_t ref = {"registry.example", "ns/app", "latest", NULL};

static bool empty(const sg_manifest_t *m) { return !m->digest && !m->config_digest && !m->layers && !m->n_layers; }

static void check_failed(int r, const sg_manifest_t *m, sg_error_t *err) {
  if (r >= 0 || !err || !err->message || !empty(m))
    abort();
  sg_error_free(err);
}

static json_t *to_json(const sg_manifest_t *m, const char *media_type) {
  json_t *layers = json_array();
  for (size_t i = 0; i < m->n_layers; i++)
    json_array_append_new(layers, json_pack("{s:s, s:s, s:I}", "mediaType", m->layers[i].media_type, "digest",
                                            m->layers[i].digest, "size", (json_int_t)m->layers[i].size));
  return json_pack("{s:i, s:s, s:{s:s, s:s, s:i}, s:o}", "schemaVersion", 2, "mediaType", media_type, "config",
                   "mediaType", "application/vnd.oci.image.config.v1+json", "digest", m->config_digest, "size", 0,
                   "layers", layers);
}

static void check_manifest(const sg_manifest_t *m, const char *media_type) {
  if (m->digest || !m->config_digest || !sg_digest_valid(m->config_digest) || m->n_layers > 1000)
    abort();
  for (size_t i = 0; i < m->n_layers; i++)
    if (!sg_digest_valid(m->layers[i].digest) || !m->layers[i].media_type || m->layers[i].size < 0)
      abort();
  json_t *j = to_json(m, media_type);
  sg_manifest_t again;
  sg_error_t *err = NULL;
  if (!j || sg_manifest_parse(j, &ref, &again, NULL, &err) < 0)
    abort();
  if (again.n_layers != m->n_layers || strcmp(again.config_digest, m->config_digest))
    abort();
  for (size_t i = 0; i < m->n_layers; i++)
    if (strcmp(again.layers[i].digest, m->layers[i].digest) ||
        strcmp(again.layers[i].media_type, m->layers[i].media_type) || again.layers[i].size != m->layers[i].size)
      abort();
  sg_manifest_clear(&again);
  json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  json_error_t jerr;
  json_t *j = json_loadb((const char *)data, size, 0, &jerr);
  if (!json_is_object(j)) {
    json_decref(j);
    return 0;
  }
  const char *mt = json_string_value(json_object_get(j, "mediaType"));

  sg_manifest_t m;
  sg_error_t *err = NULL;
  char *pick = NULL;
  int r = sg_manifest_parse(j, &ref, &m, &pick, &err);
  if (r < 0) {
    check_failed(r, &m, err);
    if (pick)
      abort();
  } else if (pick) {
    if (err || !empty(&m) || !sg_digest_valid(pick))
      abort();
    free(pick);
  } else {
    if (err)
      abort();
    check_manifest(&m, mt);
    sg_manifest_clear(&m);
  }

  /* The second step of a pull: no index accepted. */
  err = NULL;
  r = sg_manifest_parse(j, &ref, &m, NULL, &err);
  if (r < 0) {
    check_failed(r, &m, err);
  } else {
    if (err)
      abort();
    check_manifest(&m, mt);
    sg_manifest_clear(&m);
  }
  json_decref(j);
  return 0;
}
