"""Firmware app (C) through the host build on a pty: framing, NAK/ERR, dedupe, slots, INFER.

The device is the real C firmware (targets/firmware/ + hal_host.c); the driver is the minimal,
spec-only one in fw_driver.py. See targets/protocol.md.
"""
from __future__ import annotations

import hashlib
import shutil
import struct
import time

import numpy as np
import pytest
from fw_driver import CMD, ERR, NAK, DeviceError, HostDevice, encode
from fw_models import expected, resnet8, resnet8_export, small_blobs, small_firmware, small_model
from hypothesis import HealthCheck, given, settings

from targets.build import HOST_MAX_COMMAND_PAYLOAD

from firmware_export.blob import write_blob
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the host firmware")


@pytest.fixture
def device(tmp_path):
    d = HostDevice(small_firmware(), tmp_path / "flash.bin").start()
    yield d
    d.stop()


def _out(d: HostDevice, x: np.ndarray) -> bytes:
    return d.infer(np.ascontiguousarray(x).astype(np.int8).tobytes())[1]


def test_fw_info_describes_compiled_model(device):
    graphs, x = small_model()
    info = device.info()
    assert (info.version, info.board, info.max_payload, info.active) == (1, "host", HOST_MAX_COMMAND_PAYLOAD, 0xFF)
    assert info.structure_hash == bytes.fromhex(graphs[0].structure_hash())
    assert info.input_bytes == x.size and info.output_bytes == len(expected(graphs[0], x))
    assert [s[0] for s in info.slots] == ["EMPTY", "EMPTY"] and info.slot_size == 64 * 1024


def test_fw_infer_compiled_in_bit_exact(device):
    graphs, x = small_model()
    rng = np.random.default_rng(5)
    for _ in range(3):
        xi = rng.integers(-128, 128, x.shape).astype(np.int8)
        assert _out(device, xi) == expected(graphs[0], xi)
    stats = device.stats()
    assert stats["inferences"] == 3 and stats["last_cycles"] > 0


def test_fw_bad_frames_get_nak_with_reason(device):
    good = encode(CMD["INFO"], 7)
    bad_crc = good[:-1] + bytes([good[-1] ^ 1])
    device.send_raw(bad_crc)
    assert device.read_frame()[0::2] == (NAK, b"\x01")
    device.send_raw(b"\xA5\x5A" + struct.pack("<BBH", CMD["WRITE"], 8, HOST_MAX_COMMAND_PAYLOAD + 1))  # too long
    assert device.read_frame()[0::2] == (NAK, b"\x02")
    device.send_raw(encode(CMD["INFER"], 9, b"\0" * 40)[:20])  # stalls mid-frame
    t = time.monotonic()
    ftype, seq, body = device.read_frame()
    assert (ftype, seq, body) == (NAK, 9, b"\x03") and 0.15 < time.monotonic() - t < 2.0
    device.send_raw(encode(0x81, 10))  # a response type sent to the device
    assert device.read_frame()[0::2] == (NAK, b"\x04")
    device.send_raw(encode(0x20, 12))  # a command code the firmware does not know
    ftype, seq, body = device.read_frame()
    assert (ftype, seq, body[0]) == (ERR, 12, 10)
    # garbage and a lone sync byte before a good frame: the receiver resynchronises
    device.send_raw(b"\x00\xA5\x13\xA5" + encode(CMD["INFO"], 13))
    ftype, seq, body = device.read_frame()
    assert (ftype, seq, len(body)) == (0x81, 13, 168)
    s = device.stats()
    assert s["naks"] == 4 and s["crc_errors"] == 2


def test_fw_same_seq_is_not_executed_twice(device):
    blob = small_blobs()[1]
    device.command("ERASE", b"\x00")
    frame = encode(CMD["WRITE"], 42, struct.pack("<BI", 0, 0) + blob[:500])
    device.send_raw(frame)
    first = device.read_frame()
    ops = device.stats()["flash_ops"]
    device.send_raw(frame)  # the host lost the ACK and retries with the same seq
    assert device.read_frame() == (first[0], 42, first[2]) and struct.unpack("<I", first[2])[0] == 500
    assert device.stats()["flash_ops"] == ops  # not programmed again
    # the same WRITE with a new seq: acknowledged from flash contents, nothing programmed
    assert struct.unpack("<I", device.command("WRITE", struct.pack("<BI", 0, 0) + blob[:500]))[0] == 500
    assert device.stats()["flash_ops"] == ops
    with pytest.raises(DeviceError) as e:  # beyond the next expected offset
        device.command("WRITE", struct.pack("<BI", 0, 600) + b"x")
    assert e.value.code == 3 and e.value.message.startswith("expected 500")
    other = bytes(b ^ 0xFF for b in blob[100:110])
    with pytest.raises(DeviceError) as e:  # earlier offset with different bytes
        device.command("WRITE", struct.pack("<BI", 0, 100) + other)
    assert e.value.code == 3
    # overlapping the next offset: the old part must match, the new part is programmed
    nxt = struct.unpack("<I", device.command("WRITE", struct.pack("<BI", 0, 400) + blob[400:900]))[0]
    assert nxt == 900 and device.command("READ", struct.pack("<BIH", 0, 0, 900)) == blob[:900]


def test_fw_same_seq_other_frame_is_executed(device):
    """Dedupe key is seq + frame CRC: a new session reusing a seq is not answered from the past."""
    graphs, x = small_model()
    out = device.command("INFER", x.tobytes(), seq=5)
    assert out[4:] == expected(graphs[0], x)
    assert len(device.command("INFO", seq=5)) == 168  # same seq, another command: executed
    before = device.stats()["inferences"]
    device.command("INFER", x.tobytes(), seq=9)
    device.command("INFER", x.tobytes(), seq=9)  # identical frame again: a retry, not re-run
    assert device.stats()["inferences"] == before + 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(length=st.one_of(st.sampled_from([0, 1, 55, 56, 63, 64, 65, 119, 120, 128]), st.integers(0, 4000)))
