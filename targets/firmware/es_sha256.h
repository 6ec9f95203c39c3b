/* es_sha256.h - SHA-256 (FIPS 180-4) for VERIFY / COMMIT hash checks; no libc, no malloc. */
#ifndef ES_SHA256_H
#define ES_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t state[8];
    uint64_t length;      /* bytes hashed so far */
    uint8_t block[64];
    uint32_t fill;        /* bytes waiting in block */
} es_sha256_ctx;

void es_sha256_init(es_sha256_ctx *ctx);
void es_sha256_update(es_sha256_ctx *ctx, const uint8_t *data, size_t len);
void es_sha256_final(es_sha256_ctx *ctx, uint8_t digest[32]);
void es_sha256(const uint8_t *data, size_t len, uint8_t digest[32]);

#endif /* ES_SHA256_H */
