"""Model analysis (firmware_export/analysis.py): MACs and sizes against hand-computed numbers."""
from __future__ import annotations

import json

import numpy as np

from firmware_export.analysis import analyse, format_table, human_bytes
from firmware_export.intgraph import IntGraph, Op, Tensor


def hand_graph() -> IntGraph:
    """conv -> grouped conv -> binary 1x1 -> depthwise x2 -> max pool -> reshape -> FC -> add."""
    rng = np.random.default_rng(0)
    t: dict[str, Tensor] = {}

    def act(name, shape):
        t[name] = Tensor(name, shape, "int8", np.array([0.1], np.float32), np.array([0]))

    def const(name, shape, dtype="int8", bits=8, axis=0):
        n = shape[axis] if shape else 1
        if bits == 1:
            data = np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int8)
        else:
            data = rng.integers(-100, 100, shape).astype(dtype)
        t[name] = Tensor(name, shape, dtype, np.full(n, 0.02, np.float32), np.zeros(n, np.int64),
                         axis if n > 1 else None, data, bits)

    act("x", (1, 8, 8, 3))
    const("w1", (8, 3, 3, 3)); const("b1", (8,), "int32", 32); act("y1", (1, 4, 4, 8))
    const("w2", (8, 3, 3, 4)); const("b2", (8,), "int32", 32); act("y2", (1, 4, 4, 8))
    const("wb", (8, 1, 1, 8), bits=1); const("bb", (8,), "int32", 32); act("y3", (1, 4, 4, 8))
    const("w4", (1, 3, 3, 16), axis=3); const("b4", (16,), "int32", 32); act("y4", (1, 2, 2, 16))
    act("y5", (1, 1, 1, 16)); act("y6", (1, 16))
    const("w7", (10, 16)); const("b7", (10,), "int32", 32); act("y7", (1, 10))
    const("k", (10,), axis=0); act("out", (1, 10))
    conv = {"stride": (2, 2), "dilation": (1, 1), "pads": (1, 1, 1, 1), "act": "RELU"}
    same = {**conv, "stride": (1, 1)}
    ops = [
        Op("CONV_2D", ["x", "w1", "b1"], ["y1"], conv, name="stem"),
        Op("CONV_2D", ["y1", "w2", "b2"], ["y2"], same, name="grouped"),  # groups = 8 / 4 = 2
        Op("BINARY_CONV_2D", ["y2", "wb", "bb"], ["y3"],
           {**same, "pads": (0, 0, 0, 0), "binary_input": False}),
        Op("DEPTHWISE_CONV_2D", ["y3", "w4", "b4"], ["y4"], {**conv, "depth_multiplier": 2}),
        Op("MAX_POOL_2D", ["y4"], ["y5"], {"filter": (2, 2), "stride": (2, 2),
                                           "pads": (0, 0, 0, 0), "act": "NONE"}),
        Op("RESHAPE", ["y5"], ["y6"], {"shape": (1, 16)}),
        Op("FULLY_CONNECTED", ["y6", "w7", "b7"], ["y7"], {"act": "NONE"}),
        Op("ADD", ["y7", "k"], ["out"], {"act": "NONE"}),
    ]
    g = IntGraph(t, ops, ["x"], ["out"], "handnet")
    g.validate()
    return g


def test_macs_equal_hand_computed_numbers():
    stats = analyse(hand_graph())
    per_op = [(o.kind, o.macs, o.binary_ops, o.element_ops) for o in stats.ops]
    assert per_op == [
        ("CONV_2D", 4 * 4 * 8 * (3 * 3 * 3), 0, 0),          # 3456
        ("CONV_2D", 4 * 4 * 8 * (3 * 3 * 4), 0, 0),          # 4608: I/groups = 4
        ("BINARY_CONV_2D", 0, 4 * 4 * 8 * 8, 0),             # 1024 binary, not int8
        ("DEPTHWISE_CONV_2D", 2 * 2 * 16 * 9, 0, 0),         # 576
        ("MAX_POOL_2D", 0, 0, 16 * 4),                        # window elements
        ("RESHAPE", 0, 0, 0),                                 # data movement only
        ("FULLY_CONNECTED", 10 * 16, 0, 0),                  # 160
        ("ADD", 0, 0, 10),
    ]
    assert (stats.macs, stats.binary_ops, stats.element_ops) == (8800, 1024, 74)


def test_parameters_split_by_role_and_binary_is_packed():
    stats = analyse(hand_graph())
    assert (stats.weight_params, stats.weight_bytes) == (216 + 288 + 144 + 160, 808)
    assert (stats.bias_params, stats.bias_bytes) == (8 + 8 + 8 + 16 + 10, 50 * 4)
    assert (stats.binary_params, stats.binary_bytes) == (64, 8)  # 8 rows of 8 signs -> 8 bytes
    assert (stats.other_params, stats.other_bytes) == (10, 10)
    assert stats.param_count == 808 + 50 + 64 + 10
    assert stats.param_bytes == 808 + 200 + 8 + 10
    assert stats.ops[2].param_bytes == 8 + 32


def test_activation_bytes_per_tensor_and_op_counts():
    stats = analyse(hand_graph())
    assert stats.activation_bytes == {"x": 192, "y1": 128, "y2": 128, "y3": 128, "y4": 64,
                                      "y5": 16, "y6": 16, "y7": 10, "out": 10}
    assert stats.largest_activation == ("x", 192)
    assert stats.op_counts == {"CONV_2D": 2, "BINARY_CONV_2D": 1, "DEPTHWISE_CONV_2D": 1,
                               "MAX_POOL_2D": 1, "RESHAPE": 1, "FULLY_CONNECTED": 1, "ADD": 1}
    assert stats.ops[0].output_bytes == 128 and stats.ops[0].name == "stem"


def test_shared_constant_counts_once():
    g = hand_graph()
    g.ops[1].inputs[2] = "b1"  # the grouped conv reuses the stem's bias
    del g.tensors["b2"]
    stats = analyse(g)
    assert stats.bias_params == 50 - 8
    assert stats.ops[1].param_count == 288


def test_format_table_and_json():
    stats = analyse(hand_graph())
    text = format_table(stats)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["#", "op", "kind", "output"]
    stem = next(line for line in lines if " stem " in line)
    assert "CONV_2D" in stem and "3.46k" in stem and "1x4x4x8" in stem
    total = next(line for line in lines if line.split()[:1] == ["total"])
    assert "8.80k" in total and "1.02k" in total
    assert "handnet" in text and "binary 64 (8 B packed)" in text
    assert "largest x (192 B)" in text
    assert json.loads(json.dumps(stats.to_dict()))["macs"] == 8800
    assert human_bytes(186368) == "182 KiB" and human_bytes(1536) == "1.5 KiB"
