/* AES-256-GCM from libcrypto under the key in DATA_DIR/secret.key
 * (sgpu/seal.h). */
#include "sgpu/seal.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sgpu/log.h"
#include "sgpu/util.h"

#define NONCE_LEN 12
#define TAG_LEN 16

/* Reads exactly len bytes from fd into key; a file of any other length is
 * refused. */
static int read_key(int fd, const char *path, const char *what, const char *damaged, unsigned char *key, size_t len,
                    sg_error_t **err) {
  unsigned char buf[SG_KEY_FILE_MAX + 1];
  size_t got = 0;
  while (got < len + 1) {
    ssize_t r = read(fd, buf + got, len + 1 - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return sg_make_error(err, errno, "cannot read the %s %s: %s", what, path, strerror(errno));
    if (r == 0)
      break;
    got += (size_t)r;
  }
  if (got != len) {
    OPENSSL_cleanse(buf, sizeof(buf));
    return sg_make_error(err, SG_EINVAL, "the %s %s holds %s%zu bytes, not %zu: %s", what, path,
                         got > len ? "more than " : "", got > len ? got - 1 : got, len, damaged);
  }
  memcpy(key, buf, len);
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
static int make_key(const char *path, const char *what, unsigned char *key, size_t len, bool *raced, sg_error_t **err) {
  *raced = false;
  if (sg_random_bytes(key, len) < 0)
    return sg_make_error(err, errno, "getrandom: %s", strerror(errno));
  cleanup_free char *tmp = xasprintf("%s.tmp.%d", path, (int)getpid());
  unlink(tmp); /* left by a process of the same id that died here */
  cleanup_close int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0)
    return sg_make_error(err, errno, "cannot create %s: %s", tmp, strerror(errno));
  int r = fchmod(fd, 0600) < 0 ? -errno : 0;
  if (r == 0)
    r = write_all(fd, key, len);
  if (r == 0 && fsync(fd) < 0)
    r = -errno;
  if (r == 0 && link(tmp, path) < 0) {
    r = -errno;
    *raced = errno == EEXIST;
  }
  unlink(tmp);
  if (*raced)
    return -1;
  if (r < 0) {
    OPENSSL_cleanse(key, len);
    return sg_make_error(err, -r, "cannot write the %s %s: %s", what, path, strerror(-r));
  }
  return 0;
}

int sg_key_file_load(const char *path, const char *what, const char *damaged, unsigned char *key, size_t len,
                     bool *created, sg_error_t **err) {
  *created = false;
  if (len == 0 || len > SG_KEY_FILE_MAX)
    return sg_make_error(err, SG_EINVAL, "a key file holds 1 to %d bytes", SG_KEY_FILE_MAX);
  for (int attempt = 0; attempt < 2; attempt++) {
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0)
      return read_key(fd, path, what, damaged, key, len, err);
    if (errno != ENOENT)
      return sg_make_error(err, errno, "cannot open the %s %s: %s", what, path, strerror(errno));
    bool raced;
    int r = make_key(path, what, key, len, &raced, err);
    if (r == 0) {
      *created = true;
      return 0;
    }
    if (!raced)
      return r;
  }
  return sg_make_error(err, SG_EINVAL, "the %s %s could not be made or read", what, path);
}

int sg_seal_key_load(const char *path, unsigned char key[SG_SEAL_KEY_LEN], sg_error_t **err) {
  bool created;
  if (sg_key_file_load(path, "secret key",
                       "it is damaged (restore it from a backup; a new key cannot open the "
                       "secrets and registry passwords sealed under the old one)",
                       key, SG_SEAL_KEY_LEN, &created, err) < 0)
    return -1;
  if (created)
    sg_info("wrote a new secret key to %s (back it up with the database: without it the secrets cannot be read)", path);
  return 0;
}

static void ctx_freep(EVP_CIPHER_CTX **c) { EVP_CIPHER_CTX_free(*c); }
#define cleanup_ctx __attribute__((cleanup(ctx_freep)))

