/* Fuzz target for the HTTP server as a whole (libFuzzer entry point): the
 * input is what a client sends on one accepted connection, pipelined
 * requests, bodies, trailers and garbage included. See fuzz-http-server.h for
 * what is checked. */
#include "fuzz-http-server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_run(NULL, 0, data, size);
  return 0;
}
