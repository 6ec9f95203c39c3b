/*
 * es_lut.c - table-driven ops: any elementwise int8 -> int8 map (LOGISTIC, QUANTIZE requantize,
 * SIGN) through a 256-entry table, and SOFTMAX from a 256-entry exp table.
 *
 * The tables are computed in Python by the numpy reference (the oracle), so no floating point
 * runs on the device and the C output equals the reference by construction. Softmax keeps the
 * integer normalisation of TFLite's reference kernel (gemmlowp reciprocal) in C.
 */
#include "es_runtime.h"
#include "es_fixedpoint.h"

int es_lut_s8(int32_t count, const int8_t *lut, const int8_t *in, int8_t *out)
{
    int32_t i;
    if (lut == NULL || in == NULL || out == NULL) {
        return ES_ERR_NULL;
    }
    for (i = 0; i < count; ++i) {
        out[i] = lut[(int32_t)in[i] + 128];
    }
    return ES_OK;
}

static int clz32(uint32_t x)
{
    int n = 0;
    if (x == 0) {
        return 32;
    }
    while ((x & 0x80000000u) == 0) {
        x <<= 1;
        ++n;
    }
    return n;
}

/* gemmlowp RoundingHalfSum: (a + b) / 2 rounded half away from zero. */
static int32_t rounding_half_sum(int32_t a, int32_t b)
{
    const int64_t sum = (int64_t)a + (int64_t)b;
    const int64_t sign = sum >= 0 ? 1 : -1;
    return (int32_t)((sum + sign) / 2);
}

/* gemmlowp one_over_one_plus_x_for_x_in_0_1 on raw Q0.31 values: three Newton-Raphson steps in
 * Q2.29 starting from 48/17 - 32/17 * d. */
static int32_t one_over_one_plus_x(int32_t a)
{
    const int32_t half_denominator = rounding_half_sum(a, INT32_MAX);
    const int32_t c48_over_17 = 1515870810;      /* 48/17 in Q2.29 */
    const int32_t cneg32_over_17 = -1010580540;  /* -32/17 in Q2.29 */
    const int32_t one_q2 = (int32_t)1 << 29;
    int32_t x = c48_over_17 + es_srdhm(half_denominator, cneg32_over_17);
    int i;
    for (i = 0; i < 3; ++i) {
        const int32_t half_denominator_times_x = es_srdhm(half_denominator, x);
        const int32_t one_minus = one_q2 - half_denominator_times_x;
        x = x + es_sat_shl(es_srdhm(x, one_minus), 2);
    }
    return es_sat_shl(x, 1);
}

int es_softmax_s8(const es_softmax_params *p, const int32_t *exp_lut, const int8_t *in, int8_t *out)
{
    /* sum of exps in Q12.19 (TFLite kAccumulationIntegerBits = 12) */
    const int accumulation_bits = 12;
    int32_t r, c;
    if (p == NULL || exp_lut == NULL || in == NULL || out == NULL) {
        return ES_ERR_NULL;
    }
    if (p->rows < 0 || p->depth < 1) {
        return ES_ERR_SHAPE;
    }
    for (r = 0; r < p->rows; ++r) {
        const int8_t *x = in + (size_t)r * p->depth;
        int8_t *y = out + (size_t)r * p->depth;
        int32_t max_in_row = -128, sum_of_exps = 0, shifted_scale, headroom_plus_one;
        int num_bits_over_unit, exponent;
        for (c = 0; c < p->depth; ++c) {
            max_in_row = x[c] > max_in_row ? x[c] : max_in_row;
        }
        for (c = 0; c < p->depth; ++c) {
            sum_of_exps += es_rdbpot(exp_lut[max_in_row - x[c]], accumulation_bits);
        }
        /* TFLite GetReciprocal: 1 / sum as a Q0.31 scale and a power-of-two exponent */
        headroom_plus_one = clz32((uint32_t)sum_of_exps);
        num_bits_over_unit = accumulation_bits - headroom_plus_one;
        shifted_scale = one_over_one_plus_x(
            (int32_t)(((uint32_t)sum_of_exps << headroom_plus_one) - ((uint32_t)1 << 31)));
        exponent = num_bits_over_unit + 31 - 8;
        if (exponent < 0 || exponent > 31) {
            return ES_ERR_PARAM;
        }
        for (c = 0; c < p->depth; ++c) {
            const int32_t unsat = es_rdbpot(es_srdhm(shifted_scale, exp_lut[max_in_row - x[c]]), exponent);
            y[c] = (int8_t)es_clamp(unsat - 128, -128, 127);
        }
    }
    return ES_OK;
}
