"""read_tflite: unsupported-op listing, foreign layouts, and malformed files (seeded fuzz)."""
from __future__ import annotations

import time

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as fb
from random_graphs import random_multi_op_graph, random_op_graph

from edgesmith.errors import ExportError
from firmware_export import reference
from firmware_export.tflite_decode import decode
from firmware_export.tflite_reader import read_tflite
from firmware_export.tflite_writer import write_tflite


def _edit(model: bytes, change) -> bytes:
    """Unpack with the schema's object API, apply ``change(ModelT)``, pack again."""
    m = fb.ModelT.InitFromPackedBuf(model, 0)
    change(m)
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _named(m, name: str):
    """The TensorT called ``name`` (the object API keeps names as bytes)."""
    return next(t for t in m.subgraphs[0].tensors if t.name in (name, name.encode()))


def _multi_model(seed: int = 0):
    graph, inputs = random_multi_op_graph(np.random.default_rng(seed))
    return graph, inputs, write_tflite(graph)


def test_every_unsupported_op_listed_in_one_error():
    graph, _, model = _multi_model()
    names = {op.name: op for op in graph.ops}

    def change(m):
        for oc in m.operatorCodes:
            if oc.builtinCode == fb.BuiltinOperator.SOFTMAX:
                oc.builtinCode = oc.deprecatedBuiltinCode = fb.BuiltinOperator.TANH
            elif oc.builtinCode == fb.BuiltinOperator.TRANSPOSE:
                oc.builtinCode = oc.deprecatedBuiltinCode = fb.BuiltinOperator.SQRT
    with pytest.raises(ExportError) as err:
        read_tflite(_edit(model, change))
    msg = str(err.value)
    assert "2 unsupported operator(s)" in msg
    file_kinds = [op.kind for op in decode(model).ops]  # operator indices as the file numbers them
    softmax_index, transpose_index = file_kinds.index("SOFTMAX"), file_kinds.index("TRANSPOSE")
    assert f"#{softmax_index} TANH -> 'prob'" in msg
    assert f"#{transpose_index} SQRT -> '{names['shuf7'].outputs[0]}'" in msg


def test_float_ops_are_listed_as_unsupported():
    graph, _ = random_op_graph("CONV_2D", np.random.default_rng(6))

    def change(m):
        for name in ("x", "y"):
            t = _named(m, name)
            t.type, t.quantization = fb.TensorType.FLOAT32, None
    with pytest.raises(ExportError, match=r"#0 CONV_2D -> 'y' \(float32 -> float32; IntGraph runs int8"):
        read_tflite(_edit(write_tflite(graph), change))


def test_reads_from_path_and_runs_like_the_original(tmp_path):
    graph, inputs, model = _multi_model(3)
    path = tmp_path / "m.tflite"
    path.write_bytes(model)
    back = read_tflite(path)
    np.testing.assert_array_equal(reference.run(back, inputs)["prob"], reference.run(graph, inputs)["prob"])
    with pytest.raises(ExportError, match="does not exist"):
        read_tflite(tmp_path / "missing.tflite")


def test_foreign_same_padding_and_per_tensor_weights():
    """A file written by someone else: SAME padding with no PAD op, per-tensor weight scale."""
    graph, inputs = random_op_graph("DEPTHWISE_CONV_2D", np.random.default_rng(4))
    model = write_tflite(graph)

    def change(m):
        w = _named(m, "w")
        w.quantization.scale = [w.quantization.scale[0]]
        w.quantization.zeroPoint = [0]
        w.quantization.quantizedDimension = 0
    back = read_tflite(_edit(model, change))
    w = back.tensors["w"]
    assert w.scale.size == 1 and w.quant_axis == 3  # normalised to IntGraph's depthwise layout axis


def test_per_channel_scales_on_the_wrong_axis_are_refused():
    seed = 8
    graph, _ = random_op_graph("CONV_2D", np.random.default_rng(seed))
    while graph.tensors["w"].shape[3] < 2 or graph.tensors["w"].shape[0] == graph.tensors["w"].shape[3]:
        seed += 1
        graph, _ = random_op_graph("CONV_2D", np.random.default_rng(seed))
    model = write_tflite(graph)
    cin = graph.tensors["w"].shape[3]

    def change(m):
        w = _named(m, "w")
        w.quantization.scale = [0.01] * cin
        w.quantization.zeroPoint = [0] * cin
        w.quantization.quantizedDimension = 3
    with pytest.raises(ExportError, match="per-channel scales on axis 3"):
        read_tflite(_edit(model, change))


@pytest.mark.parametrize("blob, match", [
    (b"", "too short"),
    (b"\x00" * 64, "file identifier"),
    (b"\x10\x00\x00\x00TFL3" + b"\xff" * 40, "malformed"),
])
def test_garbage_is_refused(blob, match):
    with pytest.raises(ExportError, match=match):
        read_tflite(blob)


def test_absurd_shape_is_refused_without_allocating():
    graph, _ = random_op_graph("FULLY_CONNECTED", np.random.default_rng(2))

    def change(m):
        _named(m, "x").shape = [1 << 20, 1 << 20]
    with pytest.raises(ExportError, match="elements"):
        read_tflite(_edit(write_tflite(graph), change))


def test_buffer_index_out_of_range_is_refused():
    graph, _ = random_op_graph("FULLY_CONNECTED", np.random.default_rng(2))

    def change(m):
        _named(m, "w").buffer = 10_000
    with pytest.raises(ExportError, match="uses buffer 10000"):
        read_tflite(_edit(write_tflite(graph), change))


def test_fuzz_mutated_and_truncated_files_parse_or_raise_export_error():
    """Seeded mutations of valid files: each attempt parses or raises ExportError, fast."""
    rng = np.random.default_rng(1234)
    models = [_multi_model(s)[2] for s in range(2)] + \
        [write_tflite(random_op_graph(k, rng)[0]) for k in ("CONV_2D", "CONCATENATION", "MEAN", "RESIZE_BILINEAR")]
    outcomes = {"parsed": 0, "refused": 0}
    start = time.monotonic()
    attempts = 0
    while time.monotonic() - start < 4.0:
        base = bytearray(models[attempts % len(models)])
        attempts += 1
        how = rng.integers(0, 4)
        if how == 0:
            blob = bytes(base[: int(rng.integers(0, len(base)))])
        elif how == 1:
            for _ in range(int(rng.integers(1, 8))):
                base[int(rng.integers(0, len(base)))] = int(rng.integers(0, 256))
            blob = bytes(base)
        elif how == 2:  # overwrite a 32-bit word: offsets, lengths, indices
            pos = int(rng.integers(0, len(base) - 4)) & ~3
            base[pos:pos + 4] = int(rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, rng.integers(0, 1 << 32)])).to_bytes(4, "little")
            blob = bytes(base)
        else:
            pos = int(rng.integers(0, len(base)))
            blob = bytes(base[:pos] + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes() + base[pos:])
        t0 = time.monotonic()
        try:
            read_tflite(blob)
            outcomes["parsed"] += 1
        except ExportError:
            outcomes["refused"] += 1
        assert time.monotonic() - t0 < 1.0, f"attempt {attempts} took too long"
    assert attempts > 200
    assert outcomes["refused"] > 0
    print(f"fuzz: {attempts} attempts, {outcomes}")
