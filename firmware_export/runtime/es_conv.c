/*
 * es_conv.c - CONV_2D (general path and a fast path without groups), DEPTHWISE_CONV_2D, FULLY_CONNECTED.
 *
 * Semantics: TFLite Micro reference_integer_ops::ConvPerChannel / DepthwiseConvPerChannel /
 * FullyConnected. Padding pixels are skipped, which equals reading the input zero point. The
 * general paths are the plain definition; the fast paths add exactly the same int32 products
 * (in another order, which integer addition does not notice), so they give the same bits. Build
 * with ES_CONV_FORCE_GENERIC to run the general paths only (the tests compare both).
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
/*
 * Fast paths. The innermost loops are contiguous NHWC dot products over input channels (four
 * output channels per pass over the input). Padding is handled by clipping each pixel's tap range
 * once, so no tap is checked inside a loop. Requantization runs once per output.
 *
 * The dot products come in two loop shapes that add the same products. Where the core has a SIMD
 * unit (x86 SSE2, Arm NEON), fixed blocks of ES_DOT_BLOCK int16 products ((x + input_offset) and
 * the weight), which compilers vectorise into multiply-adds (pmaddwd, smlal). Without one
 * (Cortex-M, RV32), one scalar pass that loads each input once for four filters, which needs the
 * fewest instructions there. -DES_DOT_SCALAR forces the scalar shape (the tests run both).
 */
#define ES_DOT_BLOCK 16
#if (defined(__SSE2__) || defined(__ARM_NEON)) && !defined(ES_DOT_SCALAR)
#define ES_DOT_SIMD 1
#else
#define ES_DOT_SIMD 0
#endif

/* The fast paths need x + input_offset to fit int16, true for every int8 zero point. */
static int offset_fits_int16(int32_t off)
{
    return off >= -256 && off <= 256;
}

/* What turns accumulators into int8 outputs (all arrays indexed by output channel). */
typedef struct {
    const int32_t *bias, *mult, *shift;
    int32_t output_offset, act_min, act_max;
} requant_args;

/* Bias, requantize and store accumulators for output channels oc .. oc + count - 1. The fields
 * are read into locals first: a store through the int8 dst may alias anything, so the compiler
 * would reload them after every store. */
static void store_block(const requant_args *r, const int32_t *acc, int32_t oc, int32_t count, int8_t *dst)
{
    const int32_t *bias = r->bias, *mult = r->mult, *shift = r->shift;
    const int32_t out_off = r->output_offset, lo = r->act_min, hi = r->act_max;
    int32_t j;
    for (j = oc; j < oc + count; ++j) {
        const int32_t a = acc[j - oc] + (bias != NULL ? bias[j] : 0);
        dst[j] = es_requant(a, mult[j], shift[j], out_off, lo, hi);
    }
}

#if ES_DOT_SIMD
/* sum over j < ES_DOT_BLOCK of v[j] * f[j]: a fixed trip count with int16 operands, the shape
 * compilers vectorise into multiply-adds. */
static int32_t dot_block(const int16_t *v, const int8_t *f)
{
    int32_t s = 0, j;
    for (j = 0; j < ES_DOT_BLOCK; ++j) {
        s += v[j] * (int16_t)f[j];
    }
    return s;
}
#endif

/* acc[k] += sum over i < n of (src[i] + off) * f[k * fstride + i], for k = 0 .. 3: each input
 * value is loaded and offset once for four output channels. Four named accumulators (not an
 * array) keep the sums in registers. */
