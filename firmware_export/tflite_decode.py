"""Defensive decoding of a ``.tflite`` flatbuffer into plain Python data (no IntGraph yet).

The Python flatbuffers runtime has no verifier, so every access goes through
:class:`_Decoder`, which bounds each vector by the bytes that remain in the file, charges every
element read to a budget proportional to the file size (shared vectors cannot make the work
quadratic), checks indices and shapes before anything is allocated, and turns any low-level
failure (bad offsets, truncated data) into :class:`ExportError`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from edgesmith.errors import ExportError

#: refuse tensors with more elements than this (16 Mi: far beyond any edge model's tensors)
MAX_ELEMENTS = 1 << 24
MAX_RANK = 8

_TYPE_NAMES = {fb.TensorType.INT8: "int8", fb.TensorType.INT32: "int32", fb.TensorType.FLOAT32: "float32",
               fb.TensorType.INT16: "int16", fb.TensorType.UINT8: "uint8"}
_OP_NAMES = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
_OPTION_NAMES = {v: k for k, v in vars(fb.BuiltinOptions).items() if not k.startswith("_")}
#: the builtin option fields the reader uses
OPTION_FIELDS = ("Padding", "StrideH", "StrideW", "DilationHFactor", "DilationWFactor", "DepthMultiplier",
                 "FusedActivationFunction", "FilterHeight", "FilterWidth", "KeepDims", "KeepNumDims", "Axis",
                 "AlignCorners", "HalfPixelCenters", "Beta")


@dataclasses.dataclass
class RawTensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str            # IntGraph dtype name, or "TensorType <n>" when unsupported
    scale: np.ndarray | None
    zero_point: np.ndarray | None
    quantized_dimension: int
    data: np.ndarray | None


@dataclasses.dataclass
class RawOp:
    index: int
    kind: str             # BuiltinOperator name, e.g. "CONV_2D", or "CUSTOM:<code>"
    inputs: list[int]
    outputs: list[int]
    options: dict         # builtin option fields read eagerly, e.g. {"StrideH": 1, "Padding": 0}


@dataclasses.dataclass
class RawModel:
    name: str
    description: str
    tensors: list[RawTensor]
    ops: list[RawOp]
    inputs: list[int]
    outputs: list[int]
    metadata: dict[str, bytes]


class _Decoder:
    def __init__(self, buf: bytes):
        self.buf = buf
        self.budget = 16 * len(buf) + 4096

    def charge(self, n: int, elem_size: int, what: str) -> int:
        """Check a vector length against the file size and the work budget."""
        if n < 0 or n * elem_size > len(self.buf):
            raise ExportError(f"malformed .tflite: {what} claims {n} elements, more than the "
                              f"{len(self.buf)}-byte file can hold")
        self.budget -= n + 1
        if self.budget < 0:
            raise ExportError("malformed .tflite: the file references far more data than it contains "
                              "(shared or cyclic offsets)")
        return n

    def ints(self, obj, field: str, what: str) -> list[int]:
        if getattr(obj, field + "IsNone")():
            return []
        n = self.charge(getattr(obj, field + "Length")(), 4, what)
        arr = getattr(obj, field + "AsNumpy")()
        if not isinstance(arr, np.ndarray) or arr.size != n:
            raise ExportError(f"malformed .tflite: {what} vector is truncated")
        return [int(v) for v in arr]

    def floats(self, obj, field: str, what: str, elem_size: int = 4) -> np.ndarray:
        if getattr(obj, field + "IsNone")():
            return np.zeros(0)
        n = self.charge(getattr(obj, field + "Length")(), elem_size, what)
        arr = getattr(obj, field + "AsNumpy")()
        if not isinstance(arr, np.ndarray) or arr.size != n:
            raise ExportError(f"malformed .tflite: {what} vector is truncated")
        return arr

    def string(self, raw) -> str:
        if raw is None:
            return ""
        self.charge(len(raw), 1, "string")
        return raw.decode("utf-8", errors="replace")

    # ---------------------------------------------------------------- model parts
    def buffers(self, model) -> list[bytes]:
        out = []
        for i in range(self.charge(model.BuffersLength(), 4, "buffers")):
            b = model.Buffers(i)
            offset, size = int(b.Offset()), int(b.Size())
            if offset > 1:  # data stored after the flatbuffer (models over 2 GB)
                if size < 0 or offset + size > len(self.buf):
                    raise ExportError(f"malformed .tflite: buffer {i} points at bytes {offset}..{offset + size} "
                                      f"of a {len(self.buf)}-byte file")
                out.append(self.buf[offset:offset + size])
            elif b.DataIsNone():
                out.append(b"")
            else:
                out.append(self.floats(b, "Data", f"buffer {i}", elem_size=1).tobytes())
        return out

    def tensor(self, sub, i: int, buffers: list[bytes]) -> RawTensor:
        t = sub.Tensors(i)
        shape = tuple(self.ints(t, "Shape", f"tensor {i} shape"))
        if len(shape) > MAX_RANK or any(d < 0 for d in shape):
            raise ExportError(f"malformed .tflite: tensor {i} has shape {shape}; expected up to {MAX_RANK} "
                              "non-negative dimensions (dynamic shapes are not supported)")
        count = 1
        for d in shape:
            count *= d
        if count > MAX_ELEMENTS:
            raise ExportError(f"tensor {i} has {count} elements (shape {shape}); more than {MAX_ELEMENTS} "
                              "is not a microcontroller model")
        ttype = int(t.Type())
        dtype = _TYPE_NAMES.get(ttype, f"TensorType {ttype}")
        name = self.string(t.Name())
        scale = zp = None
        qdim = 0
        q = t.Quantization()
        if q is not None:
            s = self.floats(q, "Scale", f"tensor {i} scales").astype(np.float32)
            z = self.floats(q, "ZeroPoint", f"tensor {i} zero points", elem_size=8).astype(np.int64)
            qdim = int(q.QuantizedDimension())
            if s.size:
                if z.size not in (s.size, 0):
                    raise ExportError(f"malformed .tflite: tensor {i} ({name!r}) has {s.size} scales "
                                      f"and {z.size} zero points")
                scale, zp = s, (z if z.size else np.zeros(s.size, np.int64))
                if s.size > 1 and not (0 <= qdim < len(shape) and shape[qdim] == s.size):
                    raise ExportError(f"malformed .tflite: tensor {i} ({name!r}) has {s.size} scales on "
                                      f"axis {qdim} of shape {shape}")
        data = None
        bi = int(t.Buffer())
        if not 0 <= bi < len(buffers):
            raise ExportError(f"malformed .tflite: tensor {i} ({name!r}) uses buffer {bi}; "
                              f"the file has {len(buffers)}")
        raw = buffers[bi]
        if raw:
            if dtype not in ("int8", "int32", "float32", "int16", "uint8"):
                raise ExportError(f"tensor {i} ({name!r}) holds constant data of unsupported {dtype}")
            itemsize = np.dtype(dtype).itemsize
            if len(raw) != count * itemsize:
                raise ExportError(f"malformed .tflite: tensor {i} ({name!r}) shape {shape} needs "
                                  f"{count * itemsize} bytes, its buffer has {len(raw)}")
            data = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)
        return RawTensor(i, name, shape, dtype, scale, zp, qdim, data)

    def op(self, sub, i: int, codes: list[str], n_tensors: int) -> RawOp:
        o = sub.Operators(i)
        ci = int(o.OpcodeIndex())
        if not 0 <= ci < len(codes):
            raise ExportError(f"malformed .tflite: operator {i} uses opcode {ci}; the file has {len(codes)}")
        inputs = self.ints(o, "Inputs", f"operator {i} inputs")
        outputs = self.ints(o, "Outputs", f"operator {i} outputs")
        for t in inputs + outputs:
            if not -1 <= t < n_tensors:
                raise ExportError(f"malformed .tflite: operator {i} references tensor {t}; "
                                  f"the subgraph has {n_tensors}")
        if not outputs or -1 in outputs:
            raise ExportError(f"malformed .tflite: operator {i} ({codes[ci]}) has no valid output")
        options = {}
        table = o.BuiltinOptions()
        opt_name = _OPTION_NAMES.get(int(o.BuiltinOptionsType()))
        if table is not None and opt_name and opt_name != "NONE" and hasattr(fb, opt_name):
            parsed = getattr(fb, opt_name)()
            parsed.Init(table.Bytes, table.Pos)
            for field in OPTION_FIELDS:  # read now, inside decode()'s error handling
                if hasattr(parsed, field):
                    options[field] = getattr(parsed, field)()
        return RawOp(i, codes[ci], inputs, outputs, options)

    def model(self) -> RawModel:
        if len(self.buf) < 16:
            raise ExportError(f"not a .tflite model: {len(self.buf)} bytes is too short")
        if self.buf[4:8] != b"TFL3":
            raise ExportError(f"not a .tflite model: file identifier is {bytes(self.buf[4:8])!r}, expected b'TFL3'")
        model = fb.Model.GetRootAs(self.buf, 0)
        version = int(model.Version())
        if version != 3:
            raise ExportError(f".tflite schema version {version} is not supported (expected 3)")
        codes = []
        for i in range(self.charge(model.OperatorCodesLength(), 4, "operator codes")):
            oc = model.OperatorCodes(i)
            code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
            name = _OP_NAMES.get(code, f"BUILTIN_{code}")
            if name == "CUSTOM":
                name = f"CUSTOM:{self.string(oc.CustomCode())}"
            codes.append(name)
        n_sub = self.charge(model.SubgraphsLength(), 4, "subgraphs")
        if n_sub < 1:
            raise ExportError("malformed .tflite: the model has no subgraph")
        buffers = self.buffers(model)
        sub = model.Subgraphs(0)
        n_tensors = self.charge(sub.TensorsLength(), 4, "tensors")
        tensors = [self.tensor(sub, i, buffers) for i in range(n_tensors)]
        ops = [self.op(sub, i, codes, n_tensors) for i in range(self.charge(sub.OperatorsLength(), 4, "operators"))]
        inputs = self.ints(sub, "Inputs", "subgraph inputs")
        outputs = self.ints(sub, "Outputs", "subgraph outputs")
        for t in inputs + outputs:
            if not 0 <= t < n_tensors:
                raise ExportError(f"malformed .tflite: subgraph input/output {t} is not one of {n_tensors} tensors")
        metadata = {}
        for i in range(self.charge(model.MetadataLength(), 4, "metadata")):
            m = model.Metadata(i)
            bi = int(m.Buffer())
            if 0 <= bi < len(buffers):
                metadata[self.string(m.Name())] = buffers[bi]
        return RawModel(self.string(sub.Name()), self.string(model.Description()), tensors, ops,
                        inputs, outputs, metadata)


def decode(buf: bytes) -> RawModel:
    """Decode ``buf`` or raise ExportError saying what is malformed; never another exception."""
    try:
        return _Decoder(bytes(buf)).model()
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - any low-level failure here means a malformed file
        raise ExportError(f"malformed .tflite: {type(e).__name__} while decoding ({e}); "
                          "the file is truncated or corrupt, re-export it") from None
