"""The numpy reference interpreter of IntGraph: the oracle every emitter is tested against.

Semantics are TFLite Micro's reference integer kernels (``tensorflow/lite/kernels/internal/
reference/integer_ops/*``, ``reference/{add,pooling,reduce,softmax,resize_*}.h`` and TFLM's
``kernels/*_common.cc`` parameter preparation), reproduced bit for bit with
:mod:`firmware_export.fixedpoint`:

* CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / BINARY_CONV_2D: ``sum (x - zp_x) * w + bias``
  (LiteRT 2.3's reference per-channel FULLY_CONNECTED differs: it rounds once,
  ``fixedpoint.multiply_by_quantized_multiplier_single_rounding``, so it can be one step off;
  TFLite Micro rounds twice like every other kernel and is what this module follows)
  (padding contributes 0, i.e. pads with the input zero point), per-channel
  ``MultiplyByQuantizedMultiplier`` with ``QuantizeMultiplier(in_scale * w_scale[c] / out_scale)``
  in double (FULLY_CONNECTED per-tensor: the float32 product ``in_scale * w_scale`` first, as
  TFLite's ``GetQuantizedConvolutionMultipler``), + output zero point, clamp to the fused
  activation range (``CalculateActivationRangeQuantized``). BINARY_CONV_2D is CONV_2D with
  {-1, +1} weights; with ``binary_input`` the input is SIGN's {-1, +1} (scale 1, zp 0) and the
  XNOR/popcount dot product equals the same integer accumulator.
* ADD: TFLite's int8 scheme: ``left_shift = 20``, inputs rescaled by ``scale_i / (2 max scale)``,
  summed, rescaled by ``2 max scale / (2**20 out_scale)``. MUL: ``(a - zpa) * (b - zpb)``
  requantized by ``sa * sb / so``. Both broadcast like numpy.
* AVERAGE_POOL_2D: sum of raw int8 values over the in-bounds window, divided by the in-bounds
  count rounding half away from zero; MAX_POOL_2D: max over the in-bounds window; both then clamp.
  Pools keep the input quantization (TFLite has no requantization there).
* MEAN: ``QuantizedMeanOrSum`` for every int8 case (the tflite-micro wheel runs it even when
  input and output quantization are equal; some TFLM sources instead truncate ``sum / count``
  there, which differs by one step): ``QuantizeMultiplier(in_scale / out_scale)`` folded with
  ``1/count`` as ``(multiplier << s) / count``, ``s = min(floor(log2(count)), 32, 31 + shift)``,
  applied to ``sum(q) - zp * count``. LiteRT's reference kernels agree on the cases tested
  (``test_fe_tflite.py`` records the LiteRT/TFLM comparison for MEAN, LOGISTIC and SOFTMAX).
* CONCATENATION: inputs whose scale/zero point differ from the output are first requantized
  exactly like QUANTIZE int8 -> int8 (the ``.tflite`` writer inserts those QUANTIZE ops, since
  TFLite's int8 concatenation requires equal quantization).
* LOGISTIC / SOFTMAX int8: gemmlowp fixed point (Q4.27 logistic input, Q5.26 softmax
  differences, Q12.19 accumulation), output scale 1/256, zero point -128.
* RESIZE_BILINEAR: TFLite's ``ResizeBilinearInteger`` (10-bit fractional coordinates, products
  rounded half away from zero at 2**20); RESIZE_NEAREST_NEIGHBOR: float32 coordinate mapping
  with floor (or round with ``align_corners``).
* PAD pads with the output zero point; QUANTIZE float -> int8 rounds ``x / scale`` (float32)
  half away from zero; int8 -> int8 uses ``MultiplyByQuantizedMultiplier(in_scale / out_scale)``;
  DEQUANTIZE is ``float32(double(scale) * (q - zp))``; SIGN is ``q >= zp ? +1 : -1``.
"""
from __future__ import annotations

import math

import numpy as np

from edgesmith.errors import ExportError
from firmware_export import fixedpoint as fp
from firmware_export.intgraph import IntGraph, Op, Tensor

_NP_DTYPES = {"int8": np.int8, "int32": np.int32, "float32": np.float32, "int16": np.int16, "uint8": np.uint8}


# --------------------------------------------------------------------------- helpers

def _q(t: Tensor) -> tuple[float, int]:
    return t.per_tensor_scale(), t.per_tensor_zero_point()


