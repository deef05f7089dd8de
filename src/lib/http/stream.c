/* Non-blocking TCP streams; see stream.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "http/stream.h"
#include "sgpu/util.h"

#define READ_SIZE 65536

struct sg_stream {
  struct event_base *base;
  int fd;
  struct event *rev, *wev, *fev; /* readable, writable, deferred flush/events */
  struct event *rtimer;          /* the read inactivity timeout (rtv), kept apart from rev */
  struct evbuffer *in, *out;
  sg_stream_callbacks_t cbs;
  void *arg;
  struct timeval rtv, wtv;
  bool has_rtv, has_wtv;
  bool wev_timed;    /* wev was last added with a timeout */
  bool reading;      /* the owner wants input */
  bool read_blocked; /* input over the read limit */
  bool connecting;
  size_t read_limit;
  size_t low_water;
  int pending; /* events to deliver from the loop */
  int err;
  int in_cb; /* depth of callbacks running */
  bool free_pending;
};

static void really_free(sg_stream_t *s) {
  event_free(s->rev);
  event_free(s->rtimer);
  event_free(s->wev);
  event_free(s->fev);
  evbuffer_free(s->in);
  evbuffer_free(s->out);
  if (s->fd >= 0)
    close(s->fd);
  free(s);
}

void sg_stream_free(sg_stream_t *s) {
  if (!s)
    return;
  if (s->in_cb) {
    s->free_pending = true;
    event_del(s->rev);
    event_del(s->rtimer);
    event_del(s->wev);
    event_del(s->fev);
    return;
  }
  really_free(s);
}

/* Calls into the owner; false when the stream was freed meanwhile. */
static bool deliver_event(sg_stream_t *s, int what) {
  if (!s->cbs.on_event)
    return true;
  s->in_cb++;
  s->cbs.on_event(s, what, s->arg);
  s->in_cb--;
  if (s->free_pending && !s->in_cb) {
    really_free(s);
    return false;
  }
  return !s->free_pending;
}

static void schedule(sg_stream_t *s) {
  if (!s->free_pending)
    event_active(s->fev, EV_TIMEOUT, 1);
}

/* Adds ev with the timeout tv, or with none when has is false. libevent
 * keeps the timeout of an event added again without one: the running timer
 * of a pending event, and for a persistent event the period it re-arms after
 * every activation. So an event last added with a timeout is deleted and
 * assigned afresh (which forgets the period) before it is added without one:
 * a timeout turned off must never fire. */
static void arm(struct event *ev, bool *timed, bool has, const struct timeval *tv) {
  if (!has && *timed) {
    struct event_base *base;
    evutil_socket_t fd;
    short events;
    event_callback_fn cb;
    void *arg;
    event_get_assignment(ev, &base, &fd, &events, &cb, &arg);
    event_del(ev);
    event_assign(ev, base, fd, events, cb, arg);
  }
  event_add(ev, has ? tv : NULL);
  *timed = has;
}

/* The read timeout is a timer of its own, restarted at every read event,
 * rather than rev's timeout: turning it on and off (the server does at every
 * request) then costs a timer change, never a removal and re-insertion of
 * the descriptor's event in the kernel. */
static void restart_read_timer(sg_stream_t *s) {
  if (s->has_rtv)
    evtimer_add(s->rtimer, &s->rtv);
  else
    evtimer_del(s->rtimer);
}

static void update_read(sg_stream_t *s) {
  bool want = s->reading && !s->read_blocked && !s->connecting && !s->free_pending;
  if (want) {
    event_add(s->rev, NULL);
    restart_read_timer(s);
  } else {
    event_del(s->rev);
    evtimer_del(s->rtimer);
  }
}

static void arm_write(sg_stream_t *s) { arm(s->wev, &s->wev_timed, s->has_wtv, &s->wtv); }

