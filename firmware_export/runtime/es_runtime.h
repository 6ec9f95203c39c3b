/*
 * es_runtime.h - EdgeSmith C99 int8 inference runtime: public API.
 *
 * Hand-written, malloc-free, no floating point and no libc (only <stdint.h>, <stddef.h>). Kernels follow
 * TFLite Micro's reference integer kernels bit for bit (NHWC layout, TFLite weight layouts,
 * per-channel requantization). Generated model code (see firmware_export/c_emitter.py) compiles in
 * the structural fields of the parameter structs below (shapes, strides, padding) and, per op,
 * fills the quantization-dependent fields (offsets, clamps, multipliers; the mult/shift arrays
 * and lookup tables) from the op's parameter record in the model's weights table (layouts in
 * firmware_export/c_table.py), then calls the kernels in graph order; all activations live in
 * one caller-owned arena laid out by the static memory planner.
 *
 * Every kernel returns an es_status (ES_OK == 0). Buffers may not overlap unless a kernel says
 * it is in-place safe.
 */
#ifndef ES_RUNTIME_H
#define ES_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#define ES_RUNTIME_VERSION 1
/* Highest tensor rank the shape kernels handle (as TFLite Micro). */
#define ES_MAX_DIMS 6

/* The one list of status codes: the enum and the strings are both generated from it. */
#define ES_STATUS_LIST(X)                                                          \
    X(ES_OK, "ok")                                                                 \
    X(ES_ERR_NULL, "a required pointer argument is NULL")                          \
    X(ES_ERR_SHAPE, "tensor shapes do not match the op parameters")                \
    X(ES_ERR_PARAM, "an op parameter is out of range")                             \
    X(ES_ERR_EMPTY_WINDOW, "a pooling window covers no input element")             \
    X(ES_ERR_WEIGHTS, "the weight table does not match this model")

#define ES_STATUS_ENUM_ENTRY(name, text) name,
typedef enum { ES_STATUS_LIST(ES_STATUS_ENUM_ENTRY) ES_STATUS_COUNT } es_status;
#undef ES_STATUS_ENUM_ENTRY

/* "ES_ERR_SHAPE: tensor shapes do not match ..." for a status code; "unknown status" otherwise. */
const char *es_status_str(int status);

/* ------------------------------------------------------------------ shapes */

typedef struct {
    int32_t n, h, w, c;
} es_dims4;

/* ------------------------------------------------------------------ convolutions (es_conv.c) */

typedef struct {
    es_dims4 in;      /* NHWC input */
    es_dims4 filter;  /* conv: [O, KH, KW, I/groups]; depthwise: [1, KH, KW, C*mult] */
    es_dims4 out;     /* NHWC output */
    int32_t stride_h, stride_w;
    int32_t dilation_h, dilation_w;
    int32_t pad_top, pad_left; /* bottom/right padding follows from the output size */
    int32_t depth_multiplier;  /* depthwise only */
    int32_t input_offset;      /* -(input zero point) */
    int32_t output_offset;     /* output zero point */
    int32_t act_min, act_max;  /* fused activation as an int8 clamp */
} es_conv_params;

/* CONV_2D, per-channel requantization (mult/shift: one per output channel), bias may be NULL.
 * Takes the fast path (contiguous dot products, padding clipped per pixel) for every convolution
 * without groups, unless built with ES_CONV_FORCE_GENERIC; depthwise (multiplier 1) and fully
 * connected have fast paths too. Fast and general paths give the same bits. */
int es_conv2d_s8(const es_conv_params *p, const int8_t *in, const int8_t *filter,
                 const int32_t *bias, const int32_t *mult, const int32_t *shift, int8_t *out);
/* The general path alone: the definition the fast paths are tested against. */
int es_conv2d_s8_generic(const es_conv_params *p, const int8_t *in, const int8_t *filter,
                         const int32_t *bias, const int32_t *mult, const int32_t *shift, int8_t *out);
int es_depthwise_conv2d_s8(const es_conv_params *p, const int8_t *in, const int8_t *filter,
                           const int32_t *bias, const int32_t *mult, const int32_t *shift,
                           int8_t *out);

