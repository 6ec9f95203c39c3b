/*
 * es_binary.c - BINARY_CONV_2D: 1-bit (+-1) weights packed 8 per byte, per-channel alpha folded
 * into the requantization multiplier.
 *
 * Two paths, both equal to an int8 convolution whose weights are exactly -1 or +1:
 *   es_binary_conv2d_s8   int8 activations: add or subtract (x - zp), no multiplies;
 *   es_binary_conv2d_xnor sign activations in {-1, +1}: pack the input once into bits, then
 *                         sum(x * w) = channels - 2 * popcount(x_bits XOR w_bits).
 * Padding taps contribute 0, as in CONV_2D.
 */
#include "es_runtime.h"
#include "es_fixedpoint.h"

static int binary_check(const es_conv_params *p, const int8_t *in, const uint8_t *filter,
                        const int32_t *mult, const int32_t *shift, const int8_t *out)
{
    if (p == NULL || in == NULL || filter == NULL || mult == NULL || shift == NULL || out == NULL) {
        return ES_ERR_NULL;
    }
    if (p->stride_h < 1 || p->stride_w < 1 || p->dilation_h < 1 || p->dilation_w < 1) {
        return ES_ERR_PARAM;
    }
    if (p->in.n != p->out.n || p->filter.c != p->in.c || p->filter.n != p->out.c || p->in.c < 1) {
        return ES_ERR_SHAPE;
    }
    return ES_OK;
}

int es_binary_conv2d_s8(const es_conv_params *p, const int8_t *in, const uint8_t *packed_filter,
                        const int32_t *bias, const int32_t *mult, const int32_t *shift, int8_t *out)
{
    int32_t b, oy, ox, oc, ky, kx, ic;
    int32_t in_c, kh, kw, row_bytes;
    int rc = binary_check(p, in, packed_filter, mult, shift, out);
    if (rc != ES_OK) {
        return rc;
    }
    in_c = p->in.c;
    kh = p->filter.h;
    kw = p->filter.w;
    row_bytes = ES_PACKED_BYTES(in_c);
    for (b = 0; b < p->out.n; ++b) {
        for (oy = 0; oy < p->out.h; ++oy) {
            const int32_t iy0 = oy * p->stride_h - p->pad_top;
            for (ox = 0; ox < p->out.w; ++ox) {
                const int32_t ix0 = ox * p->stride_w - p->pad_left;
                for (oc = 0; oc < p->out.c; ++oc) {
                    int32_t acc = 0;
                    for (ky = 0; ky < kh; ++ky) {
                        const int32_t iy = iy0 + ky * p->dilation_h;
                        if (iy < 0 || iy >= p->in.h) {
                            continue;
                        }
                        for (kx = 0; kx < kw; ++kx) {
                            const int32_t ix = ix0 + kx * p->dilation_w;
                            const int8_t *src;
                            const uint8_t *row;
                            if (ix < 0 || ix >= p->in.w) {
                                continue;
                            }
                            src = in + (((size_t)b * p->in.h + iy) * p->in.w + ix) * in_c;
                            row = packed_filter + ((size_t)(oc * kh + ky) * kw + kx) * row_bytes;
                            for (ic = 0; ic < in_c; ++ic) {
                                const int32_t v = (int32_t)src[ic] + p->input_offset;
                                acc += ((row[ic >> 3] >> (7 - (ic & 7))) & 1u) ? v : -v;
                            }
                        }
                    }
                    if (bias != NULL) {
                        acc += bias[oc];
                    }
                    *out++ = es_requant(acc, mult[oc], shift[oc], p->output_offset,
                                        p->act_min, p->act_max);
                }
            }
        }
    }
    return ES_OK;
}

static int32_t popcount32(uint32_t v)
{
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    v = (v + (v >> 4)) & 0x0F0F0F0Fu;
    return (int32_t)((v * 0x01010101u) >> 24);
}

/* Number of differing bits between two packed rows of n bytes (unaligned-safe). */
static int32_t xor_popcount(const uint8_t *a, const uint8_t *b, int32_t n)
{
    int32_t count = 0, k = 0;
    for (; k + 4 <= n; k += 4) {
        uint32_t wa, wb;
        es_copy(&wa, a + k, 4);
        es_copy(&wb, b + k, 4);
        count += popcount32(wa ^ wb);
    }
    for (; k < n; ++k) {
        count += popcount32((uint32_t)(a[k] ^ b[k]));
    }
    return count;
}

int es_binary_conv2d_xnor(const es_conv_params *p, const int8_t *in, const uint8_t *packed_filter,
                          const int32_t *bias, const int32_t *mult, const int32_t *shift,
                          uint8_t *scratch, int8_t *out)
{
    int32_t b, oy, ox, oc, ky, kx, ic;
    int32_t in_c, kh, kw, row_bytes;
    size_t pixels, px;
    int rc = binary_check(p, in, packed_filter, mult, shift, out);
    if (rc != ES_OK) {
        return rc;
    }
    if (scratch == NULL) {
        return ES_ERR_NULL;
    }
    in_c = p->in.c;
    kh = p->filter.h;
    kw = p->filter.w;
    row_bytes = ES_PACKED_BYTES(in_c);
    /* pack every input pixel's channel signs once, as the weights: a set bit means +1 */
    pixels = (size_t)p->in.n * p->in.h * p->in.w;
    for (px = 0; px < pixels; ++px) {
        const int8_t *src = in + px * in_c;
        uint8_t *dst = scratch + px * row_bytes;
        es_fill(dst, 0, (size_t)row_bytes);
        for (ic = 0; ic < in_c; ++ic) {
            if (src[ic] > 0) {
                dst[ic >> 3] = (uint8_t)(dst[ic >> 3] | (1u << (7 - (ic & 7))));
            }
        }
    }
    for (b = 0; b < p->out.n; ++b) {
        for (oy = 0; oy < p->out.h; ++oy) {
            const int32_t iy0 = oy * p->stride_h - p->pad_top;
            for (ox = 0; ox < p->out.w; ++ox) {
                const int32_t ix0 = ox * p->stride_w - p->pad_left;
                for (oc = 0; oc < p->out.c; ++oc) {
                    int32_t acc = 0;
                    for (ky = 0; ky < kh; ++ky) {
                        const int32_t iy = iy0 + ky * p->dilation_h;
                        if (iy < 0 || iy >= p->in.h) {
                            continue;
                        }
                        for (kx = 0; kx < kw; ++kx) {
                            const int32_t ix = ix0 + kx * p->dilation_w;
                            const uint8_t *xbits, *wbits;
                            if (ix < 0 || ix >= p->in.w) {
                                continue;
                            }
                            xbits = scratch + (((size_t)b * p->in.h + iy) * p->in.w + ix) * row_bytes;
                            wbits = packed_filter + ((size_t)(oc * kh + ky) * kw + kx) * row_bytes;
                            acc += in_c - 2 * xor_popcount(xbits, wbits, row_bytes);
                        }
                    }
                    if (bias != NULL) {
                        acc += bias[oc];
                    }
                    *out++ = es_requant(acc, mult[oc], shift[oc], p->output_offset,
                                        p->act_min, p->act_max);
                }
            }
        }
    }
    return ES_OK;
}
