/* The worker-thread pool: a mutex-protected job queue in, a completion queue
 * out, and an eventfd that wakes the loop when completions wait. */
#include "sgpu/pool.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/queue.h>

#include "sgpu/log.h"
#include "sgpu/util.h"

typedef struct job {
  STAILQ_ENTRY(job) link;
  const sg_pool_job_ops_t *ops;
  void *data;
} job_t;

STAILQ_HEAD(job_list, job);

struct sg_pool {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_cond_t idle_cv; /* signalled when a thread finishes a job */
  int busy;               /* jobs running on a thread */
  struct job_list queue;  /* waiting for a thread */
  struct job_list done;   /* waiting for the loop */
  bool stopping;
  int pending; /* loop thread's count of submitted, not yet done */
  int efd;
  struct event *ev;
  pthread_t *threads;
  int nthreads;
};

static void *thread_main(void *arg) {
  sg_pool_t *p = arg;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->stopping && STAILQ_EMPTY(&p->queue))
      pthread_cond_wait(&p->cv, &p->mu);
    if (p->stopping)
      break;
    job_t *j = STAILQ_FIRST(&p->queue);
    STAILQ_REMOVE_HEAD(&p->queue, link);
    p->busy++;
    pthread_mutex_unlock(&p->mu);
    j->ops->work(j->data);
    pthread_mutex_lock(&p->mu);
    p->busy--;
    STAILQ_INSERT_TAIL(&p->done, j, link);
    pthread_cond_broadcast(&p->idle_cv);
    uint64_t one = 1;
    ssize_t w;
    do
      w = write(p->efd, &one, sizeof(one));
    while (w < 0 && errno == EINTR);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

static void run_done(sg_pool_t *p) {
  pthread_mutex_lock(&p->mu);
  struct job_list list = STAILQ_HEAD_INITIALIZER(list);
  STAILQ_CONCAT(&list, &p->done);
  pthread_mutex_unlock(&p->mu);
  job_t *j;
  while ((j = STAILQ_FIRST(&list))) {
    STAILQ_REMOVE_HEAD(&list, link);
    p->pending--;
    j->ops->done(j->data, false);
    free(j);
  }
}

static void wake_cb(evutil_socket_t fd, short what, void *arg) {
  uint64_t n;
  while (read(fd, &n, sizeof(n)) < 0 && errno == EINTR)
    ;
  run_done(arg);
}

sg_pool_t *sg_pool_new(struct event_base *base, int nthreads, sg_error_t **err) {
  sg_pool_t *p = xcalloc(1, sizeof(*p));
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  pthread_cond_init(&p->idle_cv, NULL);
  STAILQ_INIT(&p->queue);
  STAILQ_INIT(&p->done);
  p->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (p->efd < 0) {
    sg_make_error(err, errno, "eventfd: %s", strerror(errno));
    sg_pool_free(p);
    return NULL;
  }
  p->ev = event_new(base, p->efd, EV_READ | EV_PERSIST, wake_cb, p);
  event_add(p->ev, NULL);
  p->threads = xcalloc((size_t)nthreads, sizeof(pthread_t));
  /* Pool threads never take signals: the loop's signal events own them. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  for (int i = 0; i < nthreads; i++) {
    int r = pthread_create(&p->threads[i], NULL, thread_main, p);
    if (r != 0) {
      pthread_sigmask(SIG_SETMASK, &old, NULL);
      sg_make_error(err, r, "cannot start a pool thread: %s", strerror(r));
      sg_pool_free(p);
      return NULL;
    }
    p->nthreads++;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return p;
}

void sg_pool_submit(sg_pool_t *p, const sg_pool_job_ops_t *ops, void *data) {
  job_t *j = xcalloc(1, sizeof(*j));
  j->ops = ops;
  j->data = data;
  p->pending++;
  pthread_mutex_lock(&p->mu);
  STAILQ_INSERT_TAIL(&p->queue, j, link);
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

int sg_pool_pending(const sg_pool_t *p) { return p->pending; }

void sg_pool_drain(sg_pool_t *p) {
  while (p->pending > 0) {
    pthread_mutex_lock(&p->mu);
    while (!STAILQ_EMPTY(&p->queue) || p->busy > 0)
      pthread_cond_wait(&p->idle_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    run_done(p);
  }
}

void sg_pool_free(sg_pool_t *p) {
  if (!p)
    return;
  pthread_mutex_lock(&p->mu);
  p->stopping = true;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->nthreads; i++)
    pthread_join(p->threads[i], NULL);
  run_done(p);
  job_t *j;
  while ((j = STAILQ_FIRST(&p->queue))) {
    STAILQ_REMOVE_HEAD(&p->queue, link);
    j->ops->done(j->data, true);
    free(j);
  }
  if (p->ev)
    event_free(p->ev);
  if (p->efd >= 0)
    close(p->efd);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  pthread_cond_destroy(&p->idle_cv);
  free(p->threads);
  free(p);
}
