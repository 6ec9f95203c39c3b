/* es_sha512.c - SHA-512 as specified in FIPS 180-4 (sections 5.3.5 and 6.4), portable C99.
 *
 * Round constants: the first 64 bits of the fractional parts of the cube roots of the first
 * 80 primes; initial state: the same for the square roots of the first 8 primes (FIPS 180-4
 * section 4.2.3 / 5.3.5). */
#include "es_sha512.h"

static const uint64_t K[80] = {
    0x428a2f98d728ae22ull, 0x7137449123ef65cdull, 0xb5c0fbcfec4d3b2full,
    0xe9b5dba58189dbbcull, 0x3956c25bf348b538ull, 0x59f111f1b605d019ull,
    0x923f82a4af194f9bull, 0xab1c5ed5da6d8118ull, 0xd807aa98a3030242ull,
    0x12835b0145706fbeull, 0x243185be4ee4b28cull, 0x550c7dc3d5ffb4e2ull,
    0x72be5d74f27b896full, 0x80deb1fe3b1696b1ull, 0x9bdc06a725c71235ull,
    0xc19bf174cf692694ull, 0xe49b69c19ef14ad2ull, 0xefbe4786384f25e3ull,
    0x0fc19dc68b8cd5b5ull, 0x240ca1cc77ac9c65ull, 0x2de92c6f592b0275ull,
    0x4a7484aa6ea6e483ull, 0x5cb0a9dcbd41fbd4ull, 0x76f988da831153b5ull,
    0x983e5152ee66dfabull, 0xa831c66d2db43210ull, 0xb00327c898fb213full,
    0xbf597fc7beef0ee4ull, 0xc6e00bf33da88fc2ull, 0xd5a79147930aa725ull,
    0x06ca6351e003826full, 0x142929670a0e6e70ull, 0x27b70a8546d22ffcull,
    0x2e1b21385c26c926ull, 0x4d2c6dfc5ac42aedull, 0x53380d139d95b3dfull,
    0x650a73548baf63deull, 0x766a0abb3c77b2a8ull, 0x81c2c92e47edaee6ull,
    0x92722c851482353bull, 0xa2bfe8a14cf10364ull, 0xa81a664bbc423001ull,
    0xc24b8b70d0f89791ull, 0xc76c51a30654be30ull, 0xd192e819d6ef5218ull,
    0xd69906245565a910ull, 0xf40e35855771202aull, 0x106aa07032bbd1b8ull,
    0x19a4c116b8d2d0c8ull, 0x1e376c085141ab53ull, 0x2748774cdf8eeb99ull,
    0x34b0bcb5e19b48a8ull, 0x391c0cb3c5c95a63ull, 0x4ed8aa4ae3418acbull,
    0x5b9cca4f7763e373ull, 0x682e6ff3d6b2b8a3ull, 0x748f82ee5defb2fcull,
    0x78a5636f43172f60ull, 0x84c87814a1f0ab72ull, 0x8cc702081a6439ecull,
    0x90befffa23631e28ull, 0xa4506cebde82bde9ull, 0xbef9a3f7b2c67915ull,
    0xc67178f2e372532bull, 0xca273eceea26619cull, 0xd186b8c721c0c207ull,
    0xeada7dd6cde0eb1eull, 0xf57d4f7fee6ed178ull, 0x06f067aa72176fbaull,
    0x0a637dc5a2c898a6ull, 0x113f9804bef90daeull, 0x1b710b35131c471bull,
    0x28db77f523047d84ull, 0x32caab7b40c72493ull, 0x3c9ebe0a15c9bebcull,
    0x431d67c49c100d4cull, 0x4cc5d4becb3e42b6ull, 0x597f299cfc657e2aull,
    0x5fcb6fab3ad6faecull, 0x6c44198c4a475817ull,
};

static uint64_t rotr(uint64_t x, unsigned n)
{
    return (x >> n) | (x << (64u - n));
}

