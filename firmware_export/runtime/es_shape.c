/*
 * es_shape.c - data movement: TRANSPOSE (strided copy), PAD, CONCATENATION, RESIZE_NEAREST_NEIGHBOR,
 * RESIZE_BILINEAR. Resizes keep the input quantization (as TFLite).
 */
#include "es_runtime.h"
#include "es_fixedpoint.h"

int es_strided_copy_s8(const es_strided_params *p, const int8_t *in, int8_t *out)
{
    int32_t idx[ES_MAX_DIMS];
    int32_t count = 1, i, d, src = 0;
    if (p == NULL || in == NULL || out == NULL) {
        return ES_ERR_NULL;
    }
    if (p->ndim < 1 || p->ndim > ES_MAX_DIMS) {
        return ES_ERR_PARAM;
    }
    for (d = 0; d < p->ndim; ++d) {
        idx[d] = 0;
        count *= p->dims[d];
    }
    for (i = 0; i < count; ++i) {
        out[i] = in[src];
        for (d = p->ndim - 1; d >= 0; --d) {
            ++idx[d];
            src += p->src_strides[d];
            if (idx[d] < p->dims[d]) {
                break;
            }
            src -= p->src_strides[d] * p->dims[d];
            idx[d] = 0;
        }
    }
    return ES_OK;
}

int es_copy_s8(int32_t count, const int8_t *in, int8_t *out)
{
    if (in == NULL || out == NULL) {
        return ES_ERR_NULL;
    }
    if (count < 0) {
        return ES_ERR_SHAPE;
    }
    es_copy(out, in, (size_t)count);
    return ES_OK;
}

int es_pad_s8(const es_pad_params *p, const int8_t *in, int8_t *out)
{
    int32_t idx[ES_MAX_DIMS];
    int32_t out_strides[ES_MAX_DIMS];
    int32_t rows = 1, out_count = 1, row_len, r, d, last;
    if (p == NULL || in == NULL || out == NULL) {
        return ES_ERR_NULL;
    }
    if (p->ndim < 1 || p->ndim > ES_MAX_DIMS) {
        return ES_ERR_PARAM;
    }
    last = p->ndim - 1;
    for (d = last; d >= 0; --d) {
        if (p->before[d] < 0 || p->out_dims[d] < p->in_dims[d] + p->before[d]) {
            return ES_ERR_SHAPE;
        }
        out_strides[d] = out_count;
        out_count *= p->out_dims[d];
        idx[d] = 0;
        if (d < last) {
            rows *= p->in_dims[d];
        }
    }
    /* fill with the pad value (the zero point), then copy each innermost input row into place */
    es_fill(out, (int)(int8_t)p->pad_value, (size_t)out_count);
    row_len = p->in_dims[last];
    for (r = 0; r < rows && row_len > 0; ++r) {
        int32_t dst = p->before[last];
        for (d = 0; d < last; ++d) {
            dst += (idx[d] + p->before[d]) * out_strides[d];
        }
        es_copy(out + dst, in + (size_t)r * row_len, (size_t)row_len);
        for (d = last - 1; d >= 0; --d) {
            if (++idx[d] < p->in_dims[d]) {
                break;
            }
            idx[d] = 0;
        }
    }
    return ES_OK;
}

int es_concat_s8(const es_concat_params *p, const int32_t *copy_sizes,
                 const int8_t *const *inputs, const int8_t *const *luts, int8_t *out)
{
    int32_t o, k, j;
    if (p == NULL || copy_sizes == NULL || inputs == NULL || luts == NULL || out == NULL) {
        return ES_ERR_NULL;
    }
    for (k = 0; k < p->num_inputs; ++k) {
        if (inputs[k] == NULL) {
            return ES_ERR_NULL;
        }
    }
    for (o = 0; o < p->outer; ++o) {
        for (k = 0; k < p->num_inputs; ++k) {
            const int32_t n = copy_sizes[k];
            const int8_t *src = inputs[k] + (size_t)o * n;
            if (luts[k] == NULL) {
                es_copy(out, src, (size_t)n);
            } else {
                for (j = 0; j < n; ++j) {
                    out[j] = luts[k][(int32_t)src[j] + 128];
                }
            }
            out += n;
        }
    }
    return ES_OK;
}

