/* Fuzz target for image references (sg_image_ref_parse).
 *
 * Any input either parses or fails with SG_EINVAL, a message and the
 * reference cleared. A parsed reference is complete (a domain, a repository,
 * a tag or a valid digest) and survives the round trip: its normalized
 * string parses again to the same reference. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sgpu/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same(const char *a, const char *b) { return (!a && !b) || (a && b && !strcmp(a, b)); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 4096)
    return 0;
  char *s = malloc(size + 1);
  if (!s)
    abort();
  memcpy(s, data, size);
  s[size] = '\0';
  sg_image_ref_t r;
  sg_error_t *err = NULL;
  if (sg_image_ref_parse(s, &r, &err) < 0) {
    if (!err || err->status != SG_EINVAL || !err->message)
      abort();
    if (r.domain || r.repository || r.tag || r.digest)
      abort();
    sg_error_free(err);
    free(s);
    return 0;
  }
  if (err || !r.domain || !r.repository || !*r.domain || !*r.repository || !(r.tag || r.digest))
    abort();
  if (r.digest && !sg_digest_valid(r.digest))
    abort();
  if (!sg_image_ref_api_host(&r))
    abort();

  char *text = sg_image_ref_string(&r);
  sg_image_ref_t again;
  if (sg_image_ref_parse(text, &again, &err) < 0)
    abort();
  if (!same(r.domain, again.domain) || !same(r.repository, again.repository) || !same(r.tag, again.tag) ||
      !same(r.digest, again.digest))
    abort();
  char *text2 = sg_image_ref_string(&again);
  if (strcmp(text, text2))
    abort();
  free(text2);
  free(text);
  sg_image_ref_clear(&again);
  sg_image_ref_clear(&r);
  free(s);
  return 0;
}
