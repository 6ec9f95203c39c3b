/*
 * es_conv.c - CONV_2D (general, 1x1 and 3x3 fast paths), DEPTHWISE_CONV_2D, FULLY_CONNECTED.
 *
 * Semantics: TFLite Micro reference_integer_ops::ConvPerChannel / DepthwiseConvPerChannel /
 * FullyConnected. Padding pixels are skipped, which equals reading the input zero point. The fast
 * paths only drop bounds checks and loop overhead; they add the same integers in the same order,
 * so they give the same bits as the general path.
 */
#include "es_runtime.h"
#include "es_fixedpoint.h"

static int conv_check(const es_conv_params *p, const int8_t *in, const int8_t *filter,
                      const int32_t *mult, const int32_t *shift, const int8_t *out)
{
    if (p == NULL || in == NULL || filter == NULL || mult == NULL || shift == NULL || out == NULL) {
        return ES_ERR_NULL;
    }
    if (p->stride_h < 1 || p->stride_w < 1 || p->dilation_h < 1 || p->dilation_w < 1) {
        return ES_ERR_PARAM;
    }
    if (p->in.n != p->out.n || p->filter.c < 1) {
        return ES_ERR_SHAPE;
    }
    return ES_OK;
}

/* All output channels of one output pixel, any geometry (groups, dilation, padding). */
static void conv_pixel_generic(const es_conv_params *p, int32_t b, int32_t oy, int32_t ox,
                               const int8_t *in, const int8_t *filter, const int32_t *bias,
                               const int32_t *mult, const int32_t *shift, int8_t *dst)
{
    const int32_t in_c = p->in.c, fc = p->filter.c, out_c = p->out.c;
    const int32_t kh = p->filter.h, kw = p->filter.w;
    const int32_t out_per_group = out_c / (in_c / fc);
    const int32_t iy0 = oy * p->stride_h - p->pad_top;
    const int32_t ix0 = ox * p->stride_w - p->pad_left;
    int32_t oc, ky, kx, ic;
    for (oc = 0; oc < out_c; ++oc) {
        const int32_t group_base = (oc / out_per_group) * fc;
        const int8_t *f = filter + (size_t)oc * kh * kw * fc;
        int32_t acc = 0;
        for (ky = 0; ky < kh; ++ky) {
            const int32_t iy = iy0 + ky * p->dilation_h;
            if (iy < 0 || iy >= p->in.h) {
                continue;
            }
            for (kx = 0; kx < kw; ++kx) {
                const int32_t ix = ix0 + kx * p->dilation_w;
                const int8_t *src;
                const int8_t *fk;
                if (ix < 0 || ix >= p->in.w) {
                    continue;
                }
                src = in + (((size_t)b * p->in.h + iy) * p->in.w + ix) * in_c + group_base;
                fk = f + (size_t)(ky * kw + kx) * fc;
                for (ic = 0; ic < fc; ++ic) {
                    acc += ((int32_t)src[ic] + p->input_offset) * (int32_t)fk[ic];
                }
            }
        }
        if (bias != NULL) {
            acc += bias[oc];
        }
        dst[oc] = es_requant(acc, mult[oc], shift[oc], p->output_offset, p->act_min, p->act_max);
    }
}

static int conv_shape_ok(const es_conv_params *p)
{
    const int32_t groups = p->in.c / p->filter.c;
    return p->in.c % p->filter.c == 0 && p->out.c % groups == 0 && p->filter.n == p->out.c;
}

int es_conv2d_s8_generic(const es_conv_params *p, const int8_t *in, const int8_t *filter,
                         const int32_t *bias, const int32_t *mult, const int32_t *shift, int8_t *out)
{
    int32_t b, oy, ox;
    int rc = conv_check(p, in, filter, mult, shift, out);
    if (rc != ES_OK) {
        return rc;
    }
    if (!conv_shape_ok(p)) {
        return ES_ERR_SHAPE;
    }
    for (b = 0; b < p->out.n; ++b) {
        for (oy = 0; oy < p->out.h; ++oy) {
            for (ox = 0; ox < p->out.w; ++ox) {
                int8_t *dst = out + (((size_t)b * p->out.h + oy) * p->out.w + ox) * p->out.c;
                conv_pixel_generic(p, b, oy, ox, in, filter, bias, mult, shift, dst);
            }
        }
    }
    return ES_OK;
}

#ifndef ES_CONV_FORCE_GENERIC
/* Adds sum((src[i] + off) * f_j[i]) for four filters f_j = f + j * fstride: each input value is
 * loaded and offset once for four output channels. */