static void dot4(const int8_t *src, const int8_t *f, int32_t fstride, int32_t n, int16_t off, int32_t *acc)
{
    const int8_t *f0 = f, *f1 = f + fstride, *f2 = f + 2 * (size_t)fstride, *f3 = f + 3 * (size_t)fstride;
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    int32_t i = 0;
#if ES_DOT_SIMD
    for (; i + ES_DOT_BLOCK <= n; i += ES_DOT_BLOCK) {
        int16_t v[ES_DOT_BLOCK];
        int32_t j;
        for (j = 0; j < ES_DOT_BLOCK; ++j) {
            v[j] = (int16_t)(src[i + j] + off);
        }
        a0 += dot_block(v, f0 + i);
        a1 += dot_block(v, f1 + i);
        a2 += dot_block(v, f2 + i);
        a3 += dot_block(v, f3 + i);
    }
#endif
    for (; i < n; ++i) {
        const int32_t x = (int32_t)src[i] + off;
        a0 += x * f0[i];
        a1 += x * f1[i];
        a2 += x * f2[i];
        a3 += x * f3[i];
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

/* sum over i < n of (src[i] + off) * f[i]. */
static int32_t dot1(const int8_t *src, const int8_t *f, int32_t n, int16_t off)
{
    int32_t acc = 0, i = 0;
#if ES_DOT_SIMD
    for (; i + ES_DOT_BLOCK <= n; i += ES_DOT_BLOCK) {
        int32_t s = 0, j;
        for (j = 0; j < ES_DOT_BLOCK; ++j) {
            const int16_t v = (int16_t)(src[i + j] + off);
            s += v * (int16_t)f[i + j];
        }
        acc += s;
    }
#endif
    for (; i < n; ++i) {
        acc += ((int32_t)src[i] + off) * f[i];
    }
    return acc;
}

/* Dot products with `count` (4 or 1) consecutive filters starting at f. */
static void dot_n(const int8_t *src, const int8_t *f, int32_t fstride, int32_t n, int16_t off,
                  int32_t count, int32_t *acc)
{
    if (count == 4) {
        dot4(src, f, fstride, n, off, acc);
    } else {
        acc[0] += dot1(src, f, n, off);
    }
}

/* Taps [*lo, *hi) of a window that starts at input index `start` and whose input index lies
 * inside 0 .. size - 1 (empty when *lo >= *hi). */
static void tap_range(int32_t start, int32_t dilation, int32_t taps, int32_t size, int32_t *lo, int32_t *hi)
{
    int32_t end = 0;
    *lo = start < 0 ? (-start + dilation - 1) / dilation : 0;
    if (size - start > 0) {
        end = (size - start + dilation - 1) / dilation;
    }
    *hi = end < taps ? end : taps;
}

/* One CONV_2D output pixel without groups. With dilation_w == 1 the valid taps of a filter row
 * and the input pixels under them are both one contiguous run of (kx_hi - kx_lo) * in_c bytes. */
static void conv_pixel_fast(const es_conv_params *p, const requant_args *r, const int8_t *in,
                            const int8_t *filter, int32_t b, int32_t oy, int32_t ox, int8_t *dst)
{
    const int32_t in_c = p->in.c, out_c = p->out.c, kw = p->filter.w, dh = p->dilation_h, dw = p->dilation_w;
    const int32_t fstride = p->filter.h * kw * in_c;
    const int32_t iy0 = oy * p->stride_h - p->pad_top, ix0 = ox * p->stride_w - p->pad_left;
    const int16_t off = (int16_t)p->input_offset;
    int32_t ky_lo, ky_hi, kx_lo, kx_hi, oc, ky, kx;
    tap_range(iy0, dh, p->filter.h, p->in.h, &ky_lo, &ky_hi);
    tap_range(ix0, dw, kw, p->in.w, &kx_lo, &kx_hi);
    for (oc = 0; oc < out_c;) {
        const int32_t count = out_c - oc >= 4 ? 4 : 1;
        int32_t acc[4] = {0, 0, 0, 0};
        for (ky = ky_lo; ky < ky_hi; ++ky) {
            const int8_t *row = in + ((size_t)b * p->in.h + iy0 + ky * dh) * p->in.w * in_c;
            const int8_t *frow = filter + (size_t)oc * fstride + (size_t)ky * kw * in_c;
            if (dw == 1) {
                dot_n(row + (size_t)(ix0 + kx_lo) * in_c, frow + (size_t)kx_lo * in_c, fstride,
                      (kx_hi - kx_lo) * in_c, off, count, acc);
                continue;
            }
            for (kx = kx_lo; kx < kx_hi; ++kx) {
                dot_n(row + (size_t)(ix0 + kx * dw) * in_c, frow + (size_t)kx * in_c, fstride, in_c, off,
                      count, acc);
            }
        }
        store_block(r, acc, oc, count, dst);
        oc += count;
    }
}

/* One DEPTHWISE_CONV_2D output pixel, depth multiplier 1: channels in blocks of ES_DOT_BLOCK,
 * each tap adds a contiguous run of channels. */
static void depthwise_pixel_fast(const es_conv_params *p, const requant_args *r, const int8_t *in,
                                 const int8_t *filter, int32_t b, int32_t oy, int32_t ox, int8_t *dst)
{
    const int32_t c_all = p->out.c, kw = p->filter.w, dh = p->dilation_h, dw = p->dilation_w;
    const int32_t iy0 = oy * p->stride_h - p->pad_top, ix0 = ox * p->stride_w - p->pad_left;
    const int16_t off = (int16_t)p->input_offset;
    int32_t ky_lo, ky_hi, kx_lo, kx_hi, c0, ky, kx, j;
    tap_range(iy0, dh, p->filter.h, p->in.h, &ky_lo, &ky_hi);
    tap_range(ix0, dw, kw, p->in.w, &kx_lo, &kx_hi);
    for (c0 = 0; c0 < c_all; c0 += ES_DOT_BLOCK) {
        const int32_t count = c_all - c0 >= ES_DOT_BLOCK ? ES_DOT_BLOCK : c_all - c0;
        int32_t acc[ES_DOT_BLOCK];
        for (j = 0; j < ES_DOT_BLOCK; ++j) {
            acc[j] = 0;
        }
        for (ky = ky_lo; ky < ky_hi; ++ky) {
            for (kx = kx_lo; kx < kx_hi; ++kx) {
                const int8_t *src = in + (((size_t)b * p->in.h + iy0 + ky * dh) * p->in.w + ix0 + kx * dw) * c_all + c0;
                const int8_t *fk = filter + (size_t)(ky * kw + kx) * c_all + c0;
                if (ES_DOT_SIMD && count == ES_DOT_BLOCK) {
                    for (j = 0; j < ES_DOT_BLOCK; ++j) {
                        acc[j] += (int16_t)(src[j] + off) * (int16_t)fk[j];
                    }
                } else {
                    for (j = 0; j < count; ++j) {
                        acc[j] += ((int32_t)src[j] + off) * fk[j];
                    }
                }
            }
        }
        store_block(r, acc, c0, count, dst);
    }
}

typedef void (*pixel_fn)(const es_conv_params *p, const requant_args *r, const int8_t *in,
                         const int8_t *filter, int32_t b, int32_t oy, int32_t ox, int8_t *dst);

static void for_each_pixel(const es_conv_params *p, const requant_args *r, const int8_t *in,
                           const int8_t *filter, int8_t *out, pixel_fn fn)
{
    int32_t b, oy, ox;
    for (b = 0; b < p->out.n; ++b) {
        for (oy = 0; oy < p->out.h; ++oy) {
            for (ox = 0; ox < p->out.w; ++ox) {
                fn(p, r, in, filter, b, oy, ox, out + (((size_t)b * p->out.h + oy) * p->out.w + ox) * p->out.c);
            }
        }
    }
}

/* The per-output-channel requantization of a conv or FC (both carry the same output fields). */
static requant_args make_requant(const int32_t *bias, const int32_t *mult, const int32_t *shift,
                                 int32_t output_offset, int32_t act_min, int32_t act_max)
{
    requant_args r;
    r.bias = bias;
    r.mult = mult;
    r.shift = shift;
    r.output_offset = output_offset;
    r.act_min = act_min;
    r.act_max = act_max;
    return r;
}

static requant_args conv_requant(const es_conv_params *p, const int32_t *bias, const int32_t *mult,
                                 const int32_t *shift)
{
    return make_requant(bias, mult, shift, p->output_offset, p->act_min, p->act_max);
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
    if (p->filter.c == p->in.c && offset_fits_int16(p->input_offset)) {
        const requant_args r = conv_requant(p, bias, mult, shift);
        for_each_pixel(p, &r, in, filter, out, conv_pixel_fast);
        return ES_OK;
    }
#endif
    return es_conv2d_s8_generic(p, in, filter, bias, mult, shift, out);
}

/* DEPTHWISE_CONV_2D, any depth multiplier: the definition the fast path is tested against. */
static void depthwise_generic(const es_conv_params *p, const int8_t *in, const int8_t *filter,
                              const int32_t *bias, const int32_t *mult, const int32_t *shift, int8_t *out)
{
    const int32_t in_c = p->in.c, mult_c = p->depth_multiplier, out_c = p->out.c;
    int32_t b, oy, ox, ic, m, ky, kx;
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
}

int es_depthwise_conv2d_s8(const es_conv_params *p, const int8_t *in, const int8_t *filter,
                           const int32_t *bias, const int32_t *mult, const int32_t *shift,
                           int8_t *out)
{
    int rc = conv_check(p, in, filter, mult, shift, out);
    if (rc != ES_OK) {
        return rc;
    }
    if (p->depth_multiplier < 1 || p->out.c != p->in.c * p->depth_multiplier || p->filter.c != p->out.c) {
        return ES_ERR_SHAPE;
    }
#ifndef ES_CONV_FORCE_GENERIC
    if (p->depth_multiplier == 1 && offset_fits_int16(p->input_offset)) {
        const requant_args r = conv_requant(p, bias, mult, shift);
        for_each_pixel(p, &r, in, filter, out, depthwise_pixel_fast);
        return ES_OK;
    }
#endif
    depthwise_generic(p, in, filter, bias, mult, shift, out);
    return ES_OK;
}

int es_fully_connected_s8(const es_fc_params *p, const int8_t *in, const int8_t *weights,
                          const int32_t *bias, const int32_t *mult, const int32_t *shift,
                          int8_t *out)
{
    const int32_t in_f = p != NULL ? p->in_features : 0, out_f = p != NULL ? p->out_features : 0;
    int32_t b, o, i;
    if (p == NULL || in == NULL || weights == NULL || mult == NULL || shift == NULL || out == NULL) {
        return ES_ERR_NULL;
    }
    if (p->batches < 0 || in_f < 1 || out_f < 1) {
        return ES_ERR_SHAPE;
    }
#ifndef ES_CONV_FORCE_GENERIC
    if (offset_fits_int16(p->input_offset)) {
        const requant_args r = make_requant(bias, mult, shift, p->output_offset, p->act_min, p->act_max);
        for (b = 0; b < p->batches; ++b) {
            const int8_t *x = in + (size_t)b * in_f;
            int8_t *dst = out + (size_t)b * out_f;
            for (o = 0; o < out_f;) {
                const int32_t count = out_f - o >= 4 ? 4 : 1;
                int32_t acc[4] = {0, 0, 0, 0};
                dot_n(x, weights + (size_t)o * in_f, in_f, in_f, (int16_t)p->input_offset, count, acc);
                store_block(&r, acc, o, count, dst);
                o += count;
            }
        }
        return ES_OK;
    }
#endif
    for (b = 0; b < p->batches; ++b) {
        const int8_t *x = in + (size_t)b * in_f;
        const int8_t *w = weights;
        for (o = 0; o < out_f; ++o) {
            int32_t acc = 0;
            for (i = 0; i < in_f; ++i) {
                acc += ((int32_t)x[i] + p->input_offset) * (int32_t)w[i];
            }
            w += in_f;
            if (bias != NULL) {
                acc += bias[o];
            }
            *out++ = es_requant(acc, mult[o], shift[o], p->output_offset, p->act_min, p->act_max);
        }
    }
    return ES_OK;
}
