/* Webhook delivery on a pool of its own. See webhook.h. */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <event2/event.h>
#include <netdb.h>
#include <strings.h>
#include <sys/queue.h>

#include "gateway/webhook.h"
#include "sgpu/log.h"
#include "sgpu/pool.h"
#include "sgpu/util.h"

#define THREADS 2
#define ATTEMPTS 3 /* the first and two retries */
#define TRANSFER_TIMEOUT_S 10L
#define KEY_BUCKETS 4096 /* the table of deliveries by key (job id) */

/* A delivery is owned by the loop, except while its attempt runs on a pool
 * thread (between sg_pool_submit and done), where attempt() reads its url,
 * body and attempts and writes only outcome. */
struct delivery {
  LIST_ENTRY(delivery) link; /* in wh->retrying while its timer is armed */
  sg_webhooks_t *wh;
  char *key; /* the job: one delivery of a key at a time, the newest wins */
  struct delivery *hnext;
  /* A later delivery of the same key, waiting for this one's attempt on
   * the pool to end: this one then ends (superseded, no retry) and that one
   * starts, so an older body never arrives after a newer one. */
  struct delivery *next;
  bool superseded;
  char *url, *body;
  int attempts;
  int outcome; /* of the last attempt: 1 delivered, 0 to retry, -1 refused */
  struct event *timer;
};

struct sg_webhooks {
  struct event_base *base;
  sg_pool_t *pool;
  LIST_HEAD(, delivery) retrying;
  struct delivery *by_key[KEY_BUCKETS]; /* the delivery under way of each key */
  size_t queued;                        /* deliveries not finished: at the pool, waiting to retry or to start */
  bool stopping;
  /* read by pool threads, never written after start */
  sg_addr_rule_t *rules;
  size_t n_rules;
  struct timeval retry_delay;
  sg_webhook_stats_t stats; /* loop thread */
};

static size_t key_hash(const char *s) {
  size_t h = 1469598103934665603ull;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h % KEY_BUCKETS;
}

static struct delivery *key_get(sg_webhooks_t *wh, const char *key) {
  for (struct delivery *dl = wh->by_key[key_hash(key)]; dl; dl = dl->hnext)
    if (!strcmp(dl->key, key))
      return dl;
  return NULL;
}

static void key_put(sg_webhooks_t *wh, struct delivery *dl) {
  size_t k = key_hash(dl->key);
  dl->hnext = wh->by_key[k];
  wh->by_key[k] = dl;
}

static void key_del(sg_webhooks_t *wh, struct delivery *dl) {
  for (struct delivery **pp = &wh->by_key[key_hash(dl->key)]; *pp; pp = &(*pp)->hnext)
    if (*pp == dl) {
      *pp = dl->hnext;
      return;
    }
}

static void delivery_free(struct delivery *dl) {
  if (dl->timer)
    event_free(dl->timer);
  free(dl->key);
  free(dl->url);
  free(dl->body);
  free(dl);
}

/* A URL's host as a name or address: an IPv6 literal loses its brackets. */
static void unbracket(const char *host, char *name, size_t len) {
  snprintf(name, len, "%s", host);
  size_t nl = strlen(name);
  if (nl >= 2 && name[0] == '[' && name[nl - 1] == ']') {
    memmove(name, name + 1, nl - 2);
    name[nl - 2] = '\0';
  }
}

static size_t discard(char *ptr, size_t size, size_t n, void *ud) { return size * n; }

/* Resolves url's host and picks the first address the allow-list admits.
 * Returns 0 with "host:port:addr" in pin, 1 when no address is admitted, -1
 * when the name does not resolve. */
static int pick_address(const sg_webhooks_t *wh, const char *url, char *pin, size_t len, char *why, size_t wlen) {
  CURLU *u = curl_url();
  char *host = NULL, *port = NULL;
  int r = -1;
  if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK || curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK) {
    snprintf(why, wlen, "the URL cannot be parsed");
    goto out;
  }
  char name[256];
  unbracket(host, name, sizeof(name));
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
  int g = getaddrinfo(name, port, &hints, &res);
  if (g != 0) {
    snprintf(why, wlen, "cannot resolve %s: %s", name, gai_strerror(g));
    goto out;
  }
  r = 1;
  snprintf(why, wlen, "no address of %s is on the webhook allow-list", name);
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    if (!sg_addr_allowed(wh->rules, wh->n_rules, ai->ai_addr))
      continue;
    char addr[INET6_ADDRSTRLEN];
    const void *src = ai->ai_family == AF_INET ? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
                                               : (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
    inet_ntop(ai->ai_family, src, addr, sizeof(addr));
    if (ai->ai_family == AF_INET6)
      snprintf(pin, len, "%s:%s:[%s]", host, port, addr);
    else
      snprintf(pin, len, "%s:%s:%s", host, port, addr);
    r = 0;
    break;
  }
  freeaddrinfo(res);
