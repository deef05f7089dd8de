/* Fuzz target for chunked request bodies and their trailers (libFuzzer entry
 * point). The input is the body of a chunked request whose head is fixed; its
 * first byte picks the handler that owns the request (streamed and answered
 * after the body, answered before the body ended, paused and resumed, or
 * buffered), so that a malformed chunk or trailer meets each kind of owner.
 * See fuzz-http-server.h for what is checked. */
#include <stdio.h>

#include "fuzz-http-server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const paths[] = {"/stream", "/early", "/pause", "/buffer"};
  const char *path = paths[size > 0 ? data[0] % 4 : 0];
  char head[160];
  int n = snprintf(head, sizeof(head),
                   "POST %s HTTP/1.1\r\nHost: fuzz\r\nTransfer-Encoding: chunked\r\n"
                   "Trailer: X-Injected\r\n\r\n",
                   path);
  fz_run(head, (size_t)n, size > 0 ? data + 1 : data, size > 0 ? size - 1 : 0);
  return 0;
}
