"""Flasher + Device client against the real firmware (host build on a pty, simulated flash file).

Covers: INFER bit-exact with the reference interpreter, flashing a blob then switching slots,
refusal of corrupt / unsigned / wrongly signed / other-structure blobs (by the host and, with the
host checks off, by the firmware itself) with the old model still running, resume of an
interrupted flash, and the automatic revert of an unconfirmed trial.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from tg_device_env import have_gcc, host_firmware, model_pair, resnet8

from firmware_export.blob import generate_keypair, write_blob
from targets import flasher
from targets.flasher import FlashError, flash_blob
from targets.protocol import (COMPILED_IN_SLOT, DeviceCommandError, ErrCode, SlotState)
from targets.runner import HostFirmware, infer_on_device

pytestmark = pytest.mark.skipif(not have_gcc(), reason="gcc is not installed: no host firmware")


@pytest.fixture(scope="module")
def pair():
    p = model_pair()
    return p, host_firmware(p.export_dir)


def _output(fw, pair_, graph):
    with fw.open() as dev:
        _, out = dev.infer(pair_.x.tobytes(), len(pair_.expected(graph)))
    return out


def test_tg_flash_switches_slots_bit_exact(pair, tmp_path):
    p, exe = pair
    with HostFirmware(exe, tmp_path / "flash.bin") as fw:
        with fw.open() as dev:
            info = dev.info()
            assert info.active_slot == COMPILED_IN_SLOT
            assert info.structure_hash.hex() == p.old.structure_hash()
            # compiled-in weights are the old model
            assert dev.infer(p.x.tobytes())[1] == p.expected(p.old)
        r1 = flash_blob(fw.url, p.new_blob)
        assert r1.slot == 0 and r1.info.active_slot == 0
        assert r1.info.slots[0].state == SlotState.VALID
        assert r1.sha256 == hashlib.sha256(p.new_blob).hexdigest()
        assert p.expected(p.new) != p.expected(p.old)  # the switch is observable
        assert _output(fw, p, p.new) == p.expected(p.new)

        r2 = flash_blob(fw.url, p.old_blob)
        assert r2.slot == 1 and r2.info.active_slot == 1
        # the previous slot stays VALID as the fallback
        assert r2.info.slots[0].state == SlotState.VALID
        assert r2.info.slots[1].graph_hash.hex() == p.old.graph_hash()
        assert _output(fw, p, p.old) == p.expected(p.old)
        with fw.open() as dev:
            assert dev.verify(1, len(p.old_blob)) == hashlib.sha256(p.old_blob).digest()
            assert dev.read(1, 0, 4) == b"ESWB"

    # a power cycle (new process, same flash file) boots the last confirmed slot
    with HostFirmware(exe, tmp_path / "flash.bin") as fw:
        with fw.open() as dev:
            assert dev.info().active_slot == 1
        assert _output(fw, p, p.old) == p.expected(p.old)


def test_tg_resnet8_infer_bit_exact_host(tmp_path):
    graph, x, export_dir = resnet8()
    exe = host_firmware(export_dir)
    rng = np.random.default_rng(0)
    with HostFirmware(exe, tmp_path / "flash.bin") as fw, fw.open() as dev:
        for xi in (x, rng.integers(-128, 128, x.shape, dtype=np.int8)):
            result = infer_on_device(dev, graph, xi)
            assert result.bit_exact, (result.output, result.reference)
            assert result.cycles > 0


def _assert_old_model_runs(fw, p, graph, slot):
    with fw.open() as dev:
        info = dev.info()
        assert info.active_slot == slot
        assert dev.infer(p.x.tobytes())[1] == p.expected(graph)


def test_tg_bad_blobs_refused_old_model_keeps_running(pair, tmp_path):
    p, exe = pair
    corrupt = bytearray(p.new_blob)
    corrupt[len(corrupt) // 2] ^= 0x10
    private, public = generate_keypair()
    other_private, _ = generate_keypair()
    with HostFirmware(exe, tmp_path / "flash.bin") as fw:
        flash_blob(fw.url, p.old_blob)  # slot A runs the old model
        # the host refuses before writing anything
        with fw.open() as dev:
            writes_before = dev.stats().flash_writes
        with pytest.raises(FlashError, match="CRC32"):
            flash_blob(fw.url, bytes(corrupt))
        with pytest.raises(FlashError, match="not signed"):
            flash_blob(fw.url, p.new_blob, public_key=public, require_signature=True)
        with pytest.raises(FlashError, match="signature"):
            flash_blob(fw.url, write_blob(p.new, signing_key=other_private), public_key=public,
                       require_signature=True)
        with fw.open() as dev:
            assert dev.stats().flash_writes == writes_before
        _assert_old_model_runs(fw, p, p.old, 0)

        # with the host checks off, the firmware refuses at COMMIT (CRC / structure hash)
        with pytest.raises(DeviceCommandError) as err:
            flash_blob(fw.url, bytes(corrupt), host_checks=False)
        assert err.value.code == ErrCode.BLOB_INVALID
        _assert_old_model_runs(fw, p, p.old, 0)

        from tg_device_env import resnet8_graph  # another structure
        other, _ = resnet8_graph(np.random.default_rng(1), size=8, classes=3)
        with pytest.raises(FlashError, match="structure"):
            flash_blob(fw.url, write_blob(other))
        with pytest.raises(DeviceCommandError) as err:
            flash_blob(fw.url, write_blob(other), host_checks=False)
        assert err.value.code == ErrCode.BLOB_INVALID and "STRUCTURE" in err.value.device_message.upper()
        _assert_old_model_runs(fw, p, p.old, 0)

        # a correctly signed blob goes through
        result = flash_blob(fw.url, write_blob(p.new, signing_key=private), public_key=public,
                            require_signature=True)
        assert result.info.active_slot == 1
        _assert_old_model_runs(fw, p, p.new, 1)


def test_tg_unconfirmed_trial_reverts(pair, tmp_path):
    p, exe = pair
    with HostFirmware(exe, tmp_path / "flash.bin") as fw:
        flash_blob(fw.url, p.old_blob)
        with fw.open() as dev:
            dev.erase(1)
            for off in range(0, len(p.new_blob), 992):
                dev.write(1, off, p.new_blob[off:off + 992])
            dev.commit(1, len(p.new_blob), hashlib.sha256(p.new_blob).digest())
            dev.reboot()
            info = dev.info()
            assert info.active_slot == 1 and info.slots[1].state == SlotState.TRIAL
            assert dev.infer(p.x.tobytes())[1] == p.expected(p.new)
            dev.reboot()  # no CONFIRM: the device reverts
            info = dev.info()
            assert info.active_slot == 0 and info.slots[1].state == SlotState.BAD
            assert dev.infer(p.x.tobytes())[1] == p.expected(p.old)
            with pytest.raises(DeviceCommandError) as err:
                dev.confirm()
            assert err.value.code == ErrCode.NOT_TRIAL


def test_tg_resume_after_power_cut_mid_write(pair, tmp_path, monkeypatch):
    """A flash cut during WRITE resumes from the device's next expected offset in a new run."""
    p, exe = pair
    monkeypatch.setattr(flasher, "RECONNECT_ATTEMPTS", 1)
    monkeypatch.setattr(flasher, "RECONNECT_PAUSE_S", 0.0)
    monkeypatch.setattr(flasher, "MAX_BURST_CHUNK", 992)  # MCU-sized chunks: the cut lands mid-blob
    flash_file = tmp_path / "flash.bin"
    with HostFirmware(exe, flash_file) as fw, fw.open() as dev:
        base = dev.stats().flash_writes
        dev.erase(0)
        erase_ops = dev.stats().flash_writes - base
    # cut at the third WRITE of the next flash: the slot holds 2 chunks
    with HostFirmware(exe, flash_file, power_cut_at=erase_ops + 3) as fw:
        with pytest.raises(FlashError):
            flash_blob(fw.url, p.new_blob)
        assert fw.wait() == 75
    with HostFirmware(exe, flash_file) as fw:
        with fw.open() as dev:
            slot = dev.info().slots[0]
            assert slot.state == SlotState.WRITING and slot.next_offset >= 2 * 992
        result = flash_blob(fw.url, p.new_blob)
        assert result.resumed_from >= 2 * 992
        assert result.written_bytes == len(p.new_blob) - result.resumed_from
        _assert_old_model_runs(fw, p, p.new, 0)