/* ------------------------------------------------------------------ binary conv (es_binary.c) */

/* Packed 1-bit weights (the weight blob's layout): filter [O, KH, KW, I], each (o, ky, kx) row
 * of I signs packed MSB first into ES_PACKED_BYTES(I) bytes; a set bit means +1, a clear bit -1,
 * unused trailing bits are 0. */
#define ES_PACKED_BYTES(channels) (((channels) + 7) / 8)

/* int8 activations x +-1 weights: sum of (x - zp) with the weight's sign, no multiplies. */
int es_binary_conv2d_s8(const es_conv_params *p, const int8_t *in, const uint8_t *packed_filter,
                        const int32_t *bias, const int32_t *mult, const int32_t *shift, int8_t *out);
/* Sign activations (int8 in {-1, +1}, zero point 0) x +-1 weights: XNOR/popcount.
 * scratch: ES_PACKED_BYTES(in.c) * n * h * w bytes for the packed input. */
int es_binary_conv2d_xnor(const es_conv_params *p, const int8_t *in, const uint8_t *packed_filter,
                          const int32_t *bias, const int32_t *mult, const int32_t *shift,
                          uint8_t *scratch, int8_t *out);

/* ------------------------------------------------------------------ fully connected (es_conv.c) */

typedef struct {
    int32_t batches, in_features, out_features;
    int32_t input_offset, output_offset, act_min, act_max;
} es_fc_params;

/* FULLY_CONNECTED: weights [O, I], mult/shift one per output feature, bias may be NULL. */
int es_fully_connected_s8(const es_fc_params *p, const int8_t *in, const int8_t *weights,
                          const int32_t *bias, const int32_t *mult, const int32_t *shift,
                          int8_t *out);

/* ------------------------------------------------------------------ elementwise (es_eltwise.c) */

typedef struct {
    int32_t ndim;                    /* 1..ES_MAX_DIMS */
    int32_t out_dims[ES_MAX_DIMS];
    int32_t a_strides[ES_MAX_DIMS];  /* element strides; 0 along broadcast dimensions */
    int32_t b_strides[ES_MAX_DIMS];
    int32_t a_offset, b_offset;      /* -(input zero points) */
    int32_t output_offset;           /* output zero point */
    int32_t left_shift;              /* ADD: inputs are scaled by 2^left_shift first */
    int32_t a_mult, a_shift, b_mult, b_shift; /* ADD: input rescales */
    int32_t out_mult, out_shift;
    int32_t act_min, act_max;
} es_eltwise_params;

/* ADD and MUL with numpy broadcasting. In-place safe for an input with the output's shape. */
int es_add_s8(const es_eltwise_params *p, const int8_t *a, const int8_t *b, int8_t *out);
int es_mul_s8(const es_eltwise_params *p, const int8_t *a, const int8_t *b, int8_t *out);

/* ------------------------------------------------------------------ pooling (es_pool.c) */

typedef struct {
    es_dims4 in, out;
    int32_t filter_h, filter_w, stride_h, stride_w, pad_top, pad_left;
    int32_t act_min, act_max;
} es_pool_params;

int es_avg_pool_s8(const es_pool_params *p, const int8_t *in, int8_t *out);
int es_max_pool_s8(const es_pool_params *p, const int8_t *in, int8_t *out);

/* MEAN over one contiguous block of axes: the input is viewed as [outer, reduce, inner].
 * out = MultiplyByQuantizedMultiplier(sum - count * zp_in, mult, shift) + zp_out, where mult/shift
 * fold input_scale / output_scale / count (TFLite Micro QuantizedMeanOrSum, which TFLM runs even
 * when input and output quantization are equal). */
typedef struct {
    int32_t outer, reduce, inner;
    int32_t input_offset;           /* -(input zero point) */
    int32_t output_offset;          /* output zero point */
    int32_t mult, shift;
} es_mean_params;

int es_mean_s8(const es_mean_params *p, const int8_t *in, int8_t *out);

/* ------------------------------------------------------------------ shape ops (es_shape.c) */

