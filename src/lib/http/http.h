/* sgpud's HTTP/1.1 server and its upstream client, on libevent bufferevents
 * with http-parser doing the parsing. Loop-thread only.
 *
 * Server. Each connection parses one request at a time (pipelined requests
 * wait in the input buffer until the answer before them ended). When a
 * request's head is complete the server calls on_head(); the handler either
 * lets the body be buffered (bounded) and gets on_request() once it is whole,
 * or takes the body as a stream with sg_http_stream_body() (the gateway).
 *
 * A request lives until its answer ended (sg_http_reply() or
 * sg_http_reply_end()) or the server ended it. A handler that keeps a request
 * past its callback (an owner: the proxy, a job request) must set a close
 * callback: whatever ends the request before the owner answered it (the
 * client went away, the rest of the request was malformed, too large or too
 * slow), the owner hears of it there, once, and nowhere else; the request is
 * freed (or answered with the error, then freed) by the server after the
 * callback returns, and no other handler callback runs for it afterwards.
 *
 * Timeouts bound what a client can hold: the head of a request must arrive
 * within header_timeout_s of its first byte, an idle keep-alive connection is
 * closed after idle_timeout_s, and a body read or an answer written that makes
 * no progress for io_timeout_s ends the connection. That inactivity timeout
 * runs only while the client is the one expected to move bytes (its body is
 * read and not paused by the owner, or answer bytes wait for it to take them):
 * a request whose body is whole (or paused) and whose answer is not under way
 * waits on its owner, which bounds that wait itself (the gateway: a worker that
 * loads or computes, workers.request_timeout_s).
 *
 * Limits bound what one connection can hold: a head of at most
 * max_header_bytes (request line and headers, buffers grown as bytes arrive,
 * never preallocated) and max_headers headers (431 past either); chunked
 * trailers are counted against the same bound and dropped; at most
 * max_connections open connections (past it a new one gets a short 503 and is
 * closed). Freed buffers of closed connections are handed back to the system
 * in batches. */
#ifndef SGPU_HTTP_H
#define SGPU_HTTP_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sgpu/error.h"

typedef struct sg_http_server sg_http_server_t;
typedef struct sg_http_req sg_http_req_t;

typedef enum {
  SG_HTTP_BUFFER, /* buffer the body, then call on_request */
  SG_HTTP_STREAM, /* the handler called sg_http_stream_body() */
  SG_HTTP_DONE,   /* the handler answered already */
} sg_http_head_action_t;

typedef struct sg_http_server_config {
  size_t max_header_bytes;  /* request line and headers (0: 64 KiB) */
  size_t max_headers;       /* header fields of one request (0: 100) */
  size_t max_connections;   /* open client connections (0: no limit) */
  size_t max_buffered_body; /* bodies of SG_HTTP_BUFFER requests (413 above) */
  double header_timeout_s;
  double idle_timeout_s;
  double io_timeout_s;
  /* Called when a request's head is complete. */
  sg_http_head_action_t (*on_head)(void *ud, sg_http_req_t *req);
  /* Called when a buffered request's body is complete. */
  void (*on_request)(void *ud, sg_http_req_t *req);
  void *ud;
} sg_http_server_config_t;

/* Listens on host:port (port 0: any). Writes the bound port to *bound_port. */
sg_http_server_t *sg_http_server_new(struct event_base *base, const sg_http_server_config_t *cfg, const char *host,
                                     int port, int *bound_port, sg_error_t **err);
/* Closes the listener and every connection (close callbacks run). */
void sg_http_server_free(sg_http_server_t *srv);
/* Closes every connection whose request in progress was made by principal
 * (sg_http_set_principal; not 0), except keep's: their owners' close
 * callbacks run. For a credential withdrawn while requests made with it
 * still stream. Returns how many were closed. */
size_t sg_http_server_end_principal(sg_http_server_t *srv, uint64_t principal, const sg_http_req_t *keep);
/* Serves an already connected socket (taken; made non-blocking) as if it had
 * been accepted, e.g. one end of a socketpair. It counts as an open
 * connection but is never refused. */
void sg_http_server_adopt(sg_http_server_t *srv, int fd);

/* ---- the request ---- */

/* The method name as sent ("GET"). */
const char *sg_http_method(const sg_http_req_t *req);
bool sg_http_method_is(const sg_http_req_t *req, const char *name);
/* True for methods a failed attempt may repeat (RFC 9110 idempotent methods). */
bool sg_http_method_idempotent(const sg_http_req_t *req);
bool sg_http_is_head(const sg_http_req_t *req);
/* The request target as sent ("/e/x/y?q=1"), its path ("/e/x/y") and its
 * query ("q=1", or NULL). */