int es_resize_nearest_s8(const es_resize_params *p, const int32_t *y_index, const int32_t *x_index,
                         const int8_t *in, int8_t *out)
{
    int32_t b, y, x;
    const int32_t depth = p != NULL ? p->in.c : 0;
    if (p == NULL || y_index == NULL || x_index == NULL || in == NULL || out == NULL) {
        return ES_ERR_NULL;
    }
    if (p->in.n != p->out.n || p->in.c != p->out.c) {
        return ES_ERR_SHAPE;
    }
    for (b = 0; b < p->out.n; ++b) {
        for (y = 0; y < p->out.h; ++y) {
            const int32_t iy = y_index[y];
            if (iy < 0 || iy >= p->in.h) {
                return ES_ERR_PARAM;
            }
            for (x = 0; x < p->out.w; ++x) {
                const int32_t ix = x_index[x];
                if (ix < 0 || ix >= p->in.w) {
                    return ES_ERR_PARAM;
                }
                es_copy(out, in + (((size_t)b * p->in.h + iy) * p->in.w + ix) * depth, (size_t)depth);
                out += depth;
            }
        }
    }
    return ES_OK;
}

/* TFLite ComputeInterpolationValuesInteger: source position in Q10 and its two neighbours. */
static void interp_q10(int32_t value, int32_t scale_10, int32_t half_pixel_centers, int32_t size,
                       int32_t *scaled, int32_t *lower, int32_t *upper)
{
    int32_t lo, hi;
    *scaled = half_pixel_centers ? value * scale_10 + scale_10 / 2 - (1 << 9) : value * scale_10;
    lo = *scaled / (1 << 10); /* truncates toward zero, as TFLite */
    hi = (*scaled + (1 << 10) - 1) / (1 << 10);
    *lower = lo > 0 ? lo : 0;
    *upper = hi < size - 1 ? hi : size - 1;
}

int es_resize_bilinear_s8(const es_bilinear_params *p, const int8_t *in, int8_t *out)
{
    int32_t b, y, x, c;
    if (p == NULL || in == NULL || out == NULL) {
        return ES_ERR_NULL;
    }
    if (p->in.n != p->out.n || p->in.c != p->out.c) {
        return ES_ERR_SHAPE;
    }
    for (b = 0; b < p->out.n; ++b) {
        for (y = 0; y < p->out.h; ++y) {
            int32_t sy, y0, y1, wy;
            interp_q10(y, p->height_scale_10, p->half_pixel_centers, p->in.h, &sy, &y0, &y1);
            wy = sy - (1 << 10) * y0;
            for (x = 0; x < p->out.w; ++x) {
                int32_t sx, x0, x1, wx;
                const int8_t *r00, *r01, *r10, *r11;
                interp_q10(x, p->width_scale_10, p->half_pixel_centers, p->in.w, &sx, &x0, &x1);
                wx = sx - (1 << 10) * x0;
                r00 = in + (((size_t)b * p->in.h + y0) * p->in.w + x0) * p->in.c;
                r01 = in + (((size_t)b * p->in.h + y0) * p->in.w + x1) * p->in.c;
                r10 = in + (((size_t)b * p->in.h + y1) * p->in.w + x0) * p->in.c;
                r11 = in + (((size_t)b * p->in.h + y1) * p->in.w + x1) * p->in.c;
                for (c = 0; c < p->in.c; ++c) {
                    /* |weights| sum to at most 2048 * 2048, so the Q20 sum fits in int32 */
                    const int32_t q20 = r00[c] * ((1 << 10) - wy) * ((1 << 10) - wx) +
                                        r10[c] * wy * ((1 << 10) - wx) +
                                        r01[c] * ((1 << 10) - wy) * wx +
                                        r11[c] * wy * wx;
                    const int32_t round = q20 > 0 ? (1 << 19) : -(1 << 19);
                    *out++ = (int8_t)((q20 + round) / (1 << 20));
                }
            }
        }
    }
    return ES_OK;
}