def test_fw_verify_is_sha256(device, length):
    blob = (small_blobs()[1] * 2)[:4000]
    info = device.info()
    if info.slots[1][0] != "WRITING" or info.slots[1][1] < 4000:
        device.command("ERASE", b"\x01")
        device.write_blob(1, blob)
    assert device.command("VERIFY", struct.pack("<BI", 1, length)) == hashlib.sha256(blob[:length]).digest()


def test_fw_update_trial_confirm_and_revert(device):
    graphs, x = small_model()
    blobs = small_blobs()
    device.update(1, blobs[1])
    assert device.info().slots[1][0] == "TRIAL" and _out(device, x) == expected(graphs[0], x)
    device.reboot()
    info = device.info()
    assert info.active == 1 and _out(device, x) == expected(graphs[1], x)
    assert info.slots[1][3] == bytes.fromhex(graphs[1].graph_hash())
    with pytest.raises(DeviceError) as e:
        device.command("ERASE", b"\x01")
    assert e.value.code == 2
    device.command("CONFIRM")
    with pytest.raises(DeviceError) as e:
        device.command("CONFIRM")
    assert e.value.code == 9
    # second update into slot 0, never confirmed: the next boot reverts to slot 1
    device.update(0, blobs[2])
    device.reboot()
    assert device.info().active == 0 and _out(device, x) == expected(graphs[2], x)
    with pytest.raises(DeviceError) as e:  # slot 1 is the revert target while on trial
        device.command("ERASE", b"\x01")
    assert e.value.code == 2
    device.reboot()
    info = device.info()
    assert info.active == 1 and [s[0] for s in info.slots] == ["BAD", "VALID"]
    assert _out(device, x) == expected(graphs[1], x)


def test_fw_refuses_corrupt_and_foreign_blobs(device):
    graphs, x = small_model()
    good = small_blobs()[1]
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x40
    device.command("ERASE", b"\x00")
    device.write_blob(0, bytes(bad))
    sha_bad = hashlib.sha256(bad).digest()
    with pytest.raises(DeviceError) as e:  # host's hash differs from the slot
        device.command("COMMIT", struct.pack("<BI", 0, len(bad)) + hashlib.sha256(good).digest())
    assert e.value.code == 5
    with pytest.raises(DeviceError) as e:  # hash matches, blob CRC does not
        device.command("COMMIT", struct.pack("<BI", 0, len(bad)) + sha_bad)
    assert e.value.code == 6 and "CRC" in e.value.message
    r8_blob = write_blob(resnet8_export()[0])  # another structure: compiled code cannot run it
    device.command("ERASE", b"\x00")
    device.write_blob(0, r8_blob[:60000])
    with pytest.raises(DeviceError) as e:
        device.command("COMMIT", struct.pack("<BI", 0, 60000) + hashlib.sha256(r8_blob[:60000]).digest())
    assert e.value.code == 6
    info = device.info()
    assert info.active == 0xFF and info.slots[0][0] == "WRITING"
    device.reboot()
    assert device.info().active == 0xFF and _out(device, x) == expected(graphs[0], x)


@pytest.fixture(scope="module")
def sanitized_device(tmp_path_factory):
    d = HostDevice(small_firmware(sanitize=True), tmp_path_factory.mktemp("fz") / "flash.bin").start()
    yield d
    d.stop()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(noise=st.lists(st.one_of(st.binary(min_size=1, max_size=300),
                                st.binary(min_size=0, max_size=40).map(lambda b: b"\xA5\x5A" + b)),
                      min_size=1, max_size=6))
def test_fw_random_bytes_never_break_the_device(sanitized_device, noise):
    """Sanitized build (ASan + UBSan): arbitrary bytes and broken frames, then INFO still works."""
    d = sanitized_device
    for chunk in noise:
        d.send_raw(chunk)
    time.sleep(0.22)  # let any partial frame time out (FRAME_TIMEOUT_MS = 200)
    d.seq = (d.seq + 1) % 256
    d.send_raw(encode(CMD["INFO"], d.seq))
    deadline = time.monotonic() + 3
    while True:  # skip NAKs for the noise until the INFO answer
        ftype, seq, body = d.read_frame(timeout=3)
        if ftype == 0x81 and seq == d.seq:
            break
        assert ftype in (NAK, ERR) and time.monotonic() < deadline
    assert len(body) == 168 and d.proc.poll() is None


def test_fw_resnet8_large_input_bit_exact(tmp_path):
    g, x, exe = resnet8()
    d = HostDevice(exe, tmp_path / "flash.bin", slot_size=256 * 1024).start()
    try:
        assert d.info().input_bytes == 3072 > 1024
        cycles, out = d.infer(x.astype(np.int8).tobytes())
        assert out == expected(g, x) and cycles > 0
        with pytest.raises(DeviceError) as e:
            d.command("INFER", b"\0" * 100)
        assert e.value.code == 8
    finally:
        d.stop()



def test_build_accepts_relative_paths(tmp_path, monkeypatch):
    """`edgesmith build` runs from the project root with relative run paths: the compiler (which runs
    inside the object folder) must still find the exported headers."""
    from firmware_export.export import export_model
    from fw_models import host_board
    from targets.build import build_firmware

    graphs, _ = small_model()
    export_model(graphs[0], tmp_path / "export", host_board(), formats=["c"])
    monkeypatch.chdir(tmp_path)
    image = build_firmware("export", "host", "fw")
    assert image.elf.is_file() and image.elf.is_absolute()