out:
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return r;
}

/* One attempt. Returns 1 delivered, 0 to retry, -1 refused (no retry). */
static int attempt(const sg_webhooks_t *wh, const struct delivery *dl) {
  char pin[512], why[300];
  int p = pick_address(wh, dl->url, pin, sizeof(pin), why, sizeof(why));
  if (p != 0) {
    sg_warn("webhook %s: %s", dl->url, why);
    return p > 0 ? -1 : 0;
  }
  CURL *c = curl_easy_init();
  if (!c)
    return 0;
  struct curl_slist *resolve = curl_slist_append(NULL, pin);
  struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
  curl_easy_setopt(c, CURLOPT_URL, dl->url);
  curl_easy_setopt(c, CURLOPT_RESOLVE, resolve);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, dl->body);
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(dl->body));
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, TRANSFER_TIMEOUT_S);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, TRANSFER_TIMEOUT_S);
  curl_easy_setopt(c, CURLOPT_PROXY, "");
  curl_easy_setopt(c, CURLOPT_USERAGENT, "sgpu-webhook/1");
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
#else
  curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  CURLcode rc = curl_easy_perform(c);
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(c);
  curl_slist_free_all(resolve);
  curl_slist_free_all(headers);
  if (rc == CURLE_OK && status >= 200 && status <= 299)
    return 1;
  if (rc != CURLE_OK)
    sg_warn("webhook %s: attempt %d failed: %s", dl->url, dl->attempts, curl_easy_strerror(rc));
  else
    sg_warn("webhook %s: attempt %d answered HTTP %ld", dl->url, dl->attempts, status);
  return 0;
}

/* Pool thread. */
static void work(void *data) {
  struct delivery *dl = data;
  dl->outcome = attempt(dl->wh, dl);
}

static void done(void *data, bool cancelled);

static const sg_pool_job_ops_t attempt_ops = {work, done};

/* Hands dl to the pool for its next attempt (loop thread). */
static void submit(sg_webhooks_t *wh, struct delivery *dl) {
  dl->attempts++;
  sg_pool_submit(wh->pool, &attempt_ops, dl);
}

static void retry_due(evutil_socket_t fd, short what, void *arg) {
  struct delivery *dl = arg;
  LIST_REMOVE(dl, link);
  dl->wh->stats.retrying--;
  submit(dl->wh, dl);
}

/* Ends a delivery no longer under way: out of the table by key, and the
 * later one of its key, if any, starts. */
static void finish(sg_webhooks_t *wh, struct delivery *dl) {
  key_del(wh, dl);
  struct delivery *next = dl->next;
  wh->queued--;
  delivery_free(dl);
  if (!next)
    return;
  if (wh->stopping) {
    wh->queued--;
    delivery_free(next);
    return;
  }
  key_put(wh, next);
  submit(wh, next);
}

/* Loop thread: counts the attempt's outcome and arms the retry timer, or
 * ends the delivery. */
static void done(void *data, bool cancelled) {
  struct delivery *dl = data;
  sg_webhooks_t *wh = dl->wh;
  if (!cancelled)
    wh->stats.attempts++;
  if (!cancelled && dl->outcome > 0) {
    wh->stats.delivered++;
  } else if (!cancelled && dl->outcome < 0) {
    wh->stats.refused++;
  } else if (!cancelled && dl->superseded) {
    wh->stats.superseded++; /* a newer body of its key goes instead */
  } else if (!cancelled && dl->attempts >= ATTEMPTS) {
    sg_warn("webhook %s: given up after %d attempts", dl->url, dl->attempts);
    wh->stats.failed++;
  } else if (!cancelled && !wh->stopping) {
    if (!dl->timer)
      dl->timer = evtimer_new(wh->base, retry_due, dl);
    LIST_INSERT_HEAD(&wh->retrying, dl, link);
    wh->stats.retrying++;
    evtimer_add(dl->timer, &wh->retry_delay);
    return;
  }
  finish(wh, dl);
}

