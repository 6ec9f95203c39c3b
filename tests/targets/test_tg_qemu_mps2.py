"""The firmware under QEMU (mps2-an500, Cortex-M7), driven over its emulated UART on a TCP socket.

Flash a blob with the flasher over ``socket://``, switch slots, INFER bit-exact with the
reference interpreter (the small multi-op net and ResNet-8), and a noisy link (byte corruption
through the fault proxy) that must still end verified or with a clear error.
"""
from __future__ import annotations

import hashlib
import shutil

import pytest
from tg_device_env import model_pair, resnet8

from targets.faults import FaultPlan, FaultProxy
from targets.flasher import flash_blob
from targets.protocol import COMPILED_IN_SLOT, DeviceError, SlotState
from targets.runner import QemuBoard, infer_on_device, qemu_available

pytestmark = pytest.mark.skipif(not (qemu_available() and shutil.which("arm-none-eabi-gcc")),
                                reason="qemu-system-arm or arm-none-eabi-gcc is not installed")


def _elf(export_dir):
    from targets.build import build_firmware

    return build_firmware(export_dir, "mps2-an500", export_dir / "fw-mps2").elf


@pytest.fixture(scope="module")
def small():
    p = model_pair()
    return p, _elf(p.export_dir)


def test_tg_qemu_flash_switch_and_infer(small):
    p, elf = small
    with QemuBoard(elf) as board:
        with board.open() as dev:
            info = dev.info()
            assert info.board == "mps2-an500" and info.active_slot == COMPILED_IN_SLOT
            assert dev.infer(p.x.tobytes())[1] == p.expected(p.old)
        r1 = flash_blob(board.url, p.new_blob)
        assert r1.info.active_slot == r1.slot and r1.info.slots[r1.slot].state == SlotState.VALID
        with board.open() as dev:
            assert dev.verify(r1.slot, len(p.new_blob)) == hashlib.sha256(p.new_blob).digest()
            assert infer_on_device(dev, p.new, p.x).bit_exact
        r2 = flash_blob(board.url, p.old_blob)
        assert r2.slot == 1 - r1.slot and r2.info.active_slot == r2.slot
        with board.open() as dev:
            assert infer_on_device(dev, p.old, p.x).bit_exact


def test_tg_qemu_noisy_link_never_false_success(small):
    p, elf = small
    with QemuBoard(elf) as board:
        with FaultProxy(board.url, FaultPlan(corrupt_rate=1e-3, drop_rate=1e-4, seed=11)) as proxy:
            try:
                outcome = flash_blob(proxy.url, p.new_blob)
            except DeviceError as e:
                outcome = e
        assert proxy.counters.corrupted > 0
        with board.open() as dev:
            if isinstance(outcome, Exception):
                dev.reboot()
                assert dev.infer(p.x.tobytes())[1] in (p.expected(p.old), p.expected(p.new))
            else:
                assert dev.info().active_slot == outcome.slot
                assert dev.verify(outcome.slot, len(p.new_blob)) == hashlib.sha256(p.new_blob).digest()
                assert dev.infer(p.x.tobytes())[1] == p.expected(p.new)


def test_tg_qemu_resnet8_bit_exact_and_instruction_count():
    graph, x, export_dir = resnet8()
    elf = _elf(export_dir)
    with QemuBoard(elf) as board, board.open() as dev:
        result = infer_on_device(dev, graph, x)
        assert result.bit_exact, (result.output, result.reference)
        # -icount shift=0: the count is in instructions; ResNet-8 is ~12.5 M MACs, so at least
        # one instruction per MAC and far below 100 per MAC
        print(f"ResNet-8 on mps2-an500: {result.cycles} instructions per inference")
        assert 12e6 < result.cycles < 1.25e9
