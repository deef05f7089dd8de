/* Webhook delivery threads. See webhook.h. */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <strings.h>
#include <time.h>

#include "gateway/webhook.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

#define THREADS 2
#define ATTEMPTS 3 /* the first and two retries */
#define TRANSFER_TIMEOUT_S 10L
#define MAX_QUEUED 100000

struct delivery {
  struct delivery *next;
  char *url, *body;
  int attempts;
  int64_t due_ms; /* monotonic */
};

struct sg_webhooks {
  pthread_t threads[THREADS];
  int n_threads;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct delivery *head; /* unordered; small */
  size_t queued;
  bool stop;
  sg_addr_rule_t *rules;
  size_t n_rules;
  int64_t retry_ms;
  sg_webhook_stats_t stats;
};

static void delivery_free(struct delivery *dl) {
  free(dl->url);
  free(dl->body);
  free(dl);
}

static size_t discard(char *ptr, size_t size, size_t n, void *ud) { return size * n; }

/* Resolves url's host and picks the first address the allow-list admits.
 * Returns 0 with "host:port:addr" in pin, 1 when no address is admitted, -1
 * when the name does not resolve. */
static int pick_address(sg_webhooks_t *wh, const char *url, char *pin, size_t len, char *why, size_t wlen) {
  CURLU *u = curl_url();
  char *host = NULL, *port = NULL;
  int r = -1;
  if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK || curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK) {
    snprintf(why, wlen, "the URL cannot be parsed");
    goto out;
  }
  char name[256];
  snprintf(name, sizeof(name), "%s", host);
  size_t nl = strlen(name);
  if (nl >= 2 && name[0] == '[' && name[nl - 1] == ']') {
    memmove(name, name + 1, nl - 2);
    name[nl - 2] = '\0';
  }
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
static int attempt(sg_webhooks_t *wh, struct delivery *dl) {
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

static void *run(void *arg) {
  sg_webhooks_t *wh = arg;
  pthread_mutex_lock(&wh->mu);
  while (!wh->stop) {
    struct delivery **best = NULL;
    for (struct delivery **pp = &wh->head; *pp; pp = &(*pp)->next)
      if (!best || (*pp)->due_ms < (*best)->due_ms)
        best = pp;
    int64_t now = sg_now_ms();
    if (!best || (*best)->due_ms > now) {
      if (!best) {
        pthread_cond_wait(&wh->cv, &wh->mu);
      } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t wait = (*best)->due_ms - now;
        ts.tv_sec += wait / 1000;
        ts.tv_nsec += (wait % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
          ts.tv_sec++;
          ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&wh->cv, &wh->mu, &ts);
      }
      continue;
    }
    struct delivery *dl = *best;
    *best = dl->next;
    wh->queued--;
    dl->attempts++;
    wh->stats.attempts++;
    pthread_mutex_unlock(&wh->mu);
    int r = attempt(wh, dl);
    pthread_mutex_lock(&wh->mu);
    if (r > 0) {
      wh->stats.delivered++;
      delivery_free(dl);
    } else if (r < 0) {
      wh->stats.refused++;
      delivery_free(dl);
    } else if (dl->attempts >= ATTEMPTS) {
      sg_warn("webhook %s: given up after %d attempts", dl->url, dl->attempts);
      wh->stats.failed++;
      delivery_free(dl);
    } else {
      dl->due_ms = sg_now_ms() + wh->retry_ms;
      dl->next = wh->head;
      wh->head = dl;
      wh->queued++;
    }
  }
  pthread_mutex_unlock(&wh->mu);
  return NULL;
}

sg_webhooks_t *sg_webhooks_start(const sg_addr_rule_t *rules, size_t n, double retry_delay_s, sg_error_t **err) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  sg_webhooks_t *wh = xcalloc(1, sizeof(*wh));
  wh->rules = xcalloc(n ? n : 1, sizeof(*rules));
  memcpy(wh->rules, rules, n * sizeof(*rules));
  wh->n_rules = n;
  wh->retry_ms = (int64_t)(retry_delay_s * 1000);
  pthread_mutex_init(&wh->mu, NULL);
  pthread_cond_init(&wh->cv, NULL);
  for (int i = 0; i < THREADS; i++) {
    int r = pthread_create(&wh->threads[i], NULL, run, wh);
    if (r != 0) {
      sg_webhooks_stop(wh);
      sg_make_error(err, r, "cannot start a webhook thread: %s", strerror(r));
      return NULL;
    }
    wh->n_threads++;
  }
  return wh;
}

void sg_webhooks_send(sg_webhooks_t *wh, const char *url, const char *body) {
  struct delivery *dl = xcalloc(1, sizeof(*dl));
  dl->url = xstrdup(url);
  dl->body = xstrdup(body);
  dl->due_ms = sg_now_ms();
  pthread_mutex_lock(&wh->mu);
  if (wh->queued >= MAX_QUEUED) {
    wh->stats.failed++;
    pthread_mutex_unlock(&wh->mu);
    sg_warn("webhook %s: dropped, %d deliveries are waiting already", url, MAX_QUEUED);
    delivery_free(dl);
    return;
  }
  dl->next = wh->head;
  wh->head = dl;
  wh->queued++;
  pthread_cond_signal(&wh->cv);
  pthread_mutex_unlock(&wh->mu);
}

void sg_webhooks_get_stats(sg_webhooks_t *wh, sg_webhook_stats_t *out) {
  pthread_mutex_lock(&wh->mu);
  *out = wh->stats;
  pthread_mutex_unlock(&wh->mu);
}

void sg_webhooks_stop(sg_webhooks_t *wh) {
  if (!wh)
    return;
  pthread_mutex_lock(&wh->mu);
  wh->stop = true;
  pthread_cond_broadcast(&wh->cv);
  pthread_mutex_unlock(&wh->mu);
  for (int i = 0; i < wh->n_threads; i++)
    pthread_join(wh->threads[i], NULL);
  while (wh->head) {
    struct delivery *dl = wh->head;
    wh->head = dl->next;
    delivery_free(dl);
  }
  pthread_mutex_destroy(&wh->mu);
  pthread_cond_destroy(&wh->cv);
  free(wh->rules);
  free(wh);
}
