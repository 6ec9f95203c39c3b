"""The EdgeSmith device protocol, host side: frame codec, payload types and the ``Device`` client.

``targets/protocol.md`` is the specification; this module implements exactly that page. Layers,
bottom up (STYLE 6: bounded retries at the layer that can recover):

* :func:`encode_frame` / :class:`FrameDecoder` — ``A5 5A | type | seq | len u16 | payload |
  CRC32``; the decoder resynchronises on ``A5 5A`` after a bad CRC, an over-long length or a
  frame that does not complete within ``FRAME_TIMEOUT_S``.
* :class:`Device` (in :mod:`targets.client`, importable from here) — one command at a time: send, wait for the response with the same seq,
  resend the *same* frame (same seq, so the device answers from its stored response instead of
  executing twice) on NAK or silence, at most ``COMMAND_ATTEMPTS`` tries. An ERR answer is final
  and raises :class:`DeviceCommandError` with the device's error code.
* Typed commands (``info``, ``erase``, ``write``, ``verify``, ``commit``, ``infer``, ...) pack
  and unpack the payloads of the command table.

The device checks CRCs and the blob's structure hash; Ed25519 signatures are checked on the host
(``targets.flasher``), never by the firmware.
"""
from __future__ import annotations

import dataclasses
import enum
import struct
import time
import typing
import zlib
from typing import Callable

from edgesmith.errors import EdgeSmithError

PROTOCOL_VERSION = 1
SOF = b"\xa5\x5a"
HEADER_SIZE = 6  # SOF, type, seq, length u16
CRC_SIZE = 4
MAX_PAYLOAD = 1024
#: a frame must complete this long after its first byte, else the receiver drops it
FRAME_TIMEOUT_S = 0.2
#: WRITE payload: slot u8 + offset u32 before the data
WRITE_HEADER_SIZE = 5
MAX_WRITE_DATA = MAX_PAYLOAD - WRITE_HEADER_SIZE
#: INPUT payload: offset u32 before the data
MAX_INPUT_DATA = MAX_PAYLOAD - 4

#: tries per command (first send + resends) before the command fails
COMMAND_ATTEMPTS = 5
#: wait per try for commands the device answers at once
RESPONSE_TIMEOUT_S = 0.5
#: wait per try for commands that erase, hash or compute (simulated and emulated devices are slow)
LONG_TIMEOUTS_S = {"ERASE": 10.0, "VERIFY": 10.0, "COMMIT": 15.0, "INFER": 60.0, "DETECT": 60.0}
#: seconds per byte assumed for socket:// links (QEMU's UART: ~1-10 KB/s), added to each wait
SOCKET_BYTE_TIME_S = 1e-3


class Cmd(enum.IntEnum):
    """Command codes (protocol.md, "Commands")."""

    INFO = 0x01
    ERASE = 0x02
    WRITE = 0x03
    VERIFY = 0x04
    COMMIT = 0x05
    INFER = 0x06
    STATS = 0x07
    REBOOT = 0x08
    CONFIRM = 0x09
    READ = 0x0A
    INPUT = 0x0B
    OUTPUT = 0x0C
    DETECT = 0x0D
    DETECTIONS = 0x0E


OK_FLAG = 0x80
RESP_ERR = 0x7E
RESP_NAK = 0x7F


class ErrCode(enum.IntEnum):
    """ERR payload byte 0."""

    BAD_ARGS = 1
    SLOT_ACTIVE = 2
    BAD_OFFSET = 3
    FLASH = 4
    HASH_MISMATCH = 5
    BLOB_INVALID = 6
    NO_MODEL = 7
    INPUT_SIZE = 8
    NOT_TRIAL = 9
    UNKNOWN_COMMAND = 10


class NakReason(enum.IntEnum):
    """NAK payload byte 0."""

    BAD_CRC = 1
    TOO_LONG = 2
    TIMEOUT = 3
    UNKNOWN_TYPE = 4


