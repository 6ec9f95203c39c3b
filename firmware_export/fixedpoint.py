"""TFLite's fixed-point arithmetic in numpy, exact to the bit.

Everything works on int64 numpy arrays holding int32 values, so intermediate products never
overflow; where the C code relies on 32-bit two's-complement wrap-around (plain ``+`` on int32 in
gemmlowp) we wrap explicitly with :func:`wrap32`. Functions are vectorised: a multiplier and
shift may be scalars or arrays broadcast against ``x`` (per-channel requantization passes arrays
shaped like the channel axis).

Rounding rules (each matches TFLite / gemmlowp, not TFLITE_SINGLE_ROUNDING, which neither
TFLite Micro nor LiteRT enable by default):

* :func:`quantize_multiplier`: ``frexp`` then ``round(q * 2**31)`` half away from zero
  (``TfLiteRound`` = ``std::round``); a mantissa that rounds up to 2**31 is halved with the
  exponent bumped; exponents below -31 flush the multiplier to 0.
* :func:`saturating_rounding_doubling_high_mul`: ``(a*b + nudge) / 2**31`` with C truncating
  division and ``nudge = 2**30`` for non-negative products, ``1 - 2**30`` otherwise: nearest,
  with ties toward +infinity (0.5 -> 1, -0.5 -> 0, -7.5 -> -7); ``INT32_MIN * INT32_MIN``
  saturates to ``INT32_MAX``.
* :func:`rounding_divide_by_pot`: arithmetic shift right, then +1 when the remainder exceeds
  half (ties round away from zero: threshold is ``mask >> 1`` plus one for negative ``x``).
* :func:`multiply_by_quantized_multiplier`: left shift first (positive shift), SRDHM, then
  rounding right shift (negative shift) -- two roundings, as TFLite's default build.
"""
from __future__ import annotations

import math

import numpy as np

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


def wrap32(x):
    """Two's-complement wrap of int64 values to int32 range (what int32 ``+``/``*`` does in C)."""
    x = np.asarray(x, dtype=np.int64)
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def round_half_away(x: float) -> int:
    """``std::round`` on a double: halves go away from zero."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def round_half_away_array(x) -> np.ndarray:
    """Vectorised ``std::round`` (numpy's ``round`` is half-to-even, TFLite's is not)."""
    x = np.asarray(x)
    return np.sign(x) * np.floor(np.abs(x) + x.dtype.type(0.5))


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: ``real ~= multiplier * 2**(shift - 31)``, multiplier in [2**30, 2**31)."""
    real = float(real)
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = round_half_away(q * float(1 << 31))
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:  # everything would shift out: TFLite flushes to zero
        shift, q_fixed = 0, 0
    return int(q_fixed), int(shift)