sg_webhooks_t *sg_webhooks_start(struct event_base *base, const sg_addr_rule_t *rules, size_t n, double retry_delay_s,
                                 sg_error_t **err) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  sg_webhooks_t *wh = xcalloc(1, sizeof(*wh));
  wh->base = base;
  LIST_INIT(&wh->retrying);
  wh->rules = xcalloc(n ? n : 1, sizeof(*rules));
  memcpy(wh->rules, rules, n * sizeof(*rules));
  wh->n_rules = n;
  int64_t retry_us = (int64_t)(retry_delay_s * 1e6);
  wh->retry_delay = (struct timeval){(time_t)(retry_us / 1000000), (suseconds_t)(retry_us % 1000000)};
  wh->pool = sg_pool_new(base, THREADS, err);
  if (!wh->pool) {
    free(wh->rules);
    free(wh);
    return NULL;
  }
  return wh;
}

void sg_webhooks_send(sg_webhooks_t *wh, const char *key, const char *url, const char *body) {
  struct delivery *old = key_get(wh, key);
  if (old && old->timer && evtimer_pending(old->timer, NULL)) {
    /* Waiting for its retry: the newer body replaces it. */
    evtimer_del(old->timer);
    LIST_REMOVE(old, link);
    wh->stats.retrying--;
    wh->stats.superseded++;
    key_del(wh, old);
    wh->queued--;
    delivery_free(old);
    old = NULL;
  }
  if (wh->queued >= SG_WEBHOOK_MAX_QUEUED) {
    wh->stats.failed++;
    sg_warn("webhook %s: dropped, %d deliveries are waiting already", url, SG_WEBHOOK_MAX_QUEUED);
    return;
  }
  struct delivery *dl = xcalloc(1, sizeof(*dl));
  dl->wh = wh;
  dl->key = xstrdup(key);
  dl->url = xstrdup(url);
  dl->body = xstrdup(body);
  wh->queued++;
  if (old) {
    /* Its attempt runs on the pool: this one starts when it ended. */
    old->superseded = true;
    if (old->next) {
      wh->stats.superseded++;
      wh->queued--;
      delivery_free(old->next);
    }
    old->next = dl;
    return;
  }
  key_put(wh, dl);
  submit(wh, dl);
}

int sg_webhooks_check(const sg_webhooks_t *wh, const char *url, sg_error_t **err) {
  CURLU *u = curl_url();
  char *host = NULL;
  int r = 1; /* a name, until its host parses as an address */
  if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK && curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
    char name[256];
    unbracket(host, name, sizeof(name));
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST}, *res = NULL;
    if (getaddrinfo(name, NULL, &hints, &res) == 0) {
      r = 0;
      bool allowed = false;
      for (struct addrinfo *ai = res; ai && !allowed; ai = ai->ai_next)
        allowed = sg_addr_allowed(wh->rules, wh->n_rules, ai->ai_addr);
      freeaddrinfo(res);
      if (!allowed) {
        sg_make_field_error(err, "webhook", "address %s is not on the daemon's webhook allow-list (webhook_allow)",
                            name);
        r = -1;
      }
    }
  }
  curl_free(host);
  curl_url_cleanup(u);
  return r;
}

/* A check of a URL whose host is a name, on the pool (it resolves). */
struct name_check {
  sg_webhooks_t *wh;
  char *url;
  int verdict; /* as pick_address */
  char why[300];
  sg_webhook_checked_fn cb;
  void *arg;
};

static void check_work(void *data) {
  struct name_check *c = data;
  char pin[512];
  c->verdict = pick_address(c->wh, c->url, pin, sizeof(pin), c->why, sizeof(c->why));
}

static void check_done(void *data, bool cancelled) {
  struct name_check *c = data;
  sg_error_t *err = NULL;
  if (!cancelled && c->verdict > 0)
    sg_make_field_error(&err, "webhook", "%s (webhook_allow)", c->why);
  c->cb(c->arg, cancelled, err);
  free(c->url);
  free(c);
}

static const sg_pool_job_ops_t check_ops = {check_work, check_done};

void sg_webhooks_check_name(sg_webhooks_t *wh, const char *url, sg_webhook_checked_fn cb, void *arg) {
  struct name_check *c = xcalloc(1, sizeof(*c));
  c->wh = wh;
  c->url = xstrdup(url);
  c->cb = cb;
  c->arg = arg;
  sg_pool_submit(wh->pool, &check_ops, c);
}

void sg_webhooks_get_stats(sg_webhooks_t *wh, sg_webhook_stats_t *out) { *out = wh->stats; }

void sg_webhooks_stop(sg_webhooks_t *wh) {
  if (!wh)
    return;
  wh->stopping = true;
  /* Attempts under way end (their done() counts them and arms no timer);
   * those still queued end as cancelled. */
  sg_pool_free(wh->pool);
  struct delivery *dl;
  while ((dl = LIST_FIRST(&wh->retrying))) {
    LIST_REMOVE(dl, link);
    wh->stats.retrying--;
    finish(wh, dl);
  }
  free(wh->rules);
  free(wh);
}
