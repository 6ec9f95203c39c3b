"""The weight blob: everything value-dependent of a C model in one file, for updates without new code.

A blob holds a model's **weights table** (:func:`table_entries`, defined by
:func:`firmware_export.c_table.weight_table`): the graph's constants, then one parameter record
per op (zero points, clamps, requantization multipliers and shifts, lookup tables) and the
graph inputs' and outputs' quantization, in exactly the order the generated C indexes it. Firmware compiled for one graph runs a blob of any graph
with the same ``structure_hash()``: the same architecture after retraining *and* requantizing.

Two hashes are in the header (see :mod:`firmware_export.intgraph`): the **structure hash**, which
the device (``runtime/es_blob.c``) and ``parse_blob(..., expected_structure_hash=...)`` check
against the firmware, and the **graph hash** of the exact model, for tooling and reports.

The device keeps blobs in A/B flash slots; the C verifier checks the same layout before a slot
is used. Everything is little-endian. Layout (format version 2)::

    offset  size  field
    ------  ----  ---------------------------------------------------------------
    0       4     magic b"ESWB"
    4       2     format version (uint16) = 2
    6       2     header size in bytes (uint16) = 96
    8       4     flags (uint32): bit 0 = signed (an Ed25519 signature ends the blob);
                  every other bit must be 0
    12      4     entry count N (uint32): graph constants + parameter records
    16      4     total size of the blob in bytes, signature included (uint32)
    20      4     payload offset P = header + table rounded up to 16 (uint32)
    24      4     payload size S in bytes (uint32)
    28      4     constant count K <= N (uint32): entries [0, K) are graph constants in
                  ``graph.constants()`` order, entries [K, N) per-op parameter records and
                  last the I/O quantization record (layouts in ``c_table``)
    32      32    structure hash (``bytes.fromhex(graph.structure_hash())``)
    64      32    graph hash (``bytes.fromhex(graph.graph_hash())``)
    96      40*N  table, one entry per weights-table entry:
                    +0  id (uint32) = index in the weights table; entry i has id i
                    +4  dtype code (uint8): 1 int8, 2 int32, 3 float32, 4 int16, 5 uint8
                    +5  bits (uint8): 1 (binary, int8 only) or the dtype's width (8/16/32)
                    +6  ndim (uint8), 0..4
                    +7  reserved (uint8), 0
                    +8  offset of the data from the start of the blob (uint32), multiple of 16
                    +12 size of the data in bytes (uint32), equal to what dims/dtype/bits imply
                    +16 CRC32 of the data (uint32)
                    +20 dims[4] (uint32 each); dims[k] >= 1 for k < ndim, 0 for k >= ndim
                    +36 reserved (uint32), 0
    ...     pad   zeros up to P
    P       S     payload: entries in table order at increasing, non-overlapping offsets
                  (zero padding between them); 1-bit weights are packed 8 per byte along the
                  last axis, MSB first, 1 = +1, each row padded to whole bytes with 0 bits
    P+S     4     CRC32 (zlib, uint32) over every byte before it
    P+S+4   64    optional Ed25519 signature over every byte before it (flag bit 0)

So ``total = P + S + 4 (+ 64 when signed)``; a blob with any other length is refused.

**What is signed** (the one definition; the writer, :func:`parse_blob`, the flasher and the
firmware all use it): the Ed25519 (RFC 8032, PureEdDSA) signature is over the bytes
``blob[0 : total - 64]``, i.e. header, table, padding, payload and the CRC32, and it sits in the
last 64 bytes. The device always checks CRCs and the structure hash; firmware built with a
public key (``edgesmith build --public-key``, ``targets/firmware/es_ed25519.c``) also checks the
signature at COMMIT and at boot and refuses unsigned blobs; without one, the flasher and the edge
agent verify signatures before writing a slot. ``es_blob_fill_table()`` then points the model's
table into the blob.

Every malformed input raises :class:`ExportError` naming the field, expected vs actual.
The parser checks every header field against the input length before it allocates anything,
so no header value can make it allocate more than the input's size; decoded arrays are built
only once the whole blob is verified (binary tensors unpack to 8x their packed size).
"""
from __future__ import annotations

import dataclasses
import struct
import zlib
from typing import Any

import numpy as np

from edgesmith.errors import ExportError
from firmware_export.blob_keys import (_private_key, _public_key, generate_keypair,  # noqa: F401 (re-exported)
                                       load_private_key, load_public_key, save_private_key,
                                       save_public_key)