static void dot4(const int8_t *src, const int8_t *f, int32_t fstride, int32_t n, int32_t off, int32_t *acc)
{
    const int8_t *f0 = f, *f1 = f + fstride, *f2 = f + 2 * fstride, *f3 = f + 3 * fstride;
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3], i;
    for (i = 0; i < n; ++i) {
        const int32_t v = (int32_t)src[i] + off;
        a0 += v * f0[i];
        a1 += v * f1[i];
        a2 += v * f2[i];
        a3 += v * f3[i];
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

static int32_t dot1(const int8_t *src, const int8_t *f, int32_t n, int32_t off)
{
    int32_t acc = 0, i;
    for (i = 0; i < n; ++i) {
        acc += ((int32_t)src[i] + off) * (int32_t)f[i];
    }
    return acc;
}

/* Bias, requantize and store a block of accumulators for output channels oc .. oc + count - 1. */
static void store_block(const es_conv_params *p, const int32_t *acc, int32_t oc, int32_t count,
                        const int32_t *bias, const int32_t *mult, const int32_t *shift, int8_t *dst)
{
    int32_t j;
    for (j = 0; j < count; ++j) {
        const int32_t a = acc[j] + (bias != NULL ? bias[oc + j] : 0);
        dst[oc + j] = es_requant(a, mult[oc + j], shift[oc + j], p->output_offset, p->act_min, p->act_max);
    }
}

/* 1x1, no padding, no groups: every output pixel is one input pixel times the weight matrix. */
static void conv_1x1(const es_conv_params *p, const int8_t *in, const int8_t *filter,
                     const int32_t *bias, const int32_t *mult, const int32_t *shift, int8_t *out)
{
    const int32_t in_c = p->in.c, out_c = p->out.c;
    int32_t b, oy, ox, oc;
    for (b = 0; b < p->out.n; ++b) {
        for (oy = 0; oy < p->out.h; ++oy) {
            for (ox = 0; ox < p->out.w; ++ox) {
                const int8_t *src = in + (((size_t)b * p->in.h + oy * p->stride_h) * p->in.w +
                                          ox * p->stride_w) * in_c;
                int8_t *dst = out + (((size_t)b * p->out.h + oy) * p->out.w + ox) * out_c;
                for (oc = 0; oc + 4 <= out_c; oc += 4) {
                    int32_t acc[4] = {0, 0, 0, 0};
                    dot4(src, filter + (size_t)oc * in_c, in_c, in_c, p->input_offset, acc);
                    store_block(p, acc, oc, 4, bias, mult, shift, dst);
                }
                for (; oc < out_c; ++oc) {
                    const int32_t acc = dot1(src, filter + (size_t)oc * in_c, in_c, p->input_offset);
                    store_block(p, &acc, oc, 1, bias, mult, shift, dst);
                }
            }
        }
    }
}

/* 3x3, no groups: interior pixels read nine taps without bounds checks; border pixels take the
 * general path. */
static void conv_3x3(const es_conv_params *p, const int8_t *in, const int8_t *filter,
                     const int32_t *bias, const int32_t *mult, const int32_t *shift, int8_t *out)
{
    const int32_t in_c = p->in.c, out_c = p->out.c, fstride = 9 * p->in.c;
    const int32_t dh = p->dilation_h, dw = p->dilation_w;
    int32_t b, oy, ox, oc, t;
    for (b = 0; b < p->out.n; ++b) {
        for (oy = 0; oy < p->out.h; ++oy) {
            const int32_t iy0 = oy * p->stride_h - p->pad_top;
            const int row_inside = iy0 >= 0 && iy0 + 2 * dh < p->in.h;
            for (ox = 0; ox < p->out.w; ++ox) {
                const int32_t ix0 = ox * p->stride_w - p->pad_left;
                int8_t *dst = out + (((size_t)b * p->out.h + oy) * p->out.w + ox) * out_c;
                const int8_t *taps[9];
                if (!row_inside || ix0 < 0 || ix0 + 2 * dw >= p->in.w) {
                    conv_pixel_generic(p, b, oy, ox, in, filter, bias, mult, shift, dst);
                    continue;
                }
                for (t = 0; t < 9; ++t) {
                    taps[t] = in + (((size_t)b * p->in.h + iy0 + (t / 3) * dh) * p->in.w +
                                    ix0 + (t % 3) * dw) * in_c;
                }
                for (oc = 0; oc + 4 <= out_c; oc += 4) {
                    int32_t acc[4] = {0, 0, 0, 0};
                    for (t = 0; t < 9; ++t) {
                        dot4(taps[t], filter + (size_t)oc * fstride + t * in_c, fstride, in_c,
                             p->input_offset, acc);
                    }
                    store_block(p, acc, oc, 4, bias, mult, shift, dst);
                }
                for (; oc < out_c; ++oc) {
                    int32_t acc = 0;
                    for (t = 0; t < 9; ++t) {
                        acc += dot1(taps[t], filter + (size_t)oc * fstride + t * in_c, in_c, p->input_offset);
                    }
                    store_block(p, &acc, oc, 1, bias, mult, shift, dst);
                }
            }
        }
    }
}

#endif /* ES_CONV_FORCE_GENERIC */

int es_conv2d_s8(const es_conv_params *p, const int8_t *in, const int8_t *filter,
                 const int32_t *bias, const int32_t *mult, const int32_t *shift, int8_t *out)
{
#ifndef ES_CONV_FORCE_GENERIC
    int rc = conv_check(p, in, filter, mult, shift, out);
    if (rc != ES_OK) {
        return rc;
    }
    if (!conv_shape_ok(p)) {
        return ES_ERR_SHAPE;
    }
    if (p->filter.c == p->in.c) {
        if (p->filter.h == 1 && p->filter.w == 1 && p->pad_top == 0 && p->pad_left == 0 &&
            (p->out.h - 1) * p->stride_h < p->in.h && (p->out.w - 1) * p->stride_w < p->in.w) {
            conv_1x1(p, in, filter, bias, mult, shift, out);
            return ES_OK;
        }
        if (p->filter.h == 3 && p->filter.w == 3) {
            conv_3x3(p, in, filter, bias, mult, shift, out);
            return ES_OK;
        }
    }
#endif
    return es_conv2d_s8_generic(p, in, filter, bias, mult, shift, out);
}

int es_depthwise_conv2d_s8(const es_conv_params *p, const int8_t *in, const int8_t *filter,
                           const int32_t *bias, const int32_t *mult, const int32_t *shift,
                           int8_t *out)
{
    const int32_t in_c = p != NULL ? p->in.c : 0, mult_c = p != NULL ? p->depth_multiplier : 0;
    const int32_t out_c = in_c * mult_c;
    int32_t b, oy, ox, ic, m, ky, kx;
    int rc = conv_check(p, in, filter, mult, shift, out);
    if (rc != ES_OK) {
        return rc;
    }
    if (mult_c < 1 || p->out.c != out_c || p->filter.c != out_c) {
        return ES_ERR_SHAPE;
    }
    for (b = 0; b < p->out.n; ++b) {
        for (oy = 0; oy < p->out.h; ++oy) {
            const int32_t iy0 = oy * p->stride_h - p->pad_top;
            for (ox = 0; ox < p->out.w; ++ox) {
                const int32_t ix0 = ox * p->stride_w - p->pad_left;
                int8_t *dst = out + (((size_t)b * p->out.h + oy) * p->out.w + ox) * out_c;
                for (ic = 0; ic < in_c; ++ic) {
                    for (m = 0; m < mult_c; ++m) {
                        const int32_t oc = ic * mult_c + m;
                        int32_t acc = 0;
                        for (ky = 0; ky < p->filter.h; ++ky) {
                            const int32_t iy = iy0 + ky * p->dilation_h;
                            if (iy < 0 || iy >= p->in.h) {
                                continue;
                            }
                            for (kx = 0; kx < p->filter.w; ++kx) {
                                const int32_t ix = ix0 + kx * p->dilation_w;
                                int32_t x;
                                if (ix < 0 || ix >= p->in.w) {
                                    continue;
                                }
                                x = in[(((size_t)b * p->in.h + iy) * p->in.w + ix) * in_c + ic];
                                acc += (x + p->input_offset) *
                                       (int32_t)filter[(size_t)(ky * p->filter.w + kx) * out_c + oc];
                            }
                        }
                        if (bias != NULL) {
                            acc += bias[oc];
                        }
                        dst[oc] = es_requant(acc, mult[oc], shift[oc], p->output_offset,
                                             p->act_min, p->act_max);
                    }
                }
            }
        }
    }
    return ES_OK;
}

int es_fully_connected_s8(const es_fc_params *p, const int8_t *in, const int8_t *weights,
                          const int32_t *bias, const int32_t *mult, const int32_t *shift,
                          int8_t *out)
{
    int32_t b, o, i;
    if (p == NULL || in == NULL || weights == NULL || mult == NULL || shift == NULL || out == NULL) {
        return ES_ERR_NULL;
    }
    if (p->batches < 0 || p->in_features < 1 || p->out_features < 1) {
        return ES_ERR_SHAPE;
    }
    for (b = 0; b < p->batches; ++b) {
        const int8_t *x = in + (size_t)b * p->in_features;
        const int8_t *w = weights;
        for (o = 0; o < p->out_features; ++o) {
            int32_t acc = 0;
            for (i = 0; i < p->in_features; ++i) {
                acc += ((int32_t)x[i] + p->input_offset) * (int32_t)w[i];
            }
            w += p->in_features;
            if (bias != NULL) {
                acc += bias[o];
            }
            *out++ = es_requant(acc, mult[o], shift[o], p->output_offset, p->act_min, p->act_max);
        }
    }
    return ES_OK;
}
