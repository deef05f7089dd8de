/* Webhook delivery: POSTs a job's final status JSON to the URL the job gave,
 * on a pool of threads of its own (core/pool.c: blocking libcurl transfers
 * never touch the loop, nor hold up the daemon's pool). A non-2xx answer or
 * a failed transfer is tried again, twice, retry_delay_s apart: a timer on
 * the loop hands the delivery back to the pool, no thread sleeps. Every
 * address the URL's host resolves to is checked against the allow-list
 * before connecting, and the transfer is pinned to the address that passed,
 * so a name cannot be re-resolved to an address that was not checked;
 * redirects are not followed. At most SG_WEBHOOK_MAX_QUEUED deliveries wait or run;
 * past it a delivery is dropped (counted as failed). Deliveries of one key
 * (a job) go one at a time and the newest wins: a newer body replaces one
 * waiting for its retry, and one whose attempt is under way is not retried,
 * so an older body never arrives after a newer one. Deliveries live in
 * memory only: those not done when sgpud stops are lost. Loop thread only. */
#ifndef SGPU_WEBHOOK_H
#define SGPU_WEBHOOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/jobs-proto.h"
#include "sgpu/error.h"

#define SG_WEBHOOK_MAX_QUEUED 100000

typedef struct sg_webhooks sg_webhooks_t;

typedef struct sg_webhook_stats {
  uint64_t delivered, failed, refused, attempts;
  uint64_t superseded; /* deliveries ended for a newer one of the same key */
  uint64_t retrying;   /* deliveries waiting for their retry now */
} sg_webhook_stats_t;

struct event_base;

/* Starts the delivery pool; retries are timed on base. rules[0..n) is
 * copied. */
sg_webhooks_t *sg_webhooks_start(struct event_base *base, const sg_addr_rule_t *rules, size_t n, double retry_delay_s,
                                 sg_error_t **err);
/* Queues a delivery of body to url (all copied) for key (the job id): it
 * supersedes the one of that key not yet delivered, if any. */
void sg_webhooks_send(sg_webhooks_t *wh, const char *key, const char *url, const char *body);
/* Checks url against the allow-list when its host is an address: -1 with a
 * field error naming "webhook" when the list refuses it, 0 when it admits
 * it; 1 when the host is a name (sg_webhooks_check_name resolves it). Never
 * blocks. */
int sg_webhooks_check(const sg_webhooks_t *wh, const char *url, sg_error_t **err);
/* The outcome of sg_webhooks_check_name on the loop: err (taken by the
 * callee; NULL when admitted or when the name does not resolve now) is a
 * field error naming "webhook" when no address of the name is on the
 * allow-list; cancelled when sgpud stops first. */
typedef void (*sg_webhook_checked_fn)(void *arg, bool cancelled, sg_error_t *err);
/* Resolves url's host on the pool and checks its addresses as a delivery
 * would (at least one admitted); cb runs on the loop. */
void sg_webhooks_check_name(sg_webhooks_t *wh, const char *url, sg_webhook_checked_fn cb, void *arg);
void sg_webhooks_get_stats(sg_webhooks_t *wh, sg_webhook_stats_t *out);
/* Stops the pool (transfers in progress end first) and frees wh;
 * undelivered deliveries, queued or waiting for a retry, are dropped.
 * Blocks; only at shutdown. */
void sg_webhooks_stop(sg_webhooks_t *wh);

#endif