/* Writes what it can; watches for writability only when output is left. */
static void do_write(sg_stream_t *s) {
  bool wrote = false;
  while (evbuffer_get_length(s->out) > 0) {
    int n = evbuffer_write(s->out, s->fd);
    if (n > 0) {
      wrote = true;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      break;
    s->err = n < 0 ? errno : EPIPE;
    event_del(s->wev);
    deliver_event(s, SG_STREAM_ERROR);
    return;
  }
  if (evbuffer_get_length(s->out) > 0)
    arm_write(s);
  else
    event_del(s->wev);
  if (wrote && s->cbs.on_drain && evbuffer_get_length(s->out) <= s->low_water) {
    s->in_cb++;
    s->cbs.on_drain(s, s->arg);
    s->in_cb--;
    if (s->free_pending && !s->in_cb)
      really_free(s);
  }
}

static void flush_cb(evutil_socket_t fd, short what, void *arg) {
  sg_stream_t *s = arg;
  if (s->pending) {
    int ev = s->pending;
    s->pending = 0;
    if (!deliver_event(s, ev))
      return;
    if (s->free_pending)
      return;
  }
  if (!s->connecting && s->fd >= 0 && evbuffer_get_length(s->out) > 0 && !event_pending(s->wev, EV_WRITE, NULL))
    do_write(s);
}

static void out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg) {
  sg_stream_t *s = arg;
  if (info->n_added > 0 && !s->connecting)
    schedule(s);
}

static void in_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg) {
  sg_stream_t *s = arg;
  if (info->n_deleted > 0 && s->read_blocked && evbuffer_get_length(buf) < s->read_limit) {
    s->read_blocked = false;
    update_read(s);
  }
}

/* Reads up to READ_SIZE bytes straight into the buffer's free space (one
 * readv; evbuffer_read would first ask the kernel how much is there). */
static int read_into(struct evbuffer *in, int fd) {
  struct evbuffer_iovec v[2];
  int nv = evbuffer_reserve_space(in, READ_SIZE, v, 2);
  if (nv < 1) {
    errno = ENOMEM;
    return -1;
  }
  struct iovec iov[2];
  for (int i = 0; i < nv; i++) {
    iov[i].iov_base = v[i].iov_base;
    iov[i].iov_len = v[i].iov_len;
  }
  ssize_t n = readv(fd, iov, nv);
  if (n <= 0) {
    evbuffer_commit_space(in, v, 0);
    return (int)n;
  }
  size_t left = (size_t)n;
  for (int i = 0; i < nv; i++) {
    size_t take = left < v[i].iov_len ? left : v[i].iov_len;
    v[i].iov_len = take;
    left -= take;
  }
  evbuffer_commit_space(in, v, nv);
  return (int)n;
}

static void read_timeout_cb(evutil_socket_t fd, short what, void *arg) {
  sg_stream_t *s = arg;
  deliver_event(s, SG_STREAM_TIMEOUT);
}

static void read_cb(evutil_socket_t fd, short what, void *arg) {
  sg_stream_t *s = arg;
  if (s->has_rtv)
    evtimer_add(s->rtimer, &s->rtv); /* activity: the inactivity timeout starts again */
  int n = read_into(s->in, s->fd);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
    return;
  if (n <= 0) {
    s->err = n < 0 ? errno : 0;
    event_del(s->rev);
    evtimer_del(s->rtimer);
    s->reading = false;
    deliver_event(s, n < 0 ? SG_STREAM_ERROR : SG_STREAM_EOF);
    return;
  }
  if (s->read_limit && evbuffer_get_length(s->in) >= s->read_limit) {
    s->read_blocked = true;
    update_read(s);
  }
  if (s->cbs.on_read) {
    s->in_cb++;
    s->cbs.on_read(s, s->arg);
    s->in_cb--;
    if (s->free_pending && !s->in_cb)
      really_free(s);
  }
}

