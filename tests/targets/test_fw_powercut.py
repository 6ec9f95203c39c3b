"""Power cut at every flash operation of two slot updates (host build, simulated NOR flash).

Sequence from a device running blob B confirmed in slot 0: update C into slot 1 (ERASE, WRITE
chunks, VERIFY, COMMIT, REBOOT, CONFIRM), then B back into slot 0 (its old sectors are erased).
For every flash operation k of that sequence the firmware is started with --power-cut-at k (the
k-th erase/program is torn in half and the process dies, exit 75), restarted on the same flash
file, and must run a complete old or new model — the one its INFO says — then the interrupted
update is resumed from INFO's next expected offset and completes.
"""
from __future__ import annotations

import hashlib
import shutil
import struct

import pytest
from fw_driver import DeviceError, HostDevice
from fw_models import expected, small_blobs, small_firmware, small_model

from targets.build import HOST_POWER_CUT_EXIT

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the host firmware")

#: (slot, blob index) of the two updates; blob 1 = B, 2 = C
UPDATES = ((1, 2), (0, 1))


def _full_update(d: HostDevice, slot: int, blob: bytes) -> list[int]:
    """ERASE .. CONFIRM; returns the STATS flash-op count after each command."""
    marks = []
    d.command("ERASE", bytes([slot]))
    marks.append(d.stats()["flash_ops"])
    for off in range(0, len(blob), 992):
        d.command("WRITE", struct.pack("<BI", slot, off) + blob[off:off + 992])
    marks.append(d.stats()["flash_ops"])
    sha = hashlib.sha256(blob).digest()
    assert d.command("VERIFY", struct.pack("<BI", slot, len(blob))) == sha
    d.command("COMMIT", struct.pack("<BI", slot, len(blob)) + sha)
    marks.append(d.stats()["flash_ops"])
    d.reboot()
    marks.append(d.stats()["flash_ops"])
    d.command("CONFIRM")
    marks.append(d.stats()["flash_ops"])
    return marks


def _resume(d: HostDevice, slot: int, blob: bytes) -> None:
    """What a flasher does after a cut: finish the update from where the device stands."""
    info = d.info()
    want_hash = bytes.fromhex(small_model()[0][small_blobs().index(blob)].graph_hash())
    state, nxt, length, ghash = info.slots[slot]
    if info.active == slot and ghash == want_hash:
        if state == "TRIAL":
            d.command("CONFIRM")
        return
    if state == "TRIAL" and ghash == want_hash:  # committed, not yet booted
        d.reboot()
        d.command("CONFIRM")
        return
    sha = hashlib.sha256(blob).digest()
    if state != "WRITING" or nxt > len(blob) or (
            d.command("VERIFY", struct.pack("<BI", slot, nxt)) != hashlib.sha256(blob[:nxt]).digest()):
        d.command("ERASE", bytes([slot]))
        nxt = 0
    d.write_blob(slot, blob, start=nxt) if nxt % 992 == 0 else _write_from(d, slot, blob, nxt)
    d.command("COMMIT", struct.pack("<BI", slot, len(blob)) + sha)
    d.reboot()
    d.command("CONFIRM")


def _write_from(d: HostDevice, slot: int, blob: bytes, start: int) -> None:
    off = start
    while off < len(blob):
        off = struct.unpack("<I", d.command("WRITE", struct.pack("<BI", slot, off) + blob[off:off + 992]))[0]


@pytest.fixture(scope="module")
def base_flash(tmp_path_factory):
    """Flash file with B committed and confirmed in slot 0, and the op marks of the sequence."""
    path = tmp_path_factory.mktemp("pc") / "base.flash"
    d = HostDevice(small_firmware(), path).start()
    try:
        _full_update(d, 0, small_blobs()[1])
    finally:
        d.stop()
    probe = tmp_path_factory.mktemp("pc") / "probe.flash"
    shutil.copyfile(path, probe)
    d = HostDevice(small_firmware(), probe).start()
    try:
        marks = [m for slot, b in UPDATES for m in _full_update(d, slot, small_blobs()[b])]
    finally:
        d.stop()
    return path, marks


def test_fw_update_sequence_op_count(base_flash):
    """The sequence really writes flash at every step (else the sweep below tests nothing)."""
    _, marks = base_flash
    assert all(b > a for a, b in zip(marks, marks[1:])) and marks[-1] >= 20


@pytest.mark.parametrize("action", ["exit", "reset"])
def test_fw_power_cut_at_every_flash_op(base_flash, tmp_path, action):
    base, marks = base_flash
    graphs, x = small_model()
    blobs = small_blobs()
    total = marks[-1]
    ks = range(1, total + 1) if action == "exit" else range(1, total + 1, 4)
    per_phase = len(marks) // len(UPDATES)
    for k in ks:
        phase = 0 if k <= marks[per_phase - 1] else 1
        old = graphs[UPDATES[phase - 1][1]] if phase else graphs[1]
        new = graphs[UPDATES[phase][1]]
        flash = tmp_path / f"cut{k}.flash"
        shutil.copyfile(base, flash)
        d = HostDevice(small_firmware(), flash).start("--power-cut-at", str(k), "--power-cut-action", action)
        d.timeout = 0.5  # after a cut in reset mode the command's answer never comes
        died = False
        try:
            for i, (slot, b) in enumerate(UPDATES):
                _full_update(d, slot, blobs[b])
        except (TimeoutError, OSError, DeviceError):
            died = True
        if action == "exit":
            rc = d.stop()
            assert died and rc == HOST_POWER_CUT_EXIT, f"cut at op {k}: device did not die (rc {rc})"
            d.start()
        d.timeout = 5.0
        try:
            info = d.info()
            assert info.active in (0, 1), f"cut at op {k}: no slot runs (compiled-in fallback)"
            running_hash = info.slots[info.active][3]
            out = d.infer(x.tobytes())[1]
            allowed = {g.graph_hash(): expected(g, x) for g in (old, new)}
            assert running_hash.hex() in allowed, f"cut at op {k}: runs a model that is neither old nor new"
            assert out == allowed[running_hash.hex()], f"cut at op {k}: output differs from the reference"
            # resume the interrupted update, then any update after it
            for slot, b in UPDATES[phase:]:
                _resume(d, slot, blobs[b])
            final = d.info()
            assert final.active == UPDATES[-1][0] and final.slots[final.active][0] == "VALID"
            assert d.infer(x.tobytes())[1] == expected(graphs[UPDATES[-1][1]], x)
        finally:
            d.stop()
