/* es_sha512.h - SHA-512 (FIPS 180-4) for Ed25519 signature checks; no libc, no malloc. */
#ifndef ES_SHA512_H
#define ES_SHA512_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t state[8];
    uint64_t length;      /* bytes hashed so far (messages stay far below 2^61 bytes) */
    uint8_t block[128];
    uint32_t fill;        /* bytes waiting in block */
} es_sha512_ctx;

void es_sha512_init(es_sha512_ctx *ctx);
void es_sha512_update(es_sha512_ctx *ctx, const uint8_t *data, size_t len);
void es_sha512_final(es_sha512_ctx *ctx, uint8_t digest[64]);
void es_sha512(const uint8_t *data, size_t len, uint8_t digest[64]);

#endif /* ES_SHA512_H */