def quantize_multipliers(reals) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_multiplier` over an array of doubles: (multipliers, shifts) as int64 arrays."""
    pairs = [quantize_multiplier(r) for r in np.asarray(reals, dtype=np.float64).reshape(-1)]
    return (np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64))


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on int32 values (as int64 arrays)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudged = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    # C's '/' truncates toward zero; '>>' alone would floor negative values
    high = np.where(nudged >= 0, nudged >> 31, -((-nudged) >> 31))
    overflow = (a == b) & (a == INT32_MIN)
    return np.where(overflow, INT32_MAX, high).astype(np.int64)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp ``RoundingDivideByPOT``: ``x / 2**exponent`` rounded half away from zero."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(x, multiplier, shift) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier(int32 x, int32 multiplier, int shift)``.

    ``multiplier``/``shift`` broadcast against ``x`` (per-channel: arrays along the last axis).
    """
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    shifted = wrap32(x * (np.int64(1) << left))  # int32 multiply in C
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right)


def multiply_by_quantized_multiplier_single_rounding(x, multiplier, shift) -> np.ndarray:
    """``TFLITE_SINGLE_ROUNDING`` variant: ``(x * multiplier + 2**(30 - shift)) >> (31 - shift)``.

    Not used by the reference interpreter (TFLite Micro rounds twice); LiteRT 2.3's reference
    per-channel FULLY_CONNECTED rounds this way, which tests record.
    """
    x = np.asarray(x, dtype=np.int64)
    total_shift = 31 - np.asarray(shift, dtype=np.int64)
    return (x * np.asarray(multiplier, dtype=np.int64) + (np.int64(1) << (total_shift - 1))) >> total_shift


def saturating_rounding_multiply_by_pot(x, exponent: int) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingMultiplyByPOT<exponent>`` for int32 raw values."""
    x = np.asarray(x, dtype=np.int64)
    if exponent == 0:
        return x
    if exponent < 0:
        return rounding_divide_by_pot(x, -exponent)
    threshold = (1 << (31 - exponent)) - 1
    result = wrap32(x << exponent)
    result = np.where(x > threshold, INT32_MAX, result)
    return np.where(x < -threshold, INT32_MIN, result)


def count_leading_zeros32(x) -> np.ndarray:
    """Leading zero bits of a uint32 value (32 for 0)."""
    x = np.asarray(x, dtype=np.int64) & 0xFFFFFFFF
    bits = np.zeros(x.shape, dtype=np.int64)
    for b in range(32):
        bits = np.where(x >= (np.int64(1) << b), b + 1, bits)
    return 32 - bits


# --------------------------------------------------------------------------- gemmlowp fixed point
# A gemmlowp FixedPoint<int32, I> is an int32 ``raw`` meaning raw / 2**(31 - I). Products of
# FixedPoints are SRDHM of their raws (integer bits add); sums are int32 adds (wrapped).

def _fp_mul(a, b) -> np.ndarray:
    return saturating_rounding_doubling_high_mul(a, b)


def _fp_one(integer_bits: int) -> int:
    # One() with 0 integer bits is not representable: gemmlowp returns the max raw value
    return INT32_MAX if integer_bits == 0 else 1 << (31 - integer_bits)


def _rescale(raw, src_bits: int, dst_bits: int) -> np.ndarray:
    """gemmlowp ``Rescale<dst_bits>`` of a FixedPoint with ``src_bits`` integer bits."""
    return saturating_rounding_multiply_by_pot(raw, src_bits - dst_bits)


def exp_on_interval_between_negative_one_quarter_and_0_excl(a) -> np.ndarray:
    """exp(a) for a in [-1/4, 0) in Q0.31, Taylor expansion around -1/8 (gemmlowp)."""
    constant_term = 1895147668          # exp(-1/8)
    constant_1_over_3 = 715827883
    x = wrap32(np.asarray(a, np.int64) + (1 << 28))
    x2 = _fp_mul(x, x)
    x3 = _fp_mul(x2, x)
    x4 = _fp_mul(x2, x2)
    x4_over_4 = saturating_rounding_multiply_by_pot(x4, -2)
    poly = saturating_rounding_multiply_by_pot(
        wrap32(_fp_mul(wrap32(x4_over_4 + x3), constant_1_over_3) + x2), -1)
    return wrap32(constant_term + _fp_mul(constant_term, wrap32(x + poly)))


def exp_on_negative_values(a, integer_bits: int) -> np.ndarray:
    """gemmlowp ``exp_on_negative_values`` of a Q(integer_bits) input; result Q0.31."""
    a = np.asarray(a, np.int64)
    frac_bits = 31 - integer_bits
    one_quarter = 1 << (frac_bits - 2)
    mask = one_quarter - 1
    a_mod_quarter_minus_one_quarter = wrap32((a & mask) - one_quarter)
    result = exp_on_interval_between_negative_one_quarter_and_0_excl(
        _rescale(a_mod_quarter_minus_one_quarter, integer_bits, 0))
    remainder = wrap32(a_mod_quarter_minus_one_quarter - a)
    barrel = [(-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
              (2, 39332535), (3, 720401), (4, 242)]
    for exponent, multiplier in barrel:
        if integer_bits > exponent:
            bit = np.int64(1) << (frac_bits + exponent)
            result = np.where((remainder & bit) != 0, _fp_mul(result, multiplier), result)
    if integer_bits > 5:
        clamp = -(1 << (36 - integer_bits))
        result = np.where(a < clamp, 0, result)
    return np.where(a == 0, _fp_one(0), result)


def one_over_one_plus_x_for_x_in_0_1(a) -> np.ndarray:
    """gemmlowp ``one_over_one_plus_x_for_x_in_0_1``: 1/(1+a) in Q0.31, Newton-Raphson."""
    a = np.asarray(a, np.int64)
    s = a + _fp_one(0)  # RoundingHalfSum in int64: (a + b + sign) / 2, truncating
    half_denominator = np.where(s >= 0, (s + 1) // 2, -((-(s - 1)) // 2))
    constant_48_over_17 = 1515870810
    constant_neg_32_over_17 = -1010580540
    x = wrap32(constant_48_over_17 + _fp_mul(half_denominator, constant_neg_32_over_17))
    one_q2 = _fp_one(2)
    for _ in range(3):
        half_denominator_times_x = _fp_mul(half_denominator, x)
        one_minus = wrap32(one_q2 - half_denominator_times_x)
        x = wrap32(x + _rescale(_fp_mul(x, one_minus), 4, 2))
    # ExactMulByPot<-1> only relabels the type (Q2 -> Q1); Rescale<0> then shifts left by 1
    return _rescale(x, 1, 0)


def logistic(a, integer_bits: int) -> np.ndarray:
    """gemmlowp ``logistic`` of a Q(integer_bits) input; result Q0.31."""
    a = np.asarray(a, np.int64)
    positive = a > 0
    abs_input = np.where(positive, a, wrap32(-a))
    result_if_positive = one_over_one_plus_x_for_x_in_0_1(
        exp_on_negative_values(wrap32(-abs_input), integer_bits))
    result_if_negative = wrap32(_fp_one(0) - result_if_positive)
    out = np.where(positive, result_if_positive, result_if_negative)
    return np.where(a == 0, 1 << 30, out)


def get_reciprocal(x, x_integer_digits: int) -> tuple[np.ndarray, np.ndarray]:
    """TFLite ``GetReciprocal``: (Q0.31 scale, num_bits_over_unit) with 1/x = scale * 2**bits."""
    x = np.asarray(x, np.int64)
    headroom_plus_one = count_leading_zeros32(x)
    num_bits_over_unit = x_integer_digits - headroom_plus_one
    shifted = ((x & 0xFFFFFFFF) << headroom_plus_one) & 0xFFFFFFFF
    shifted_sum_minus_one = wrap32(shifted - (1 << 31))
    return one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one), num_bits_over_unit


def calculate_input_radius(input_integer_bits: int, input_left_shift: int, total_signed_bits: int = 31) -> int:
    """TFLite ``CalculateInputRadius``: largest |input - zp| whose rescaled value stays in range."""
    max_input_rescaled = (1.0 * ((1 << input_integer_bits) - 1) * float(1 << (total_signed_bits - input_integer_bits))
                          / float(1 << input_left_shift))
    return int(math.floor(max_input_rescaled))


def preprocess_softmax_scaling(beta: float, input_scale: float, input_integer_bits: int) -> tuple[int, int]:
    """TFLite ``PreprocessSoftmaxScaling`` (non single-rounding): (multiplier, left_shift >= 0)."""
    real = min(beta * input_scale * float(1 << (31 - input_integer_bits)), float((1 << 31) - 1))
    return quantize_multiplier(real)


def activation_range(act: str, scale: float, zero_point: int, qmin: int = -128, qmax: int = 127) -> tuple[int, int]:
    """TFLite ``CalculateActivationRangeQuantized``: the int8 clamp a fused activation becomes.

    ``f / scale`` is computed in float32 (the C code divides two floats), then rounded half away.
    """
    def quantize(f: float) -> int:
        return int(zero_point) + round_half_away(float(np.float32(f) / np.float32(scale)))

    if act == "NONE":
        return qmin, qmax
    if act == "RELU":
        return max(qmin, quantize(0.0)), qmax
    if act == "RELU6":
        return max(qmin, quantize(0.0)), min(qmax, quantize(6.0))
    if act == "RELU_N1_TO_1":
        return max(qmin, quantize(-1.0)), min(qmax, quantize(1.0))
    raise ValueError(f"unknown fused activation {act!r}")
