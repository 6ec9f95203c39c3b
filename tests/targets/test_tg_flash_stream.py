"""Streaming WRITEs on a pty and the host firmware's non-blocking link, against the real firmware.

The flasher writes 16 KiB WRITE frames one port write each, as soon as the window has room
(never one huge write of a whole window), encodes the next frame while a write waits for room,
and every byte lands; a real pty is written with os.write, running the caller's ``while_full``
once when it is full, and a port nobody reads fails after its write timeout; WRITE frames are
encoded with the slot/offset header as a payload prefix and equal the frames of the plain
encoder; the firmware's frame CRC (bulk and tail paths) equals zlib's both ways; the host
firmware, whose pty and TCP descriptors are non-blocking, keeps every answer when the host reads
late (its writes go round on EAGAIN) and serves a second TCP client after the first one left.
"""
from __future__ import annotations

import hashlib
import socket
import struct
import subprocess
import time

import numpy as np
import pytest
from tg_device_env import RecordingPort, have_gcc, host_firmware, model_pair

from targets import flasher
from targets.client import Device, open_port
from targets.protocol import Cmd, DeviceConnectionError, DeviceError, Frame, FrameDecoder, encode_frame
from targets.runner import HostFirmware

pytestmark = pytest.mark.skipif(not have_gcc(), reason="gcc is not installed: no host firmware")


@pytest.fixture(scope="module")
def exe():
    return host_firmware(model_pair().export_dir)