/* out[i0..] = in[sum(i_d * src_strides[d])]: TRANSPOSE (and any strided gather). */
typedef struct {
    int32_t ndim;
    int32_t dims[ES_MAX_DIMS];        /* output dims */
    int32_t src_strides[ES_MAX_DIMS]; /* input element stride for each output dim */
} es_strided_params;

int es_strided_copy_s8(const es_strided_params *p, const int8_t *in, int8_t *out);

/* Plain copy (a RESHAPE the planner could not turn into a view). */
int es_copy_s8(int32_t count, const int8_t *in, int8_t *out);

typedef struct {
    int32_t ndim;
    int32_t in_dims[ES_MAX_DIMS];
    int32_t out_dims[ES_MAX_DIMS];
    int32_t before[ES_MAX_DIMS];    /* padding before each dim */
    int32_t pad_value;
} es_pad_params;

int es_pad_s8(const es_pad_params *p, const int8_t *in, int8_t *out);

/* CONCATENATION: the output is [outer, sum of copy_sizes]; input i supplies copy_sizes[i]
 * elements per outer step. luts[i] (NULL: plain copy) maps input i's int8 values to the output
 * quantization (index = value + 128). */
typedef struct {
    int32_t num_inputs;
    int32_t outer;
} es_concat_params;

int es_concat_s8(const es_concat_params *p, const int32_t *copy_sizes,
                 const int8_t *const *inputs, const int8_t *const *luts, int8_t *out);

/* RESIZE_NEAREST_NEIGHBOR: source row / column of every output row / column, precomputed. */
typedef struct {
    es_dims4 in, out;
} es_resize_params;

int es_resize_nearest_s8(const es_resize_params *p, const int32_t *y_index, const int32_t *x_index,
                         const int8_t *in, int8_t *out);

/* RESIZE_BILINEAR (TFLite ResizeBilinearInteger): scales in Q10. */
typedef struct {
    es_dims4 in, out;
    int32_t height_scale_10, width_scale_10;
    int32_t half_pixel_centers;
} es_bilinear_params;

int es_resize_bilinear_s8(const es_bilinear_params *p, const int8_t *in, int8_t *out);

/* ------------------------------------------------------------------ lookup tables (es_lut.c) */

/* out[i] = lut[in[i] + 128]: LOGISTIC, QUANTIZE int8 -> int8, SIGN. In-place safe. */
int es_lut_s8(int32_t count, const int8_t *lut, const int8_t *in, int8_t *out);

/* SOFTMAX over the last axis (TFLite reference int8 kernel, int8 output with scale 1/256 and
 * zero point -128). exp_lut[d], d = row max - x in 0..255, holds gemmlowp's
 * exp_on_negative_values of the beta-scaled difference in Q0.31, and 0 where the difference is
 * below TFLite's diff_min (those outputs come out as -128, as in TFLite). */
typedef struct {
    int32_t rows, depth;
} es_softmax_params;

int es_softmax_s8(const es_softmax_params *p, const int32_t *exp_lut, const int8_t *in, int8_t *out);

/* ------------------------------------------------------------------ a compiled model */

/* What generated code exports besides its functions: lets a firmware app or test harness drive
 * any model the same way. */
typedef struct {
    const char *name;
    const char *graph_hash;
    uint32_t arena_bytes;
    uint32_t num_inputs, num_outputs;
    const uint32_t *input_bytes;   /* num_inputs entries */
    const uint32_t *output_bytes;  /* num_outputs entries */
    /* inputs / outputs packed back to back in graph order */
    int (*invoke)(const int8_t *in, int8_t *out, uint8_t *arena);
    /* one pointer per graph input / output */
    int (*invoke_multi)(const int8_t *const *inputs, int8_t *const *outputs, uint8_t *arena);
    /* what the code runs: a weight blob must carry this structure hash (hex) */
    const char *structure_hash;
    /* weights table: graph constants, then one parameter record per op (see es_blob_fill_table) */
    uint32_t num_weights;
    const uint32_t *weight_bytes;  /* num_weights entries */
    int (*invoke_table)(const void *const *weights, const int8_t *const *inputs,
                        int8_t *const *outputs, uint8_t *arena);
} es_model_desc;

#endif /* ES_RUNTIME_H */
