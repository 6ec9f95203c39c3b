"""Firmware builds for the MCU boards: QEMU mps2-an500 (Cortex-M7) and sifive_e (RV32IMAC) run
the protocol for real; STM32H747 and GD32VF103 are built and size-checked; the ESP32-S3
project is generated and its app + model C is compiled into the host build and run.
"""
from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess

import numpy as np
import pytest
from fw_driver import DeviceError, HostDevice, QemuDevice
from fw_models import WORK, expected, host_board, resnet8_export, small_blobs, small_model

from edgesmith.errors import ExportError
from firmware_export.export import export_model
from targets.boards import get_board
from targets.build import FIRMWARE_DIR, build_firmware

ARM = shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")
RISCV = shutil.which("riscv64-unknown-elf-gcc")
QEMU_ARGS = {"mps2-an500": ["qemu-system-arm", "-M", "mps2-an500", "-cpu", "cortex-m7"],
             "gd32vf103-qemu": ["qemu-system-riscv32", "-M", "sifive_e"]}


def _export(name: str, graph, board: str, **kw):
    out = WORK / f"export_{name}_{board}"
    if not (out / "c" / "model.h").is_file():
        # without its toolchain the profile gives an estimated code size: no extra compile
        b = host_board() if board == "host" else {k: v for k, v in get_board(board).to_dict().items()
                                                   if k != "toolchain"}
        export_model(graph, out, b, formats=["c"], **kw)
    return out


def _qemu(board: str, elf, sock) -> QemuDevice:
    argv = [*QEMU_ARGS[board], "-nographic", "-monitor", "none", "-icount", "shift=0", "-kernel", str(elf)]
    return QemuDevice(argv, sock).start()


@pytest.fixture(scope="module")
def mps2_small():
    graphs, _ = small_model()
    return build_firmware(_export("small", graphs[0], "host"), "mps2-an500", WORK / "mps2_small").elf


