"""Firmware built with a release public key (targets/build.py ``public_key``) runs only signed blobs.

The device is the real host build of the C firmware on a pty (hal_host.c, es_app.c,
es_app_update.c, es_ed25519.c); blobs come from firmware_export.blob.write_blob, signed by
``cryptography``.
Checks COMMIT (signed accepted; unsigned and wrongly signed refused while the old weights keep
running), the boot path (a slot whose signature was corrupted in the flash file is not booted),
the INFO flag, and the build-side key handling.
"""
from __future__ import annotations

import functools
import hashlib
import shutil
import struct

import pytest
from fw_driver import DeviceError, HostDevice
from fw_models import WORK, expected, small_firmware, small_model

from edgesmith.errors import ConfigError, ExportError
from firmware_export.blob import save_public_key, write_blob
from targets.build import build_firmware, build_host, public_key_defines

pytest.importorskip("cryptography")
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the host firmware")

RELEASE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
BLOB_INVALID = 6
INFO_FLAGS_OFFSET = 81  # protocol.md, Clarifications: device flags in slot 0's first reserved byte


@functools.lru_cache(maxsize=None)
def signed_firmware():
    """Host firmware (ASan/UBSan) with the small model's graph A built in and RELEASE_KEY's
    public key, read from a PEM file."""
    small_firmware()  # makes WORK/export_small
    pem = WORK / "release_public.pem"
    save_public_key(RELEASE_KEY.public_key(), pem)
    return build_host(WORK / "export_small", WORK / "fw_small_signed", sanitize=True,
                      defines=public_key_defines(pem)).elf


def _commit(d: HostDevice, slot: int, blob: bytes) -> None:
    """ERASE, WRITE, VERIFY, COMMIT (the driver's update())."""
    d.update(slot, blob)


def _output(d: HostDevice) -> bytes:
    _, x = small_model()
    return d.infer(x.tobytes())[1]


@pytest.fixture
def device(tmp_path):
    d = HostDevice(signed_firmware(), tmp_path / "flash.bin").start()
    yield d
    d.stop()


def test_info_says_whether_signatures_are_required(device, tmp_path):
    assert device.command("INFO")[INFO_FLAGS_OFFSET] & 1 == 1
    plain = HostDevice(small_firmware(), tmp_path / "plain.bin").start()
    try:
        assert plain.command("INFO")[INFO_FLAGS_OFFSET] == 0
    finally:
        plain.stop()


def test_signed_blob_runs_unsigned_and_foreign_ones_are_refused(device):
    graphs, x = small_model()
    assert _output(device) == expected(graphs[0], x)
    _commit(device, 0, write_blob(graphs[1], signing_key=RELEASE_KEY))
    device.reboot()
    device.command("CONFIRM")
    assert device.info().active == 0 and _output(device) == expected(graphs[1], x)

    for blob, reason in ((write_blob(graphs[2]), "signature missing"),
                         (write_blob(graphs[2], signing_key=OTHER_KEY), "signature invalid")):
        with pytest.raises(DeviceError) as err:
            _commit(device, 1, blob)
        assert err.value.code == BLOB_INVALID and err.value.message.startswith(reason), err.value.message
        info = device.info()
        assert info.slots[1][0] == "WRITING" and info.slots[1][2] == 0  # nothing committed
        assert info.active == 0 and _output(device) == expected(graphs[1], x)  # old model still runs
    device.reboot()
    assert device.info().active == 0 and _output(device) == expected(graphs[1], x)


def test_boot_skips_a_slot_whose_signature_was_corrupted(tmp_path):
    graphs, x = small_model()
    blob = write_blob(graphs[1], signing_key=RELEASE_KEY)
    flash = tmp_path / "flash.bin"
    d = HostDevice(signed_firmware(), flash).start()
    try:
        _commit(d, 0, blob)
        d.reboot()
        d.command("CONFIRM")
        assert d.info().active == 0
    finally:
        d.stop()
    image = bytearray(flash.read_bytes())
    at = image.find(blob)
    assert at >= 0 and image.find(blob, at + 1) < 0
    image[at + len(blob) - 1] ^= 0x01  # last signature byte: CRCs and structure stay intact
    flash.write_bytes(bytes(image))

    d = HostDevice(signed_firmware(), flash).start()
    try:
        info = d.info()
        assert info.active == 0xFF and info.slots[0][0] == "VALID"  # not booted: compiled-in weights
        assert _output(d) == expected(graphs[0], x)
    finally:
        d.stop()
    # control: a firmware without a key boots the same flash, so only the signature stopped it
    d = HostDevice(small_firmware(), flash).start()
    try:
        assert d.info().active == 0 and _output(d) == expected(graphs[1], x)
    finally:
        d.stop()


def test_public_key_define_from_pem_raw_and_object(tmp_path):
    raw = RELEASE_KEY.public_key().public_bytes_raw()
    want = ("ES_BLOB_PUBLIC_KEY={" + ",".join(f"0x{b:02x}" for b in raw) + "}",)
    pem, raw_file = tmp_path / "k.pem", tmp_path / "k.raw"
    save_public_key(RELEASE_KEY.public_key(), pem)
    save_public_key(RELEASE_KEY.public_key(), raw_file, raw=True)
    assert public_key_defines(pem) == public_key_defines(raw_file) == want
    assert public_key_defines(RELEASE_KEY.public_key()) == public_key_defines(raw) == want
    assert public_key_defines(None) == ()
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"not a key")
    with pytest.raises(ExportError, match="expected a PEM key or 32 raw bytes"):
        public_key_defines(bad)


