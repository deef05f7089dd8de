// A worker for scripts/gpu-check.sh: a tiny HTTP server on $PORT whose every
// answer (the health path included) reports what CUDA sees: the device count
// and the UUID of each device, in the form NVML uses ("GPU-xxxxxxxx-...").
// Built with nvcc on a machine with an NVIDIA GPU; not part of the build.
#include <cuda_runtime.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int report(char *out, size_t cap) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess)
    return snprintf(out, cap, "{\"device_count\":0,\"error\":\"%s\",\"uuids\":[]}", cudaGetErrorString(e));
  size_t len = (size_t)snprintf(out, cap, "{\"device_count\":%d,\"uuids\":[", n);
  for (int i = 0; i < n && len < cap; i++) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess)
      continue;
    const unsigned char *u = (const unsigned char *)p.uuid.bytes;
    len += (size_t)snprintf(out + len, cap - len,
                            "%s\"GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x\"",
                            i ? "," : "", u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11],
                            u[12], u[13], u[14], u[15]);
  }
  if (len < cap)
    len += (size_t)snprintf(out + len, cap - len, "]}");
  return (int)len;
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const char *port = getenv("PORT");
  int s = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  struct sockaddr_in a;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((unsigned short)atoi(port ? port : "8000"));
  if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(s, 16) < 0) {
    perror("cuda-probe: listen");
    return 1;
  }
  char body[4096];
  int blen = report(body, sizeof(body));
  fprintf(stderr, "cuda-probe: %s\n", body);
  for (;;) {
    int c = accept(s, NULL, NULL);
    if (c < 0)
      continue;
    char req[4096];
    ssize_t r = read(c, req, sizeof(req)); // one request per connection; its content does not matter
    if (r > 0) {
      char head[256];
      int hlen = snprintf(head, sizeof(head),
                          "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                          "Connection: close\r\n\r\n",
                          blen);
      if (write(c, head, (size_t)hlen) == hlen)
        (void)!write(c, body, (size_t)blen);
    }
    close(c);
  }
}
