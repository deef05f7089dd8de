/* Webhook delivery: POSTs a job's final status JSON to the URL the job gave,
 * from threads of its own (blocking libcurl transfers never touch the loop).
 * A non-2xx answer or a failed transfer is tried again, twice, retry_delay_s
 * apart. Every address the URL's host resolves to is checked against the
 * allow-list before connecting, and the transfer is pinned to the address
 * that passed, so a name cannot be re-resolved to an address that was not
 * checked; redirects are not followed. Deliveries live in memory only: those
 * not done when sgpud stops are lost. */
#ifndef SGPU_WEBHOOK_H
#define SGPU_WEBHOOK_H

#include <stddef.h>
#include <stdint.h>

#include "gateway/jobs-proto.h"
#include "sgpu/error.h"

typedef struct sg_webhooks sg_webhooks_t;

typedef struct sg_webhook_stats {
  uint64_t delivered, failed, refused, attempts;
} sg_webhook_stats_t;

/* Starts the delivery threads; rules[0..n) is copied. */
sg_webhooks_t *sg_webhooks_start(const sg_addr_rule_t *rules, size_t n, double retry_delay_s, sg_error_t **err);
/* Queues a delivery of body to url (both copied). Any thread. */
void sg_webhooks_send(sg_webhooks_t *wh, const char *url, const char *body);
void sg_webhooks_get_stats(sg_webhooks_t *wh, sg_webhook_stats_t *out);
/* Stops the threads (a transfer in progress ends first); undelivered
 * deliveries are dropped. */
void sg_webhooks_stop(sg_webhooks_t *wh);

#endif
