"""The fast path of flashing on a pty: WRITE bursts, bulk frame reads and the frame CRC.

Against the real host firmware: the flasher's window goes out in a few large port writes (not
one per frame) and every chunk still lands where it should; the raw-link measurement writes its
junk in bursts of the same size and the device drops it all; frames split over several reads
with pauses under FRAME_TIMEOUT_MS are still received whole; the firmware's frame CRC (a
slice-by-4 table on hosted builds) equals zlib's for every payload length modulo 4, both ways.
"""
from __future__ import annotations

import hashlib
import struct
import time

import numpy as np
import pytest
from tg_device_env import RecordingPort, have_gcc, host_firmware, model_pair

from targets import flasher, raw_link
from targets.client import Device, open_port
from targets.protocol import FRAME_TIMEOUT_S, Cmd, Frame, FrameDecoder, encode_frame
from targets.runner import HostFirmware

pytestmark = pytest.mark.skipif(not have_gcc(), reason="gcc is not installed: no host firmware")


@pytest.fixture(scope="module")
def exe():
    return host_firmware(model_pair().export_dir)


def test_send_many_is_one_write_of_consecutive_seqs():
    sent = []

    class Sink:
        timeout = 0.02

        def write(self, data):
            sent.append(bytes(data))

    dev = Device(Sink(), first_seq=254, byte_time_s=0.0)
    payloads = [bytes([i]) * (i + 1) for i in range(5)]
    seqs = dev.send_many(Cmd.WRITE, payloads)
    assert seqs == [254, 255, 0, 1, 2] and dev.next_seq == 3
    assert len(sent) == 1
    frames = FrameDecoder().feed(sent[0])
    assert frames == [Frame(Cmd.WRITE, s, p) for s, p in zip(seqs, payloads)]


def test_write_window_sends_bursts_and_lands_every_chunk(exe, tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 40 * flasher.CHUNK_SIZES[0] + 123, dtype=np.uint8).tobytes()
    frames = -(-len(data) // flasher.CHUNK_SIZES[0])
    window = 8
    with HostFirmware(exe, tmp_path / "flash.bin") as fw:
        port = RecordingPort(open_port(fw.url))
        with Device(port) as dev:
            dev.erase(0)
            before = len(port.sizes)
            acked, done = flasher._write_window(dev, 0, memoryview(data), 0, window)
            writes = len(port.sizes) - before
            assert (acked, done) == (len(data), True)
            # a burst per half window (the first one a whole window), never a write per frame
            assert writes <= -(-(frames - window) // (window // 2)) + 1 < frames
            assert dev.verify(0, len(data)) == hashlib.sha256(data).digest()


def test_raw_link_junk_goes_out_in_flash_sized_writes(exe, tmp_path):
    """measure_raw_link writes its junk like the flasher writes bursts (not one huge write);
    the device drops all of it and answers the INFO behind it."""
    nbytes = 100_000
    with HostFirmware(exe, tmp_path / "flash.bin") as fw:
        port = RecordingPort(open_port(fw.url))
        with Device(port) as dev:
            frames_before = dev.stats().frames_received
            before = len(port.sizes)
            rate = raw_link.measure_raw_link(dev, nbytes, repeats=1)
            junk_writes = -(-nbytes // raw_link.BURST_WRITE_BYTES)
            infos = raw_link.RAW_LINK_INFO_SAMPLES + 1  # INFO alone (median of these), INFO behind the junk
            assert len(port.sizes) - before == junk_writes + infos
            assert rate > 0
            s = dev.stats()
            assert s.frames_received - frames_before == infos + 1 and s.crc_errors == 0  # + STATS


def test_frame_split_over_reads_is_received_whole(exe, tmp_path):
    """The payload arrives in pieces with pauses well under FRAME_TIMEOUT_MS between them."""
    chunk = bytes(range(256)) * 3
    with HostFirmware(exe, tmp_path / "flash.bin") as fw, fw.open() as dev:
        dev.erase(0)
        frame = encode_frame(Cmd.WRITE, dev.next_seq, struct.pack("<BI", 0, 0) + chunk)
        seq = dev.next_seq
        dev._seq = (seq + 1) & 0xFF
        for i in range(0, len(frame), 200):
            dev.port.write(frame[i:i + 200])
            time.sleep(FRAME_TIMEOUT_S / 4)
        assert struct.unpack("<I", dev.receive(Cmd.WRITE, seq))[0] == len(chunk)
        assert dev.read(0, 0, len(chunk)) == chunk


def test_frame_crc_matches_zlib_for_every_length_remainder(exe, tmp_path):
    """WRITE frames of 1..8 data bytes (the device checks their CRC) and READ answers of
    0..8 and 1020..1024 bytes (the host checks the device's CRC) all go through at once."""
    data = bytes(range(1, 256)) * 8
    with HostFirmware(exe, tmp_path / "flash.bin") as fw, fw.open(attempts=1) as dev:
        dev.erase(0)
        offset = 0
        for n in range(1, 9):
            offset = dev.write(0, offset, data[offset:offset + n])
        assert offset == 36
        dev.write(0, offset, data[offset:1024])
        for n in [*range(0, 9), *range(1020, 1025)]:
            assert dev.read(0, 0, n) == data[:n]
        assert dev.counters.resends == 0 and dev.counters.bad_frames == 0
        assert dev.stats().crc_errors == 0


def test_bursts_use_the_bigger_command_frames_the_device_advertises(exe, tmp_path):
    """The host build's INFO offers 16 KiB command frames: bursts carry 16 KiB chunks (every byte
    verified), while a device that offers the protocol's 1024 gets 992-byte chunks."""
    from targets.build import HOST_MAX_COMMAND_PAYLOAD
    from targets.protocol import DeviceInfo

    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 5 * flasher.MAX_BURST_CHUNK + 77, dtype=np.uint8).tobytes()
    with HostFirmware(exe, tmp_path / "flash.bin") as fw, Device(open_port(fw.url)) as dev:
        info = dev.info()
        assert info.max_payload == HOST_MAX_COMMAND_PAYLOAD
        chunk = flasher.burst_chunk(info)
        assert chunk == flasher.MAX_BURST_CHUNK and chunk % 32 == 0
        dev.erase(0)
        frames_before = dev.stats().frames_received
        acked, done = flasher._write_window(dev, 0, memoryview(data), 0, 8, chunk)
        assert (acked, done) == (len(data), True)
        assert dev.stats().frames_received - frames_before == 6 + 1  # 6 WRITEs and the STATS itself
        assert dev.verify(0, len(data)) == hashlib.sha256(data).digest()
    mcu = DeviceInfo(**{**info.__dict__, "max_payload": 1024})
    assert flasher.burst_chunk(mcu) == flasher.CHUNK_SIZES[0] == 992
