"""Board profiles as data: one frozen dataclass per board in the ``BOARDS`` dict.

A profile says what the fit report and the builders need: architecture and core, clock, RAM
regions (and how much of each a model's arena may use), internal and external flash, the C
toolchain, an emulator command, which runtime runs the model, and two ESTIMATES used for a
first latency and flash figure: int8 cycles per MAC and the runtime's code size. Estimates are
labelled as such, with the assumption written next to the number; measure on the device for
real figures.

Add a board by adding one entry to ``BOARDS``; ``get_board`` refuses unknown names and lists
the valid ones.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from edgesmith.errors import ConfigError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclasses.dataclass(frozen=True)
class RamRegion:
    """One contiguous RAM region; ``model_bytes`` is how much of it a model's arena may use."""

    name: str
    origin: int
    size_bytes: int
    model_bytes: int
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Toolchain:
    """C compiler and the flags that select the board's CPU/ABI (not optimisation policy)."""

    compiler: str
    flags: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class BoardProfile:
    """Everything EdgeSmith assumes about one board (see the module docstring)."""

    name: str
    description: str
    arch: str
    core: str
    #: clock of the unit that runs the model (the GPU for TensorRT boards)
    clock_hz: int
    #: in order of preference for the tensor arena (fastest first)
    ram_regions: tuple[RamRegion, ...]
    #: on Linux boards: the storage the model file lives on
    internal_flash_bytes: int
    external_flash_bytes: int
    toolchain: Toolchain
    #: argv with "{image}" where the firmware ELF goes, or None when there is none
    emulator: tuple[str, ...] | None
    #: "c" (EdgeSmith C runtime), "litert", "tensorrt"
    runtime: str
    os: str
    #: ESTIMATE: cycles per int8 MAC of a typical conv net on this board's runtime
    int8_cycles_per_mac: float
    cycles_per_mac_assumption: str
    #: ESTIMATE: flash taken by runtime + application code, before the model
    runtime_code_bytes: int
    code_size_assumption: str
    notes: str = ""

    @property
    def ram_bytes(self) -> int:
        return sum(r.size_bytes for r in self.ram_regions)

    @property
    def model_ram_bytes(self) -> int:
        """The largest arena this board can give a model (one region: arenas are contiguous)."""
        return max((r.model_bytes for r in self.ram_regions), default=0)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (what ``firmware_export.fit.fit_report`` accepts); JSON-serialisable."""
        d = dataclasses.asdict(self)
        d["ram_regions"] = [dataclasses.asdict(r) for r in self.ram_regions]
        d["toolchain"] = {"compiler": self.toolchain.compiler, "flags": list(self.toolchain.flags)}
        d["emulator"] = list(self.emulator) if self.emulator else None
        d["model_ram_bytes"] = self.model_ram_bytes
        return d


_M7_CPM = ("ESTIMATE assuming EdgeSmith's portable C int8 kernels at -O2 with caches on: "
           "~2 loads + 1 MLA + loop overhead per MAC; CMSIS-NN (SMLAD) would be ~0.5-1")

BOARDS: dict[str, BoardProfile] = {
    "stm32h747": BoardProfile(
        name="stm32h747",
        description="STM32H747 (e.g. STM32H747I-DISCO): Cortex-M7 480 MHz + Cortex-M4, bare metal",
        arch="armv7e-m", core="cortex-m7", clock_hz=480_000_000,
        # RM0399 memory map. The arena must be contiguous, so it goes in AXI SRAM; 64 KiB of it
        # stay with the application (serial frames, blob staging). DTCM holds stack and
        # globals; the D2 SRAMs belong to the Cortex-M4 core in the dual-core setup.
        ram_regions=(
            RamRegion("axi_sram", 0x2400_0000, 512 * KiB, 448 * KiB, "D1 domain, arena"),
            RamRegion("dtcm", 0x2000_0000, 128 * KiB, 0, "stack + application data"),
            RamRegion("itcm", 0x0000_0000, 64 * KiB, 0, "fast code"),
            RamRegion("sram1_3", 0x3000_0000, 288 * KiB, 0, "D2 domain, Cortex-M4 side"),
            RamRegion("sram4", 0x3800_0000, 64 * KiB, 0, "D3 domain, low-power peripherals"),
        ),
        internal_flash_bytes=2 * MiB, external_flash_bytes=128 * MiB,
        toolchain=Toolchain("arm-none-eabi-gcc", ("-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16",
                                                  "-mfloat-abi=hard")),
        emulator=None, runtime="c", os="bare-metal",
        int8_cycles_per_mac=3.0, cycles_per_mac_assumption=_M7_CPM,
        runtime_code_bytes=48 * KiB,
        code_size_assumption="ESTIMATE: C runtime kernels + HAL startup + serial protocol at -Os",
        notes="external flash is 2x64 MB QSPI (memory-mapped at 0x90000000 when enabled)",
    ),
    "mps2-an500": BoardProfile(
        name="mps2-an500",
        description="Arm MPS2+ AN500 FPGA image (Cortex-M7) under qemu-system-arm: the test board",
        arch="armv7e-m", core="cortex-m7",
        # QEMU's hw/arm/mps2.c: SYSCLK_FRQ 25 MHz. QEMU does not model cycles, so latency
        # estimates here describe the FPGA board, not the emulator's wall time.
        clock_hz=25_000_000,
        # Memory map from QEMU hw/arm/mps2.c (mps2_common_init comment, AN385/AN386/AN500 and
        # "AN500 only" sections), following Arm Application Note AN500: ZBT SSRAM1 4 MB at
        # 0x00000000 (code; mirrored at 0x00400000), ZBT SSRAM2&3 4 MB at 0x20000000 (data;
        # mirrored at 0x20400000), PSRAM 16 MB at 0x60000000. There is no flash: the image
        # (code + weights) is loaded into SSRAM1, so SSRAM1 is this profile's "flash".
        ram_regions=(
            RamRegion("zbt_ssram23", 0x2000_0000, 4 * MiB, 4 * MiB - 256 * KiB,
                      "data; 256 KiB stay with stack, heap and the application"),
            RamRegion("psram", 0x6000_0000, 16 * MiB, 16 * MiB, "slower on the FPGA board"),
        ),
        internal_flash_bytes=4 * MiB, external_flash_bytes=0,
        # soft-float: startup code then need not enable the FPU (CPACR) before main
        toolchain=Toolchain("arm-none-eabi-gcc", ("-mcpu=cortex-m7", "-mthumb",
                                                  "-mfloat-abi=soft")),
        emulator=("qemu-system-arm", "-machine", "mps2-an500", "-cpu", "cortex-m7", "-nographic",
                  "-kernel", "{image}"),
        runtime="c", os="bare-metal",
        int8_cycles_per_mac=3.0, cycles_per_mac_assumption=_M7_CPM,
        runtime_code_bytes=32 * KiB,
        code_size_assumption="ESTIMATE: C runtime kernels + startup + UART protocol at -Os",
    ),
    "esp32s3": BoardProfile(
        name="esp32s3",
        description="ESP32-S3 (e.g. ESP32-S3-DevKitC-1 N16R8): dual Xtensa LX7 240 MHz, ESP-IDF",
        arch="xtensa-lx7", core="lx7", clock_hz=240_000_000,
        ram_regions=(
            RamRegion("internal_sram", 0x3FC8_8000, 512 * KiB, 192 * KiB,
                      "ESP-IDF, caches and drivers keep the rest"),
            RamRegion("psram", 0x3C00_0000, 8 * MiB, 6 * MiB, "octal PSRAM, slower; via cache"),
        ),
        internal_flash_bytes=16 * MiB, external_flash_bytes=0,
        toolchain=Toolchain("xtensa-esp32s3-elf-gcc", ("-mlongcalls",)),
        emulator=None, runtime="c", os="freertos",
        int8_cycles_per_mac=4.0,
        cycles_per_mac_assumption=("ESTIMATE assuming portable C int8 kernels without the LX7 "
                                   "SIMD (esp-nn would be ~0.5-1); arena in internal SRAM"),
        runtime_code_bytes=256 * KiB,
        code_size_assumption="ESTIMATE: ESP-IDF app (FreeRTOS, UART, no Wi-Fi) + C runtime",
        notes="flash is the module's SPI flash; weights can stay memory-mapped from it",
    ),
    "gd32vf103": BoardProfile(
        name="gd32vf103",
        description="GigaDevice GD32VF103 (e.g. Longan Nano): RISC-V RV32IMAC 108 MHz",
        arch="rv32imac", core="bumblebee", clock_hz=108_000_000,
        ram_regions=(
            RamRegion("sram", 0x2000_0000, 32 * KiB, 24 * KiB,
                      "8 KiB stay with stack and application"),
        ),
        internal_flash_bytes=128 * KiB, external_flash_bytes=0,
        # Debian's riscv64-unknown-elf toolchain ships no C library: build freestanding, link -lgcc
        toolchain=Toolchain("riscv64-unknown-elf-gcc", ("-march=rv32imac_zicsr", "-mabi=ilp32",
                                                        "-mcmodel=medlow", "-ffreestanding")),
        # QEMU has no GD32VF103 machine (sifive_e is a different memory map); run on hardware.
        emulator=None, runtime="c", os="bare-metal",
        int8_cycles_per_mac=6.0,
        cycles_per_mac_assumption=("ESTIMATE assuming portable C int8 kernels, no SIMD or DSP "
                                   "extension, flash wait states on weight reads"),
        runtime_code_bytes=16 * KiB,
        code_size_assumption="ESTIMATE: C runtime kernels used by a small CNN + startup at -Os",
    ),
    "rpi4": BoardProfile(
        name="rpi4",
        description="Raspberry Pi 4 Model B (4 GB): 4x Cortex-A72 1.5 GHz, Linux arm64, LiteRT",
        arch="aarch64", core="cortex-a72", clock_hz=1_500_000_000,
        ram_regions=(RamRegion("dram", 0x0, 4 * GiB, 2 * GiB, "LPDDR4 shared with Linux"),),
        internal_flash_bytes=32 * 1000**3, external_flash_bytes=0,
        toolchain=Toolchain("aarch64-linux-gnu-gcc", ("-march=armv8-a+crc", "-mtune=cortex-a72")),
        emulator=None, runtime="litert", os="linux",
        int8_cycles_per_mac=0.1,
        cycles_per_mac_assumption=("ESTIMATE assuming LiteRT with XNNPACK int8 on 4 threads "
                                   "(MobileNet-class layers, NEON without dot-product)"),
        runtime_code_bytes=8 * MiB,
        code_size_assumption="ESTIMATE: ai-edge-litert wheel's native library",
        notes="'flash' is the 32 GB SD card holding the root file system",
    ),
    "jetson-orin-nano": BoardProfile(
        name="jetson-orin-nano",
        description="NVIDIA Jetson Orin Nano 8 GB: Ampere GPU 1024 cores, 6x Cortex-A78AE, TensorRT",
        arch="aarch64", core="ampere-gpu", clock_hz=625_000_000,
        ram_regions=(RamRegion("lpddr5", 0x0, 8 * GiB, 4 * GiB, "shared by CPU and GPU"),),
        internal_flash_bytes=64 * 1000**3, external_flash_bytes=0,
        toolchain=Toolchain("aarch64-linux-gnu-gcc", ("-march=armv8.2-a", "-mtune=cortex-a78ae")),
        emulator=None, runtime="tensorrt", os="linux",
        int8_cycles_per_mac=2.5e-4,
        cycles_per_mac_assumption=("ESTIMATE: 20 dense INT8 TOPS (10 TMAC/s) at 625 MHz GPU "
                                   "clock is 16000 MAC/cycle peak; small vision nets reach ~25%"),
        runtime_code_bytes=1 * GiB,
        code_size_assumption="ESTIMATE: TensorRT + CUDA libraries from JetPack",
        notes="'flash' is the 64 GB microSD/NVMe root file system",
    ),
    "host": BoardProfile(
        name="host",
        description="This computer: native build of the C runtime (tests, development)",
        arch="native", core="native", clock_hz=3_000_000_000,
        ram_regions=(RamRegion("dram", 0x0, 8 * GiB, 4 * GiB, "assumed; not probed"),),
        internal_flash_bytes=64 * 1000**3, external_flash_bytes=0,
        toolchain=Toolchain("gcc", ("-std=c99",)),
        emulator=None, runtime="c", os="native",
        int8_cycles_per_mac=0.5,
        cycles_per_mac_assumption=("ESTIMATE assuming portable C int8 kernels at -O2 on a "
                                   "3 GHz x86-64/arm64 core with compiler auto-vectorisation"),
        runtime_code_bytes=64 * KiB,
        code_size_assumption="ESTIMATE: C runtime object code on a 64-bit host",
    ),
}


def board_names() -> list[str]:
    """Every known board name, sorted."""
    return sorted(BOARDS)


def get_board(name: str) -> BoardProfile:
    """The profile called ``name`` (case-insensitive); unknown names list the valid ones."""
    key = str(name).strip().lower()
    if key in BOARDS:
        return BOARDS[key]
    close = difflib.get_close_matches(key, BOARDS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown board {name!r}{hint}; choose from: {', '.join(board_names())}")