static void write_cb(evutil_socket_t fd, short what, void *arg) {
  sg_stream_t *s = arg;
  if (what & EV_TIMEOUT) {
    event_del(s->wev);
    deliver_event(s, SG_STREAM_TIMEOUT);
    return;
  }
  if (s->connecting) {
    int e = 0;
    socklen_t len = sizeof(e);
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
      e = errno;
    if (e == EINPROGRESS)
      return;
    s->connecting = false;
    event_del(s->wev);
    if (e) {
      s->err = e;
      deliver_event(s, SG_STREAM_ERROR);
      return;
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    update_read(s);
    if (!deliver_event(s, SG_STREAM_CONNECTED) || s->free_pending)
      return;
  }
  do_write(s);
}

static sg_stream_t *stream_alloc(struct event_base *base, int fd, const sg_stream_callbacks_t *cbs, void *arg) {
  sg_stream_t *s = xcalloc(1, sizeof(*s));
  s->base = base;
  s->fd = fd;
  s->cbs = *cbs;
  s->arg = arg;
  s->in = evbuffer_new();
  s->out = evbuffer_new();
  s->rev = event_new(base, fd, EV_READ | EV_PERSIST, read_cb, s);
  s->rtimer = evtimer_new(base, read_timeout_cb, s);
  s->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, write_cb, s);
  s->fev = event_new(base, -1, 0, flush_cb, s);
  evbuffer_add_cb(s->out, out_cb, s);
  evbuffer_add_cb(s->in, in_cb, s);
  return s;
}

sg_stream_t *sg_stream_new(struct event_base *base, int fd, const sg_stream_callbacks_t *cbs, void *arg) {
  evutil_make_socket_nonblocking(fd);
  evutil_make_socket_closeonexec(fd);
  sg_stream_t *s = stream_alloc(base, fd, cbs, arg);
  s->reading = true;
  update_read(s);
  return s;
}

sg_stream_t *sg_stream_connect_loopback(struct event_base *base, int port, const sg_stream_callbacks_t *cbs,
                                        void *arg) {
  return sg_stream_connect(base, NULL, port, cbs, arg);
}

sg_stream_t *sg_stream_connect(struct event_base *base, const char *host, int port, const sg_stream_callbacks_t *cbs,
                               void *arg) {
  struct in_addr in = {htonl(INADDR_LOOPBACK)};
  if (host && inet_pton(AF_INET, host, &in) != 1) {
    sg_stream_t *s = stream_alloc(base, -1, cbs, arg);
    s->reading = true;
    s->err = EINVAL;
    s->pending = SG_STREAM_ERROR;
    schedule(s);
    return s;
  }
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sg_stream_t *s = stream_alloc(base, fd, cbs, arg);
  s->reading = true;
  if (fd < 0) {
    s->err = errno;
    s->pending = SG_STREAM_ERROR;
    schedule(s);
    return s;
  }
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr = in};
  int r;
  do
    r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
  while (r < 0 && errno == EINTR);
  if (r == 0) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    s->pending = SG_STREAM_CONNECTED;
    update_read(s);
    schedule(s);
  } else if (errno == EINPROGRESS) {
    s->connecting = true;
    arm_write(s);
  } else {
    s->err = errno;
    s->pending = SG_STREAM_ERROR;
    schedule(s);
  }
  return s;
}

struct evbuffer *sg_stream_input(sg_stream_t *s) {
  return s->in;
}
struct evbuffer *sg_stream_output(sg_stream_t *s) {
  return s->out;
}
int sg_stream_error(const sg_stream_t *s) { return s->err; }
int sg_stream_fd(const sg_stream_t *s) { return s->fd; }

void sg_stream_read(sg_stream_t *s, bool on) {
  if (s->reading == on)
    return;
  s->reading = on;
  update_read(s);
}

void sg_stream_set_read_limit(sg_stream_t *s, size_t limit) {
  s->read_limit = limit;
  s->read_blocked = limit && evbuffer_get_length(s->in) >= limit;
  update_read(s);
}

static void to_tv(double secs, struct timeval *tv) {
  tv->tv_sec = (time_t)secs;
  tv->tv_usec = (suseconds_t)((secs - (double)(time_t)secs) * 1e6);
}

void sg_stream_set_timeouts(sg_stream_t *s, double read_s, double write_s) {
  s->has_rtv = read_s > 0;
  s->has_wtv = write_s > 0;
  to_tv(read_s, &s->rtv);
  to_tv(write_s, &s->wtv);
  if (event_pending(s->rev, EV_READ, NULL))
    restart_read_timer(s);
  if (event_pending(s->wev, EV_WRITE, NULL))
    arm_write(s);
}

void sg_stream_set_low_water(sg_stream_t *s, size_t low_water) { s->low_water = low_water; }

void sg_stream_discard_output(sg_stream_t *s) { evbuffer_drain(s->out, evbuffer_get_length(s->out)); }
