/*
 * es_fixedpoint.h - TFLite / gemmlowp fixed-point helpers, bit-exact with TFLite Micro's
 * reference integer kernels (the default build, i.e. without TFLITE_SINGLE_ROUNDING).
 *
 * Only integer arithmetic; no libc at all. Right shifts of negative values assume an arithmetic
 * shift, which every supported compiler (gcc for x86-64, Arm and RISC-V) provides.
 */
#ifndef ES_FIXEDPOINT_H
#define ES_FIXEDPOINT_H

#include <stddef.h>
#include <stdint.h>

/* (a * b * 2) >> 32 with round-to-nearest; the one overflow case saturates. */
static inline int32_t es_srdhm(int32_t a, int32_t b)
{
    int64_t ab, t;
    if (a == b && a == INT32_MIN) {
        return INT32_MAX;
    }
    ab = (int64_t)a * (int64_t)b;
    t = ab + ((ab >= 0) ? (1 << 30) : (1 - (1 << 30)));
    /* gemmlowp divides by 2^31, truncating toward zero. Without a 64-bit division (a library
     * call on 32-bit cores) and without a branch on the sign (mispredicted on real data): adding
     * 2^31 - 1 to a negative t before the arithmetic shift rounds toward zero. */
    t += (t >> 63) & (((int64_t)1 << 31) - 1);
    return (int32_t)(t >> 31);
}

/* x / 2^exponent rounded to nearest, ties away from zero (0 <= exponent <= 31). */
static inline int32_t es_rdbpot(int32_t x, int exponent)
{
    const int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + ((x < 0) ? 1 : 0);
    return (x >> exponent) + ((remainder > threshold) ? 1 : 0);
}

/* x * 2^shift for shift > 0 with the wrap-around TFLite gets on its targets (no C overflow UB). */
static inline int32_t es_shl(int32_t x, int shift)
{
    return (int32_t)((uint32_t)x << shift);
}

/* TFLite MultiplyByQuantizedMultiplier: x * multiplier * 2^shift, multiplier in Q0.31. */
static inline int32_t es_mbqm(int32_t x, int32_t multiplier, int32_t shift)
{
    const int left_shift = shift > 0 ? (int)shift : 0;
    const int right_shift = shift > 0 ? 0 : (int)-shift;
    return es_rdbpot(es_srdhm(es_shl(x, left_shift), multiplier), right_shift);
}

/* Saturating x * 2^exponent for exponent >= 0 (gemmlowp SaturatingRoundingMultiplyByPOT). */
static inline int32_t es_sat_shl(int32_t x, int exponent)
{
    const int32_t limit = (int32_t)(INT32_MAX >> exponent);
    if (x > limit) {
        return INT32_MAX;
    }
    if (x < -limit) {
        return INT32_MIN;
    }
    return es_shl(x, exponent);
}

static inline int32_t es_clamp(int32_t x, int32_t lo, int32_t hi)
{
    return x < lo ? lo : (x > hi ? hi : x);
}

/* Requantize an int32 accumulator to int8: scale, add the output zero point, clamp. */
static inline int8_t es_requant(int32_t acc, int32_t multiplier, int32_t shift,
                                int32_t output_offset, int32_t act_min, int32_t act_max)
{
    return (int8_t)es_clamp(es_mbqm(acc, multiplier, shift) + output_offset, act_min, act_max);
}

/* Byte copy and fill without <string.h>: bare-metal toolchains (riscv64-unknown-elf without
 * newlib) may not ship it. */
static inline void es_copy(void *dst, const void *src, size_t n)
{
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    size_t i;
    for (i = 0; i < n; ++i) {
        d[i] = s[i];
    }
}

static inline void es_fill(void *dst, int value, size_t n)
{
    uint8_t *d = (uint8_t *)dst;
    size_t i;
    for (i = 0; i < n; ++i) {
        d[i] = (uint8_t)value;
    }
}

#endif /* ES_FIXEDPOINT_H */
