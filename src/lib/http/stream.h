/* A non-blocking TCP stream with input and output buffers, for the HTTP
 * server and the upstream client. Loop-thread only.
 *
 * Unlike a libevent bufferevent, output is written from the same loop
 * iteration that produced it (batched: every stream with new output is
 * flushed once after the callbacks of that iteration), and the kernel is
 * asked to watch for writability only when a write could not finish. On a
 * proxy that is one write and no epoll changes per answer in the common case.
 *
 * Callbacks are never called from inside a sg_stream_* call, only from the
 * loop; sg_stream_free() may be called from inside them. */
#ifndef SGPU_STREAM_H
#define SGPU_STREAM_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct sg_stream sg_stream_t;

enum {
  SG_STREAM_CONNECTED = 1, /* an outgoing connection was established */
  SG_STREAM_EOF = 2,       /* the peer closed its side */
  SG_STREAM_ERROR = 4,     /* the socket failed (errno-style code in sg_stream_error) */
  SG_STREAM_TIMEOUT = 8,   /* no progress within the read or write timeout */
};

typedef struct sg_stream_callbacks {
  void (*on_read)(sg_stream_t *s, void *arg);  /* the input buffer grew */
  void (*on_drain)(sg_stream_t *s, void *arg); /* the output fell to the low-water mark */
  void (*on_event)(sg_stream_t *s, int what, void *arg);
} sg_stream_callbacks_t;

/* Wraps a connected socket (taken: closed on free). */
sg_stream_t *sg_stream_new(struct event_base *base, int fd, const sg_stream_callbacks_t *cbs, void *arg);
/* Connects to 127.0.0.1:port; SG_STREAM_CONNECTED or SG_STREAM_ERROR follows. */
sg_stream_t *sg_stream_connect_loopback(struct event_base *base, int port, const sg_stream_callbacks_t *cbs, void *arg);
/* Connects to host:port, host being a numeric IPv4 address (NULL: 127.0.0.1);
 * SG_STREAM_CONNECTED or SG_STREAM_ERROR follows. */
sg_stream_t *sg_stream_connect(struct event_base *base, const char *host, int port, const sg_stream_callbacks_t *cbs,
                               void *arg);
void sg_stream_free(sg_stream_t *s);

struct evbuffer *sg_stream_input(sg_stream_t *s);
/* Data added here is written out after the current callbacks. */
struct evbuffer *sg_stream_output(sg_stream_t *s);
/* Stops or resumes reading. */
void sg_stream_read(sg_stream_t *s, bool on);
/* Stops reading while the input buffer holds more than limit bytes (0: none). */
void sg_stream_set_read_limit(sg_stream_t *s, size_t limit);
/* Read timeout while reading is on; write timeout while output waits. 0: none. */
void sg_stream_set_timeouts(sg_stream_t *s, double read_s, double write_s);
/* on_drain is called when the output falls to low_water after a write; 0: when empty. */
void sg_stream_set_low_water(sg_stream_t *s, size_t low_water);
int sg_stream_error(const sg_stream_t *s);
int sg_stream_fd(const sg_stream_t *s);
/* Drops unwritten output (for a connection that is being abandoned). */
void sg_stream_discard_output(sg_stream_t *s);

#endif
