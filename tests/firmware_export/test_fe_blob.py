"""Weight blob (firmware_export/blob.py): round trip, 1-bit packing, signatures, refusals, fuzz."""
from __future__ import annotations

import random
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from fe_blob_cases import make_graph, mutate, reseal
from hypothesis import given, settings
from hypothesis import strategies as st

from edgesmith.errors import ExportError
from firmware_export import blob as fb
from firmware_export.intgraph import IntGraph, Op, Tensor


def test_round_trip_restores_every_constant_bit_exact():
    g = make_graph(binary_width=13)  # 13 sign columns: packing pads the last byte of each row
    data = fb.write_blob(g)
    b = fb.parse_blob(data, expected_structure_hash=g.structure_hash(), expected_graph_hash=g.graph_hash())
    assert b.graph_hash == g.graph_hash() and b.version == 2 and not b.signed
    assert b.structure_hash == g.structure_hash()
    assert b.total_size == len(data)
    consts = g.constants()
    entries, k = fb.table_entries(g)
    assert k == len(consts) == b.constant_count and len(b.tensors) == len(entries) > k
    assert [bt.id for bt in b.tensors] == list(range(len(entries)))
    for t, bt in zip(entries[k:], b.records):  # the per-op parameter records, as the C reads them
        assert bt.dtype == t.dtype and bt.shape == t.shape
        np.testing.assert_array_equal(bt.data, t.data)
    for t, bt in zip(consts, b.constants):
        assert bt.dtype == t.dtype and bt.shape == t.shape and bt.size == t.nbytes
        assert bt.offset % 16 == 0
        np.testing.assert_array_equal(bt.data, t.data)
        assert bt.data.dtype == np.dtype(t.dtype)
    g2 = fb.load_weights_into(make_graph(seed=1, binary_width=13), b)
    assert g2.graph_hash() == g.graph_hash()


def test_binary_weights_are_packed_msb_first_one_is_plus_one():
    g = make_graph(binary_width=4)
    data = fb.write_blob(g)
    b = fb.parse_blob(data)
    wb_index = [t.name for t in g.constants()].index("wb")
    entry = b.tensors[wb_index]
    assert entry.bits == 1 and entry.size == 4 * 3 * 3 * 1  # 4 input signs -> 1 byte per row
    raw = data[entry.offset:entry.offset + entry.size]
    row0 = g.tensors["wb"].data[0, 0, 0]  # first 4 signs
    expected = sum(1 << (7 - i) for i, v in enumerate(row0) if v == 1)
    assert raw[0] == expected


def test_layout_fields_match_the_documented_offsets():
    g = make_graph()
    data = fb.write_blob(g)
    magic, version, hsize, flags, count, total, poff, psize, k = struct.unpack_from("<4sHHIIIIII", data)
    assert (magic, version, hsize, flags) == (b"ESWB", 2, 96, 0)
    assert count == len(fb.table_entries(g)[0]) and total == len(data)
    assert k == len(g.constants())
    assert poff == (96 + 40 * count + 15) // 16 * 16
    assert data[32:64] == bytes.fromhex(g.structure_hash())
    assert data[64:96] == bytes.fromhex(g.graph_hash())
    assert struct.unpack_from("<I", data, poff + psize)[0] == zlib.crc32(data[:poff + psize])


