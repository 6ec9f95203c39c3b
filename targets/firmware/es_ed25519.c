/*
 * es_ed25519.c - Ed25519 verification written from RFC 8032 (sections 5.1.1-5.1.7).
 *
 * Field GF(p), p = 2^255 - 19: 16 limbs of 16 bits (uint32 each, kept below 2^17 between
 * operations) so every product fits a uint64 accumulator on 32-bit MCUs. Points: extended
 * homogeneous coordinates (X:Y:Z:T), x = X/Z, y = Y/Z, x*y = T/Z, on -x^2 + y^2 = 1 + d x^2 y^2,
 * with the addition and doubling formulas of RFC 8032 section 5.1.4. The constants below (2d,
 * sqrt(-1), the base point, L) are the RFC's values written as 32-byte little-endian numbers;
 * tests/targets/test_fw_ed25519.py recomputes them from their definitions.
 */
#include "es_ed25519.h"

#include "es_sha512.h"

#define LIMBS 16

typedef struct {
    uint32_t v[LIMBS];
} fe;

typedef struct {
    fe X, Y, Z, T;
} point;

/* 2*d, d = -121665/121666 mod p */
static const uint8_t D2_BYTES[32] = {
    0x59, 0xf1, 0xb2, 0x26, 0x94, 0x9b, 0xd6, 0xeb, 0x56, 0xb1, 0x83, 0x82,
    0x9a, 0x14, 0xe0, 0x00, 0x30, 0xd1, 0xf3, 0xee, 0xf2, 0x80, 0x8e, 0x19,
    0xe7, 0xfc, 0xdf, 0x56, 0xdc, 0xd9, 0x06, 0x24};
static const uint8_t D_BYTES[32] = {
    0xa3, 0x78, 0x59, 0x13, 0xca, 0x4d, 0xeb, 0x75, 0xab, 0xd8, 0x41, 0x41,
    0x4d, 0x0a, 0x70, 0x00, 0x98, 0xe8, 0x79, 0x77, 0x79, 0x40, 0xc7, 0x8c,
    0x73, 0xfe, 0x6f, 0x2b, 0xee, 0x6c, 0x03, 0x52};
/* 2^((p-1)/4), a square root of -1 */
static const uint8_t SQRTM1_BYTES[32] = {
    0xb0, 0xa0, 0x0e, 0x4a, 0x27, 0x1b, 0xee, 0xc4, 0x78, 0xe4, 0x2f, 0xad,
    0x06, 0x18, 0x43, 0x2f, 0xa7, 0xd7, 0xfb, 0x3d, 0x99, 0x00, 0x4d, 0x2b,
    0x0b, 0xdf, 0xc1, 0x4f, 0x80, 0x24, 0x83, 0x2b};
/* base point B: y = 4/5, x the even root */
static const uint8_t BASE_X_BYTES[32] = {
    0x1a, 0xd5, 0x25, 0x8f, 0x60, 0x2d, 0x56, 0xc9, 0xb2, 0xa7, 0x25, 0x95,
    0x60, 0xc7, 0x2c, 0x69, 0x5c, 0xdc, 0xd6, 0xfd, 0x31, 0xe2, 0xa4, 0xc0,
    0xfe, 0x53, 0x6e, 0xcd, 0xd3, 0x36, 0x69, 0x21};
static const uint8_t BASE_Y_BYTES[32] = {
    0x58, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
    0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
    0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66};
/* group order L = 2^252 + 27742317777372353535851937790883648493 */
static const uint8_t L_BYTES[32] = {
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2,
    0xde, 0xf9, 0xde, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10};
/* exponents, little-endian: (p-5)/8 = 2^252 - 3 (square root, RFC 8032 5.1.3); p-2 unused:
 * the projective comparison at the end needs no inversion */
static const uint8_t P58_BYTES[32] = {
    0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f};

/* ------------------------------------------------------------------ field GF(2^255 - 19) */

/* Carry t into 16-bit limbs, folding bits >= 2^255 back as 19 * (2^255 = 19 mod p). Inputs
 * below 2^60 per limb; the result has limbs < 2^17 (limb 15 < 2^15). */
