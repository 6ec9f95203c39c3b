"""fixedpoint.py against hand-computed TFLite / gemmlowp results."""
from __future__ import annotations

import math

import numpy as np
import pytest

from firmware_export import fixedpoint as fp


@pytest.mark.parametrize("real, expected", [
    (0.5, (1 << 30, 0)),
    (1.0, (1 << 30, 1)),
    (0.75, (1610612736, 0)),
    (0.25, (1 << 30, -1)),
    (3.0, (1610612736, 2)),
    (0.0, (0, 0)),
    (2.0 ** -40, (0, 0)),                 # shift below -31 flushes to zero
    (1.0 - 2.0 ** -40, (1 << 30, 1)),     # mantissa rounds up to 2**31: halved, shift + 1
])
def test_quantize_multiplier_hand_cases(real, expected):
    assert fp.quantize_multiplier(real) == expected


def test_quantize_multiplier_rounds_half_away_from_zero():
    # q * 2**31 = 1610612736.5 exactly: std::round goes up (banker's rounding would stay even)
    real = (1610612736.5) / 2.0 ** 31
    assert fp.quantize_multiplier(real) == (1610612737, 0)


def test_quantize_multiplier_reconstructs_real():
    for real in np.geomspace(1e-6, 1e3, 200):
        m, s = fp.quantize_multiplier(real)
        assert (1 << 30) <= m < (1 << 31)
        assert abs(m * 2.0 ** (s - 31) - real) <= real * 2.0 ** -30


@pytest.mark.parametrize("a, b, expected", [
    (1 << 30, 1 << 30, 1 << 29),
    (1, 1 << 30, 1),            # 0.5 rounds up
    (-1, 1 << 30, 0),           # -0.5 rounds up too: the negative nudge is 1 - 2**30
    (-3, 1 << 30, -1),          # -1.5 -> -1
    (-3, 1 << 29, -1),          # -0.75 -> -1
    (fp.INT32_MIN, fp.INT32_MIN, fp.INT32_MAX),  # the one overflow case saturates
    (fp.INT32_MAX, fp.INT32_MAX, fp.INT32_MAX - 1),
])
def test_srdhm_hand_cases(a, b, expected):
    assert int(fp.saturating_rounding_doubling_high_mul(a, b)) == expected


@pytest.mark.parametrize("x, exponent, expected", [
    (5, 1, 3), (-5, 1, -3), (3, 1, 2), (-3, 1, -2), (4, 1, 2),
    (5, 2, 1), (6, 2, 2), (-6, 2, -2), (-5, 2, -1), (7, 0, 7), (-(1 << 31), 31, -1),
])
def test_rounding_divide_by_pot_half_away_from_zero(x, exponent, expected):
    assert int(fp.rounding_divide_by_pot(x, exponent)) == expected


def test_multiply_by_quantized_multiplier_double_rounding():
    half = 1 << 30
    assert int(fp.multiply_by_quantized_multiplier(100, half, 0)) == 50
    assert int(fp.multiply_by_quantized_multiplier(100, half, -1)) == 25
    assert int(fp.multiply_by_quantized_multiplier(100, half, 1)) == 100     # left shift first
    assert int(fp.multiply_by_quantized_multiplier(-7, half, 2)) == -14
    # 5 * 0.25 = 1.25, but TFLite rounds twice: SRDHM gives 2.5 -> 3, then 3 / 2 -> 2
    assert int(fp.multiply_by_quantized_multiplier(5, half, -1)) == 2


def test_multiply_by_quantized_multiplier_per_channel_broadcast():
    x = np.array([[10, 10, 10], [-10, -10, -10]])
    mult = np.array([1 << 30, 1 << 30, 1610612736])
    shift = np.array([0, -2, 0])
    out = fp.multiply_by_quantized_multiplier(x, mult, shift)
    # 10 * 0.75 = 7.5 -> 8 but -7.5 -> -7: SRDHM ties go up, not away from zero
    assert out.tolist() == [[5, 1, 8], [-5, -1, -7]]


def test_saturating_rounding_multiply_by_pot():
    assert int(fp.saturating_rounding_multiply_by_pot(3, 2)) == 12
    assert int(fp.saturating_rounding_multiply_by_pot(1 << 29, 2)) == fp.INT32_MAX
    assert int(fp.saturating_rounding_multiply_by_pot(-(1 << 29) - 1, 2)) == fp.INT32_MIN
    assert int(fp.saturating_rounding_multiply_by_pot(6, -2)) == 2


def test_wrap32_and_count_leading_zeros():
    assert int(fp.wrap32(1 << 31)) == fp.INT32_MIN
    assert int(fp.wrap32(-(1 << 31) - 1)) == fp.INT32_MAX
    assert fp.count_leading_zeros32(np.array([0, 1, 2, 255, 1 << 31])).tolist() == [32, 31, 30, 24, 0]


def test_exp_on_negative_values_tracks_exp():
    integer_bits = 5
    a = -np.arange(0, 31 * 4096, 37, dtype=np.int64) * (1 << 26) // 4096  # 0 .. -31 in Q5.26
    got = fp.exp_on_negative_values(a, integer_bits) / 2.0 ** 31
    want = np.exp(a / 2.0 ** 26)
    assert np.max(np.abs(got - want)) < 2e-7
    assert int(fp.exp_on_negative_values(0, integer_bits)) == fp.INT32_MAX  # exp(0) is "one"


def test_one_over_one_plus_x_and_reciprocal():
    x = np.linspace(0, 0.999, 101)
    raw = np.round(x * 2.0 ** 31).astype(np.int64)
    got = fp.one_over_one_plus_x_for_x_in_0_1(raw) / 2.0 ** 31
    assert np.max(np.abs(got - 1.0 / (1.0 + x))) < 1e-8
    scale, bits = fp.get_reciprocal(np.array([3 << 19]), 12)  # 3.0 in Q12.19
    assert abs(float(scale[0]) / 2.0 ** 31 * 2.0 ** -int(bits[0]) - 1 / 3) < 1e-8


def test_logistic_fixed_point():
    assert int(fp.logistic(0, 4)) == 1 << 30
    a = np.arange(-15 * 2 ** 27, 15 * 2 ** 27, 2 ** 22, dtype=np.int64)  # Q4.27 in (-15, 15)
    got = fp.logistic(a, 4) / 2.0 ** 31
    assert np.max(np.abs(got - 1.0 / (1.0 + np.exp(-a / 2.0 ** 27)))) < 1e-7


def test_activation_range_rounds_half_away_in_float32():
    assert fp.activation_range("NONE", 0.1, 5) == (-128, 127)
    assert fp.activation_range("RELU", 0.1, 10) == (10, 127)
    assert fp.activation_range("RELU6", 6 / 255, -128) == (-128, 127)
    assert fp.activation_range("RELU6", 0.1, -128) == (-128, -68)
    # 1 / 0.4f is 2.5 in float32: std::round gives 3 (numpy's round would give 2)
    assert fp.activation_range("RELU_N1_TO_1", 0.4, 0) == (-3, 3)


def test_softmax_scaling_and_input_radius():
    m, s = fp.preprocess_softmax_scaling(1.0, 0.1, 5)
    assert s >= 0 and abs(m * 2.0 ** (s - 31) / (0.1 * 2 ** 26) - 1) < 2 ** -30
    assert fp.calculate_input_radius(4, 0) == math.floor(15 * 2 ** 27)
    assert fp.calculate_input_radius(5, 3) == math.floor(31 * 2 ** 26 / 8)
