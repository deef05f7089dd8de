/* One HTTP/1.1 client connection (to a worker), reusable across
 * requests (keep-alive). Loop-thread only.
 *
 * The caller writes a request into sg_upstream_output() and gets the answer
 * through its handler: the head once, the body piece by piece, then done or
 * an error. Errors say whether anything could have reached the worker: a
 * connection that never connected took no byte, so its request may be sent
 * elsewhere whatever its method. */
#ifndef SGPU_UPSTREAM_H
#define SGPU_UPSTREAM_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct sg_upstream sg_upstream_t;

typedef enum {
  SG_UP_CONNECT_FAILED, /* never connected: nothing was sent */
  SG_UP_BROKEN,         /* closed or reset after the request was (partly) sent */
  SG_UP_BAD_RESPONSE,   /* the answer could not be parsed */
  SG_UP_TIMEOUT,        /* connected, but the answer did not end within the deadline */
} sg_upstream_error_t;

typedef struct sg_upstream_header {
  const char *name;
  const char *value;
} sg_upstream_header_t;

typedef struct sg_upstream_handler {
  void (*on_head)(void *arg, int status, const sg_upstream_header_t *headers, size_t n);
  /* A piece of body; the handler drains data. */
  void (*on_body)(void *arg, struct evbuffer *data);
  /* The answer is complete. */
  void (*on_done)(void *arg);
  /* The exchange failed; answer_started says whether a head had arrived. */
  void (*on_error)(void *arg, sg_upstream_error_t err, bool answer_started);
  /* What was written to the worker fell to the low-water mark (optional). */
  void (*on_drain)(void *arg);
} sg_upstream_handler_t;

/* Starts connecting to host:port (host: a numeric IPv4 address; NULL for
 * 127.0.0.1). Never NULL. */
sg_upstream_t *sg_upstream_new(struct event_base *base, const char *host, int port, double connect_timeout_s);
/* Wraps an already connected socket (taken), e.g. one end of a socketpair,
 * ready for sg_upstream_begin(). Never NULL. */
sg_upstream_t *sg_upstream_adopt(struct event_base *base, int fd);
/* True once the connection carried an earlier exchange. */
bool sg_upstream_reused(const sg_upstream_t *u);
/* True when the connection may take another request (idle, open). */
bool sg_upstream_usable(const sg_upstream_t *u);
/* Starts an exchange. head_request: the answer has no body whatever it says. */
void sg_upstream_begin(sg_upstream_t *u, const sg_upstream_handler_t *h, void *arg, bool head_request);
/* Where the request (head and body) is written. */
struct evbuffer *sg_upstream_output(sg_upstream_t *u);
/* Ends the current exchange with an error unless its answer is complete
 * within seconds from now (the connect included while it is still under
 * way): SG_UP_CONNECT_FAILED if the connection was never made, else
 * SG_UP_TIMEOUT. It bounds a worker that answers slowly or not at all, which
 * the read timeout (no progress) does not. Call after sg_upstream_begin(); it
 * ends with the exchange. 0: none. */
void sg_upstream_set_deadline(sg_upstream_t *u, double seconds);
/* Bytes of the request not yet written to the socket. */
size_t sg_upstream_unsent(const sg_upstream_t *u);
/* Calls on_drain when the unsent bytes fall to low_water (0: off). */
void sg_upstream_set_drain(sg_upstream_t *u, size_t low_water);
/* Stops or resumes reading the answer (backpressure from the client). */
void sg_upstream_pause(sg_upstream_t *u, bool paused);
/* Detaches the handler: no callback runs for the current exchange any more. */
void sg_upstream_detach(sg_upstream_t *u);
/* Closes and frees; safe from inside the connection's own callbacks. */
void sg_upstream_free(sg_upstream_t *u);

#endif