class SlotState(enum.IntEnum):
    """State of a weight slot (protocol.md, "Slots and updates")."""

    EMPTY = 0
    WRITING = 1
    VALID = 2
    TRIAL = 3
    BAD = 4


#: ``DeviceInfo.active_slot`` when the device runs the weights compiled into the firmware
COMPILED_IN_SLOT = 0xFF
SLOT_A, SLOT_B = 0, 1


class DeviceError(EdgeSmithError):
    """A device, port or link fault the user can act on (device not answering, refused command)."""


class DeviceConnectionError(DeviceError):
    """The port cannot be opened, or the link went away (cable pulled, emulator exited)."""


class DeviceTimeoutError(DeviceError):
    """A command got no valid answer within its bounded tries."""


class DeviceCommandError(DeviceError):
    """The device answered ERR: ``code`` (an :class:`ErrCode` when known) and its ``message``."""

    def __init__(self, command: str, code: int, message: str):
        self.command = command
        self.code = code
        self.device_message = message
        name = ErrCode(code).name if code in ErrCode._value2member_map_ else f"code {code}"
        super().__init__(f"device refused {command}: {name}: {message or '(no message)'}")


# ---------------------------------------------------------------- frame codec


class Frame(typing.NamedTuple):
    """One decoded frame (immutable; a named tuple because the flasher decodes one per WRITE
    answer and a frozen dataclass costs twice as much to build)."""

    type: int
    seq: int
    payload: bytes


@dataclasses.dataclass(frozen=True)
class DecodeFault:
    """A dropped frame: ``reason`` is a :class:`NakReason` (what the device would NAK with)."""

    reason: NakReason
    type: int | None = None
    seq: int | None = None


_FRAME_HEADER = struct.Struct("<BBH")  # type, seq, length (after SOF)
_FRAME_CRC = struct.Struct("<I")