from firmware_export.c_table import weight_table
from firmware_export.intgraph import IntGraph, Tensor

MAGIC = b"ESWB"
FORMAT_VERSION = 2
HEADER_SIZE = 96
ENTRY_SIZE = 40
ALIGN = 16
MAX_NDIM = 4
CRC_SIZE = 4
SIGNATURE_SIZE = 64
FLAG_SIGNED = 0x1

_HEADER = struct.Struct("<4sHHIIIIII32s32s")
_ENTRY = struct.Struct("<IBBBBIII4II")

#: dtype name <-> code in the tensor table (keep in sync with ``es_blob.h``)
DTYPE_CODES = {"int8": 1, "int32": 2, "float32": 3, "int16": 4, "uint8": 5}
_CODE_DTYPES = {code: name for name, code in DTYPE_CODES.items()}


@dataclasses.dataclass
class BlobTensor:
    """One decoded constant: ``data`` has the graph's dtype and shape (1-bit unpacked to +-1)."""

    id: int
    dtype: str
    bits: int
    shape: tuple[int, ...]
    offset: int
    size: int
    crc32: int
    data: np.ndarray


@dataclasses.dataclass
class Blob:
    """A parsed, verified weight blob: header fields plus its tensors in id order."""

    version: int
    flags: int
    structure_hash: str
    graph_hash: str
    constant_count: int
    total_size: int
    payload_offset: int
    payload_size: int
    crc32: int
    tensors: list[BlobTensor]
    signature: bytes | None

    @property
    def signed(self) -> bool:
        return bool(self.flags & FLAG_SIGNED)

    @property
    def constants(self) -> list[BlobTensor]:
        """The graph constants (weights, biases), in ``graph.constants()`` order."""
        return self.tensors[:self.constant_count]

    @property
    def records(self) -> list[BlobTensor]:
        """The per-op parameter records, in op order (see ``c_table``)."""
        return self.tensors[self.constant_count:]


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _bits_for(dtype: str, binary: bool) -> int:
    return 1 if binary else np.dtype(dtype).itemsize * 8


def _data_size(dtype: str, bits: int, shape: tuple[int, ...]) -> int:
    """Bytes a tensor takes in the payload (1-bit rows packed to whole bytes)."""
    count = 1
    for d in shape[:-1] if bits == 1 else shape:
        count *= d
    if bits == 1:
        return count * ((shape[-1] + 7) // 8)
    return count * np.dtype(dtype).itemsize


def _encode_tensor(t: Any) -> tuple[bytes, int]:
    """Payload bytes and bits of one IntGraph constant."""
    if t.dtype not in DTYPE_CODES:
        raise ExportError(f"constant {t.name!r} has dtype {t.dtype!r}; the weight blob stores "
                          f"{', '.join(DTYPE_CODES)}")
    shape = tuple(int(d) for d in t.shape)
    if len(shape) > MAX_NDIM or any(d < 1 for d in shape):
        raise ExportError(f"constant {t.name!r} has shape {shape}; the weight blob stores up to "
                          f"{MAX_NDIM} dimensions, each >= 1")
    data = np.asarray(t.data)
    if tuple(data.shape) != shape:
        raise ExportError(f"constant {t.name!r}: data shape {data.shape} != declared {shape}")
    if t.bits == 1:
        if t.dtype != "int8" or not shape:
            raise ExportError(f"binary constant {t.name!r} must be int8 with at least one axis, "
                              f"got dtype {t.dtype} shape {shape}")
        if not np.all((data == 1) | (data == -1)):
            bad = np.unique(data[(data != 1) & (data != -1)])[:5].tolist()
            raise ExportError(f"binary constant {t.name!r} must hold only -1/+1, found {bad}; "
                              f"re-run the binary conversion")
        packed = np.packbits(data > 0, axis=-1, bitorder="big")
        return packed.tobytes(), 1
    le = np.dtype(t.dtype).newbyteorder("<")
    return np.ascontiguousarray(data.astype(le, copy=False)).tobytes(), _bits_for(t.dtype, False)


def table_entries(graph: IntGraph) -> tuple[list[Tensor], int]:
    """The blob's entries for ``graph`` in the order the generated C indexes its weights table,
    and how many of them are graph constants (the rest are per-op parameter records)."""
    table = weight_table(graph)
    return table.entries, table.constant_count


def pack_blob(entries: list[Tensor], constant_count: int, structure_hash: str | bytes,
              graph_hash: str | bytes, signing_key: Any = None) -> bytes:
    """Serialise table entries (``Tensor`` objects with data) into a blob (module docstring).

    :func:`write_blob` is the normal entry point; this one is the container alone.
    """
    if not 0 <= constant_count <= len(entries):
        raise ExportError(f"constant count {constant_count} must be between 0 and the {len(entries)} entries")
    table_end = HEADER_SIZE + ENTRY_SIZE * len(entries)
    payload_offset = _align(table_end)
    rows: list[bytes] = []
    chunks: list[bytes] = []
    cursor = payload_offset
    for index, t in enumerate(entries):
        raw, bits = _encode_tensor(t)
        if len(raw) != t.nbytes:
            raise ExportError(f"constant {t.name!r}: encoded {len(raw)} bytes, Tensor.nbytes says "
                              f"{t.nbytes}")
        offset = _align(cursor)
        chunks.append(b"\0" * (offset - cursor) + raw)
        shape = tuple(int(d) for d in t.shape)
        dims = shape + (0,) * (MAX_NDIM - len(shape))
        rows.append(_ENTRY.pack(index, DTYPE_CODES[t.dtype], bits, len(shape), 0, offset,
                                len(raw), zlib.crc32(raw), *dims, 0))
        cursor = offset + len(raw)
    payload_size = cursor - payload_offset
    flags = FLAG_SIGNED if signing_key is not None else 0
    total = cursor + CRC_SIZE + (SIGNATURE_SIZE if signing_key is not None else 0)
    if total > 0xFFFFFFFF:
        raise ExportError(f"weight blob would be {total} bytes; the format's limit is 4 GiB")
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, HEADER_SIZE, flags, len(entries), total,
                          payload_offset, payload_size, constant_count,
                          _hash_bytes(structure_hash, "structure"), _hash_bytes(graph_hash, "graph"))
    body = header + b"".join(rows) + b"\0" * (payload_offset - table_end) + b"".join(chunks)
    body += struct.pack("<I", zlib.crc32(body))
    if signing_key is not None:
        body += _private_key(signing_key).sign(body)
    return body