int sg_seal(const unsigned char key[SG_SEAL_KEY_LEN], const char *ad, const void *plain, size_t len,
            unsigned char **out, size_t *out_len, sg_error_t **err) {
  if (len > (size_t)INT32_MAX)
    return sg_make_error(err, SG_EINVAL, "a sealed value is at most 2 GiB");
  cleanup_free unsigned char *buf = xmalloc(len + SG_SEAL_OVERHEAD);
  buf[0] = SG_SEAL_VERSION;
  unsigned char *nonce = buf + 1, *ct = buf + 1 + NONCE_LEN, *tag = ct + len;
  if (sg_random_bytes(nonce, NONCE_LEN) < 0)
    return sg_make_error(err, errno, "getrandom: %s", strerror(errno));
  cleanup_ctx EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  int n = 0, fin = 0;
  /* The version byte is authenticated with the caller's ad. */
  if (!c || EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
      EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) != 1 ||
      EVP_EncryptInit_ex(c, NULL, NULL, key, nonce) != 1 || EVP_EncryptUpdate(c, NULL, &n, buf, 1) != 1 ||
      EVP_EncryptUpdate(c, NULL, &n, (const unsigned char *)ad, (int)strlen(ad)) != 1 ||
      EVP_EncryptUpdate(c, ct, &n, plain, (int)len) != 1 || EVP_EncryptFinal_ex(c, ct + n, &fin) != 1 ||
      (size_t)(n + fin) != len || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) != 1)
    return sg_make_error(err, SG_EINVAL, "cannot seal a value: AES-256-GCM failed in libcrypto");
  *out_len = len + SG_SEAL_OVERHEAD;
  *out = steal_pointer(&buf);
  return 0;
}

int sg_unseal(const unsigned char key[SG_SEAL_KEY_LEN], const char *ad, const unsigned char *sealed, size_t len,
              char **plain, size_t *plain_len, sg_error_t **err) {
  if (len < SG_SEAL_OVERHEAD || len - SG_SEAL_OVERHEAD > (size_t)INT32_MAX)
    return sg_make_error(err, SG_EINVAL, "sealed value of %zu bytes is damaged (too short)", len);
  if (sealed[0] != SG_SEAL_VERSION)
    return sg_make_error(err, SG_EINVAL, "sealed value has unknown version %d (this sgpud knows %d)", sealed[0],
                         SG_SEAL_VERSION);
  size_t n_ct = len - SG_SEAL_OVERHEAD;
  const unsigned char *nonce = sealed + 1, *ct = sealed + 1 + NONCE_LEN, *tag = ct + n_ct;
  char *out = xmalloc(n_ct + 1);
  cleanup_ctx EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  int n = 0, fin = 0;
  bool ok = c && EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
            EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) == 1 &&
            EVP_DecryptInit_ex(c, NULL, NULL, key, nonce) == 1 && EVP_DecryptUpdate(c, NULL, &n, sealed, 1) == 1 &&
            EVP_DecryptUpdate(c, NULL, &n, (const unsigned char *)ad, (int)strlen(ad)) == 1 &&
            EVP_DecryptUpdate(c, (unsigned char *)out, &n, ct, (int)n_ct) == 1 &&
            EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_LEN, (void *)tag) == 1 &&
            EVP_DecryptFinal_ex(c, (unsigned char *)out + n, &fin) == 1 && (size_t)(n + fin) == n_ct;
  if (!ok) {
    OPENSSL_cleanse(out, n_ct + 1);
    free(out);
    return sg_make_error(err, SG_EINVAL,
                         "sealed value does not open: it was changed, or sealed under another key (secret.key) "
                         "or for another name");
  }
  out[n_ct] = '\0';
  *plain = out;
  if (plain_len)
    *plain_len = n_ct;
  return 0;
}

void sg_unsealed_free(char *plain) {
  if (!plain)
    return;
  OPENSSL_cleanse(plain, strlen(plain));
  free(plain);
}