const char *sg_http_target(const sg_http_req_t *req);
const char *sg_http_path(const sg_http_req_t *req);
const char *sg_http_query(const sg_http_req_t *req);
/* First header of that name (case-insensitive), or NULL. */
const char *sg_http_header(const sg_http_req_t *req, const char *name);
size_t sg_http_header_count(const sg_http_req_t *req);
void sg_http_header_at(const sg_http_req_t *req, size_t i, const char **name, const char **value);
/* The request's Content-Length, or -1 when it has none (chunked or empty). */
int64_t sg_http_content_length(const sg_http_req_t *req);
/* The client's address ("127.0.0.1"). */
const char *sg_http_peer(const sg_http_req_t *req);
/* The whole body of a buffered request. */
struct evbuffer *sg_http_body(sg_http_req_t *req);
int sg_http_version_minor(const sg_http_req_t *req);

/* Called once if the request ends before its owner answered it (see above);
 * the owner must forget req, which the server frees after the callback
 * returns. NULL removes it. */
void sg_http_set_close_cb(sg_http_req_t *req, void (*cb)(sg_http_req_t *req, void *arg), void *arg);
/* Who made req (an authentication layer's id for a credential; 0: nobody in
 * particular): see sg_http_server_end_principal. */
void sg_http_set_principal(sg_http_req_t *req, uint64_t principal);

/* Streams the request body: on_data gets each piece as it arrives (the
 * handler drains `data`), on_end once after the last piece. Only from on_head. */
void sg_http_stream_body(sg_http_req_t *req, void (*on_data)(sg_http_req_t *req, struct evbuffer *data, void *arg),
                         void (*on_end)(sg_http_req_t *req, void *arg), void *arg);
/* Stops or resumes reading the body from the client (backpressure). */
void sg_http_pause_body(sg_http_req_t *req, bool paused);

/* ---- the answer ---- */

void sg_http_add_header(sg_http_req_t *req, const char *name, const char *value);
/* A complete answer with body (may be NULL); ends the request. */
void sg_http_reply(sg_http_req_t *req, int status, const char *content_type, const void *body, size_t len);
/* Sends the head. The body is framed by a Content-Length header when the
 * handler added one, else chunked (HTTP/1.1) or by closing (HTTP/1.0). */
void sg_http_reply_start(sg_http_req_t *req, int status, const char *reason);
/* Sends a piece of body; moves the bytes out of data. */
void sg_http_reply_chunk(sg_http_req_t *req, struct evbuffer *data);
void sg_http_reply_chunk_mem(sg_http_req_t *req, const void *data, size_t len);
/* Ends the answer; req must not be used afterwards. */
void sg_http_reply_end(sg_http_req_t *req);
/* Ends the answer by closing the connection: the client sees an incomplete
 * answer rather than a short one that looks complete. req is freed. */
void sg_http_reply_abort(sg_http_req_t *req);
bool sg_http_reply_started(const sg_http_req_t *req);
/* True when the answer's body is sent chunked: one that sg_http_reply_end()
 * ends with the terminating chunk, so that a last piece can still be added. */
bool sg_http_reply_chunked(const sg_http_req_t *req);
/* Bytes of answer not yet written to the socket. */
size_t sg_http_unsent(const sg_http_req_t *req);
/* Called whenever the unsent bytes fall to at most low_water; NULL removes it. */
void sg_http_set_drain_cb(sg_http_req_t *req, size_t low_water, void (*cb)(sg_http_req_t *req, void *arg), void *arg);

/* Reason phrase of a status code ("Not Found"), "Unknown" if none. */
const char *sg_http_reason(int status);

/* ---- JSON answers (answer.c), used by every route ---- */

/* A complete application/json answer: body compact, then a newline. Steals body. */
void sg_http_send_json(sg_http_req_t *req, int status, json_t *body);
/* The error answer of every route: {"error":{"code","message"[,"field"]}}. */
void sg_http_send_error(sg_http_req_t *req, int status, const char *code, const char *message, const char *field);
/* The error answer for err: its status chooses the HTTP status and code. */
void sg_http_send_sg_error(sg_http_req_t *req, const sg_error_t *err);
/* 405 with an Allow header naming the methods the route allows. */
void sg_http_method_not_allowed(sg_http_req_t *req, const char *allow);

#endif
