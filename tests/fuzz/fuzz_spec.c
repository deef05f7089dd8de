/* Fuzz target for the endpoint spec parser (libFuzzer entry point).
 *
 * Any input must either parse, or fail with an error that carries a message
 * (and a field, for validation errors). A parsed spec has a valid name and a
 * command (an absolute path or a bare name) unless its image brings one, and must survive the
 * round trip: its normalized JSON parses again to the same normalized JSON. */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sgpu/spec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  sg_error_t *err = NULL;
  sg_spec_t *s = sg_spec_parse((const char *)data, size, &err);
  if (!s) {
    if (!err || !err->message)
      abort();
    if (err->status != SG_EINVAL && err->status != SG_EJSON)
      abort();
    if (err->status == SG_EINVAL && (!err->field || strncmp(err->message, err->field, strlen(err->field))))
      abort();
    sg_error_free(err);
    return 0;
  }
  if (err)
    abort();
  if (!sg_name_valid(s->name) || !s->runtime)
    abort();
  /* An image may bring the command; without one, it is an absolute path or
   * a bare name (looked up in PATH at create). */
  bool from_image = s->image && (!strcmp(s->runtime, "oci") || !strcmp(s->runtime, "slurm"));
  if (!from_image && (s->n_command < 1 || !s->command[0][0] || (s->command[0][0] != '/' && strchr(s->command[0], '/'))))
    abort();
  if (s->n_command > 0 && s->command[s->n_command])
    abort();
  if (s->workers.min < 0 || s->workers.min > s->workers.max || s->workers.max > SG_SPEC_MAX_WORKERS)
    abort();
  if ((s->gpu.count > 0) != (s->gpu.type != NULL) || s->port < 1 || s->port > 65535)
    abort();

  json_t *j = sg_spec_to_json(s);
  if (!j)
    abort();
  char *text = json_dumps(j, JSON_COMPACT);
  if (!text)
    abort();
  sg_spec_t *again = sg_spec_parse(text, strlen(text), &err);
  if (!again)
    abort();
  json_t *j2 = sg_spec_to_json(again);
  if (!json_equal(j, j2))
    abort();
  json_decref(j2);
  sg_spec_free(again);
  free(text);
  json_decref(j);
  sg_spec_free(s);
  return 0;
}
