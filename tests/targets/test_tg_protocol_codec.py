"""Frame codec of the device protocol (targets/protocol.md): layout, CRC, resync, payload types.

The firmware side of the same page is tested through the real firmware in
test_tg_device_host.py; these tests pin the Python codec to the spec byte by byte.
"""
from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from targets.protocol import (MAX_PAYLOAD, Cmd, DecodeFault, DeviceError, DeviceInfo, Frame,
                              FrameDecoder, NakReason, SlotInfo, SlotState, Stats, encode_frame)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _frames(events):
    return [e for e in events if isinstance(e, Frame)]


def test_tg_frame_layout_matches_spec():
    frame = encode_frame(Cmd.WRITE, 0x2A, b"\x01\x02\x03")
    # SOF, type, seq, length u16 LE, payload, CRC32 (zlib) over type..payload
    assert frame[:2] == b"\xa5\x5a"
    assert frame[2] == 0x03 and frame[3] == 0x2A
    assert frame[4:6] == b"\x03\x00"
    assert frame[6:9] == b"\x01\x02\x03"
    assert frame[9:] == struct.pack("<I", zlib.crc32(frame[2:9]))
    # a known-answer vector: INFO, seq 0, empty payload
    assert encode_frame(Cmd.INFO, 0) == b"\xa5\x5a\x01\x00\x00\x00" + struct.pack(
        "<I", zlib.crc32(b"\x01\x00\x00\x00"))


def test_tg_frame_refuses_oversized_payload_and_bad_fields():
    encode_frame(Cmd.WRITE, 0, bytes(MAX_PAYLOAD))
    with pytest.raises(DeviceError, match="at most 1024"):
        encode_frame(Cmd.WRITE, 0, bytes(MAX_PAYLOAD + 1))
    with pytest.raises(DeviceError, match="one byte"):
        encode_frame(Cmd.INFO, 256)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=300)),
                min_size=1, max_size=6),
       st.integers(1, 64))
def test_tg_round_trip_any_split(frames, step):
    """Frames survive any split of the byte stream into reads."""
    stream = b"".join(encode_frame(t, s, p) for t, s, p in frames)
    dec = FrameDecoder()
    got = []
    for i in range(0, len(stream), step):
        got += dec.feed(stream[i:i + step])
    assert [(f.type, f.seq, f.payload) for f in got] == frames
    assert dec.pending == 0


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200), st.binary(min_size=1, max_size=200), st.integers(0, 10_000))
def test_tg_resync_after_garbage_and_corruption(garbage, payload, where):
    """Garbage before a frame is skipped; a corrupted frame is dropped and the next one found."""
    good = encode_frame(Cmd.READ, 7, payload)
    bad = bytearray(encode_frame(Cmd.WRITE, 6, payload))
    pos = 2 + where % (len(bad) - 2)  # corrupt anything after SOF: header, payload or CRC
    bad[pos] ^= 0x40
    clock = _Clock()
    dec = FrameDecoder(clock=clock)
    events = dec.feed(garbage + bytes(bad) + good)
    # a corrupted length may claim more bytes than follow: the candidate then expires
    clock.t += 1.0
    events += dec.feed(b"")
    frames = _frames(events)
    # the good frame is always recovered; the damaged one never passes as a frame
    assert frames[-1] == Frame(Cmd.READ, 7, payload)
    assert all(f.type != Cmd.WRITE or f.seq != 6 or f.payload != payload for f in frames)


def test_tg_bad_crc_reports_fault_with_header():
    frame = bytearray(encode_frame(Cmd.INFO, 9))
    frame[-1] ^= 1
    events = FrameDecoder().feed(bytes(frame))
    assert events == [DecodeFault(NakReason.BAD_CRC, Cmd.INFO, 9)]


def test_tg_length_over_max_is_dropped_and_stream_recovers():
    too_long = b"\xa5\x5a\x03\x01" + struct.pack("<H", MAX_PAYLOAD + 1)
    good = encode_frame(Cmd.STATS | 0x80, 1, bytes(32))
    events = FrameDecoder().feed(too_long + good)
    assert events[0] == DecodeFault(NakReason.TOO_LONG, 0x03, 1)
    assert _frames(events) == [Frame(0x87, 1, bytes(32))]


def test_tg_false_sof_in_payload_does_not_lose_frames():
    # a payload that contains a SOF and a plausible header claiming 1000 bytes
    payload = b"\xa5\x5a\x06\x00" + struct.pack("<H", 1000) + b"xyz"
    first = encode_frame(0x86, 3, payload)
    second = encode_frame(0x81, 4, b"abc")
    dec = FrameDecoder(clock=_Clock())
    got = _frames(dec.feed(first + second))
    assert got == [Frame(0x86, 3, payload), Frame(0x81, 4, b"abc")]


def test_tg_partial_frame_expires_after_frame_timeout():
    clock = _Clock()
    dec = FrameDecoder(clock=clock)
    # a frame missing its last bytes (dropped on the wire), then silence
    truncated = encode_frame(0x83, 5, b"\x00\x10\x00\x00")[:-3]
    assert dec.feed(truncated) == []
    clock.t += 0.1
    assert dec.feed(b"") == []          # still within FRAME_TIMEOUT_S
    clock.t += 0.15
    events = dec.feed(b"")
    assert events and isinstance(events[0], DecodeFault) and events[0].reason == NakReason.TIMEOUT
    # the decoder is usable again afterwards
    assert _frames(dec.feed(encode_frame(0x81, 6, b"ok"))) == [Frame(0x81, 6, b"ok")]


def test_tg_stale_prefix_swallowing_next_frame_is_recovered_by_timeout():
    """A frame whose tail was lost claims more bytes than follow; the next complete frame is
    parsed once the stale candidate expires (what the host sees after a dropped byte)."""
    clock = _Clock()
    dec = FrameDecoder(clock=clock)
    broken = encode_frame(0x81, 1, bytes(200))[:50]
    good = encode_frame(0x83, 2, b"\x00\x04\x00\x00")
    assert _frames(dec.feed(broken + good)) == []
    clock.t += 0.25
    assert _frames(dec.feed(b"")) == [Frame(0x83, 2, b"\x00\x04\x00\x00")]


def test_tg_trailing_half_sof_is_kept():
    frame = encode_frame(0x81, 1, b"hi")
    dec = FrameDecoder()
    assert dec.feed(b"junk" + frame[:1]) == []
    assert _frames(dec.feed(frame[1:])) == [Frame(0x81, 1, b"hi")]


def test_tg_device_info_round_trip_and_size():
    info = DeviceInfo(1, "0.1.0", "host", 1024, 0, bytes(range(32)), 3072, 10, 65536,
                      (SlotInfo(SlotState.VALID, 4096, 4096, b"\x11" * 32),
                       SlotInfo(SlotState.WRITING, 992, 0, bytes(32))))
    raw = info.pack()
    assert len(raw) == DeviceInfo.SIZE == 1 + 16 + 16 + 2 + 1 + 32 + 4 + 4 + 4 + 2 * 44
    assert DeviceInfo.unpack(raw) == info
    with pytest.raises(DeviceError, match="protocol"):
        DeviceInfo.unpack(raw[:-1])


def test_tg_stats_round_trip():
    stats = Stats(1, 2, 3, 4, 5, 6, 7, 8)
    assert Stats.unpack(stats.pack()) == stats
    assert stats.pack() == struct.pack("<8I", 1, 2, 3, 4, 5, 6, 7, 8)