static void fe_carry(fe *r, uint64_t t[LIMBS])
{
    unsigned pass, i;
    for (pass = 0; pass < 2; ++pass) {
        for (i = 0; i < LIMBS - 1; ++i) {
            t[i + 1] += t[i] >> 16;
            t[i] &= 0xffffu;
        }
        t[0] += 19u * (t[LIMBS - 1] >> 15);
        t[LIMBS - 1] &= 0x7fffu;
    }
    for (i = 0; i < LIMBS; ++i) {
        r->v[i] = (uint32_t)t[i];
    }
}

static void fe_from_u32(fe *r, uint32_t x)
{
    unsigned i;
    for (i = 0; i < LIMBS; ++i) {
        r->v[i] = 0;
    }
    r->v[0] = x & 0xffffu;
    r->v[1] = x >> 16;
}

/* 255-bit little-endian number (bit 255 ignored: the caller reads it as the sign of x). */
static void fe_frombytes(fe *r, const uint8_t s[32])
{
    unsigned i;
    for (i = 0; i < LIMBS; ++i) {
        r->v[i] = (uint32_t)s[2 * i] | ((uint32_t)s[2 * i + 1] << 8);
    }
    r->v[LIMBS - 1] &= 0x7fffu;
}

/* The canonical (fully reduced, < p) encoding of a. */
static void fe_tobytes(uint8_t s[32], const fe *a)
{
    static const uint32_t P[LIMBS] = {0xffedu, 0xffffu, 0xffffu, 0xffffu, 0xffffu, 0xffffu,
                                      0xffffu, 0xffffu, 0xffffu, 0xffffu, 0xffffu, 0xffffu,
                                      0xffffu, 0xffffu, 0xffffu, 0x7fffu};
    uint32_t t[LIMBS], m[LIMBS];
    uint32_t borrow;
    unsigned i, round;
    for (i = 0; i < LIMBS; ++i) {
        t[i] = a->v[i];
    }
    /* limbs 1..15 are already < 2^16 (15: < 2^15); one plain carry leaves every limb < 2^16
     * and a value below 2^256 < 2p + p, so subtracting p at most twice makes it canonical */
    for (i = 0; i < LIMBS - 1; ++i) {
        t[i + 1] += t[i] >> 16;
        t[i] &= 0xffffu;
    }
    for (round = 0; round < 2; ++round) {
        borrow = 0;
        for (i = 0; i < LIMBS; ++i) {
            uint32_t sub = P[i] + borrow;
            m[i] = (t[i] - sub) & 0xffffu;
            borrow = t[i] < sub ? 1u : 0u;
        }
        if (borrow == 0u) { /* t >= p */
            for (i = 0; i < LIMBS; ++i) {
                t[i] = m[i];
            }
        }
    }
    for (i = 0; i < LIMBS; ++i) {
        s[2 * i] = (uint8_t)(t[i] & 0xffu);
        s[2 * i + 1] = (uint8_t)(t[i] >> 8);
    }
}

static void fe_add(fe *r, const fe *a, const fe *b)
{
    uint64_t t[LIMBS];
    unsigned i;
    for (i = 0; i < LIMBS; ++i) {
        t[i] = (uint64_t)a->v[i] + b->v[i];
    }
    fe_carry(r, t);
}

/* a - b computed as a + 4p - b, so no limb goes negative (b's limbs are < 2^17, limb 15 < 2^15) */
static void fe_sub(fe *r, const fe *a, const fe *b)
{
    uint64_t t[LIMBS];
    unsigned i;
    for (i = 0; i < LIMBS; ++i) {
        uint64_t four_p = i == 0 ? 4u * 0xffedu : (i == LIMBS - 1 ? 4u * 0x7fffu : 4u * 0xffffu);
        t[i] = (uint64_t)a->v[i] + four_p - b->v[i];
    }
    fe_carry(r, t);
}

