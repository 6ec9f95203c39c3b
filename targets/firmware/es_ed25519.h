/*
 * es_ed25519.h - Ed25519 signature verification (RFC 8032, PureEdDSA) for signed weight blobs.
 *
 * Verification only: the device never holds a private key. C99, no malloc, no libc; about 1.2 KiB
 * of static state and under 1 KiB of stack; not reentrant (one static workspace). Not
 * constant-time (signature, message and public key are public data).
 * Rejects, as RFC 8032 section 5.1.7 requires, a non-canonical S (S >= L) and any point
 * encoding that does not decode (y >= p, x^2 not a square, x = 0 with the sign bit set), then
 * checks the cofactored equation [8][S]B = [8]R + [8][k]A with k = SHA-512(R || A || M) mod L.
 */
#ifndef ES_ED25519_H
#define ES_ED25519_H

#include <stddef.h>
#include <stdint.h>

#define ES_ED25519_PUBLIC_KEY_SIZE 32u
#define ES_ED25519_SIGNATURE_SIZE 64u

typedef enum {
    ES_ED25519_OK = 0,
    ES_ED25519_BAD_S,          /* S >= L: a non-canonical (or forged) signature */
    ES_ED25519_BAD_R,          /* R (first half of the signature) is not a valid point */
    ES_ED25519_BAD_PUBLIC_KEY, /* the public key is not a valid point */
    ES_ED25519_MISMATCH        /* well-formed, but not a signature of this message by this key */
} es_ed25519_status;

/* Check that `signature` (R || S, 64 bytes) signs `message` (len bytes) under `public_key`. */
es_ed25519_status es_ed25519_verify(const uint8_t signature[64], const uint8_t *message, size_t len,
                                    const uint8_t public_key[32]);

/* A short English reason for a status, e.g. "signature does not match". */
const char *es_ed25519_status_str(es_ed25519_status status);

#endif /* ES_ED25519_H */
