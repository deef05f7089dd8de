/*
 * echo-worker: a sample sgpu worker. Copy it, and put your model where the
 * comments say "Load the model here" and "Run the model here".
 *
 * What sgpu asks of a worker:
 *   - listen on the port in $PORT (here 8080 when unset) on every IPv4 address;
 *   - answer the endpoint's health path (here GET /health) with 200 once it can serve,
 *     anything else before: sgpud sends traffic only after a 200;
 *   - use the GPUs named in $CUDA_VISIBLE_DEVICES;
 *   - finish what is in flight and exit on SIGTERM.
 *
 * Every request other than GET /health is answered with
 *   {"model": $MODEL, "gpus": $CUDA_VISIBLE_DEVICES, "path": PATH, "echo": BODY}
 * (BODY as JSON when it is JSON, else as a string); with ?stream=1 in the URL the
 * body comes back word by word as server-sent events, the way a model streams
 * tokens. HTTP/1.1 with keep-alive; request bodies with Content-Length or chunked
 * are decoded by http-parser, the JSON is built with jansson. A thread per connection.
 *
 * Build: cc -O2 -pthread echo-worker.c -lhttp_parser -ljansson
 */
#include <errno.h>
#include <http_parser.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_BODY (16 * 1024 * 1024) /* larger bodies are answered 413 */
#define MAX_URL 8192
#define IDLE_TIMEOUT_MS 60000 /* an idle keep-alive connection is closed after this */
#define DRAIN_TIMEOUT_S 30    /* on SIGTERM, how long requests in flight may take */

static atomic_bool ready;    /* the model is loaded: /health answers 200 */
static atomic_bool stopping; /* SIGTERM came: finish the current request, then close */
static atomic_int conns;     /* connections open */

/* One request being read. http-parser calls the callbacks below as bytes arrive. */
struct request {
  http_parser parser;
  char url[MAX_URL];
  size_t url_len, body_len, body_cap;
  char *body; /* grows as needed, MAX_BODY at most */
  bool too_large, complete;
};

static int on_url(http_parser *p, const char *at, size_t len) {
  struct request *r = p->data;
  if (len >= sizeof(r->url) - r->url_len)
    return 1; /* an error: the connection gets 400 */
  memcpy(r->url + r->url_len, at, len);
  r->url_len += len;
  r->url[r->url_len] = '\0';
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  struct request *r = p->data;
  if (r->too_large || len > MAX_BODY - r->body_len) {
    r->too_large = true; /* keep reading so the answer can be sent, drop the bytes */
    return 0;
  }
  if (r->body_len + len > r->body_cap) {
    size_t cap = r->body_cap ? r->body_cap : 4096;
    while (cap < r->body_len + len)
      cap *= 2;
    char *grown = realloc(r->body, cap);
    if (!grown)
      return 1;
    r->body = grown;
    r->body_cap = cap;
  }
  memcpy(r->body + r->body_len, at, len);
  r->body_len += len;
  return 0;
}

static int on_complete(http_parser *p) {
  struct request *r = p->data;
  r->complete = true;
  http_parser_pause(p, 1); /* answer this request before parsing a pipelined next one */
  return 0;
}

static const http_parser_settings settings = {.on_url = on_url, .on_body = on_body, .on_message_complete = on_complete};

static bool send_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    buf += n;
    len -= (size_t)n;
  }
  return true;
}

/* Sends an answer; body NULL starts a chunked one, continued with send_chunk. */
static bool respond(int fd, int status, const char *type, const char *body, bool keep_alive) {
  char head[256], length[64] = "Transfer-Encoding: chunked";
  const char *reason = status == 200 ? "OK" : status == 413 ? "Payload Too Large" : "Service Unavailable";
  if (body)
    snprintf(length, sizeof(length), "Content-Length: %zu", strlen(body));
  int n = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s\r\n%s\r\n", status, reason, type,
                   length, keep_alive ? "" : "Connection: close\r\n");
  return send_all(fd, head, (size_t)n) && (!body || send_all(fd, body, strlen(body)));
}

static bool send_chunk(int fd, const char *data, size_t len) {
  char size[32];
  int n = snprintf(size, sizeof(size), "%zx\r\n", len);
  return send_all(fd, size, (size_t)n) && send_all(fd, data, len) && send_all(fd, "\r\n", 2);
}

/* Streams the body back one word per event; "data: [DONE]" ends it, as OpenAI's API does. */
static bool stream_words(int fd, struct request *r, bool keep_alive) {
  bool ok = respond(fd, 200, "text/event-stream", NULL, keep_alive);
  for (size_t i = 0, end; ok && i < r->body_len; i = end) {
    for (; i < r->body_len && strchr(" \t\r\n", r->body[i]); i++)
      ;
    for (end = i; end < r->body_len && !strchr(" \t\r\n", r->body[end]); end++)
      ;
    if (end > i)
      ok = send_chunk(fd, "data: ", 6) && send_chunk(fd, r->body + i, end - i) && send_chunk(fd, "\n\n", 2);
  }
  return ok && send_chunk(fd, "data: [DONE]\n\n", 14) && send_all(fd, "0\r\n\r\n", 5);
}

