"""Serial faults between the flasher and the real firmware (host build on a pty, FaultProxy).

For every fault plan the flash either completes verified or raises a clear error; it never
reports success unless the device really runs the new blob. Each outcome is checked on a second,
clean connection: after a success the device must report the new slot VALID and active, its
hash read-back must equal the blob's and INFER must match the reference interpreter of the new
model; after a failure (and a reboot, which reverts any unconfirmed trial) the device must run
a complete old or new model. The proxy's counters prove the faults were injected.
"""
from __future__ import annotations

import hashlib

import pytest
from tg_device_env import HOST_TIMEOUTS, have_gcc, host_firmware, model_pair

from targets import flasher
from targets.faults import FaultPlan, FaultProxy
from targets.flasher import flash_blob
from targets.protocol import DeviceError, DeviceTimeoutError, SlotState
from targets.runner import HostFirmware

pytestmark = pytest.mark.skipif(not have_gcc(), reason="gcc is not installed: no host firmware")


def _check_outcome(fw, p, outcome):
    """The no-false-success check on a clean connection; returns "ok" or "failed"."""
    with fw.open() as dev:
        if not isinstance(outcome, Exception):
            info = dev.info()
            assert info.active_slot == outcome.slot
            assert info.slots[outcome.slot].state == SlotState.VALID
            assert info.slots[outcome.slot].graph_hash.hex() == p.new.graph_hash()
            assert dev.verify(outcome.slot, len(p.new_blob)) == hashlib.sha256(p.new_blob).digest()
            assert dev.infer(p.x.tobytes())[1] == p.expected(p.new)
            return "ok"
        try:
            dev.reboot()
        except DeviceTimeoutError:
            pass
        out = dev.infer(p.x.tobytes())[1]
        assert out in (p.expected(p.old), p.expected(p.new))
        return "failed"


def _flash_through(p, exe, tmp_path, plan, **kwargs):
    with HostFirmware(exe, tmp_path / "flash.bin") as fw:
        with FaultProxy(fw.url, plan) as proxy:
            try:
                outcome = flash_blob(proxy.url, p.new_blob, device_kwargs=HOST_TIMEOUTS, **kwargs)
            except DeviceError as e:  # FlashError or a command error: a clear, non-zero exit
                outcome = e
        return _check_outcome(fw, p, outcome), outcome, proxy.counters


@pytest.fixture(scope="module")
def small():
    p = model_pair()
    return p, host_firmware(p.export_dir)


def test_tg_corrupt_1e4_resnet8_completes_verified(tmp_path):
    p = model_pair(kind="resnet8")
    exe = host_firmware(p.export_dir)
    status, outcome, counters = _flash_through(p, exe, tmp_path, FaultPlan(corrupt_rate=1e-4, seed=1))
    assert counters.corrupted > 0
    assert status == "ok", outcome


def test_tg_corrupt_1e2_never_false_success(small, tmp_path):
    p, exe = small
    status, outcome, counters = _flash_through(p, exe, tmp_path, FaultPlan(corrupt_rate=1e-2, seed=2))
    assert counters.corrupted > 10
    # either way _check_outcome proved the device state; a failure must say what happened
    if status == "failed":
        assert "fault" in str(outcome) or "refused" in str(outcome)
    else:
        assert outcome.chunk_failures > 0  # it got through by retrying, not by luck


def test_tg_dropped_bytes(small, tmp_path):
    p, exe = small
    status, outcome, counters = _flash_through(p, exe, tmp_path, FaultPlan(drop_rate=2e-3, seed=3))
    assert counters.dropped > 0
    assert status == "ok", outcome


def test_tg_stalls(small, tmp_path):
    p, exe = small
    plan = FaultPlan(stall_rate=5e-4, stall_s=0.6, seed=4)
    status, outcome, counters = _flash_through(p, exe, tmp_path, plan)
    assert counters.stalls > 0
    assert status == "ok", outcome


def test_tg_disconnect_mid_transfer_resumes(small, tmp_path, monkeypatch):
    p, exe = small
    monkeypatch.setattr(flasher, "RECONNECT_PAUSE_S", 0.05)
    n = len(p.new_blob)
    plan = FaultPlan(disconnect_after=(n // 3, 2 * n // 3), seed=5)
    status, outcome, counters = _flash_through(p, exe, tmp_path, plan)
    assert counters.disconnects == 2
    assert status == "ok", outcome
    assert outcome.reconnects == 2


def test_tg_link_gone_fails_clearly(small, tmp_path, monkeypatch):
    """A link that carries nothing ends in a bounded, named error, not a hang or a success."""
    p, exe = small
    monkeypatch.setattr(flasher, "RECONNECT_PAUSE_S", 0.05)
    status, outcome, counters = _flash_through(p, exe, tmp_path, FaultPlan(drop_rate=1.0, seed=6))
    assert status == "failed"
    assert "INFO failed after 5 tries" in str(outcome) and "rounds" in str(outcome)