def write_blob(graph: IntGraph, signing_key: Any = None) -> bytes:
    """The weight blob of ``graph``: its weights table (constants + per-op parameter records)
    with its structure and graph hashes (see the module docstring).

    ``signing_key``: an Ed25519 private key (``cryptography`` object or 32 raw bytes); when
    given, the blob is flagged signed and ends with a 64-byte signature.
    """
    entries, constant_count = table_entries(graph)
    return pack_blob(entries, constant_count, graph.structure_hash(), graph.graph_hash(), signing_key)


def _fail(what: str) -> None:
    raise ExportError(f"invalid weight blob: {what}")


def _parse_header(mv: memoryview) -> tuple:
    n = len(mv)
    if n < HEADER_SIZE:
        _fail(f"truncated: {n} bytes, the header alone needs {HEADER_SIZE}")
    (magic, version, header_size, flags, count, total, payload_offset, payload_size, constant_count,
     shash, ghash) = _HEADER.unpack_from(mv, 0)
    if magic != MAGIC:
        _fail(f"bad magic: expected {MAGIC!r}, got {bytes(magic)!r} (not a weight blob)")
    if version != FORMAT_VERSION:
        _fail(f"unknown format version: expected {FORMAT_VERSION}, got {version}; "
              f"update edgesmith or re-export the blob")
    if header_size != HEADER_SIZE:
        _fail(f"header size: expected {HEADER_SIZE}, got {header_size}")
    if flags & ~FLAG_SIGNED:
        _fail(f"unknown flags: expected only bit 0, got 0x{flags:08x}")
    if total != n:
        _fail(f"total size: header says {total} bytes, got {n} (truncated or trailing data)")
    trailer = CRC_SIZE + (SIGNATURE_SIZE if flags & FLAG_SIGNED else 0)
    max_count = max(0, n - HEADER_SIZE - trailer) // ENTRY_SIZE
    if count > max_count:
        _fail(f"tensor count {count} cannot fit in {n} bytes (at most {max_count})")
    if constant_count > count:
        _fail(f"constant count {constant_count} is larger than the entry count {count}")
    expected_payload = _align(HEADER_SIZE + ENTRY_SIZE * count)
    if payload_offset != expected_payload:
        _fail(f"payload offset: expected {expected_payload}, got {payload_offset}")
    if payload_offset + payload_size + trailer != n:
        _fail(f"sizes: payload offset {payload_offset} + payload size {payload_size} + trailer "
              f"{trailer} = {payload_offset + payload_size + trailer}, expected total {n}")
    return version, flags, count, constant_count, payload_offset, payload_size, shash, ghash, trailer


