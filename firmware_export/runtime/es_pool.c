/*
 * es_pool.c - AVERAGE_POOL_2D, MAX_POOL_2D (TFLite reference_integer_ops AveragePool / MaxPool:
 * windows are clipped to the image, pools keep the input quantization) and MEAN.
 */
#include "es_runtime.h"
#include "es_fixedpoint.h"

static int pool_check(const es_pool_params *p, const int8_t *in, const int8_t *out)
{
    if (p == NULL || in == NULL || out == NULL) {
        return ES_ERR_NULL;
    }
    if (p->stride_h < 1 || p->stride_w < 1 || p->filter_h < 1 || p->filter_w < 1) {
        return ES_ERR_PARAM;
    }
    if (p->in.n != p->out.n || p->in.c != p->out.c) {
        return ES_ERR_SHAPE;
    }
    return ES_OK;
}

static int32_t max32(int32_t a, int32_t b)
{
    return a > b ? a : b;
}

static int32_t min32(int32_t a, int32_t b)
{
    return a < b ? a : b;
}

/* is_avg: 1 = average (rounded half away from zero), 0 = max. */
static int pool(const es_pool_params *p, const int8_t *in, int8_t *out, int is_avg)
{
    int32_t b, oy, ox, c, fy, fx;
    const int32_t depth = p->in.c;
    for (b = 0; b < p->out.n; ++b) {
        for (oy = 0; oy < p->out.h; ++oy) {
            const int32_t iy0 = oy * p->stride_h - p->pad_top;
            const int32_t fy0 = max32(0, -iy0), fy1 = min32(p->filter_h, p->in.h - iy0);
            for (ox = 0; ox < p->out.w; ++ox) {
                const int32_t ix0 = ox * p->stride_w - p->pad_left;
                const int32_t fx0 = max32(0, -ix0), fx1 = min32(p->filter_w, p->in.w - ix0);
                const int32_t count = (fy1 > fy0 && fx1 > fx0) ? (fy1 - fy0) * (fx1 - fx0) : 0;
                int8_t *dst = out + (((size_t)b * p->out.h + oy) * p->out.w + ox) * depth;
                if (is_avg && count == 0) {
                    return ES_ERR_EMPTY_WINDOW;
                }
                for (c = 0; c < depth; ++c) {
                    int32_t acc = is_avg ? 0 : -128;
                    for (fy = fy0; fy < fy1; ++fy) {
                        const int8_t *row = in + (((size_t)b * p->in.h + iy0 + fy) * p->in.w + ix0) * depth + c;
                        for (fx = fx0; fx < fx1; ++fx) {
                            const int32_t v = row[(size_t)fx * depth];
                            acc = is_avg ? acc + v : max32(acc, v);
                        }
                    }
                    if (is_avg) {
                        acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
                    }
                    dst[c] = (int8_t)es_clamp(acc, p->act_min, p->act_max);
                }
            }
        }
    }
    return ES_OK;
}

int es_avg_pool_s8(const es_pool_params *p, const int8_t *in, int8_t *out)
{
    int rc = pool_check(p, in, out);
    return rc != ES_OK ? rc : pool(p, in, out, 1);
}

int es_max_pool_s8(const es_pool_params *p, const int8_t *in, int8_t *out)
{
    int rc = pool_check(p, in, out);
    return rc != ES_OK ? rc : pool(p, in, out, 0);
}

int es_mean_s8(const es_mean_params *p, const int8_t *in, int8_t *out)
{
    int32_t o, r, i;
    if (p == NULL || in == NULL || out == NULL) {
        return ES_ERR_NULL;
    }
    if (p->outer < 0 || p->reduce < 1 || p->inner < 0) {
        return ES_ERR_SHAPE;
    }
    for (o = 0; o < p->outer; ++o) {
        for (i = 0; i < p->inner; ++i) {
            const int8_t *src = in + (size_t)o * p->reduce * p->inner + i;
            const int32_t n = p->reduce;
            int32_t acc = 0, v;
            for (r = 0; r < n; ++r) {
                acc += src[(size_t)r * p->inner];
            }
            /* TFLite QuantizedMeanOrSum: 1/count is folded into mult/shift at export time */
            v = es_mbqm(acc + n * p->input_offset, p->mult, p->shift) + p->output_offset;
            out[(size_t)o * p->inner + i] = (int8_t)es_clamp(v, -128, 127);
        }
    }
    return ES_OK;
}