# The ESP-IDF component's CMakeLists.txt, configured by the real cmake with idf_component_register
# stubbed: the app it lists (with the host HAL instead of hal_esp32s3.c, which needs ESP-IDF) is
# built as an executable and run on a pty.
IDF_STUB_PROJECT = """cmake_minimum_required(VERSION 3.16)
project(esp_component_check C)
function(idf_component_register)
    cmake_parse_arguments(ARG "" "" "SRCS;INCLUDE_DIRS;REQUIRES" ${ARGN})
    list(FILTER ARG_SRCS EXCLUDE REGEX "hal_esp32s3[.]c$")
    add_executable(esp_app_host ${ARG_SRCS} "${HOST_HAL}")
    target_include_directories(esp_app_host PRIVATE ${ARG_INCLUDE_DIRS})
    set(COMPONENT_LIB esp_app_host PARENT_SCOPE)
endfunction()
include("${COMPONENT_DIR}/CMakeLists.txt")
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is needed to configure the ESP-IDF component")
def test_esp32s3_component_with_a_public_key_verifies_signatures(tmp_path):
    import subprocess  # noqa: PLC0415

    from targets.build import FIRMWARE_DIR  # noqa: PLC0415

    small_firmware()
    pem = tmp_path / "release_public.pem"
    save_public_key(RELEASE_KEY.public_key(), pem)
    img = build_firmware(WORK / "export_small", "esp32s3", tmp_path / "esp", public_key=pem)
    comp = img.elf / "components" / "edgesmith_fw"
    assert "0x" in (comp / "app" / "es_blob_key.h").read_text()
    assert any("verifies blob signatures" in n for n in img.notes)
    check = tmp_path / "check"
    check.mkdir()
    (check / "CMakeLists.txt").write_text(IDF_STUB_PROJECT)
    build = check / "build"
    subprocess.run(["cmake", "-S", str(check), "-B", str(build), f"-DCOMPONENT_DIR={comp}",
                    f"-DHOST_HAL={FIRMWARE_DIR / 'hal_host.c'}"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j", "2"], check=True, capture_output=True)

    graphs, x = small_model()
    d = HostDevice(build / "esp_app_host", tmp_path / "flash.bin").start()
    try:
        assert d.command("INFO")[INFO_FLAGS_OFFSET] & 1 == 1
        with pytest.raises(DeviceError) as err:
            _commit(d, 0, write_blob(graphs[1]))
        assert err.value.code == BLOB_INVALID and err.value.message.startswith("signature missing")
        _commit(d, 0, write_blob(graphs[1], signing_key=RELEASE_KEY))
        d.reboot()
        d.command("CONFIRM")
        assert _output(d) == expected(graphs[1], x)
    finally:
        d.stop()

    # without a key the component compiles no verifier and requires nothing
    plain = build_firmware(WORK / "export_small", "esp32s3", tmp_path / "esp_plain")
    assert not (plain.elf / "components" / "edgesmith_fw" / "app" / "es_blob_key.h").exists()
    assert not (plain.elf / "components" / "edgesmith_fw" / "app" / "es_ed25519.c").exists()


def test_commit_digest_check_still_precedes_signature_check(device):
    """A COMMIT whose sha256 disagrees is HASH_MISMATCH, as before (signature checks come after)."""
    graphs, _ = small_model()
    blob = write_blob(graphs[1], signing_key=RELEASE_KEY)
    device.command("ERASE", bytes([1]))
    device.write_blob(1, blob)
    with pytest.raises(DeviceError) as err:
        device.command("COMMIT", struct.pack("<BI", 1, len(blob)) + hashlib.sha256(b"other").digest())
    assert err.value.code == 5


def test_cli_build_public_key_makes_a_signature_requiring_firmware(monkeypatch, tmp_path):
    """``edgesmith build RUN --target host --public-key KEY.pem`` (export step stubbed: the small
    model's export stands in for the run's) builds a firmware that refuses unsigned blobs."""
    import edgesmith.device as device_mod
    from edgesmith.cli import main

    small_firmware()
    monkeypatch.setattr(device_mod, "_export_dir", lambda target, board, variant, log: (WORK / "export_small", None))
    pem = tmp_path / "release.pub.pem"
    save_public_key(RELEASE_KEY.public_key(), pem)
    assert main(["build", str(tmp_path), "--target", "host", "--out", str(tmp_path / "fw"),
                 "--public-key", str(pem)]) == 0
    graphs, _ = small_model()
    d = HostDevice(tmp_path / "fw" / "edgesmith-fw-host", tmp_path / "flash.bin").start()
    try:
        assert d.command("INFO")[INFO_FLAGS_OFFSET] & 1 == 1
        with pytest.raises(DeviceError, match="signature missing"):
            _commit(d, 0, write_blob(graphs[1]))
        _commit(d, 0, write_blob(graphs[1], signing_key=RELEASE_KEY))
    finally:
        d.stop()


def test_flasher_refuses_an_unsigned_blob_for_a_keyed_device_before_writing(tmp_path):
    """INFO's signature_required flag: the host says what to do instead of letting COMMIT fail."""
    from targets.flasher import FlashError, flash_blob
    from targets.runner import HostFirmware

    graphs, _ = small_model()
    with HostFirmware(signed_firmware(), tmp_path / "flash.bin") as fw:
        with fw.open() as dev:
            assert dev.info().signature_required
            writes = dev.stats().flash_writes
        with pytest.raises(FlashError, match="runs only blobs signed with its release key.*--sign-key"):
            flash_blob(fw.url, write_blob(graphs[1]))
        with fw.open() as dev:
            assert dev.stats().flash_writes == writes  # nothing was erased or written
        flash_blob(fw.url, write_blob(graphs[1], signing_key=RELEASE_KEY))  # a signed one goes through
        with fw.open() as dev:
            assert dev.info().slots[dev.info().active_slot].state.name == "VALID"