def test_signature_accepted_with_right_key_refused_otherwise(tmp_path):
    g = make_graph()
    priv, pub = fb.generate_keypair()
    signed = fb.write_blob(g, signing_key=priv)
    assert len(signed) == len(fb.write_blob(g)) + 64
    b = fb.parse_blob(signed, public_key=pub, require_signature=True)
    assert b.signed and len(b.signature) == 64

    _, other = fb.generate_keypair()
    with pytest.raises(ExportError, match="signature does not verify"):
        fb.parse_blob(signed, public_key=other, require_signature=True)

    # strip the signature and re-seal it as a well-formed unsigned blob
    body = bytearray(signed[:-64 - 4])
    struct.pack_into("<I", body, 8, 0)  # flags: unsigned
    struct.pack_into("<I", body, 16, len(body) + 4)  # total size
    stripped = bytes(body) + struct.pack("<I", zlib.crc32(body))
    fb.parse_blob(stripped)  # well formed ...
    with pytest.raises(ExportError, match="not signed but a signature is required"):
        fb.parse_blob(stripped, public_key=pub, require_signature=True)

    # one flipped payload byte with a fixed CRC still fails the signature
    tampered = bytearray(signed)
    poff = struct.unpack_from("<I", tampered, 20)[0]
    tampered[poff] ^= 1
    with pytest.raises(ExportError):
        fb.parse_blob(bytes(tampered), public_key=pub)

    # keys survive PEM and raw files
    for raw in (False, True):
        fb.save_private_key(priv, tmp_path / f"k{raw}", raw=raw)
        fb.save_public_key(pub, tmp_path / f"p{raw}", raw=raw)
        k2 = fb.load_private_key(tmp_path / f"k{raw}")
        p2 = fb.load_public_key(tmp_path / f"p{raw}")
        fb.parse_blob(fb.write_blob(g, signing_key=k2), public_key=p2, require_signature=True)
    (tmp_path / "junk").write_bytes(b"x" * 7)
    with pytest.raises(ExportError, match="32 raw bytes"):
        fb.load_public_key(tmp_path / "junk")


def test_blob_of_another_graph_is_refused():
    data = fb.write_blob(make_graph(seed=0))
    other = make_graph(seed=2)
    with pytest.raises(ExportError, match="written for graph"):
        fb.parse_blob(data, expected_graph_hash=other.graph_hash())
    # same structure, other weights: the structure check (what a device does) accepts it
    b = fb.parse_blob(data, expected_structure_hash=other.structure_hash())
    assert fb.load_weights_into(other, b).graph_hash() == b.graph_hash
    # other quantization parameters: the loaded graph cannot be the one the blob was made for
    other.tensors["w1"].scale = other.tensors["w1"].scale * 2
    assert other.structure_hash() == b.structure_hash
    with pytest.raises(ExportError, match="other quantization parameters"):
        fb.load_weights_into(other, b)
    # another structure (13 binary output channels instead of 4): refused before anything else
    wide = make_graph(binary_width=13)
    with pytest.raises(ExportError, match="is for model structure"):
        fb.parse_blob(data, expected_structure_hash=wide.structure_hash())
    with pytest.raises(ExportError, match="model structure"):
        fb.load_weights_into(wide, b)
    with pytest.raises(ExportError, match="has .* constants"):
        fb.load_weights_into(make_graph(), fb.Blob(**{**b.__dict__, "constant_count": b.constant_count - 1}))


def test_writer_refuses_binary_weights_that_are_not_signs():
    g = make_graph()
    g.tensors["wb"].data = g.tensors["wb"].data.copy()
    g.tensors["wb"].data[0, 0, 0, 0] = 3
    with pytest.raises(ExportError, match="only -1/\\+1"):
        fb.write_blob(g)


@pytest.mark.parametrize("field,offset,value,reason", [
    ("magic", 0, b"ESWX", "bad magic"),
    ("version", 4, struct.pack("<H", 1), "unknown format version: expected 2, got 1"),
    ("header size", 6, struct.pack("<H", 80), "header size"),
    ("flags", 8, struct.pack("<I", 6), "unknown flags"),
    ("count", 12, struct.pack("<I", 0xFFFFFFFF), "tensor count 4294967295 cannot fit"),
    ("total", 16, struct.pack("<I", 10), "total size: header says 10"),
    ("payload offset", 20, struct.pack("<I", 0), "payload offset: expected"),
    ("constant count", 28, struct.pack("<I", 999), "constant count 999 is larger than the entry count"),
    ("entry id", 96, struct.pack("<I", 5), "entry 0: id expected 0, got 5"),
    ("entry dtype", 100, b"\x09", "unknown dtype code 9"),
    ("entry bits", 101, b"\x04", "bits 4 not valid"),
    ("entry ndim", 102, b"\x07", "ndim expected <= 4"),
    ("entry offset", 104, struct.pack("<I", 8), "not aligned"),
    ("entry size", 108, struct.pack("<I", 9), "size 9 bytes"),
    ("entry crc", 112, struct.pack("<I", 1), "CRC32 expected 0x00000001"),
])
def test_each_malformed_field_is_refused_with_its_reason(field, offset, value, reason):
    buf = bytearray(fb.write_blob(make_graph()))
    buf[offset:offset + len(value)] = value
    with pytest.raises(ExportError, match=reason):
        fb.parse_blob(reseal(buf))