static void fe_mul(fe *r, const fe *a, const fe *b)
{
    uint64_t prod[2 * LIMBS - 1];
    unsigned i, j;
    for (i = 0; i < 2 * LIMBS - 1; ++i) {
        prod[i] = 0;
    }
    for (i = 0; i < LIMBS; ++i) {
        for (j = 0; j < LIMBS; ++j) {
            prod[i + j] += (uint64_t)a->v[i] * b->v[j];
        }
    }
    /* 2^256 = 38 mod p: limb i + 16 folds onto limb i times 38 */
    for (i = 0; i < LIMBS - 1; ++i) {
        prod[i] += 38u * prod[i + LIMBS];
    }
    fe_carry(r, prod); /* limbs 0..15 */
}

static void fe_sq(fe *r, const fe *a)
{
    fe_mul(r, a, a);
}

static void fe_neg(fe *r, const fe *a)
{
    fe zero;
    fe_from_u32(&zero, 0);
    fe_sub(r, &zero, a);
}

/* r = a^e, e a 256-bit little-endian exponent (square and multiply, most significant bit first) */
static void fe_pow(fe *r, const fe *a, const uint8_t e[32])
{
    fe acc;
    int bit;
    fe_from_u32(&acc, 1);
    for (bit = 255; bit >= 0; --bit) {
        fe_sq(&acc, &acc);
        if ((e[bit >> 3] >> (bit & 7)) & 1u) {
            fe_mul(&acc, &acc, a);
        }
    }
    *r = acc;
}

static int fe_equal(const fe *a, const fe *b)
{
    uint8_t x[32], y[32];
    unsigned i;
    fe_tobytes(x, a);
    fe_tobytes(y, b);
    for (i = 0; i < 32; ++i) {
        if (x[i] != y[i]) {
            return 0;
        }
    }
    return 1;
}

static int fe_is_zero(const fe *a)
{
    fe zero;
    fe_from_u32(&zero, 0);
    return fe_equal(a, &zero);
}

static unsigned fe_is_odd(const fe *a)
{
    uint8_t s[32];
    fe_tobytes(s, a);
    return s[0] & 1u;
}

/* ------------------------------------------------------------------ points */

static void point_identity(point *r)
{
    fe_from_u32(&r->X, 0);
    fe_from_u32(&r->Y, 1);
    fe_from_u32(&r->Z, 1);
    fe_from_u32(&r->T, 0);
}

/* RFC 8032 5.1.4 addition (a = -1); r may alias p or q. Temporaries are reused (f lives in a,
 * g in b) to keep the stack small. */
static void point_add(point *r, const point *p, const point *q)
{
    fe a, b, c, d, e, h;
    fe_sub(&a, &p->Y, &p->X);
    fe_sub(&e, &q->Y, &q->X);
    fe_mul(&a, &a, &e); /* A = (Y1-X1)*(Y2-X2) */
    fe_add(&b, &p->Y, &p->X);
    fe_add(&e, &q->Y, &q->X);
    fe_mul(&b, &b, &e); /* B = (Y1+X1)*(Y2+X2) */
    fe_mul(&c, &p->T, &q->T);
    fe_frombytes(&e, D2_BYTES);
    fe_mul(&c, &c, &e); /* C = T1*2*d*T2 */
    fe_mul(&d, &p->Z, &q->Z);
    fe_add(&d, &d, &d); /* D = Z1*2*Z2 */
    fe_sub(&e, &b, &a); /* E = B-A */
    fe_add(&h, &b, &a); /* H = B+A */
    fe_sub(&a, &d, &c); /* F = D-C */
    fe_add(&b, &d, &c); /* G = D+C */
    fe_mul(&r->X, &e, &a);
    fe_mul(&r->Y, &b, &h);
    fe_mul(&r->T, &e, &h);
    fe_mul(&r->Z, &a, &b);
}