def _clamp_int8(acc, t: Tensor, act: str = "NONE") -> np.ndarray:
    scale, zp = _q(t)
    lo, hi = fp.activation_range(act, scale, zp)
    return np.clip(acc, lo, hi).astype(np.int8)


def _trunc_div(a, b) -> np.ndarray:
    """C integer division (truncation toward zero) for int64 arrays, b > 0."""
    a = np.asarray(a, np.int64)
    return np.where(a >= 0, a // b, -((-a) // b))


#: the most window elements one op may expand to (128 MiB as float64; a 3x3 conv on 112x112x64
#: needs 7.2 Mi), which keeps absurd hand-edited attributes from exhausting memory
MAX_WINDOW_ELEMENTS = 1 << 24


def _windows(xp: np.ndarray, kernel, stride, dilation, out_hw) -> np.ndarray:
    """Sliding windows of a padded NHWC array as a view: [N, OH, OW, KH, KW, C]."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    total = xp.shape[0] * oh * ow * kh * kw * xp.shape[3]
    if total > MAX_WINDOW_ELEMENTS:
        raise ExportError(f"an op with kernel {kernel} over input {xp.shape} expands to {total} window "
                          f"elements, more than the reference interpreter's {MAX_WINDOW_ELEMENTS}")
    v = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    v = v[:, ::sh, ::sw, :, ::dh, ::dw][:, :oh, :ow]
    return v.transpose(0, 1, 2, 4, 5, 3)


def _pad_spatial(x: np.ndarray, pads, kernel, stride, dilation, out_hw, value) -> np.ndarray:
    """Pad H and W (top/left as given; bottom/right at least enough for every window)."""
    top, bottom, left, right = pads
    padded = x.shape[0] * (x.shape[1] + top + bottom) * (x.shape[2] + left + right) * x.shape[3]
    if min(pads) < 0 or padded > MAX_WINDOW_ELEMENTS:
        raise ExportError(f"pads {tuple(pads)} on input {x.shape} are negative or absurdly large")
    need_h = (out_hw[0] - 1) * stride[0] + (kernel[0] - 1) * dilation[0] + 1
    need_w = (out_hw[1] - 1) * stride[1] + (kernel[1] - 1) * dilation[1] + 1
    bottom = max(bottom, need_h - x.shape[1] - top, 0)
    right = max(right, need_w - x.shape[2] - left, 0)
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def _check_out_hw(op: Op, x_shape, out_shape, kernel, stride, dilation, pads) -> tuple[int, int]:
    top, bottom, left, right = pads
    oh = (x_shape[1] + top + bottom - ((kernel[0] - 1) * dilation[0] + 1)) // stride[0] + 1
    ow = (x_shape[2] + left + right - ((kernel[1] - 1) * dilation[1] + 1)) // stride[1] + 1
    if (oh, ow) != tuple(out_shape[1:3]):
        raise ExportError(f"op {op.name or op.kind!r}: output spatial size {tuple(out_shape[1:3])} does not "
                          f"match input {tuple(x_shape[1:3])} with kernel {kernel}, stride {stride}, "
                          f"dilation {dilation}, pads {pads} (expected {(oh, ow)}); fix the graph's shapes")
    return oh, ow


def _requantize_channels(acc, op: Op, x: Tensor, w: Tensor, y: Tensor, fc: bool = False) -> np.ndarray:
    """Per-channel (or per-tensor) requantization of int32 accumulators along the last axis."""
    in_scale, out_scale = np.float32(x.per_tensor_scale()), np.float32(y.per_tensor_scale())
    w_scales = np.asarray(w.scale, np.float32).reshape(-1)
    channels = acc.shape[-1]
    if w_scales.size == 1 and fc:
        # GetQuantizedConvolutionMultipler: float32 product, then double division
        reals = [float(np.float32(in_scale * w_scales[0])) / float(out_scale)]
    else:
        reals = [float(in_scale) * float(s) / float(out_scale) for s in w_scales]
    mult, shift = fp.quantize_multipliers(reals)
    if mult.size == 1:
        mult, shift = np.repeat(mult, channels), np.repeat(shift, channels)
    out = fp.multiply_by_quantized_multiplier(fp.wrap32(acc), mult, shift) + y.per_tensor_zero_point()
    return _clamp_int8(out, y, op.attrs.get("act", "NONE"))


def _bias(args, channels: int) -> np.ndarray:
    if len(args) > 2 and args[2] is not None:
        return np.asarray(args[2], np.int64).reshape(-1)
    return np.zeros(channels, np.int64)


# --------------------------------------------------------------------------- convolutions

def _conv(op, args, ins, outs):
    x, w = args[0], args[1]
    xt, wt, yt = ins[0], ins[1], outs[0]
    if op.kind == "BINARY_CONV_2D":
        if not np.all(np.abs(w.astype(np.int64)) == 1):
            raise ExportError(f"op {op.name!r}: binary weights {wt.name!r} must all be -1 or +1")
        if op.attrs.get("binary_input") and (_q(xt) != (1.0, 0) or not np.all(np.abs(x.astype(np.int64)) == 1)):
            raise ExportError(f"op {op.name!r}: binary_input expects SIGN output ({{-1,+1}}, scale 1, zero "
                              f"point 0); got {xt.name!r} with scale/zp {_q(xt)}")
    stride = tuple(op.attrs.get("stride", (1, 1)))
    dilation = tuple(op.attrs.get("dilation", (1, 1)))
    pads = tuple(op.attrs.get("pads", (0, 0, 0, 0)))
    depthwise = op.kind == "DEPTHWISE_CONV_2D"
    _, kh, kw, wc = w.shape
    out_hw = _check_out_hw(op, x.shape, yt.shape, (kh, kw), stride, dilation, pads)
    xc = x.astype(np.int64) - xt.per_tensor_zero_point()
    xp = _pad_spatial(xc, pads, (kh, kw), stride, dilation, out_hw, 0)
    win = _windows(xp, (kh, kw), stride, dilation, out_hw).astype(np.float64)
    n, oh, ow = win.shape[:3]
    cin = x.shape[3]
    wf = w.astype(np.float64)
    # int8 products summed in float64 are exact (|sum| << 2**53), and use BLAS
    if depthwise:
        mult = int(op.attrs.get("depth_multiplier", wc // cin))
        if cin * mult != wc:
            raise ExportError(f"op {op.name!r}: depthwise weights have {wc} channels, input {cin} x multiplier {mult}")
        win = np.repeat(win, mult, axis=-1)
        acc = np.einsum("nhwijc,ijc->nhwc", win, wf[0], optimize=True)
    else:
        groups = cin // wc
        if groups * wc != cin:
            raise ExportError(f"op {op.name!r}: input channels {cin} not divisible by weight input channels {wc}")
        cout = w.shape[0]
        og = cout // groups
        acc = np.empty((n, oh, ow, cout), np.float64)
        for g in range(groups):
            patch = win[..., g * wc:(g + 1) * wc].reshape(n * oh * ow, kh * kw * wc)
            acc[..., g * og:(g + 1) * og] = (patch @ wf[g * og:(g + 1) * og].reshape(og, -1).T).reshape(n, oh, ow, og)
    acc = np.rint(acc).astype(np.int64) + _bias(args, acc.shape[-1])
    return [_requantize_channels(acc, op, xt, wt, yt)]


def _fully_connected(op, args, ins, outs):
    x, w = args[0], args[1]
    xt, wt, yt = ins[0], ins[1], outs[0]
    cin = w.shape[1]
    if x.size % cin:
        raise ExportError(f"op {op.name!r}: input of {x.size} elements cannot be flattened to rows of {cin}")
    xc = (x.astype(np.int64) - xt.per_tensor_zero_point()).reshape(-1, cin).astype(np.float64)
    acc = np.rint(xc @ w.astype(np.float64).T).astype(np.int64) + _bias(args, w.shape[0])
    return [_requantize_channels(acc, op, xt, wt, yt, fc=True).reshape(yt.shape)]


# --------------------------------------------------------------------------- elementwise

def _add(op, args, ins, outs):
    (sa, za), (sb, zb), (so, zo) = _q(ins[0]), _q(ins[1]), _q(outs[0])
    left_shift = 20
    twice_max = 2.0 * float(max(np.float32(sa), np.float32(sb)))
    m1, s1 = fp.quantize_multiplier(float(np.float32(sa)) / twice_max)
    m2, s2 = fp.quantize_multiplier(float(np.float32(sb)) / twice_max)
    mo, s_o = fp.quantize_multiplier(twice_max / ((1 << left_shift) * float(np.float32(so))))
    a = fp.wrap32((args[0].astype(np.int64) - za) << left_shift)
    b = fp.wrap32((args[1].astype(np.int64) - zb) << left_shift)
    raw = fp.wrap32(fp.multiply_by_quantized_multiplier(a, m1, s1) + fp.multiply_by_quantized_multiplier(b, m2, s2))
    out = fp.multiply_by_quantized_multiplier(raw, mo, s_o) + zo
    return [_clamp_int8(out, outs[0], op.attrs.get("act", "NONE"))]


def _mul(op, args, ins, outs):
    (sa, za), (sb, zb), (so, zo) = _q(ins[0]), _q(ins[1]), _q(outs[0])
    m, s = fp.quantize_multiplier(float(np.float32(sa)) * float(np.float32(sb)) / float(np.float32(so)))
    prod = fp.wrap32((args[0].astype(np.int64) - za) * (args[1].astype(np.int64) - zb))
    out = fp.multiply_by_quantized_multiplier(prod, m, s) + zo
    return [_clamp_int8(out, outs[0], op.attrs.get("act", "NONE"))]


# --------------------------------------------------------------------------- pooling, mean

def _pool(op, args, ins, outs):
    x, yt = args[0], outs[0]
    kernel = tuple(op.attrs["filter"])
    stride = tuple(op.attrs.get("stride", (1, 1)))
    pads = tuple(op.attrs.get("pads", (0, 0, 0, 0)))
    out_hw = _check_out_hw(op, x.shape, yt.shape, kernel, stride, (1, 1), pads)
    valid = np.ones((1,) + x.shape[1:3] + (1,), np.int64)
    vwin = _windows(_pad_spatial(valid, pads, kernel, stride, (1, 1), out_hw, 0), kernel, stride, (1, 1), out_hw)
    count = vwin.sum(axis=(3, 4))
    if np.any(count == 0):
        raise ExportError(f"op {op.name!r}: a pooling window lies entirely in the padding")
    if op.kind == "AVERAGE_POOL_2D":
        xp = _pad_spatial(x.astype(np.int64), pads, kernel, stride, (1, 1), out_hw, 0)
        acc = _windows(xp, kernel, stride, (1, 1), out_hw).sum(axis=(3, 4))
        half = count // 2
        out = np.where(acc > 0, _trunc_div(acc + half, count), -_trunc_div(-(acc - half), count))
    else:
        xp = _pad_spatial(x.astype(np.int64), pads, kernel, stride, (1, 1), out_hw, -(1 << 20))
        out = _windows(xp, kernel, stride, (1, 1), out_hw).max(axis=(3, 4))
    return [_clamp_int8(out, yt, op.attrs.get("act", "NONE"))]


def _mean(op, args, ins, outs):
    x, xt, yt = args[0], ins[0], outs[0]
    axes = tuple(sorted({a % x.ndim for a in op.attrs["axes"]}))
    count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64)) if axes else 1
    total = fp.wrap32(x.astype(np.int64).sum(axis=axes, keepdims=True))
    (si, zi), (so, zo) = _q(xt), _q(yt)
    # QuantizedMeanOrSum, also when input and output quantization are equal (as TFLM runs it)
    mult, shift = fp.quantize_multiplier(float(np.float32(si)) / float(np.float32(so)))
    num_shift = min(count.bit_length() - 1, 32, 31 + shift)  # floor(log2(count)), clamped as TFLite
    mult = (mult << num_shift) // count if num_shift >= 0 else (mult >> -num_shift) // count
    shift -= num_shift
    shifted_sum = fp.wrap32(total - zi * count)
    out = fp.multiply_by_quantized_multiplier(shifted_sum, mult, shift) + zo
    return [np.clip(out, -128, 127).astype(np.int8).reshape(yt.shape)]


# --------------------------------------------------------------------------- shape ops

def _reshape(op, args, ins, outs):
    return [args[0].reshape(outs[0].shape)]


def _transpose(op, args, ins, outs):
    return [np.ascontiguousarray(np.transpose(args[0], tuple(op.attrs["perm"])))]


def _requantize(x: np.ndarray, src: Tensor, dst: Tensor) -> np.ndarray:
    """int8 -> int8 with the destination's quantization (TFLite QUANTIZE's Requantize)."""
    (si, zi), (so, zo) = _q(src), _q(dst)
    m, s = fp.quantize_multiplier(float(np.float32(si)) / float(np.float32(so)))
    out = fp.multiply_by_quantized_multiplier(x.astype(np.int64) - zi, m, s) + zo
    return np.clip(out, -128, 127).astype(np.int8)


def _concatenation(op, args, ins, outs):
    yt = outs[0]
    parts = []
    for arr, t in zip(args, ins):
        same = np.float32(t.per_tensor_scale()) == np.float32(yt.per_tensor_scale()) and \
            t.per_tensor_zero_point() == yt.per_tensor_zero_point()
        parts.append(arr if same else _requantize(arr, t, yt))
    out = np.concatenate(parts, axis=int(op.attrs["axis"]) % args[0].ndim)
    return [_clamp_int8(out.astype(np.int64), yt, op.attrs.get("act", "NONE"))]


def _pad(op, args, ins, outs):
    paddings = [tuple(int(v) for v in p) for p in op.attrs["paddings"]]
    expected = tuple(s + a + b for s, (a, b) in zip(args[0].shape, paddings))
    if len(paddings) != args[0].ndim or expected != tuple(outs[0].shape) or min(min(p) for p in paddings) < 0:
        raise ExportError(f"op {op.name or op.kind!r}: paddings {op.attrs['paddings']} on {args[0].shape} do not "
                          f"give the output shape {outs[0].shape}")
    return [np.pad(args[0], paddings, constant_values=outs[0].per_tensor_zero_point()).astype(np.int8)]


def _nearest_index(out_size: int, in_size: int, align_corners: bool, half_pixel: bool) -> np.ndarray:
    """TFLite ``GetNearestNeighbor`` in float32 for every output coordinate."""
    if align_corners and out_size > 1:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1)
    else:
        scale = np.float32(in_size) / np.float32(out_size)
    offset = np.float32(0.5 if half_pixel else 0.0)
    pos = (np.arange(out_size, dtype=np.float32) + offset) * scale
    idx = fp.round_half_away_array(pos) if align_corners else np.floor(pos)
    idx = np.minimum(idx.astype(np.int64), in_size - 1)
    return np.maximum(idx, 0) if half_pixel else idx


def _resize_out_hw(op, outs) -> tuple[int, int]:
    oh, ow = outs[0].shape[1:3]
    if (oh, ow) != tuple(op.attrs["size"]):
        raise ExportError(f"op {op.name or op.kind!r}: output {outs[0].shape} does not have size {op.attrs['size']}")
    return oh, ow


def _resize_nearest(op, args, ins, outs):
    x = args[0]
    oh, ow = _resize_out_hw(op, outs)
    ac, hp = bool(op.attrs.get("align_corners")), bool(op.attrs.get("half_pixel_centers"))
    iy = _nearest_index(oh, x.shape[1], ac, hp)
    ix = _nearest_index(ow, x.shape[2], ac, hp)
    return [x[:, iy][:, :, ix]]


def _bilinear_coords(out_size: int, in_size: int, align_corners: bool, half_pixel: bool):
    """TFLite ``ComputeInterpolationValuesInteger``: (scaled 10-bit value, lower, upper)."""
    scale_10 = ((1 << 10) * in_size + out_size // 2) // out_size
    if align_corners and out_size > 1:
        scale_10 = ((1 << 10) * (in_size - 1) + (out_size - 1) // 2) // (out_size - 1)
    v = np.arange(out_size, dtype=np.int64)
    scaled = v * scale_10 + scale_10 // 2 - (1 << 9) if half_pixel else v * scale_10
    lower = np.maximum(_trunc_div(scaled, 1 << 10), 0)
    upper = np.minimum(_trunc_div(scaled + (1 << 10) - 1, 1 << 10), in_size - 1)
    return scaled, lower, upper


def _resize_bilinear(op, args, ins, outs):
    x = args[0].astype(np.int64)
    oh, ow = _resize_out_hw(op, outs)
    ac, hp = bool(op.attrs.get("align_corners")), bool(op.attrs.get("half_pixel_centers"))
    sy, y0, y1 = _bilinear_coords(oh, x.shape[1], ac, hp)
    sx, x0, x1 = _bilinear_coords(ow, x.shape[2], ac, hp)
    fy = (sy - (1 << 10) * y0)[None, :, None, None]
    fx = (sx - (1 << 10) * x0)[None, None, :, None]
    one = 1 << 10
    out20 = (x[:, y0][:, :, x0] * (one - fy) * (one - fx) + x[:, y1][:, :, x0] * fy * (one - fx)
             + x[:, y0][:, :, x1] * (one - fy) * fx + x[:, y1][:, :, x1] * fy * fx)
    rnd = np.where(out20 > 0, 1 << 19, -(1 << 19))
    return [_trunc_div(out20 + rnd, 1 << 20).astype(np.int8)]


# --------------------------------------------------------------------------- activations, casts

def _logistic(op, args, ins, outs):
    scale, zp = _q(ins[0])
    integer_bits = 4
    q, left_shift = math.frexp(float(np.float32(scale)) * float(1 << (31 - integer_bits)))
    multiplier = fp.round_half_away(q * float(1 << 31))  # TFLM: no re-normalisation of q == 2**31
    radius = fp.calculate_input_radius(integer_bits, left_shift, 31)
    d = args[0].astype(np.int64) - zp
    in_q4 = fp.multiply_by_quantized_multiplier(np.clip(d, -radius, radius), multiplier, left_shift)
    out_q0 = fp.logistic(in_q4, integer_bits)
    out = np.clip(fp.rounding_divide_by_pot(out_q0, 31 - 8) - 128, -128, 127)
    out = np.where(d <= -radius, -128, np.where(d >= radius, 127, out))
    return [out.astype(np.int8)]


def _softmax(op, args, ins, outs):
    scale, _ = _q(ins[0])
    beta = float(op.attrs.get("beta", 1.0))
    diff_bits, accum_bits = 5, 12
    multiplier, left_shift = fp.preprocess_softmax_scaling(beta, float(np.float32(scale)), diff_bits)
    diff_min = -fp.calculate_input_radius(diff_bits, left_shift)
    x = args[0].astype(np.int64)
    diff = x - x.max(axis=-1, keepdims=True)
    live = diff >= diff_min
    rescaled = fp.multiply_by_quantized_multiplier(diff, multiplier, left_shift)
    exps = fp.exp_on_negative_values(rescaled, diff_bits)
    sum_of_exps = fp.wrap32(np.where(live, fp.rounding_divide_by_pot(exps, accum_bits), 0).sum(axis=-1, keepdims=True))
    shifted_scale, bits_over_unit = fp.get_reciprocal(sum_of_exps, accum_bits)
    unsat = fp.rounding_divide_by_pot(fp.saturating_rounding_doubling_high_mul(shifted_scale, exps),
                                      bits_over_unit + 31 - 8)
    out = np.where(live, np.clip(unsat - 128, -128, 127), -128)
    return [out.astype(np.int8)]


def _quantize(op, args, ins, outs):
    x, xt, yt = args[0], ins[0], outs[0]
    if xt.dtype == "float32":
        scale, zp = _q(yt)
        q = fp.round_half_away_array(x.astype(np.float32) / np.float32(scale))
        q = np.clip(q, -2.0 ** 31, 2.0 ** 31 - 1).astype(np.int64) + zp
        return [np.clip(q, -128, 127).astype(np.int8)]
    return [_requantize(x, xt, yt)]


def _dequantize(op, args, ins, outs):
    scale, zp = _q(ins[0])
    return [(float(np.float32(scale)) * (args[0].astype(np.float64) - zp)).astype(np.float32)]


def _sign(op, args, ins, outs):
    return [np.where(args[0].astype(np.int64) >= ins[0].per_tensor_zero_point(), 1, -1).astype(np.int8)]


#: op kind -> kernel(op, input arrays, input Tensors, output Tensors) -> output arrays
KERNELS = {
    "CONV_2D": _conv, "DEPTHWISE_CONV_2D": _conv, "BINARY_CONV_2D": _conv,
    "FULLY_CONNECTED": _fully_connected, "ADD": _add, "MUL": _mul,
    "AVERAGE_POOL_2D": _pool, "MAX_POOL_2D": _pool, "MEAN": _mean,
    "RESHAPE": _reshape, "TRANSPOSE": _transpose, "CONCATENATION": _concatenation, "PAD": _pad,
    "RESIZE_NEAREST_NEIGHBOR": _resize_nearest, "RESIZE_BILINEAR": _resize_bilinear,
    "LOGISTIC": _logistic, "SOFTMAX": _softmax, "QUANTIZE": _quantize, "DEQUANTIZE": _dequantize,
    "SIGN": _sign,
}


def _check_dtypes(op: Op, ins, outs) -> None:
    """int8 activations everywhere, except QUANTIZE's input and DEQUANTIZE's output."""
    x_dtype = "float32|int8" if op.kind == "QUANTIZE" else "int8"
    y_dtype = "float32" if op.kind == "DEQUANTIZE" else "int8"
    if ins[0] is None or ins[0].dtype not in x_dtype.split("|") or outs[0].dtype != y_dtype:
        raise ExportError(f"op {op.name or op.kind!r} ({op.kind}): input/output dtypes "
                          f"{None if ins[0] is None else ins[0].dtype}/{outs[0].dtype}, expected {x_dtype}/{y_dtype}")
    if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "BINARY_CONV_2D", "FULLY_CONNECTED"):
        if len(ins) < 2 or ins[1] is None or ins[1].dtype != "int8" or not ins[1].is_constant:
            raise ExportError(f"op {op.name or op.kind!r} ({op.kind}): weights must be a constant int8 tensor")
        if len(ins) > 2 and ins[2] is not None and ins[2].dtype != "int32":
            raise ExportError(f"op {op.name or op.kind!r} ({op.kind}): bias must be int32, got {ins[2].dtype}")


def _bind_inputs(graph: IntGraph, inputs) -> dict[str, np.ndarray]:
    if not isinstance(inputs, dict):
        if len(graph.inputs) != 1:
            raise ExportError(f"graph {graph.name!r} has {len(graph.inputs)} inputs {graph.inputs}; "
                              "pass a dict name -> array")
        inputs = {graph.inputs[0]: inputs}
    missing = [n for n in graph.inputs if n not in inputs]
    if missing:
        raise ExportError(f"graph {graph.name!r}: no value for input(s) {missing}; got {sorted(inputs)}")
    values = {}
    for name in graph.inputs:
        t = graph.tensor(name)
        arr = np.asarray(inputs[name])
        if tuple(arr.shape) != tuple(t.shape):
            raise ExportError(f"input {name!r}: shape {tuple(arr.shape)} != expected {tuple(t.shape)}")
        if arr.dtype != np.dtype(_NP_DTYPES[t.dtype]):
            raise ExportError(f"input {name!r}: dtype {arr.dtype} != expected {t.dtype}; quantize it first")
        values[name] = arr
    return values


def run(graph: IntGraph, inputs, *, keep_all: bool = False) -> dict[str, np.ndarray]:
    """Execute ``graph`` on ``inputs`` (dict name -> array, or one array for a one-input graph).

    Returns ``{output name: array}``; with ``keep_all`` every tensor (inputs, constants,
    intermediates). Raises ExportError for an op kind without a kernel or inconsistent shapes.
    """
    values = _bind_inputs(graph, inputs)
    for t in graph.tensors.values():
        if t.is_constant:
            values[t.name] = t.data
    for op in graph.ops:
        kernel = KERNELS.get(op.kind)
        if kernel is None:
            raise ExportError(f"op {op.name or op.outputs!r}: no reference kernel for kind {op.kind!r}; "
                              f"supported: {', '.join(KERNELS)}")
        try:
            args = [values[n] if n else None for n in op.inputs]
        except KeyError as e:
            raise ExportError(f"op {op.name or op.kind!r} reads {e.args[0]!r} before it is computed") from None
        ins = [graph.tensor(n) if n else None for n in op.inputs]
        outs = [graph.tensor(n) for n in op.outputs]
        _check_dtypes(op, ins, outs)
        try:
            results = kernel(op, args, ins, outs)
        except (ValueError, IndexError, ZeroDivisionError, OverflowError) as e:
            # numpy's complaint about shapes/axes that do not fit the op (e.g. a hand-edited model)
            raise ExportError(f"op {op.name or op.kind!r} ({op.kind}): inputs {op.inputs} and attributes "
                              f"{op.attrs} are inconsistent ({type(e).__name__}: {e}); fix the graph") from None
        for t, arr in zip(outs, results):
            if tuple(arr.shape) != tuple(t.shape):
                raise ExportError(f"op {op.name or op.kind!r}: computed shape {tuple(arr.shape)} for "
                                  f"{t.name!r}, graph declares {tuple(t.shape)}")
            values[t.name] = arr.astype(_NP_DTYPES[t.dtype], copy=False)
    missing = [name for name in graph.outputs if name not in values]
    if missing:
        raise ExportError(f"graph {graph.name!r}: output(s) {missing} are never computed by any op")
    if keep_all:
        return dict(values)
    return {name: values[name] for name in graph.outputs}
