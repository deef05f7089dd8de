/* The pure parts of the job API: what a submission may hold, what a
 * worker's answer means, job ids, and the webhook allow-list. No I/O, no
 * clocks; any thread. */
#ifndef SGPU_JOBS_PROTO_H
#define SGPU_JOBS_PROTO_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "sgpu/error.h"
#include "sgpu/jobs-store.h"

#define SG_JOB_ID_MAX 64
#define SG_WEBHOOK_URL_MAX 2048
/* Bounds of a job's policy, in milliseconds. */
#define SG_JOB_TIMEOUT_MIN_MS 1
#define SG_JOB_TIMEOUT_MAX_MS (7LL * 24 * 3600 * 1000)

/* A parsed POST /run or /runsync body. */
typedef struct sg_job_submit {
  char *input; /* the input as compact JSON text */
  size_t input_len;
  char *webhook;           /* NULL: none */
  int64_t exec_timeout_ms; /* 0: the endpoint's default */
  int64_t ttl_ms;          /* 0: the endpoint's default */
} sg_job_submit_t;

/* Parses and validates {"input": ..., "webhook": URL, "policy":
 * {"executionTimeout": ms, "ttl": ms}}. Errors: SG_EJSON (not a JSON
 * object), SG_ETOOLARGE (input over max_input bytes as compact JSON),
 * SG_EINVAL naming the field. On success out holds malloc'ed strings. */
int sg_job_submit_parse(const char *body, size_t len, size_t max_input, sg_job_submit_t *out, sg_error_t **err);
void sg_job_submit_clear(sg_job_submit_t *s);

/* What a worker's answer to POST async_path means. */
typedef struct sg_job_result {
  sg_job_status_t status; /* COMPLETED or FAILED */
  char *output;           /* JSON text, or NULL */
  char *error;            /* JSON text, or NULL */
} sg_job_result_t;

/* A 2xx answer with a JSON object holding "error" fails the job with that
 * error; one holding "output" completes it with that output; any other JSON
 * is the output; text that is not JSON is the output as a string. A non-2xx
 * answer fails the job. */
void sg_job_result_parse(int http_status, const char *body, size_t len, sg_job_result_t *out);
void sg_job_result_clear(sg_job_result_t *r);

/* True for 1..SG_JOB_ID_MAX of [A-Za-z0-9_-]. */
bool sg_job_id_valid(const char *id);
/* A new random job id (a UUID version 4, 36 characters). Caller frees. */
char *sg_job_new_id(void);

/* Checks a webhook URL's form: http or https, a host, at most
 * SG_WEBHOOK_URL_MAX bytes, no user name or password. */
int sg_webhook_url_check(const char *url, sg_error_t **err);

/* One entry of the webhook allow-list: "public" (any globally routable
 * address), an address ("127.0.0.1", "::1") or a network in CIDR form
 * ("10.0.0.0/8", "fd00::/8"). */
typedef struct sg_addr_rule {
  bool public_any;
  int family; /* AF_INET or AF_INET6 */
  unsigned char addr[16];
  int prefix;
} sg_addr_rule_t;

int sg_addr_rule_parse(const char *text, sg_addr_rule_t *out, sg_error_t **err);
/* True when the address is globally routable: not loopback, private,
 * link-local, shared (CGNAT), multicast, reserved or unspecified. */
bool sg_addr_is_public(const struct sockaddr *sa);
/* True when a rule of rules[0..n) admits the address. */
bool sg_addr_allowed(const sg_addr_rule_t *rules, size_t n, const struct sockaddr *sa);

/* ---- RunPod's worker protocol (pull workers) ---- */

/* The most job ids a ping or stop list carries that are looked at. */
#define SG_RP_IDS_MAX 1024

/* What a pull worker posted to its result route. */
typedef struct sg_rp_result {
  bool progress;          /* {"status": "IN_PROGRESS", ...}: not the end of the job */
  sg_job_status_t status; /* COMPLETED or FAILED, when not progress */
  char *output;           /* JSON text, or NULL: none */
  char *error;            /* JSON text, or NULL */
  bool stop_pod;          /* "stopPod": true: replace the worker after this job */
} sg_rp_result_t;

/* Parses a result post (JSON whatever its Content-Type says): an object
 * with "status": "IN_PROGRESS" is progress, its "output" what /status
 * shows; otherwise the end of the job: FAILED with "error" when that is
 * there and neither null nor "" (also with "status": "FAILED" and no
 * error: the error then says so), else COMPLETED with "output" (absent:
 * none). Errors: SG_EJSON (not a JSON object), SG_EINVAL naming the field
 * ("stopPod" not a boolean, "status" neither absent nor a known word). */
int sg_rp_result_parse(const char *body, size_t len, sg_rp_result_t *out, sg_error_t **err);
void sg_rp_result_clear(sg_rp_result_t *r);

/* Parses a stream post {"output": X}: *output is X as JSON text. Errors:
 * SG_EJSON (not a JSON object), SG_EINVAL ("output" missing). */
int sg_rp_stream_parse(const char *body, size_t len, char **output, sg_error_t **err);

/* Splits a comma-separated list of job ids (a ping's job_id, already
 * percent-decoded): the valid ones among its first SG_RP_IDS_MAX entries,
 * in order, duplicates dropped; *ids is NULL for none. Returns the count.
 * Free with sg_rp_ids_free. */
size_t sg_rp_ids_parse(const char *list, char ***ids);
void sg_rp_ids_free(char **ids, size_t n);

/* The value of the first name=value of a URL query (NULL query: none),
 * decoded as a form's ("+" a space, "%XX" a byte), or NULL when absent.
 * Elements without "=" are passed over: they hide nothing else. Caller
 * frees. */
char *sg_rp_query_param(const char *query, const char *name);

#endif
