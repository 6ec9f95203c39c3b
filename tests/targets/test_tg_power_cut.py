"""Power cut at every flash operation of a slot update (host build, simulated flash file).

The host firmware's ``--power-cut-at N`` tears the N-th flash erase/program (first half applied)
and exits with status 75: the power went away. For every N inside one complete update (ERASE,
each WRITE, COMMIT's boot record, the trial boot, CONFIRM), the device powered on again must
run a complete model, old or new (INFER equals the reference interpreter of one of them, and
the active slot's hash read-back is that blob's), and a second flash must then succeed.
"""
from __future__ import annotations

import hashlib
import shutil

import pytest
from tg_device_env import HOST_TIMEOUTS, have_gcc, host_firmware, model_pair

from targets import flasher
from targets.build import HOST_POWER_CUT_EXIT
from targets.flasher import flash_blob
from targets.protocol import COMPILED_IN_SLOT, DeviceError
from targets.runner import HostFirmware

pytestmark = pytest.mark.skipif(not have_gcc(), reason="gcc is not installed: no host firmware")

SLOT_SIZE = 8192  # small slots: an ERASE is few flash operations


def _flash(url, blob):
    return flash_blob(url, blob, device_kwargs=HOST_TIMEOUTS)


def test_tg_power_cut_at_every_flash_operation(tmp_path, monkeypatch):
    p = model_pair()
    exe = host_firmware(p.export_dir)
    monkeypatch.setattr(flasher, "RECONNECT_ATTEMPTS", 1)
    monkeypatch.setattr(flasher, "RECONNECT_PAUSE_S", 0.0)
    base = tmp_path / "base.bin"
    with HostFirmware(exe, base, slot_size=SLOT_SIZE) as fw:
        _flash(fw.url, p.old_blob)  # slot A: the old model, confirmed
    # how many flash operations one update takes, counted by the firmware itself
    probe = tmp_path / "probe.bin"
    shutil.copy(base, probe)
    with HostFirmware(exe, probe, slot_size=SLOT_SIZE) as fw:
        with fw.open() as dev:
            at_boot = dev.stats().flash_writes
        _flash(fw.url, p.new_blob)
        with fw.open() as dev:
            total = dev.stats().flash_writes - at_boot
    assert total >= 4  # at least ERASE, WRITEs, COMMIT, CONFIRM

    digests = {hashlib.sha256(p.old_blob).digest(): p.expected(p.old),
               hashlib.sha256(p.new_blob).digest(): p.expected(p.new)}
    outcomes = []
    for n in range(1, total + 1):
        flash_file = tmp_path / f"cut{n}.bin"
        shutil.copy(base, flash_file)
        with HostFirmware(exe, flash_file, slot_size=SLOT_SIZE, power_cut_at=at_boot + n) as fw:
            with pytest.raises(DeviceError):
                _flash(fw.url, p.new_blob)
            assert fw.wait() == HOST_POWER_CUT_EXIT, f"cut {n}: the firmware did not cut power"
        with HostFirmware(exe, flash_file, slot_size=SLOT_SIZE) as fw:
            with fw.open(**HOST_TIMEOUTS) as dev:
                info = dev.info()
                assert info.active_slot != COMPILED_IN_SLOT, f"cut {n}: lost both slots"
                length = info.slots[info.active_slot].committed_length
                digest = dev.verify(info.active_slot, length)
                assert digest in digests, f"cut {n}: active slot holds neither blob"
                out = dev.infer(p.x.tobytes())[1]
                assert out == digests[digest], f"cut {n}: INFER does not match the slot's model"
                outcomes.append("new" if out == p.expected(p.new) else "old")
            # and the update goes through on the next try
            result = _flash(fw.url, p.new_blob)
            with fw.open(**HOST_TIMEOUTS) as dev:
                assert dev.info().active_slot == result.slot
                assert dev.infer(p.x.tobytes())[1] == p.expected(p.new)
    print(f"{total} flash operations per update; model after each cut: {outcomes}")
    # early cuts keep the old model; cuts between the trial boot and CONFIRM come back up in
    # the trial (new model), a cut inside CONFIRM's boot record write reverts to the old one
    assert outcomes[0] == "old"
    assert "new" in outcomes