/* RFC 8032 5.1.4 doubling; r may alias p (g lives in a, f in c) */
static void point_double(point *r, const point *p)
{
    fe a, b, c, e, h;
    fe_sq(&a, &p->X);   /* A = X1^2 */
    fe_sq(&b, &p->Y);   /* B = Y1^2 */
    fe_sq(&c, &p->Z);
    fe_add(&c, &c, &c); /* C = 2*Z1^2 */
    fe_add(&h, &a, &b); /* H = A+B */
    fe_add(&e, &p->X, &p->Y);
    fe_sq(&e, &e);
    fe_sub(&e, &h, &e); /* E = H-(X1+Y1)^2 */
    fe_sub(&a, &a, &b); /* G = A-B */
    fe_add(&c, &c, &a); /* F = C+G */
    fe_mul(&r->X, &e, &c);
    fe_mul(&r->Y, &a, &h);
    fe_mul(&r->T, &e, &h);
    fe_mul(&r->Z, &c, &a);
}

/* RFC 8032 5.1.3 point decoding; 0 when s is not the encoding of a curve point. r->X and r->Z
 * serve as scratch until the end. */
static int point_decode(point *r, const uint8_t s[32])
{
    uint8_t canonical[32];
    fe u, v, t;
    unsigned sign = s[31] >> 7;
    unsigned i;
    fe_frombytes(&r->Y, s);
    fe_tobytes(canonical, &r->Y);
    for (i = 0; i < 31; ++i) { /* y >= p is refused: the encoding must be canonical */
        if (canonical[i] != s[i]) {
            return 0;
        }
    }
    if (canonical[31] != (s[31] & 0x7fu)) {
        return 0;
    }
    /* x^2 = (y^2 - 1) / (d y^2 + 1) = u / v */
    fe_from_u32(&t, 1);
    fe_sq(&u, &r->Y);
    fe_frombytes(&r->Z, D_BYTES);
    fe_mul(&v, &u, &r->Z);
    fe_sub(&u, &u, &t);
    fe_add(&v, &v, &t);
    /* candidate x = u v^3 (u v^7)^((p-5)/8) */
    fe_sq(&r->Z, &v);
    fe_mul(&r->Z, &r->Z, &v); /* v^3 */
    fe_sq(&t, &r->Z);
    fe_mul(&t, &t, &v);
    fe_mul(&t, &t, &u); /* u v^7 */
    fe_pow(&t, &t, P58_BYTES);
    fe_mul(&r->X, &u, &r->Z);
    fe_mul(&r->X, &r->X, &t);
    fe_sq(&t, &r->X);
    fe_mul(&t, &t, &v); /* v x^2 */
    if (!fe_equal(&t, &u)) {
        fe_neg(&v, &u);
        if (!fe_equal(&t, &v)) {
            return 0; /* u/v has no square root: not on the curve */
        }
        fe_frombytes(&t, SQRTM1_BYTES);
        fe_mul(&r->X, &r->X, &t);
    }
    if (fe_is_zero(&r->X) && sign) {
        return 0;
    }
    if (fe_is_odd(&r->X) != sign) {
        fe_neg(&r->X, &r->X);
    }
    fe_from_u32(&r->Z, 1);
    fe_mul(&r->T, &r->X, &r->Y);
    return 1;
}

/* Same point in projective coordinates: X1 Z2 = X2 Z1 and Y1 Z2 = Y2 Z1. */
static int point_equal(const point *p, const point *q)
{
    fe a, b;
    fe_mul(&a, &p->X, &q->Z);
    fe_mul(&b, &q->X, &p->Z);
    if (!fe_equal(&a, &b)) {
        return 0;
    }
    fe_mul(&a, &p->Y, &q->Z);
    fe_mul(&b, &q->Y, &p->Z);
    return fe_equal(&a, &b);
}

/* ------------------------------------------------------------------ scalars mod L */

/* a >= b for 32-byte little-endian numbers */
static int scalar_geq(const uint8_t a[32], const uint8_t b[32])
{
    int i;
    for (i = 31; i >= 0; --i) {
        if (a[i] != b[i]) {
            return a[i] > b[i];
        }
    }
    return 1;
}

