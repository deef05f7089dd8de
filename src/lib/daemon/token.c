/* Worker tokens: the credential each worker of a runpod endpoint gets in
 * RUNPOD_AI_API_KEY. A token is HMAC-SHA256(worker key, "sgpu-worker:" +
 * worker id) in lowercase hex, so it needs no storage: it is computed again
 * wherever it is set or checked, and stays the same across sgpud restarts
 * (an adopted Slurm worker keeps its own). The worker key is 32 random bytes
 * in DATA_DIR/worker.key, made once and read at every later start. What a
 * token grants (only that worker's protocol routes, while it lives) is the
 * gateway's to enforce. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/fleet.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

/* Reads exactly SG_WORKER_KEY_LEN bytes from fd into key; a file of any
 * other length is refused. */
static int read_key(int fd, const char *path, unsigned char key[SG_WORKER_KEY_LEN], sg_error_t **err) {
  unsigned char buf[SG_WORKER_KEY_LEN + 1];
  size_t len = 0;
  while (len < sizeof(buf)) {
    ssize_t r = read(fd, buf + len, sizeof(buf) - len);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return sg_make_error(err, errno, "cannot read the worker key %s: %s", path, strerror(errno));
    if (r == 0)
      break;
    len += (size_t)r;
  }
  if (len != SG_WORKER_KEY_LEN) {
    OPENSSL_cleanse(buf, sizeof(buf));
    return sg_make_error(err, SG_EINVAL,
                         "the worker key %s holds %s%zu bytes, not %d: remove it to make a new one (the workers "
                         "running now then lose their tokens)",
                         path, len > SG_WORKER_KEY_LEN ? "more than " : "", len > SG_WORKER_KEY_LEN ? len - 1 : len,
                         SG_WORKER_KEY_LEN);
  }
  memcpy(key, buf, SG_WORKER_KEY_LEN);
  OPENSSL_cleanse(buf, sizeof(buf));
  return 0;
}

static int write_all(int fd, const unsigned char *p, size_t n) {
  while (n > 0) {
    ssize_t r = write(fd, p, n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return -errno;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

/* Makes a new key at path: written to a private temporary file, then linked
 * to path, which fails when path exists. *raced is set when another process
 * made path first (its key is then the one to read). */
static int make_key(const char *path, unsigned char key[SG_WORKER_KEY_LEN], bool *raced, sg_error_t **err) {
  *raced = false;
  if (sg_random_bytes(key, SG_WORKER_KEY_LEN) < 0)
    return sg_make_error(err, errno, "getrandom: %s", strerror(errno));
  cleanup_free char *tmp = xasprintf("%s.tmp.%d", path, (int)getpid());
  unlink(tmp); /* left by a process of the same id that died here */
  cleanup_close int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0)
    return sg_make_error(err, errno, "cannot create %s: %s", tmp, strerror(errno));
  int r = fchmod(fd, 0600) < 0 ? -errno : 0;
  if (r == 0)
    r = write_all(fd, key, SG_WORKER_KEY_LEN);
  if (r == 0 && fsync(fd) < 0)
    r = -errno;
  if (r == 0 && link(tmp, path) < 0) {
    r = -errno;
    *raced = errno == EEXIST;
  }
  unlink(tmp);
  if (*raced)
    return -1;
  if (r < 0)
    return sg_make_error(err, -r, "cannot write the worker key %s: %s", path, strerror(-r));
  return 0;
}

int sg_worker_key_load(const char *path, unsigned char key[SG_WORKER_KEY_LEN], sg_error_t **err) {
  for (int attempt = 0; attempt < 2; attempt++) {
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0)
      return read_key(fd, path, key, err);
    if (errno != ENOENT)
      return sg_make_error(err, errno, "cannot open the worker key %s: %s", path, strerror(errno));
    bool raced;
    int r = make_key(path, key, &raced, err);
    if (r == 0) {
      sg_info("wrote a new worker key to %s", path);
      return 0;
    }
    if (!raced)
      return r;
  }
  return sg_make_error(err, SG_EINVAL, "the worker key %s could not be made or read", path);
}

void sg_worker_token(const sg_daemon_t *d, const char *worker_id, char out[SG_WORKER_TOKEN_LEN + 1]) {
  static const char prefix[] = "sgpu-worker:";
  static const char hex[] = "0123456789abcdef";
  size_t id_len = strlen(worker_id);
  cleanup_free unsigned char *msg = xmalloc(sizeof(prefix) - 1 + id_len);
  memcpy(msg, prefix, sizeof(prefix) - 1);
  memcpy(msg + sizeof(prefix) - 1, worker_id, id_len);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  if (!HMAC(EVP_sha256(), d->worker_key, SG_WORKER_KEY_LEN, msg, sizeof(prefix) - 1 + id_len, mac, &mac_len) ||
      mac_len * 2 != SG_WORKER_TOKEN_LEN)
    abort(); /* SHA-256 is always there: libcrypto is broken */
  for (unsigned int i = 0; i < mac_len; i++) {
    out[2 * i] = hex[mac[i] >> 4];
    out[2 * i + 1] = hex[mac[i] & 15];
  }
  out[SG_WORKER_TOKEN_LEN] = '\0';
}

bool sg_worker_token_valid(const sg_daemon_t *d, const char *worker_id, const char *token, size_t len) {
  if (len != SG_WORKER_TOKEN_LEN)
    return false;
  char want[SG_WORKER_TOKEN_LEN + 1];
  sg_worker_token(d, worker_id, want);
  return CRYPTO_memcmp(want, token, SG_WORKER_TOKEN_LEN) == 0;
}