@pytest.mark.skipif(not ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_fw_mps2_update_and_infer_bit_exact(mps2_small, tmp_path):
    graphs, x = small_model()
    blobs = small_blobs()
    d = _qemu("mps2-an500", mps2_small, tmp_path / "uart.sock")
    try:
        info = d.info()
        assert (info.board, info.active, info.slot_size) == ("mps2-an500", 0xFF, 1024 * 1024)
        cycles, out = d.infer(x.tobytes())
        assert out == expected(graphs[0], x) and cycles > 0
        d.update(1, blobs[1])
        d.reboot()
        assert d.info().active == 1 and d.infer(x.tobytes())[1] == expected(graphs[1], x)
        d.command("CONFIRM")
        # a corrupt blob is refused at COMMIT and the running model stays
        bad = bytearray(blobs[2])
        bad[-10] ^= 1
        d.command("ERASE", b"\x00")
        d.write_blob(0, bytes(bad))
        with pytest.raises(DeviceError) as e:
            d.command("COMMIT", struct.pack("<BI", 0, len(bad)) + hashlib.sha256(bad).digest())
        assert e.value.code == 6
        # an update that is never confirmed is reverted by the second reboot
        d.update(0, blobs[2])
        d.reboot()
        assert d.info().active == 0 and d.infer(x.tobytes())[1] == expected(graphs[2], x)
        d.reboot()
        info = d.info()
        assert info.active == 1 and [s[0] for s in info.slots] == ["BAD", "VALID"]
        assert d.infer(x.tobytes())[1] == expected(graphs[1], x)
    finally:
        d.stop()


@pytest.mark.skipif(not ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_fw_mps2_resnet8_bit_exact_and_instruction_count(tmp_path):
    g, x, exp = resnet8_export()
    img = build_firmware(exp, "mps2-an500", WORK / "mps2_r8")
    d = _qemu("mps2-an500", img.elf, tmp_path / "uart.sock")
    try:
        instructions, out = d.infer(x.astype(np.int8).tobytes())
        assert out == expected(g, x)
        # -icount shift=0: cycles are instructions; a ResNet-8 needs millions, not zero or billions
        assert 1e6 < instructions < 2e9
    finally:
        d.stop()
    print(f"\nResNet-8 (random weights, 32x32x3) on mps2-an500: {instructions} instructions per inference, "
          f"image {img.flash_bytes} B, RAM {img.ram_bytes} B")


@pytest.mark.skipif(not RISCV or not shutil.which("qemu-system-riscv32"),
                    reason="needs riscv64-unknown-elf-gcc and qemu-system-riscv32")
def test_fw_riscv_sifive_e_infer_bit_exact(tmp_path):
    graphs, x = small_model()
    img = build_firmware(_export("small", graphs[0], "host"), "gd32vf103-qemu", WORK / "rv_small")
    assert img.ram_bytes <= 16 * 1024
    d = _qemu("gd32vf103-qemu", img.elf, tmp_path / "uart.sock")
    try:
        rng = np.random.default_rng(3)
        for _ in range(2):
            xi = rng.integers(-128, 128, x.shape).astype(np.int8)
            assert d.infer(xi.tobytes())[1] == expected(graphs[0], xi)
        with pytest.raises(DeviceError) as e:  # XIP flash is read-only under QEMU: no slots
            d.command("ERASE", b"\x00")
        assert e.value.code == 4
    finally:
        d.stop()


@pytest.mark.skipif(not RISCV, reason="needs riscv64-unknown-elf-gcc")
def test_fw_gd32vf103_size_check_and_fit_report():
    graphs, _ = small_model()
    img = build_firmware(_export("small", graphs[0], "gd32vf103"), "gd32vf103", WORK / "gd_small")
    assert 0 < img.flash_bytes <= 128 * 1024 and 0 < img.ram_bytes <= 32 * 1024
    assert img.image is not None and img.image.stat().st_size >= img.flash_bytes - 64
    g, _, _ = resnet8_export()
    out = WORK / "gd_r8"
    with pytest.raises(ExportError) as e:
        build_firmware(_export("r8", g, "gd32vf103"), "gd32vf103", out)
    msg = str(e.value)
    assert "does not fit gd32vf103" in msg and "Fit report" in msg and "fits=False" in msg
    assert not list(out.glob("*.elf")) and not list(out.glob("*.bin"))  # no broken image left


@pytest.mark.skipif(not shutil.which("arm-none-eabi-gcc"), reason="needs arm-none-eabi-gcc")
def test_fw_stm32h747_qspi_weights_and_axi_arena():
    g, _, _ = resnet8_export()
    exp = _export("r8ext", g, "stm32h747", weights_section=".extflash")
    img = build_firmware(exp, "stm32h747", WORK / "h7_r8")
    weights = sum(t.nbytes for t in g.tensors.values() if t.data is not None)
    arena = int(next(line.split()[2] for line in (exp / "c" / "model.h").read_text().splitlines()
                     if line.startswith("#define MODEL_ARENA_BYTES")))
    assert img.sections[".extflash"] >= weights * 0.9 and img.sections[".axisram"] >= arena
    assert img.sections[".text"] + img.sections.get(".rodata", 0) < weights  # weights left internal flash
    assert (WORK / "h7_r8" / "extflash.bin").stat().st_size == img.sections[".extflash"]
    nm = subprocess.run(["arm-none-eabi-nm", str(img.elf)], capture_output=True, text=True).stdout
    assert any(line.split()[-1] == "Reset_Handler" for line in nm.splitlines())
    vectors = img.image.read_bytes()[:8]
    sp, reset = struct.unpack("<II", vectors)
    assert 0x20000000 < sp <= 0x20020000 and 0x08000000 <= reset < 0x08100000 and reset & 1


def test_fw_esp32s3_project_app_runs_in_host_build(tmp_path):
    graphs, x = small_model()
    img = build_firmware(_export("small", graphs[0], "host"), "esp32s3", tmp_path / "esp")
    comp = img.elf / "components" / "edgesmith_fw"
    cmake = (comp / "CMakeLists.txt").read_text()
    app_sources = sorted(p.name for p in (comp / "app").glob("*.c"))
    assert all(f"${{EDGESMITH_APP_DIR}}/{name}" in cmake for name in app_sources)
    assert (comp / "idf_component.yml").is_file() and (img.elf / "partitions.csv").is_file()
    # the component's copies of the app and the model, with the host HAL, on a pty
    exe = tmp_path / "esp_app_host"
    sources = [*map(str, (comp / "app").glob("*.c")), *map(str, (comp / "model").glob("*.c")),
               str(FIRMWARE_DIR / "hal_host.c")]
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-I", str(comp / "app"),
                    "-I", str(comp / "model"), "-o", str(exe), *sources], check=True, capture_output=True)
    d = HostDevice(exe, tmp_path / "flash.bin").start()
    try:
        assert d.infer(x.tobytes())[1] == expected(graphs[0], x)
    finally:
        d.stop()