def test_big_frames_stream_one_per_write_and_all_land(exe, tmp_path):
    """A window of 32 frames of 16,352 bytes: one port write per frame (the old burst was one
    write of the whole window, over half a megabyte), and the slot holds exactly the data."""
    rng = np.random.default_rng(2)
    chunk = flasher.MAX_BURST_CHUNK
    data = rng.integers(0, 256, 40 * chunk + 1000, dtype=np.uint8).tobytes()
    frames = -(-len(data) // chunk)
    with HostFirmware(exe, tmp_path / "flash.bin", slot_size=1 << 20) as fw:
        port = RecordingPort(open_port(fw.url))
        with Device(port) as dev:
            assert flasher.burst_chunk(dev.info()) == chunk
            dev.erase(0)
            frames_before = dev.stats().frames_received
            first = len(port.sizes)
            acked, done = flasher._write_window(dev, 0, memoryview(data), 0, flasher.WINDOW_FLOW_CONTROLLED,
                                                chunk)
            sizes = port.sizes[first:]
            assert (acked, done) == (len(data), True)
            assert len(sizes) == frames and max(sizes) == chunk + 15  # 5-byte WRITE header + 10 framing
            assert dev.stats().frames_received - frames_before == frames + 1  # + the STATS itself
            assert dev.verify(0, len(data)) == hashlib.sha256(data).digest()


def test_next_frame_is_encoded_while_the_pty_is_full(exe, tmp_path):
    """Through the real pty, _write_window encodes frames while a write waits for room (not
    only between writes), and the slot still holds exactly the data."""
    rng = np.random.default_rng(3)
    chunk = flasher.MAX_BURST_CHUNK
    data = rng.integers(0, 256, 30 * chunk + 77, dtype=np.uint8).tobytes()
    with HostFirmware(exe, tmp_path / "flash.bin", slot_size=1 << 20) as fw, fw.open() as dev:
        dev.erase(0)
        sending, encoded_while_sending = [False], []
        send, encode = dev._send, dev.encode_writes

        def tracked_send(data_, while_full=None):
            sending[0] = True
            try:
                send(data_, while_full)
            finally:
                sending[0] = False

        def tracked_encode(*args, **kwargs):
            encoded_while_sending.append(sending[0])
            return encode(*args, **kwargs)

        dev._send, dev.encode_writes = tracked_send, tracked_encode
        acked, done = flasher._write_window(dev, 0, memoryview(data), 0, flasher.WINDOW_FLOW_CONTROLLED, chunk)
        assert (acked, done) == (len(data), True)
        assert sum(encoded_while_sending) >= len(encoded_while_sending) // 2
        assert dev.verify(0, len(data)) == hashlib.sha256(data).digest()


def test_port_full_runs_while_full_once_and_every_byte_goes(exe, tmp_path):
    """On a real pty (a non-blocking descriptor) 200 KB are written straight with os.write: the
    pty holds ~12 KB, so the port is full at some point and ``while_full`` runs exactly once;
    the device drops all the junk and answers the INFO behind it."""
    calls = []
    with HostFirmware(exe, tmp_path / "flash.bin") as fw, fw.open() as dev:
        assert dev._fd is not None  # the os.write path, not pyserial's write
        before = dev.counters.bytes_sent
        dev._send(bytes(200_000), while_full=lambda: calls.append(time.perf_counter()))
        assert len(calls) == 1 and dev.counters.bytes_sent - before == 200_000
        assert dev.info().board == "host"


def test_port_that_takes_nothing_fails_after_the_write_timeout():
    """Nobody reads the other end of the pty: the write gives up after the port's write_timeout
    with a DeviceConnectionError that says so, instead of hanging."""
    import os

    master, slave = os.openpty()
    try:
        port = open_port(os.ttyname(slave))
        port.write_timeout = 0.2
        dev = Device(port, byte_time_s=0.0)
        t0 = time.monotonic()
        with pytest.raises(DeviceConnectionError, match="took no bytes for 0.2 s"):
            dev.send_bytes(bytes(1 << 20))
        assert time.monotonic() - t0 < 5
        dev.close()
    finally:
        os.close(master)
        os.close(slave)


def test_send_writes_frames_equal_plain_write_frames():
    sent = []

    class Sink:
        timeout = 0.02

        def write(self, data):
            sent.append(bytes(data))

    blob = memoryview(bytes(range(200)))
    chunks = [(0, blob[:64]), (64, blob[64:128]), (128, blob[128:])]
    dev = Device(Sink(), first_seq=255, byte_time_s=0.0)
    seqs = dev.send_writes(1, chunks, max_payload=77)
    assert seqs == [255, 0, 1] and dev.next_seq == 2 and len(sent) == 1
    want = [Frame(Cmd.WRITE, s, struct.pack("<BI", 1, off) + bytes(d)) for s, (off, d) in zip(seqs, chunks)]
    assert FrameDecoder(max_payload=77).feed(sent[0]) == want
    dev2 = Device(Sink(), first_seq=255, byte_time_s=0.0)
    dev2.send_many(Cmd.WRITE, [f.payload for f in want], max_payload=77)
    assert sent[1] == sent[0]


def test_encode_frame_prefix_counts_as_payload():
    body, head = memoryview(b"\x11" * 1019), b"\x00ABCD"
    assert encode_frame(Cmd.WRITE, 7, body, prefix=head) == encode_frame(Cmd.WRITE, 7, head + bytes(body))
    with pytest.raises(DeviceError, match="1025 bytes"):
        encode_frame(Cmd.WRITE, 7, bytes(1020), prefix=b"\x00ABCD")


def test_frame_crc_matches_zlib_for_bulk_lengths(exe, tmp_path):
    """The firmware's frame CRC takes frames of 64 bytes and more in 16-byte blocks (carry-less
    multiply on x86-64) and the rest by table: WRITE payloads of 60..200 bytes and one of
    16,357 (the device checks their CRC), and READ answers of 56..200 bytes (the host checks the
    device's), cover every remainder on both sides; none is NAKed or dropped."""
    rng = np.random.default_rng(4)
    data = rng.integers(0, 256, 40_000, dtype=np.uint8).tobytes()
    with HostFirmware(exe, tmp_path / "flash.bin") as fw, fw.open(attempts=1) as dev:
        dev.erase(0)
        offset = 0
        for n in range(55, 196):  # + 5 bytes of slot and offset: payloads of 60..200 bytes
            offset = dev.write(0, offset, data[offset:offset + n])
        seq, = dev.send_writes(0, [(offset, memoryview(data)[offset:offset + flasher.MAX_BURST_CHUNK])],
                               max_payload=flasher.MAX_BURST_CHUNK + 5)
        offset = struct.unpack("<I", dev.receive(Cmd.WRITE, seq))[0]
        assert offset == sum(range(55, 196)) + flasher.MAX_BURST_CHUNK
        for n in range(56, 201):
            assert dev.read(0, n, n) == data[n:2 * n]
        assert dev.verify(0, offset) == hashlib.sha256(data[:offset]).digest()
        assert dev.counters.resends == 0 and dev.counters.bad_frames == 0
        assert dev.stats().crc_errors == 0


def test_answers_kept_when_the_host_reads_late(exe, tmp_path):
    """60 READs of 1024 bytes sent at once: ~62 KB of answers, far more than a pty buffers, while
    the host reads nothing for 0.3 s. The device's non-blocking writes wait for room instead of
    dropping answers, and every answer is right."""
    data = bytes(range(256)) * 4
    with HostFirmware(exe, tmp_path / "flash.bin") as fw, fw.open() as dev:
        dev.erase(0)
        assert dev.write(0, 0, data[:992]) == 992
        payloads = [struct.pack("<BIH", 0, 0, 992)] * 60
        seqs = dev.send_many(Cmd.READ, payloads)
        time.sleep(0.3)
        for seq in seqs:
            assert dev.receive(Cmd.READ, seq) == data[:992]
        assert dev.counters.bad_frames == 0 and dev.stats().naks_sent == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_link_serves_a_second_client(exe, tmp_path):
    """--tcp: the first client writes and disconnects; the next one finds the bytes and resumes."""
    port = _free_port()
    proc = subprocess.Popen([str(exe), "--tcp", str(port), "--flash", str(tmp_path / "flash.bin")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("TCP ")
        url = f"socket://127.0.0.1:{port}"
        data = bytes(range(256)) * 8
        with Device.open(url, byte_time_s=0.0) as dev:
            dev.erase(0)
            assert dev.write(0, 0, data[:992]) == 992
        with Device.open(url, byte_time_s=0.0) as dev:
            assert dev.info().slots[0].next_offset == 992
            assert dev.write(0, 992, data[992:1984]) == 1984
            assert dev.verify(0, 1984) == hashlib.sha256(data[:1984]).digest()
    finally:
        proc.kill()
        proc.communicate()
