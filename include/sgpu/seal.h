/* Sealing: authenticated encryption of small values at rest (secrets,
 * registry passwords) under one key, DATA_DIR/secret.key.
 *
 * A sealed value is: a version byte (SG_SEAL_VERSION), a random 96-bit
 * nonce, the AES-256-GCM ciphertext (as long as the value) and the 128-bit
 * tag. The associated data (e.g. "secret:hf") is authenticated but not
 * stored: a sealed value copied to another row (another name) does not
 * unseal. Pure functions of their arguments, any thread. */
#ifndef SGPU_SEAL_H
#define SGPU_SEAL_H

#include <stdbool.h>
#include <stddef.h>

#include "sgpu/error.h"

#define SG_SEAL_KEY_LEN 32
#define SG_SEAL_VERSION 1
/* Bytes a sealed value adds to its plain text. */
#define SG_SEAL_OVERHEAD (1 + 12 + 16)

/* Reads the key from path (exactly SG_SEAL_KEY_LEN bytes; any other length
 * or an unreadable file is an error naming it), or, when there is none,
 * makes one from getrandom in a mode 0600 file linked into place (a key
 * another process made first is read instead). Blocks. */
int sg_seal_key_load(const char *path, unsigned char key[SG_SEAL_KEY_LEN], sg_error_t **err);

/* The largest key sg_key_file_load reads. */
#define SG_KEY_FILE_MAX 64
/* Reads the len-byte key at path (a file of another length is refused with
 * an error naming it the what, ending with damaged), or makes it when
 * absent: random bytes, mode 0600, written whole then linked into place so
 * that two processes starting at once agree on one key (*created then). */
int sg_key_file_load(const char *path, const char *what, const char *damaged, unsigned char *key, size_t len,
                     bool *created, sg_error_t **err);

/* Seals len bytes of plain under key with associated data ad (a string).
 * *out (the caller frees it, len + SG_SEAL_OVERHEAD bytes in *out_len). */
int sg_seal(const unsigned char key[SG_SEAL_KEY_LEN], const char *ad, const void *plain, size_t len,
            unsigned char **out, size_t *out_len, sg_error_t **err);

/* Opens a sealed value: *plain (NUL-terminated, *plain_len bytes without
 * the NUL; the caller wipes and frees it, sg_unsealed_free) or SG_EINVAL
 * when it was damaged, sealed under another key or another ad, or has an
 * unknown version. */
int sg_unseal(const unsigned char key[SG_SEAL_KEY_LEN], const char *ad, const unsigned char *sealed, size_t len,
              char **plain, size_t *plain_len, sg_error_t **err);

/* Wipes a NUL-terminated plain text and frees it (NULL is fine). */
void sg_unsealed_free(char *plain);

#endif
