/* Fuzz target for registry manifests and image indexes (sg_manifest_parse),
 * fed the way sg_registry_manifest() feeds them: the raw body, with and
 * without a Content-Type naming its media type.
 *
 * A failure carries a message and leaves the result empty. An index yields a
 * valid picked digest and nothing else. A parsed manifest has the body's
 * digest, a valid config digest and size, valid layers, and survives the
 * round trip: written back as a manifest, it parses to the same thing. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sgpu/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char name[] = "registry.example/ns/app";

static bool empty(const sg_manifest_t *m) { return !m->digest && !m->config_digest && !m->layers && !m->n_layers; }

static json_t *to_json(const sg_manifest_t *m) {
  json_t *layers = json_array();
  for (size_t i = 0; i < m->n_layers; i++)
    json_array_append_new(layers, json_pack("{s:s, s:s, s:I}", "mediaType", m->layers[i].media_type, "digest",
                                            m->layers[i].digest, "size", (json_int_t)m->layers[i].size));
  return json_pack("{s:i, s:s, s:{s:s, s:s, s:I}, s:o}", "schemaVersion", 2, "mediaType",
                   "application/vnd.oci.image.manifest.v1+json", "config", "mediaType",
                   "application/vnd.oci.image.config.v1+json", "digest", m->config_digest, "size",
                   (json_int_t)m->config_size, "layers", layers);
}

static void check_manifest(const sg_manifest_t *m) {
  if (!m->digest || !sg_digest_valid(m->digest) || !m->config_digest || !sg_digest_valid(m->config_digest) ||
      m->config_size < 0 || m->config_size > SG_REGISTRY_MAX_CONFIG || m->n_layers > 1000)
    abort();
  for (size_t i = 0; i < m->n_layers; i++)
    if (!sg_digest_valid(m->layers[i].digest) || !m->layers[i].media_type || m->layers[i].size < 0)
      abort();
  json_t *j = to_json(m);
  char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
  if (!body)
    abort();
  sg_manifest_t again;
  sg_error_t *err = NULL;
  char *pick = NULL;
  if (sg_manifest_parse(body, strlen(body), NULL, name, &again, &pick, &err) != 0 || pick)
    abort();
  if (again.n_layers != m->n_layers || strcmp(again.config_digest, m->config_digest) ||
      again.config_size != m->config_size)
    abort();
  for (size_t i = 0; i < m->n_layers; i++)
    if (strcmp(again.layers[i].digest, m->layers[i].digest) ||
        strcmp(again.layers[i].media_type, m->layers[i].media_type) || again.layers[i].size != m->layers[i].size)
      abort();
  sg_manifest_clear(&again);
  free(body);
  json_decref(j);
}

static void one(const uint8_t *data, size_t size, const char *content_type) {
  sg_manifest_t m;
  sg_error_t *err = NULL;
  char *pick = NULL;
  int r = sg_manifest_parse((const char *)data, size, content_type, name, &m, &pick, &err);
  if (r < 0) {
    if (!err || !err->message || !empty(&m) || pick)
      abort();
    sg_error_free(err);
  } else if (r == 1) {
    if (err || !empty(&m) || !pick || !sg_digest_valid(pick))
      abort();
    free(pick);
  } else if (r == 0) {
    if (err || pick)
      abort();
    check_manifest(&m);
    sg_manifest_clear(&m);
  } else {
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  one(data, size, NULL);
  one(data, size, "application/vnd.oci.image.index.v1+json");
  one(data, size, "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8");
  return 0;
}