def _parse_entry(mv: memoryview, i: int, prev_end: int, payload_end: int) -> tuple:
    (tid, code, bits, ndim, res8, offset, size, crc, d0, d1, d2, d3,
     res32) = _ENTRY.unpack_from(mv, HEADER_SIZE + ENTRY_SIZE * i)
    where = f"tensor table entry {i}"
    if tid != i:
        _fail(f"{where}: id expected {i}, got {tid}")
    if res8 != 0 or res32 != 0:
        _fail(f"{where}: reserved fields expected 0, got {res8} and {res32}")
    if code not in _CODE_DTYPES:
        _fail(f"{where}: unknown dtype code {code} (known: {sorted(_CODE_DTYPES)})")
    dtype = _CODE_DTYPES[code]
    width = _bits_for(dtype, False)
    if bits != width and not (bits == 1 and dtype == "int8"):
        _fail(f"{where}: bits {bits} not valid for {dtype} (expected {width}"
              f"{' or 1' if dtype == 'int8' else ''})")
    dims = (d0, d1, d2, d3)
    if ndim > MAX_NDIM:
        _fail(f"{where}: ndim expected <= {MAX_NDIM}, got {ndim}")
    if any(d < 1 for d in dims[:ndim]) or any(d != 0 for d in dims[ndim:]):
        _fail(f"{where}: dims {dims} invalid for ndim {ndim} (used dims >= 1, unused 0)")
    if bits == 1 and ndim == 0:
        _fail(f"{where}: a 1-bit tensor needs at least one axis")
    shape = tuple(dims[:ndim])
    expected = _data_size(dtype, bits, shape)
    if size != expected:
        _fail(f"{where}: size {size} bytes, but {dtype} bits={bits} shape {shape} needs {expected}")
    if offset % ALIGN:
        _fail(f"{where}: offset {offset} is not aligned to {ALIGN} bytes")
    if offset < prev_end:
        _fail(f"{where}: offset {offset} overlaps the previous tensor or the table (ends at "
              f"{prev_end})")
    if offset + size > payload_end:
        _fail(f"{where}: data [{offset}, {offset + size}) runs past the payload end {payload_end}")
    actual = zlib.crc32(mv[offset:offset + size])
    if actual != crc:
        _fail(f"{where}: CRC32 expected 0x{crc:08x}, data has 0x{actual:08x} (corrupt payload)")
    return dtype, bits, shape, offset, size, crc


