"""Shared cases for the weight-blob tests: a hand-built IntGraph and seeded blob corruptions.

Blob format 2: 96-byte header, table entries at ``96 + 40 * i`` (see firmware_export/blob.py).
"""
from __future__ import annotations

import random
import struct
import zlib

import numpy as np

from firmware_export.intgraph import IntGraph, Op, Tensor


def _q(n: int, scale: float = 0.05) -> dict:
    """Quantization fields: one scale per channel (n > 1) or per tensor."""
    return {"scale": np.full(n, scale, np.float32), "zero_point": np.zeros(n, np.int64)}


def make_graph(seed: int = 0, binary_width: int = 4) -> IntGraph:
    """conv -> depthwise -> binary conv -> add scalar -> mean -> FC, constants of every kind."""
    rng = np.random.default_rng(seed)
    t: dict[str, Tensor] = {}

    def act(name, shape):
        t[name] = Tensor(name, shape, "int8", np.array([0.1], np.float32), np.array([-3]))

    def const(name, data, dtype="int8", bits=8, axis=None, nq=1):
        t[name] = Tensor(name, tuple(data.shape), dtype, quant_axis=axis, data=data, bits=bits, **_q(nq))

    act("x", (1, 6, 6, 3))
    const("w1", rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8), axis=0, nq=4)
    const("b1", rng.integers(-1000, 1000, (4,)).astype(np.int32), "int32", 32, axis=0, nq=4)
    act("y1", (1, 6, 6, 4))
    const("w2", rng.integers(-127, 128, (1, 3, 3, 4)).astype(np.int8), axis=3, nq=4)
    const("b2", rng.integers(-1000, 1000, (4,)).astype(np.int32), "int32", 32, axis=0, nq=4)
    act("y2", (1, 4, 4, 4))
    wb = np.where(rng.random((binary_width, 3, 3, 4)) < 0.5, -1, 1).astype(np.int8)
    const("wb", wb, bits=1, axis=0, nq=binary_width)
    const("bb", rng.integers(-99, 99, (binary_width,)).astype(np.int32), "int32", 32, axis=0,
          nq=binary_width)
    act("y3", (1, 2, 2, binary_width))
    const("k", np.array(7, np.int8))
    act("y4", (1, 2, 2, binary_width))
    act("y5", (1, binary_width))
    const("wf", rng.integers(-127, 128, (10, binary_width)).astype(np.int8), axis=0, nq=10)
    const("bf", rng.integers(-1000, 1000, (10,)).astype(np.int32), "int32", 32, axis=0, nq=10)
    act("out", (1, 10))
    conv = {"stride": (1, 1), "dilation": (1, 1), "pads": (1, 1, 1, 1), "act": "RELU"}
    ops = [
        Op("CONV_2D", ["x", "w1", "b1"], ["y1"], dict(conv)),
        Op("DEPTHWISE_CONV_2D", ["y1", "w2", "b2"], ["y2"],
           {**conv, "pads": (0, 0, 0, 0), "depth_multiplier": 1}),
        Op("BINARY_CONV_2D", ["y2", "wb", "bb"], ["y3"],
           {**conv, "pads": (0, 0, 0, 0), "binary_input": False}),
        Op("ADD", ["y3", "k"], ["y4"], {"act": "NONE"}),
        Op("MEAN", ["y4"], ["y5"], {"axes": (1, 2), "keep_dims": False}),
        Op("FULLY_CONNECTED", ["y5", "wf", "bf"], ["out"], {"act": "NONE"}),
    ]
    g = IntGraph(t, ops, ["x"], ["out"], "blobnet")
    g.validate()
    return g


def reseal(buf: bytearray) -> bytes:
    """Recompute the trailing CRC so a mutation reaches the checks after it."""
    n = len(buf)
    signed = n >= 12 and struct.unpack_from("<I", buf, 8)[0] & 1
    crc_at = n - 4 - (64 if signed else 0)
    if crc_at >= 0:
        struct.pack_into("<I", buf, crc_at, zlib.crc32(bytes(buf[:crc_at])))
    return bytes(buf)


def mutate(valid: bytes, rng: random.Random) -> bytes:
    """One seeded corruption of a valid blob: flips, field edits, truncation, resealed or not."""
    buf = bytearray(valid)
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(buf[:rng.randrange(len(buf))])
    if kind == 1:
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif kind == 2:  # a header or table field set to an interesting value
        end = min(len(buf) - 4, 96 + 40 * 8)
        pos = rng.randrange(0, end, 2)
        value = rng.choice([0, 1, 2, 15, 16, 17, 64, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
                            len(buf), len(buf) - 68, rng.getrandbits(32)])
        width = rng.choice([1, 2, 4])
        buf[pos:pos + width] = value.to_bytes(4, "little")[:width]
    elif kind == 3:  # shift a tensor's offset or size by a little
        count = struct.unpack_from("<I", buf, 12)[0]
        entry = 96 + 40 * rng.randrange(max(1, count))
        field = entry + rng.choice([8, 12, 20, 24, 28, 32])
        old = struct.unpack_from("<I", buf, field)[0]
        struct.pack_into("<I", buf, field, (old + rng.choice([-16, -1, 1, 16, 8])) & 0xFFFFFFFF)
    elif kind == 4:
        buf += bytes(rng.randrange(1, 40))
    else:
        buf[rng.randrange(len(buf))] = rng.randrange(256)
    return reseal(buf) if rng.random() < 0.6 else bytes(buf)
