/* Worker tokens: the credential each worker of a runpod endpoint gets in
 * RUNPOD_AI_API_KEY. A token is HMAC-SHA256(worker key, "sgpu-worker:" +
 * worker id) in lowercase hex, so it needs no storage: it is computed again
 * wherever it is set or checked, and stays the same across sgpud restarts
 * (an adopted Slurm worker keeps its own). The worker key is 32 random bytes
 * in DATA_DIR/worker.key, made once and read at every later start. What a
 * token grants (only that worker's protocol routes, while it lives) is the
 * gateway's to enforce. */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>

#include "daemon/fleet.h"
#include "sgpu/log.h"
#include "sgpu/seal.h"
#include "sgpu/util.h"

int sg_worker_key_load(const char *path, unsigned char key[SG_WORKER_KEY_LEN], sg_error_t **err) {
  bool created;
  if (sg_key_file_load(path, "worker key",
                       "remove it to make a new one (the workers running now then lose their tokens)", key,
                       SG_WORKER_KEY_LEN, &created, err) < 0)
    return -1;
  if (created)
    sg_info("wrote a new worker key to %s", path);
  return 0;
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