def test_overlapping_and_out_of_range_tensors_are_refused():
    data = fb.write_blob(make_graph())
    buf = bytearray(data)
    second = 96 + 40
    first_offset = struct.unpack_from("<I", buf, 104)[0]
    struct.pack_into("<I", buf, second + 8, first_offset)  # tensor 1 placed on tensor 0
    with pytest.raises(ExportError, match="overlaps"):
        fb.parse_blob(reseal(buf))
    buf = bytearray(data)
    last = 96 + 40 * (struct.unpack_from("<I", buf, 12)[0] - 1)
    struct.pack_into("<I", buf, last + 8, (len(buf) + 15) // 16 * 16)  # aligned, past the payload
    with pytest.raises(ExportError, match="past the payload"):
        fb.parse_blob(reseal(buf))


def test_crc_mismatch_and_truncation_are_refused():
    data = fb.write_blob(make_graph())
    with pytest.raises(ExportError, match="blob has 0x"):
        fb.parse_blob(data[:-4] + bytes(4))
    with pytest.raises(ExportError, match="truncated"):
        fb.parse_blob(data[:40])
    with pytest.raises(ExportError, match="total size"):
        fb.parse_blob(data[:-1])


def test_huge_claimed_sizes_do_not_allocate():
    buf = bytearray(fb.write_blob(make_graph()))
    struct.pack_into("<I", buf, 12, 0x7FFFFFFF)
    struct.pack_into("<I", buf, 24, 0xFFFFFFF0)
    tracemalloc.start()
    with pytest.raises(ExportError):
        fb.parse_blob(reseal(buf))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < len(buf) + 64 * 1024


def test_fuzzed_blobs_raise_only_export_error():
    rng = random.Random(1234)
    valids = [fb.write_blob(make_graph(seed=s, binary_width=w)) for s, w in ((0, 4), (1, 13))]
    priv, _ = fb.generate_keypair()
    valids.append(fb.write_blob(make_graph(), signing_key=priv))
    accepted = rejected = 0
    for i in range(3000):
        case = mutate(valids[i % len(valids)], rng)
        try:
            fb.parse_blob(case)
            accepted += 1
        except ExportError:
            rejected += 1
    assert rejected > 2500 and accepted + rejected == 3000


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=0, max_size=4),
       dtype=st.sampled_from(["int8", "int32", "float32", "int16", "uint8", "binary"]),
       seed=st.integers(0, 2**32 - 1))
def test_any_constant_round_trips(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(shape) if dtype != "binary" else tuple(shape) or (3,)
    if dtype == "binary":
        data, bits, dtype = np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int8), 1, "int8"
    elif dtype == "float32":
        data, bits = rng.standard_normal(shape).astype(np.float32), 32
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
        bits = info.bits
    t = {"x": Tensor("x", (1,), "int8"), "c": Tensor("c", shape, dtype, data=data, bits=bits),
         "y": Tensor("y", (1,), "int8")}
    g = IntGraph(t, [Op("ADD", ["x", "c"], ["y"], {"act": "NONE"})], ["x"], ["y"])
    # the container alone: this graph has no C form (float constant, unquantized ADD)
    packed = fb.pack_blob([t["c"]], 1, g.structure_hash(), g.graph_hash())
    b = fb.parse_blob(packed, expected_graph_hash=bytes.fromhex(g.graph_hash()))
    assert b.tensors[0].shape == shape and b.tensors[0].size == t["c"].nbytes
    np.testing.assert_array_equal(b.tensors[0].data, data)
    assert fb.load_weights_into(g, b).graph_hash() == g.graph_hash()


def test_bad_expected_hash_argument_is_an_export_error():
    with pytest.raises(ExportError, match="64 hex characters"):
        fb.parse_blob(fb.write_blob(make_graph()), expected_graph_hash="abc")
    with pytest.raises(ExportError, match="structure hash must be 64 hex characters"):
        fb.parse_blob(fb.write_blob(make_graph()), expected_structure_hash=b"\0" * 31)
