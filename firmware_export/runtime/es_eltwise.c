/*
 * es_eltwise.c - ADD and MUL of int8 tensors with numpy broadcasting.
 *
 * Semantics: TFLite Micro reference_integer_ops AddFunc / MulElementwise (and their
 * BroadcastAdd/Mul4DSlow variants, which apply the same per-element arithmetic). The generator
 * collapses shapes, so equal shapes arrive as one flat dimension with unit strides.
 */
#include "es_runtime.h"
#include "es_fixedpoint.h"

static int8_t add_one(const es_eltwise_params *p, int32_t a, int32_t b)
{
    const int32_t sa = es_shl(a + p->a_offset, (int)p->left_shift);
    const int32_t sb = es_shl(b + p->b_offset, (int)p->left_shift);
    const int32_t ra = es_mbqm(sa, p->a_mult, p->a_shift);
    const int32_t rb = es_mbqm(sb, p->b_mult, p->b_shift);
    const int32_t raw = es_mbqm(ra + rb, p->out_mult, p->out_shift) + p->output_offset;
    return (int8_t)es_clamp(raw, p->act_min, p->act_max);
}

static int8_t mul_one(const es_eltwise_params *p, int32_t a, int32_t b)
{
    const int32_t prod = (a + p->a_offset) * (b + p->b_offset);
    const int32_t raw = p->output_offset + es_mbqm(prod, p->out_mult, p->out_shift);
    return (int8_t)es_clamp(raw, p->act_min, p->act_max);
}

typedef int8_t (*eltwise_fn)(const es_eltwise_params *p, int32_t a, int32_t b);

/* Walks the output in order; input offsets follow their (possibly zero) strides. Element i of
 * the output is written after element i of each input is read, so an input with the output's
 * shape may be the output buffer itself. */
static int eltwise(const es_eltwise_params *p, const int8_t *a, const int8_t *b, int8_t *out,
                   eltwise_fn fn)
{
    int32_t idx[ES_MAX_DIMS];
    int32_t count = 1, i, d;
    int32_t ao = 0, bo = 0;
    if (p == NULL || a == NULL || b == NULL || out == NULL) {
        return ES_ERR_NULL;
    }
    if (p->ndim < 1 || p->ndim > ES_MAX_DIMS || p->left_shift < 0 || p->left_shift > 30) {
        return ES_ERR_PARAM;
    }
    for (d = 0; d < p->ndim; ++d) {
        idx[d] = 0;
        count *= p->out_dims[d];
    }
    if (p->ndim == 1 && p->a_strides[0] == 1 && p->b_strides[0] == 1) {
        for (i = 0; i < count; ++i) {
            out[i] = fn(p, a[i], b[i]);
        }
        return ES_OK;
    }
    for (i = 0; i < count; ++i) {
        out[i] = fn(p, a[ao], b[bo]);
        for (d = p->ndim - 1; d >= 0; --d) {
            ++idx[d];
            ao += p->a_strides[d];
            bo += p->b_strides[d];
            if (idx[d] < p->out_dims[d]) {
                break;
            }
            ao -= p->a_strides[d] * p->out_dims[d];
            bo -= p->b_strides[d] * p->out_dims[d];
            idx[d] = 0;
        }
    }
    return ES_OK;
}

int es_add_s8(const es_eltwise_params *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    return eltwise(p, a, b, out, add_one);
}

int es_mul_s8(const es_eltwise_params *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    return eltwise(p, a, b, out, mul_one);
}