def encode_frame(ftype: int, seq: int, payload: bytes = b"", max_payload: int = MAX_PAYLOAD, *,
                 prefix: bytes = b"") -> bytes:
    """One frame: SOF, type, seq, length, payload, CRC32 over type..payload.

    ``payload`` may be any bytes-like object; ``prefix`` goes before it in the frame's payload.
    The flasher passes WRITE's slot and offset as ``prefix`` and a memoryview slice of the blob as
    ``payload``, so the blob's bytes are copied once, into the frame (joining them into one
    payload first cost as much again as the CRC). ``max_payload``: a device whose INFO
    advertises bigger command frames takes up to that."""
    if not 0 <= ftype <= 0xFF or not 0 <= seq <= 0xFF:
        raise DeviceError(f"frame type {ftype} and seq {seq} must each fit in one byte (0..255)")
    length = len(prefix) + len(payload)
    if length > max_payload or length > 0xFFFF:
        raise DeviceError(f"frame payload is {length} bytes; the protocol allows at most "
                          f"{max_payload}: split it (WRITE/INPUT/OUTPUT take offsets)")
    header = _FRAME_HEADER.pack(ftype, seq, length) + prefix
    crc = zlib.crc32(payload, zlib.crc32(header))
    return b"".join((SOF, header, payload, _FRAME_CRC.pack(crc)))


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns the frames and drop events completed so far.

    After any failure only the first byte of the failed candidate is discarded and the buffer is
    scanned again for ``A5 5A``, so a valid frame that a corrupted length swallowed is still found.
    ``clock`` is injectable so tests can step time.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD, frame_timeout_s: float = FRAME_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic):
        self.max_payload = max_payload
        self.frame_timeout_s = frame_timeout_s
        self._clock = clock
        self._buf = bytearray()
        self._started: float | None = None  # when the current candidate frame began

    @property
    def pending(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget every buffered byte (a new connection)."""
        self._buf.clear()
        self._started = None

    def feed(self, data: bytes = b"") -> list[Frame | DecodeFault]:
        """Add received bytes (may be empty, to expire a stale partial frame); return events."""
        self._buf += data
        events: list[Frame | DecodeFault] = []
        now = self._clock()  # once per call: a call decodes what one read brought (µs apart)
        while True:
            start = self._buf.find(SOF)
            if start < 0:
                # keep a trailing 0xA5: it may be the first half of the next SOF
                keep = 1 if self._buf[-1:] == SOF[:1] else 0
                del self._buf[:len(self._buf) - keep]
                if not keep:
                    self._started = None
                return events
            if start:
                del self._buf[:start]
                self._started = None
            if self._started is None:
                self._started = now
            if len(self._buf) < HEADER_SIZE:
                if self._expired(now, events, None, None):
                    continue
                return events
            ftype, seq, length = _FRAME_HEADER.unpack_from(self._buf, 2)
            if length > self.max_payload:
                events.append(DecodeFault(NakReason.TOO_LONG, ftype, seq))
                self._drop_candidate()
                continue
            end = HEADER_SIZE + length + CRC_SIZE
            if len(self._buf) < end:
                if self._expired(now, events, ftype, seq):
                    continue
                return events
            (crc,) = _FRAME_CRC.unpack_from(self._buf, HEADER_SIZE + length)
            if crc != zlib.crc32(self._buf[2:HEADER_SIZE + length]):
                events.append(DecodeFault(NakReason.BAD_CRC, ftype, seq))
                self._drop_candidate()
                continue
            events.append(Frame(ftype, seq, bytes(self._buf[HEADER_SIZE:HEADER_SIZE + length])))
            del self._buf[:end]
            self._started = None

    def _expired(self, now: float, events: list, ftype: int | None, seq: int | None) -> bool:
        if now - self._started < self.frame_timeout_s:
            return False
        events.append(DecodeFault(NakReason.TIMEOUT, ftype, seq))
        self._drop_candidate()
        return True

    def _drop_candidate(self) -> None:
        del self._buf[:1]
        self._started = None


# ---------------------------------------------------------------- payload types


@dataclasses.dataclass(frozen=True)
class SlotInfo:
    """One weight slot as INFO reports it."""

    state: SlotState | int
    next_offset: int
    committed_length: int
    graph_hash: bytes


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """The INFO answer (protocol.md, "DeviceInfo")."""

    protocol_version: int
    firmware_version: str
    board: str
    max_payload: int
    active_slot: int
    structure_hash: bytes
    input_bytes: int
    output_bytes: int
    slot_size: int
    slots: tuple[SlotInfo, SlotInfo]
    #: device flags (slot 0's first reserved byte, protocol.md Clarifications); bit 0: the firmware
    #: was built with a release key and runs only blobs signed by it
    flags: int = 0

    _HEAD = struct.Struct("<B16s16sHB32sIII")
    _SLOT = struct.Struct("<BB2xII32s")
    FLAG_SIGNATURE_REQUIRED = 0x01
    SIZE = _HEAD.size + 2 * _SLOT.size

    @classmethod
    def unpack(cls, payload: bytes) -> "DeviceInfo":
        """Parse an INFO payload; a wrong length is a :class:`DeviceError`."""
        if len(payload) != cls.SIZE:
            raise DeviceError(f"INFO answer is {len(payload)} bytes, protocol v{PROTOCOL_VERSION} "
                              f"says {cls.SIZE}: firmware and host speak different protocol versions")
        ver, fw, board, maxp, active, shash, nin, nout, slot_size = cls._HEAD.unpack_from(payload)
        slots, flags = [], 0
        for i in range(2):
            state, reserved, nxt, length, ghash = cls._SLOT.unpack_from(payload, cls._HEAD.size + i * cls._SLOT.size)
            state = SlotState(state) if state in SlotState._value2member_map_ else state
            slots.append(SlotInfo(state, nxt, length, ghash))
            flags = reserved if i == 0 else flags
        return cls(ver, _cstr(fw), _cstr(board), maxp, active, shash, nin, nout, slot_size, tuple(slots), flags)

    @property
    def signature_required(self) -> bool:
        """The device refuses blobs not signed by its release key (it verifies Ed25519 itself)."""
        return bool(self.flags & self.FLAG_SIGNATURE_REQUIRED)

    def pack(self) -> bytes:
        """The INFO payload of this object (tests, simulators)."""
        out = self._HEAD.pack(self.protocol_version, self.firmware_version.encode(),
                              self.board.encode(), self.max_payload, self.active_slot,
                              self.structure_hash, self.input_bytes, self.output_bytes, self.slot_size)
        for i, s in enumerate(self.slots):
            out += self._SLOT.pack(int(s.state), self.flags if i == 0 else 0, s.next_offset, s.committed_length,
                                   s.graph_hash)
        return out


@dataclasses.dataclass(frozen=True)
class Stats:
    """The STATS answer."""

    inferences: int
    last_cycles: int
    arena_bytes: int
    boots: int
    frames_received: int
    crc_errors: int
    naks_sent: int
    flash_writes: int

    _FMT = struct.Struct("<8I")

    @classmethod
    def unpack(cls, payload: bytes) -> "Stats":
        if len(payload) != cls._FMT.size:
            raise DeviceError(f"STATS answer is {len(payload)} bytes, expected {cls._FMT.size}")
        return cls(*cls._FMT.unpack(payload))

    def pack(self) -> bytes:
        return self._FMT.pack(*dataclasses.astuple(self))


@dataclasses.dataclass(frozen=True)
class Detection:
    """One detection as the device reports it: xyxy box in model-input pixels, score, class index."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    label: int

    _FMT = struct.Struct("<5fHH")
    SIZE = _FMT.size

    @classmethod
    def unpack_many(cls, payload: bytes) -> list["Detection"]:
        """Records back to back (DETECT's inline part, a DETECTIONS answer)."""
        if len(payload) % cls.SIZE:
            raise DeviceError(f"detection records are {cls.SIZE} bytes each; got {len(payload)} bytes")
        out = []
        for off in range(0, len(payload), cls.SIZE):
            x1, y1, x2, y2, score, label, _reserved = cls._FMT.unpack_from(payload, off)
            out.append(cls(x1, y1, x2, y2, score, label))
        return out

    def pack(self) -> bytes:
        return self._FMT.pack(self.x1, self.y1, self.x2, self.y2, self.score, self.label, 0)


#: DETECT OK header: network cycles u32, post-processing cycles u32, count u16, inline count u16
DETECT_HEADER = struct.Struct("<IIHH")
#: detections carried in a DETECT answer; the rest come with DETECTIONS
MAX_INLINE_DETECTIONS = (MAX_PAYLOAD - DETECT_HEADER.size) // Detection.SIZE
#: most records in one DETECTIONS answer
MAX_DETECTIONS_PER_FRAME = MAX_PAYLOAD // Detection.SIZE


@dataclasses.dataclass(frozen=True)
class DetectAnswer:
    """A DETECT answer: cycle counts, how many detections the device found, the inline ones."""

    network_cycles: int
    postprocess_cycles: int
    count: int
    detections: list[Detection]

    @classmethod
    def unpack(cls, payload: bytes) -> "DetectAnswer":
        if len(payload) < DETECT_HEADER.size:
            raise DeviceError(f"DETECT answer is {len(payload)} bytes, shorter than its {DETECT_HEADER.size}-byte header")
        net, post, count, n = DETECT_HEADER.unpack_from(payload)
        records = Detection.unpack_many(payload[DETECT_HEADER.size:])
        if len(records) != n or n > count:
            raise DeviceError(f"DETECT answer says {n} inline of {count} detections but carries {len(records)}")
        return cls(net, post, count, records)


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


_CLIENT_NAMES = ("Device", "LinkCounters", "open_port")


def __getattr__(name: str):
    """``Device``, ``LinkCounters`` and ``open_port`` live in :mod:`targets.client` (which
    imports this module); they are importable from here too, resolved on first use."""
    if name in _CLIENT_NAMES:
        from targets import client  # noqa: PLC0415

        return getattr(client, name)
    raise AttributeError(f"module 'targets.protocol' has no attribute {name!r}")