def _decode(mv: memoryview, dtype: str, bits: int, shape: tuple[int, ...], offset: int,
            size: int) -> np.ndarray:
    raw = mv[offset:offset + size]
    if bits == 1:
        packed = np.frombuffer(raw, dtype=np.uint8).reshape(shape[:-1] + ((shape[-1] + 7) // 8,))
        signs = np.unpackbits(packed, axis=-1, count=shape[-1], bitorder="big")
        return (signs.astype(np.int8) * 2 - 1).astype(np.int8)
    le = np.dtype(dtype).newbyteorder("<")
    return np.frombuffer(raw, dtype=le).reshape(shape).astype(dtype)


def _hash_bytes(value: str | bytes, what: str = "graph") -> bytes:
    """A sha256 hash given as 64 hex characters or 32 bytes."""
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 32:
        raise ExportError(f"expected {what} hash must be 64 hex characters or 32 bytes, got "
                          f"{value!r:.80}")
    return raw


def parse_blob(data: bytes | bytearray | memoryview, *,
               expected_structure_hash: str | bytes | None = None,
               expected_graph_hash: str | bytes | None = None,
               public_key: Any = None, require_signature: bool = False) -> Blob:
    """Verify and decode a weight blob; any problem raises :class:`ExportError` with the reason.

    ``expected_structure_hash`` (hex string or 32 bytes; what the device checks) refuses a blob
    for another model structure: the firmware's code cannot run it. ``expected_graph_hash``
    refuses any blob but the one of this exact model (tooling). ``public_key`` (Ed25519, object
    or 32 raw bytes) verifies the signature of a signed blob; ``require_signature`` refuses
    unsigned blobs and needs ``public_key``.
    """
    mv = memoryview(data).cast("B")
    (version, flags, count, constant_count, payload_offset, payload_size, shash, ghash,
     trailer) = _parse_header(mv)
    n = len(mv)
    crc_at = payload_offset + payload_size
    stored_crc = struct.unpack_from("<I", mv, crc_at)[0]
    actual_crc = zlib.crc32(mv[:crc_at])
    if stored_crc != actual_crc:
        _fail(f"CRC32 expected 0x{stored_crc:08x}, blob has 0x{actual_crc:08x} (corrupt or "
              f"truncated transfer)")
    entries = []
    prev_end = payload_offset
    for i in range(count):
        entry = _parse_entry(mv, i, prev_end, crc_at)
        entries.append(entry)
        prev_end = entry[3] + entry[4]
    if expected_structure_hash is not None:
        want = _hash_bytes(expected_structure_hash, "structure")
        if want != shash:
            raise ExportError(f"weight blob is for model structure {shash.hex()[:16]}…, the firmware "
                              f"runs structure {want.hex()[:16]}… (other ops, shapes or attributes); "
                              f"export the firmware from this architecture or the blob from the "
                              f"firmware's architecture")
    if expected_graph_hash is not None:
        want = _hash_bytes(expected_graph_hash, "graph")
        if want != ghash:
            raise ExportError(f"weight blob was written for graph {ghash.hex()[:16]}…, expected "
                              f"graph {want.hex()[:16]}…; export the blob from the same model")
    signature = bytes(mv[n - SIGNATURE_SIZE:]) if flags & FLAG_SIGNED else None
    if require_signature and signature is None:
        raise ExportError("weight blob is not signed but a signature is required; sign it with "
                          "the release key (write_blob(..., signing_key=...))")
    if require_signature and public_key is None:
        raise ExportError("require_signature=True needs public_key to check the signature")
    if signature is not None and public_key is not None:
        from cryptography.exceptions import InvalidSignature
        try:
            _public_key(public_key).verify(signature, bytes(mv[:n - SIGNATURE_SIZE]))
        except InvalidSignature:
            raise ExportError("weight blob signature does not verify with the given public key "
                              "(wrong key or tampered blob)") from None
    tensors = [BlobTensor(i, dtype, bits, shape, offset, size, crc,
                          _decode(mv, dtype, bits, shape, offset, size))
               for i, (dtype, bits, shape, offset, size, crc) in enumerate(entries)]
    return Blob(version, flags, shash.hex(), ghash.hex(), constant_count, n, payload_offset,
                payload_size, stored_crc, tensors, signature)


def load_weights_into(graph: IntGraph, blob: Blob, *, verify_hash: bool = True) -> IntGraph:
    """A copy of ``graph`` whose constants hold the blob's data (the input graph is unchanged).

    The blob's structure hash must be the graph's, and each blob constant must match the graph
    constant with the same id in dtype, bits and shape. The blob carries the integer parameters
    derived from scales and zero points, not the float scales themselves; with ``verify_hash``
    the new graph's hash must equal the blob's graph hash, which catches a blob of a model
    requantized with other scales (its records would not match this graph's quantization).
    """
    if graph.structure_hash() != blob.structure_hash:
        raise ExportError(f"weight blob is for model structure {blob.structure_hash[:16]}…, graph "
                          f"{graph.name!r} has structure {graph.structure_hash()[:16]}…")
    consts = graph.constants()
    if len(consts) != blob.constant_count:
        raise ExportError(f"weight blob has {blob.constant_count} constants, graph {graph.name!r} has "
                          f"{len(consts)}")
    tensors = dict(graph.tensors)
    for t, bt in zip(consts, blob.constants):
        bits = 1 if t.bits == 1 else _bits_for(t.dtype, False)
        if (bt.dtype, bt.bits, bt.shape) != (t.dtype, bits, tuple(t.shape)):
            raise ExportError(f"weight blob tensor {bt.id} is {bt.dtype} bits={bt.bits} shape "
                              f"{bt.shape}; graph constant {t.name!r} is {t.dtype} bits={bits} "
                              f"shape {tuple(t.shape)}")
        tensors[t.name] = dataclasses.replace(t, data=bt.data.copy())
    ops = [dataclasses.replace(op, inputs=list(op.inputs), outputs=list(op.outputs),
                               attrs=dict(op.attrs)) for op in graph.ops]
    new = IntGraph(tensors, ops, list(graph.inputs), list(graph.outputs), graph.name)
    if verify_hash and new.graph_hash() != blob.graph_hash:
        raise ExportError(f"graph with the blob's weights hashes to {new.graph_hash()[:16]}…, the "
                          f"blob says {blob.graph_hash[:16]}…: the blob was made for the same "
                          f"architecture with other quantization parameters (scales, zero points)")
    return new