def test_tg_new_session_with_same_seq_gets_its_own_answer(pair, tmp_path):
    """The device dedupes on seq AND frame CRC: a new host session that starts at the seq of the
    previous session's last command (here an ERR) still gets its command executed."""
    p, exe = pair
    from targets.protocol import Device

    with HostFirmware(exe, tmp_path / "flash.bin") as fw:
        with Device.open(fw.url, first_seq=7) as dev:
            with pytest.raises(DeviceCommandError) as err:
                dev.confirm()  # ERR NOT_TRIAL, stored for seq 7
            assert err.value.code == ErrCode.NOT_TRIAL
        with Device.open(fw.url, first_seq=7) as dev:
            assert dev.info().board == "host"  # not the stored ERR of the other command
            assert dev.counters.resends == 0


def test_tg_pipelined_writes_are_answered_in_order(pair, tmp_path):
    """Several WRITEs in flight (the flasher's window on flow-controlled links): every answer is
    kept even when one read returns several, and a gap makes the later frames ERR BAD_OFFSET."""
    import struct

    from targets.protocol import Cmd

    p, exe = pair
    blob = p.new_blob
    with HostFirmware(exe, tmp_path / "flash.bin") as fw, fw.open() as dev:
        dev.erase(0)
        seqs = [dev.send(Cmd.WRITE, struct.pack("<BI", 0, off) + blob[off:off + 992])
                for off in (0, 992, 1984)]
        assert [struct.unpack("<I", dev.receive(Cmd.WRITE, s))[0] for s in seqs] == [992, 1984, 2976]
        # skip one chunk: the next frame is refused with the expected offset
        seq = dev.send(Cmd.WRITE, struct.pack("<BI", 0, 3008) + blob[3008:3008 + 32])
        with pytest.raises(DeviceCommandError) as err:
            dev.receive(Cmd.WRITE, seq)
        assert err.value.code == ErrCode.BAD_OFFSET and err.value.device_message.startswith("expected 2976")
