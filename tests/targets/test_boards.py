"""Board profiles (targets/boards.py): the data, lookups, toolchain flags and the fit report."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import firmware_export
from edgesmith.errors import ConfigError
from firmware_export.fit import fit_report
from firmware_export.intgraph import IntGraph, Op, Tensor
from targets.boards import BOARDS, KiB, MiB, get_board

RUNTIME = Path(firmware_export.__file__).parent / "runtime"


def fc_graph(inputs: int, outputs: int) -> IntGraph:
    """One FULLY_CONNECTED layer: inputs x outputs int8 weights, int32 bias."""
    rng = np.random.default_rng(0)
    q = {"scale": np.array([0.1], np.float32), "zero_point": np.array([0])}
    wq = {"scale": np.full(outputs, 0.01, np.float32), "zero_point": np.zeros(outputs, np.int64)}
    t = {
        "x": Tensor("x", (1, inputs), **q),
        "w": Tensor("w", (outputs, inputs), quant_axis=0,
                    data=rng.integers(-127, 128, (outputs, inputs)).astype(np.int8), **wq),
        "b": Tensor("b", (outputs,), "int32", quant_axis=0, bits=32,
                    data=np.zeros(outputs, np.int32), **wq),
        "y": Tensor("y", (1, outputs), **q),
    }
    return IntGraph(t, [Op("FULLY_CONNECTED", ["x", "w", "b"], ["y"], {"act": "NONE"})], ["x"], ["y"])


def test_every_board_is_complete_and_json_ready():
    assert set(BOARDS) == {"jetson-orin-nano", "rpi4", "stm32h747", "esp32s3", "gd32vf103",
                           "mps2-an500", "host"}
    for key, b in BOARDS.items():
        assert b.name == key and b.clock_hz > 0 and b.runtime in ("c", "litert", "tensorrt")
        assert b.int8_cycles_per_mac > 0 and "ESTIMATE" in b.cycles_per_mac_assumption
        assert "ESTIMATE" in b.code_size_assumption and b.runtime_code_bytes > 0
        assert 0 < b.model_ram_bytes and all(r.model_bytes <= r.size_bytes for r in b.ram_regions)
        assert b.toolchain.compiler and b.internal_flash_bytes > 0
        d = json.loads(json.dumps(b.to_dict()))
        assert d["model_ram_bytes"] == b.model_ram_bytes and d["name"] == key
    with pytest.raises(dataclasses.FrozenInstanceError):
        BOARDS["host"].clock_hz = 1


def test_datasheet_figures():
    h7 = get_board("stm32h747")
    assert (h7.core, h7.clock_hz) == ("cortex-m7", 480_000_000)
    assert 1000 * KiB <= h7.ram_bytes <= 1100 * KiB  # "1 MB" incl. TCMs
    assert (h7.internal_flash_bytes, h7.external_flash_bytes) == (2 * MiB, 128 * MiB)
    assert h7.model_ram_bytes == 448 * KiB
    s3 = get_board("esp32s3")
    assert s3.clock_hz == 240_000_000 and s3.internal_flash_bytes == 16 * MiB
    assert [r.size_bytes for r in s3.ram_regions] == [512 * KiB, 8 * MiB]
    gd = get_board("gd32vf103")
    assert (gd.arch, gd.clock_hz, gd.ram_bytes, gd.internal_flash_bytes) == (
        "rv32imac", 108_000_000, 32 * KiB, 128 * KiB)
    an500 = get_board("mps2-an500")
    # QEMU hw/arm/mps2.c: ZBT SSRAM2&3 4 MB at 0x20000000, PSRAM 16 MB at 0x60000000
    assert [(r.origin, r.size_bytes) for r in an500.ram_regions] == [
        (0x2000_0000, 4 * MiB), (0x6000_0000, 16 * MiB)]
    assert an500.internal_flash_bytes == 4 * MiB  # ZBT SSRAM1 holds the image
    assert get_board("rpi4").runtime == "litert"
    assert get_board("jetson-orin-nano").runtime == "tensorrt"


def test_unknown_board_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        get_board("cortexm")
    message = str(err.value)
    assert "unknown board 'cortexm'" in message
    for name in BOARDS:
        assert name in message
    with pytest.raises(ConfigError, match="did you mean 'esp32s3'"):
        get_board("esp32-s3")
    assert get_board(" STM32H747 ") is BOARDS["stm32h747"]


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_toolchain_flags_compile_the_runtime(name, tmp_path):
    board = get_board(name)
    if shutil.which(board.toolchain.compiler) is None:
        # the set-up installs every cross compiler Debian packages; Espressif's xtensa toolchain is
        # not among them (it comes with ESP-IDF), so only that one can be missing on CI
        pytest.skip(f"{board.toolchain.compiler} is not installed (not packaged for Debian; it ships with ESP-IDF)")
    # es_blob.c needs only freestanding headers; -ffreestanding also serves toolchains
    # installed without a C library (riscv64-unknown-elf-gcc here has none)
    cmd = [board.toolchain.compiler, *board.toolchain.flags, "-ffreestanding", "-std=c99", "-Wall",
           "-Wextra", "-Werror", "-pedantic", "-Os", "-c", str(RUNTIME / "es_blob.c"),
           "-o", str(tmp_path / "es_blob.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_emulator_machine_exists_in_qemu():
    board = get_board("mps2-an500")
    exe = board.emulator[0]
    if shutil.which(exe) is None:
        pytest.skip(f"{exe} is not installed here")
    machines = subprocess.run([exe, "-machine", "help"], capture_output=True, text=True).stdout
    assert board.emulator[board.emulator.index("-machine") + 1] in machines
    assert "{image}" in board.emulator


def test_fit_report_with_real_profiles():
    small = fc_graph(64, 10)  # 640 + 40 bytes of weights, 640 MACs
    h7 = get_board("stm32h747")
    r = fit_report(small, h7, arena_bytes=182 * KiB)
    assert r.fits and r.arena_region == "axi_sram" and r.weights_location == "internal flash"
    assert r.latency_estimate_s == pytest.approx(640 * 3.0 / 480e6)
    assert fit_report(small, h7.to_dict(), arena_bytes=182 * KiB).to_dict() == r.to_dict()
    gd = fit_report(small, get_board("gd32vf103"), arena_bytes=182 * KiB, runtime_state_bytes=0)
    assert not gd.fits
    assert gd.messages[0].startswith(
        "arena needs 182 KiB + runtime state 0 B, board gd32vf103 has 24 KiB free (missing 158 KiB)")
    big = fc_graph(2048, 1024)  # 2 MiB + 4 KiB of weights: too big for the H7's internal flash
    r = fit_report(big, h7, arena_bytes=16 * KiB)
    assert r.fits and r.weights_location == "external flash"