/* r = h mod L for a 64-byte little-endian h: shift in one bit at a time, most significant
 * first, keeping r < L (r < 2^253, so 2r + 1 still fits 32 bytes). */
static void scalar_reduce512(uint8_t r[32], const uint8_t h[64])
{
    int bit;
    unsigned i;
    for (i = 0; i < 32; ++i) {
        r[i] = 0;
    }
    for (bit = 511; bit >= 0; --bit) {
        unsigned carry = (h[bit >> 3] >> (bit & 7)) & 1u;
        for (i = 0; i < 32; ++i) {
            unsigned v = ((unsigned)r[i] << 1) | carry;
            r[i] = (uint8_t)(v & 0xffu);
            carry = v >> 8;
        }
        if (scalar_geq(r, L_BYTES)) {
            unsigned borrow = 0;
            for (i = 0; i < 32; ++i) {
                unsigned sub = (unsigned)L_BYTES[i] + borrow;
                borrow = r[i] < sub ? 1u : 0u;
                r[i] = (uint8_t)(((unsigned)r[i] + 256u - sub) & 0xffu);
            }
        }
    }
}

static unsigned scalar_bit(const uint8_t s[32], int bit)
{
    return (s[bit >> 3] >> (bit & 7)) & 1u;
}

/* ------------------------------------------------------------------ verify */

/* The verifier's large state lives in .bss, not on the stack: small MCUs (sifive_e: 2 KiB of
 * stack) call it deep inside the app. Hence es_ed25519_verify is not reentrant. */
static struct {
    point a, r, base, q;
    es_sha512_ctx sha;
    uint8_t digest[64];
    uint8_t k[32];
} work;

es_ed25519_status es_ed25519_verify(const uint8_t signature[64], const uint8_t *message, size_t len,
                                    const uint8_t public_key[32])
{
    point *a = &work.a, *r = &work.r, *base = &work.base, *q = &work.q;
    const uint8_t *s = signature + 32;
    int bit;
    if (scalar_geq(s, L_BYTES)) {
        return ES_ED25519_BAD_S;
    }
    if (!point_decode(a, public_key)) {
        return ES_ED25519_BAD_PUBLIC_KEY;
    }
    if (!point_decode(r, signature)) {
        return ES_ED25519_BAD_R;
    }
    es_sha512_init(&work.sha);
    es_sha512_update(&work.sha, signature, 32);
    es_sha512_update(&work.sha, public_key, 32);
    es_sha512_update(&work.sha, message, len);
    es_sha512_final(&work.sha, work.digest);
    scalar_reduce512(work.k, work.digest);

    /* q = [S]B - [k]A, both scalars at once (Straus), then compare [8]q with [8]R */
    fe_neg(&a->X, &a->X);
    fe_neg(&a->T, &a->T);
    fe_frombytes(&base->X, BASE_X_BYTES);
    fe_frombytes(&base->Y, BASE_Y_BYTES);
    fe_from_u32(&base->Z, 1);
    fe_mul(&base->T, &base->X, &base->Y);
    point_identity(q);
    for (bit = 252; bit >= 0; --bit) { /* S, k < L < 2^253 */
        point_double(q, q);
        if (scalar_bit(s, bit)) {
            point_add(q, q, base);
        }
        if (scalar_bit(work.k, bit)) {
            point_add(q, q, a);
        }
    }
    for (bit = 0; bit < 3; ++bit) {
        point_double(q, q);
        point_double(r, r);
    }
    return point_equal(q, r) ? ES_ED25519_OK : ES_ED25519_MISMATCH;
}

const char *es_ed25519_status_str(es_ed25519_status status)
{
    switch (status) {
    case ES_ED25519_OK: return "signature verifies";
    case ES_ED25519_BAD_S: return "signature S is not below the group order L (non-canonical)";
    case ES_ED25519_BAD_R: return "signature R is not a valid curve point encoding";
    case ES_ED25519_BAD_PUBLIC_KEY: return "public key is not a valid curve point encoding";
    case ES_ED25519_MISMATCH: return "signature does not match this message and public key";
    }
    return "unknown status";
}