/* Answers one complete request; false when the connection must close. */
static bool handle(int fd, struct request *r) {
  const char *method = http_method_str(r->parser.method);
  bool keep_alive = http_should_keep_alive(&r->parser) && !atomic_load(&stopping);
  char *query = r->url + strcspn(r->url, "?");
  bool streaming = strstr(query, "stream=1") != NULL;
  *query = '\0'; /* r->url is now the path */
  int status = 200;
  bool ok;
  if (r->too_large) {
    status = 413;
    ok = respond(fd, status, "text/plain", "body too large\n", keep_alive);
  } else if (!atomic_load(&ready)) {
    status = 503;
    ok = respond(fd, status, "text/plain", "loading\n", keep_alive);
  } else if (r->parser.method == HTTP_GET && strcmp(r->url, "/health") == 0) {
    ok = respond(fd, status, "text/plain", "ok\n", keep_alive);
  } else if (streaming) {
    ok = stream_words(fd, r, keep_alive);
  } else {
    /* Run the model here. This one echoes the body, as JSON when it parses. */
    json_t *echo = r->body_len ? json_loadb(r->body, r->body_len, JSON_DECODE_ANY, NULL) : json_string("");
    if (!echo)
      echo = json_stringn(r->body, r->body_len); /* NULL unless UTF-8 */
    if (!echo)
      echo = json_sprintf("(%zu bytes, not UTF-8)", r->body_len);
    const char *model = getenv("MODEL"), *gpus = getenv("CUDA_VISIBLE_DEVICES");
    json_t *answer = json_pack("{s:s, s:s, s:s, s:o}", "model", model ? model : "", "gpus", gpus ? gpus : "", "path",
                               r->url, "echo", echo);
    char *text = json_dumps(answer, JSON_COMPACT | JSON_ENSURE_ASCII);
    ok = text && respond(fd, status, "application/json", text, keep_alive);
    free(text);
    json_decref(answer);
  }
  printf("%s %s %d\n", method, r->url, status); /* stdout becomes the worker's log */
  return ok && keep_alive;
}

/* Reads requests from one connection until it closes, errs, idles out or SIGTERM. */
static void *serve(void *arg) {
  int fd = (int)(long)arg;
  struct request r = {0};
  char buf[16384];
  http_parser_init(&r.parser, HTTP_REQUEST);
  r.parser.data = &r;
  struct timeval send_timeout = {.tv_sec = 60}; /* a client that stops reading is dropped */
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout));
  for (bool open = true; open;) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int waited = 0, rc;
    while ((rc = poll(&pfd, 1, 1000)) == 0 && !atomic_load(&stopping) && (waited += 1000) < IDLE_TIMEOUT_MS)
      ; /* wake each second to notice SIGTERM */
    if (rc <= 0)
      break;
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    for (size_t off = 0; open && off < (size_t)n;) {
      off += http_parser_execute(&r.parser, &settings, buf + off, (size_t)n - off);
      if (r.complete) {
        open = handle(fd, &r);
        http_parser_pause(&r.parser, 0);
        r.url_len = r.body_len = 0; /* ready for the next request */
        r.too_large = r.complete = false;
      } else if (HTTP_PARSER_ERRNO(&r.parser) != HPE_OK) {
        static const char bad[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        send_all(fd, bad, sizeof(bad) - 1);
        open = false;
      }
    }
  }
  free(r.body);
  close(fd);
  atomic_fetch_sub(&conns, 1);
  return NULL;
}

static void *accept_loop(void *arg) {
  int lfd = (int)(long)arg;
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0 && atomic_load(&stopping))
      return NULL;
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE)
        usleep(100000); /* out of descriptors: back off until connections close */
      continue;
    }
    atomic_fetch_add(&conns, 1);
    pthread_t t;
    if (pthread_create(&t, NULL, serve, (void *)(long)fd) == 0) {
      pthread_detach(t);
    } else {
      close(fd);
      atomic_fetch_sub(&conns, 1);
    }
  }
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  const char *port_env = getenv("PORT");
  long port = port_env ? strtol(port_env, NULL, 10) : 8080;
  if (port < 1 || port > 65535) {
    fprintf(stderr, "echo-worker: PORT must be 1-65535\n");
    return 2;
  }
  /* SIGTERM and SIGINT are taken by sigwait below, in no other thread. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), on = 1;
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = INADDR_ANY};
  if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0 ||
      bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(lfd, 512) < 0) {
    fprintf(stderr, "echo-worker: listen on port %ld: %s\n", port, strerror(errno));
    return 1;
  }
  pthread_t acceptor;
  if (pthread_create(&acceptor, NULL, accept_loop, (void *)(long)lfd) != 0) {
    fprintf(stderr, "echo-worker: cannot start the accept thread\n");
    return 1;
  }
  printf("echo-worker: listening on port %ld\n", port);

  /* Load the model here; /health answers 503 until it is ready. WARMUP_MS stands in for it. */
  long warmup_ms = getenv("WARMUP_MS") ? strtol(getenv("WARMUP_MS"), NULL, 10) : 0;
  if (warmup_ms > 0)
    nanosleep(&(struct timespec){warmup_ms / 1000, (warmup_ms % 1000) * 1000000}, NULL);
  atomic_store(&ready, true);
  printf("echo-worker: ready\n");

  int sig;
  sigwait(&sigs, &sig);
  printf("echo-worker: signal %d, finishing requests in flight\n", sig);
  atomic_store(&stopping, true);
  shutdown(lfd, SHUT_RDWR); /* wakes accept() */
  pthread_join(acceptor, NULL);
  close(lfd);
  for (int i = 0; atomic_load(&conns) > 0 && i < DRAIN_TIMEOUT_S * 10; i++)
    usleep(100000); /* connections close after their current answer, idle ones within a second */
  return 0;
}
