/* The client of sgpud's HTTP API, shared by the sgpu CLI and the benchmarks.
 *
 * Two halves:
 *  - where to connect: sg_client_resolve() finds the server URL and the API
 *    key from explicit values (command-line flags), then the environment
 *    (SGPU_URL, SGPU_API_KEY), then the files sgpud writes in its data
 *    directory (url, admin.key). The data directory defaults exactly as
 *    sgpud's does (sg_default_data_dir()), so a CLI and a daemon started by
 *    the same user find each other without configuration.
 *  - talking to it: one libcurl handle per client, reused so a connection is
 *    kept alive across requests. sg_client_call() is a control-API call (JSON
 *    in, JSON out, an answer >= 400 is an error carrying the API's message);
 *    sg_client_send() returns any answer whole; sg_client_stream() hands the
 *    answer over as it arrives.
 *
 * Nothing here prints: failures fill an sg_error_t whose message reads on
 * its own ("no server URL: ...", "endpoint 'x' not found (key from ...)"),
 * and the caller prints it once. A client is used by one thread at a time;
 * every request blocks until the answer is in or the request timed out. */
#ifndef SGPU_CLIENT_H
#define SGPU_CLIENT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "sgpu/error.h"

struct curl_slist;

/* ---- where to connect ------------------------------------------------------ */

/* Values given explicitly (flags); NULL where not given. */
typedef struct sg_client_flags {
  const char *url;
  const char *key;
  const char *data_dir;
} sg_client_flags_t;

/* The resolved target. Strings are owned; release with sg_client_target_free(). */
typedef struct sg_client_target {
  char *url;        /* "http://host:port" without trailing slash ("http://" added when no scheme) */
  char *key;        /* API key, or NULL when none was found */
  char *key_source; /* where key came from: "--key", "SGPU_API_KEY" or the admin.key path; NULL with no key */
  char *data_dir;   /* the data directory consulted */
} sg_client_target_t;

/* Resolves URL and key. Order, first found wins:
 *   URL: flags->url, $SGPU_URL, the file DATA_DIR/url;
 *   key: flags->key, $SGPU_API_KEY, the file DATA_DIR/admin.key;
 *   DATA_DIR: flags->data_dir, else sg_default_data_dir().
 * An empty URL or data directory counts as absent; a key given by flag or
 * environment is used even when empty. Files are read trimmed of white space
 * and count as absent when empty. Returns 0, or a negative
 * value with *err saying why when no URL was found (a missing key is not an
 * error: a server may run without one). flags may be NULL. */
int sg_client_resolve(const sg_client_flags_t *flags, sg_client_target_t *out, sg_error_t **err);
void sg_client_target_free(sg_client_target_t *t);

/* ---- talking to it --------------------------------------------------------------- */

typedef struct sg_client sg_client_t;

typedef struct sg_client_options {
  const char *user_agent; /* NULL: libcurl's default (none sent) */
  bool no_proxy;          /* ignore http_proxy and friends (loopback measurements) */
} sg_client_options_t;

/* A client for base_url (no trailing slash; "" when every path given later
 * is a whole URL) sending "Authorization: Bearer key" when key is not NULL;
 * key_source names where the key came from in 401 messages (may be NULL).
 * opts may be NULL. Returns NULL with *err set when libcurl cannot start. */
sg_client_t *sg_client_new(const char *base_url, const char *key, const char *key_source,
                           const sg_client_options_t *opts, sg_error_t **err);
/* sg_client_new() on a resolved target. */
sg_client_t *sg_client_open(const sg_client_target_t *t, const sg_client_options_t *opts, sg_error_t **err);
void sg_client_free(sg_client_t *c);
static inline void sg_client_freep(sg_client_t **c) { sg_client_free(*c); }
#define cleanup_client __attribute__((cleanup(sg_client_freep)))

/* The base URL the client was made with. */
const char *sg_client_url(const sg_client_t *c);

/* An answer read whole. body is NUL-terminated (never NULL after a
 * successful request); json is the parsed body when it is JSON, else NULL. */
typedef struct sg_client_response {
  long status;
  char *body;
  size_t len;
  json_t *json;
} sg_client_response_t;
void sg_client_response_free(sg_client_response_t *r);
#define cleanup_client_response __attribute__((cleanup(sg_client_response_free)))

/* A request whose answer is read whole, whatever its status. */
typedef struct sg_client_request {
  const char *method; /* "GET", "POST", ... */
  const char *path;   /* appended to the base URL */
  const char *body;   /* NULL: none */
  size_t body_len;
  const struct curl_slist *headers; /* extra request headers, or NULL */
  long timeout_ms;                  /* whole request; 0: 120 s */
  size_t max_bytes;                 /* longest answer accepted; 0: 64 MiB */
} sg_client_request_t;

/* Sends req and reads the whole answer into *resp (which the caller releases
 * with sg_client_response_free()). Returns 0 when an answer came, whatever
 * its status; a negative value with *err set when none did (connection
 * refused, timeout, answer too large), and *resp is then empty. */
int sg_client_send(sg_client_t *c, const sg_client_request_t *req, sg_client_response_t *resp, sg_error_t **err);

/* A control-API call: body (may be NULL) is sent as compact JSON with
 * "Accept: application/json". Returns 0 on an answer below 400. An answer
 * of 400 or more fails with the message of its {"error": ...} body (or the
 * status and the body's first line), and a 401 says where the key came
 * from; *resp is then empty. The error's status tells the answers apart:
 * EACCES for 401, SG_ENOTFOUND for 404, EPERM for another 4xx, EPROTO for
 * 5xx; ECONNREFUSED or ETIMEDOUT when no answer came. */
int sg_client_call(sg_client_t *c, const char *method, const char *path, json_t *body, sg_client_response_t *resp,
                   sg_error_t **err);

/* Receives a piece of a streamed answer; returns 0 to go on, non-zero to stop. */
typedef int (*sg_client_data_fn)(const char *data, size_t len, void *ud);
/* Receives one header line of the answer (status line included), CRLF removed. */
typedef void (*sg_client_header_fn)(const char *line, size_t len, void *ud);

/* A streamed request: the answer is handed to on_data as it arrives. */
typedef struct sg_client_stream {
  const char *method;
  const char *path;
  const struct curl_slist *headers; /* extra request headers, owned by the caller */
  const char *body;                 /* request body or NULL */
  size_t body_len;
  long timeout_s; /* 0: no limit */
  sg_client_data_fn on_data;
  sg_client_header_fn on_header; /* optional */
  void *ud;
  long status; /* out: the answer's status, 0 when none came */
} sg_client_stream_t;

/* Runs a streamed request. Answers >= 400 are not passed to on_data: they
 * are read whole and become the error, as in sg_client_call(). Returns 0 when
 * the answer (status < 400) came in full or on_data stopped it; a negative
 * value with *err set otherwise. */
int sg_client_stream(sg_client_t *c, sg_client_stream_t *s, sg_error_t **err);

/* Percent-encodes s for a path segment or query value. Caller frees. */
char *sg_client_escape(const char *s);

#endif