static uint64_t load_be64(const uint8_t *p)
{
    uint64_t v = 0;
    unsigned i;
    for (i = 0; i < 8; ++i) {
        v = (v << 8) | p[i];
    }
    return v;
}

/* One 128-byte block. The message schedule is kept as a rolling window of 16 words (w[i] only
 * needs w[i-2], w[i-7], w[i-15], w[i-16]) to keep the stack small on MCUs. */
static void compress(uint64_t state[8], const uint8_t block[128])
{
    uint64_t w[16];
    uint64_t a, b, c, d, e, f, g, h, t1, t2;
    unsigned i;
    for (i = 0; i < 16; ++i) {
        w[i] = load_be64(block + 8 * i);
    }
    a = state[0];
    b = state[1];
    c = state[2];
    d = state[3];
    e = state[4];
    f = state[5];
    g = state[6];
    h = state[7];
    for (i = 0; i < 80; ++i) {
        if (i >= 16) {
            uint64_t w15 = w[(i - 15) & 15u], w2 = w[(i - 2) & 15u];
            uint64_t s0 = rotr(w15, 1) ^ rotr(w15, 8) ^ (w15 >> 7);
            uint64_t s1 = rotr(w2, 19) ^ rotr(w2, 61) ^ (w2 >> 6);
            w[i & 15u] += s0 + w[(i - 7) & 15u] + s1;
        }
        t1 = h + (rotr(e, 14) ^ rotr(e, 18) ^ rotr(e, 41)) + ((e & f) ^ (~e & g)) + K[i] + w[i & 15u];
        t2 = (rotr(a, 28) ^ rotr(a, 34) ^ rotr(a, 39)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
}

void es_sha512_init(es_sha512_ctx *ctx)
{
    ctx->state[0] = 0x6a09e667f3bcc908ull;
    ctx->state[1] = 0xbb67ae8584caa73bull;
    ctx->state[2] = 0x3c6ef372fe94f82bull;
    ctx->state[3] = 0xa54ff53a5f1d36f1ull;
    ctx->state[4] = 0x510e527fade682d1ull;
    ctx->state[5] = 0x9b05688c2b3e6c1full;
    ctx->state[6] = 0x1f83d9abfb41bd6bull;
    ctx->state[7] = 0x5be0cd19137e2179ull;
    ctx->length = 0;
    ctx->fill = 0;
}

void es_sha512_update(es_sha512_ctx *ctx, const uint8_t *data, size_t len)
{
    size_t i;
    for (i = 0; i < len; ++i) {
        ctx->block[ctx->fill++] = data[i];
        if (ctx->fill == 128u) {
            compress(ctx->state, ctx->block);
            ctx->fill = 0;
        }
    }
    ctx->length += (uint64_t)len;
}

void es_sha512_final(es_sha512_ctx *ctx, uint8_t digest[64])
{
    uint64_t bits = ctx->length * 8u;
    unsigned i;
    ctx->block[ctx->fill++] = 0x80u;
    if (ctx->fill > 112u) {
        while (ctx->fill < 128u) {
            ctx->block[ctx->fill++] = 0;
        }
        compress(ctx->state, ctx->block);
        ctx->fill = 0;
    }
    /* 128-bit big-endian length: the upper 64 bits are zero */
    while (ctx->fill < 120u) {
        ctx->block[ctx->fill++] = 0;
    }
    for (i = 0; i < 8; ++i) {
        ctx->block[120 + i] = (uint8_t)(bits >> (56 - 8 * i));
    }
    compress(ctx->state, ctx->block);
    for (i = 0; i < 64; ++i) {
        digest[i] = (uint8_t)(ctx->state[i / 8] >> (56 - 8 * (i % 8)));
    }
}

void es_sha512(const uint8_t *data, size_t len, uint8_t digest[64])
{
    es_sha512_ctx ctx;
    es_sha512_init(&ctx);
    es_sha512_update(&ctx, data, len);
    es_sha512_final(&ctx, digest);
}
