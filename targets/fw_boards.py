"""Bare-metal firmware builders used by :func:`targets.build.build_firmware`.

Each board compiles the app (``targets/firmware/es_*.c``), its HAL, startup code and linker
script together with the exported model, links with ``-nostdlib -lgcc`` (plus
``es_libc_min.c``: the RISC-V toolchain has no C library), then reads the section sizes from
the ELF and checks them against the board. A model that does not fit (the linker's region
overflow, or the size check) raises ExportError with the export's fit report.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

from edgesmith.errors import ConfigError, ExportError
from targets.boards import get_board

KiB = 1024


@dataclasses.dataclass(frozen=True)
class BareMetalBoard:
    """How to build one bare-metal target (the profile in targets.boards holds the hardware facts)."""

    name: str
    profile: str
    cc: str
    cpu_flags: tuple[str, ...]
    sources: tuple[str, ...]
    ldscript: str
    #: sections stored in (internal) flash / loaded image, and in RAM
    flash_sections: tuple[str, ...]
    ram_sections: tuple[str, ...]
    flash_limit: int
    ram_limit: int
    #: sections that live in external flash (checked against external_limit)
    external_sections: tuple[str, ...] = ()
    external_limit: int = 0
    #: more (label, sections, limit) checks, e.g. the arena's own RAM region
    extra_checks: tuple[tuple[str, tuple[str, ...], int], ...] = ()
    defines: tuple[str, ...] = ()
    weights_section: str | None = None
    opt: str = "-O2"
    note: str = ""


def _board_table() -> dict[str, BareMetalBoard]:
    mps2 = get_board("mps2-an500")
    h7 = get_board("stm32h747")
    gd = get_board("gd32vf103")
    return {
        "mps2-an500": BareMetalBoard(
            "mps2-an500", "mps2-an500", "arm-none-eabi-gcc", mps2.toolchain.flags,
            ("hal_mps2.c", "startup_cortexm.c"), "mps2_an500.ld",
            (".text", ".data"), (".data", ".bss", ".stack"),
            mps2.internal_flash_bytes, 4 * 1024 * KiB,
            note="QEMU: qemu-system-arm -M mps2-an500 -cpu cortex-m7 -nographic -kernel ELF "
                 "-serial tcp:127.0.0.1:PORT,server=on,wait=off (add -icount shift=0 for "
                 "instruction counts)"),
        "stm32h747": BareMetalBoard(
            "stm32h747", "stm32h747", "arm-none-eabi-gcc", h7.toolchain.flags,
            ("hal_stm32h747.c", "startup_cortexm.c"), "stm32h747.ld",
            (".isr_vector", ".text", ".rodata", ".data"), (".data", ".bss", ".stack"),
            1024 * KiB, 128 * KiB,  # bank 1 holds the image; bank 2 the slots. DTCM: data/stack
            external_sections=(".extflash",), external_limit=h7.external_flash_bytes,
            extra_checks=(("arena in AXI SRAM", (".axisram",), h7.ram_regions[0].model_bytes),),
            defines=("ES_ARENA_SECTION=\".axisram\"",),
            note="arena in AXI SRAM; weights in QSPI flash (.extflash at 0x90000000, memory-mapped) when "
                 "the model is exported with weights_section=\".extflash\", else in internal flash"),
        "gd32vf103": BareMetalBoard(
            "gd32vf103", "gd32vf103", "riscv64-unknown-elf-gcc", gd.toolchain.flags,
            ("hal_gd32vf103.c", "start_rv32.S"), "gd32vf103.ld",
            (".text", ".rodata", ".data"), (".data", ".bss", ".stack"),
            gd.internal_flash_bytes, 32 * KiB, opt="-Os",
            note="the whole model is compiled in; A/B slots need flash left over after the image"),
        "gd32vf103-qemu": BareMetalBoard(
            "gd32vf103-qemu", "gd32vf103", "riscv64-unknown-elf-gcc", gd.toolchain.flags,
            ("hal_sifive_e.c", "start_rv32.S"), "sifive_e.ld",
            (".text", ".rodata", ".data"), (".data", ".bss", ".stack"),
            512 * 1024 * KiB, 16 * KiB, opt="-Os",
            note="the same RV32IMAC code for qemu-system-riscv32 -M sifive_e (16 KiB RAM)"),
    }


def libgcc_path(cc: str, cpu_flags: tuple[str, ...]) -> str:
    """The multilib libgcc.a for these CPU flags. GCC 12 picks multilibs by exact -march, so
    ``rv32imac_zicsr`` would fall back to the rv64 default: ask without the Z extensions."""
    flags = [re.sub(r"^(-march=rv32[a-z]+)(_z\w+)+$", r"\1", f) for f in cpu_flags]
    proc = _run_cmd([cc, *flags, "-print-libgcc-file-name"])
    path = proc.stdout.strip()
    return path if path and Path(path).is_file() else "-lgcc"


def _run_cmd(cmd: list[str]):
    import subprocess  # noqa: PLC0415

    return subprocess.run(cmd, capture_output=True, text=True)


def _sections(size_tool: str, elf: Path) -> dict[str, int]:
    from targets.build import elf_sizes  # noqa: PLC0415

    return elf_sizes(size_tool, elf)


def build_bare_metal(spec: BareMetalBoard, export_dir: Path, out_dir: Path, defines: tuple[str, ...] = ()):
    """Compile, link and size-check ``spec`` with the model in ``export_dir``; ``defines`` are
    extra ``-D`` values (the public key of a signed-blobs-only build)."""
    from targets.build import (FIRMWARE_DIR, FirmwareImage, _run, app_sources,  # noqa: PLC0415
                               compile_and_link, fit_summary, model_sources)

    cc = shutil.which(spec.cc)
    if cc is None:
        raise ExportError(f"{spec.cc} is not installed; it builds the {spec.name} firmware "
                          f"(Debian: apt install {'gcc-arm-none-eabi' if 'arm' in spec.cc else 'gcc-riscv64-unknown-elf'})")
    prefix = spec.cc[: -len("gcc")]
    out_dir.mkdir(parents=True, exist_ok=True)
    elf = out_dir / f"edgesmith-fw-{spec.name}.elf"
    for stale in (elf, out_dir / f"edgesmith-fw-{spec.name}.bin", out_dir / "extflash.bin"):
        stale.unlink(missing_ok=True)  # never leave an old image next to a failed build
    c_dir = Path(export_dir) / "c"
    app = (app_sources(defines) + [FIRMWARE_DIR / s for s in spec.sources]
           + [FIRMWARE_DIR / "es_libc_min.c"])
    _check_weights_section(c_dir, spec)
    compile_flags = [*spec.cpu_flags, spec.opt, "-g", "-ffunction-sections", "-fdata-sections",
                     "-ffreestanding", "-fno-builtin", *(f"-D{d}" for d in (*spec.defines, *defines)),
                     "-I", str(FIRMWARE_DIR), "-I", str(c_dir)]
    link_flags = ["-nostdlib", "-nostartfiles", "-L", str(FIRMWARE_DIR), "-T", str(FIRMWARE_DIR / spec.ldscript),
                  "-Wl,--gc-sections", f"-Wl,-Map={out_dir / 'firmware.map'}", libgcc_path(cc, spec.cpu_flags)]
    try:
        compile_and_link(cc, app, model_sources(Path(export_dir)), compile_flags, link_flags, elf,
                         f"{spec.name} firmware build")
    except ExportError as exc:
        if re.search(r"overflowed by|will not fit in region", str(exc)):
            overflow = "; ".join(re.findall(r"region `?[\w.]+'? overflowed by \d+ bytes", str(exc)))
            raise ExportError(f"the model does not fit {spec.name}: the linker says {overflow or 'region overflow'}."
                              f"\nFit report:\n  {fit_summary(Path(export_dir))}\n"
                              "Use a smaller model (width multiplier, pruning, binary layers) or a bigger board."
                              ) from None
        raise
    sections = _sections(prefix + "size", elf)
    flash = sum(sections.get(s, 0) for s in spec.flash_sections)
    ram = sum(sections.get(s, 0) for s in spec.ram_sections) + sum(
        sections.get(n, 0) for _, names, _ in spec.extra_checks for n in names)
    external = sum(sections.get(s, 0) for s in spec.external_sections)
    problems = []
    if flash > spec.flash_limit:
        problems.append(f"flash: image needs {flash} bytes, {spec.name} has {spec.flash_limit}")
    core_ram = sum(sections.get(s, 0) for s in spec.ram_sections)
    if core_ram > spec.ram_limit:
        problems.append(f"RAM: data+bss+stack need {core_ram} bytes, {spec.name} has {spec.ram_limit}")
    for label, names, limit in spec.extra_checks:
        used = sum(sections.get(n, 0) for n in names)
        if used > limit:
            problems.append(f"{label}: {used} bytes, {spec.name} allows {limit}")
    if external > spec.external_limit:
        problems.append(f"external flash: {external} bytes, {spec.name} has {spec.external_limit}")
    if problems:
        elf.unlink(missing_ok=True)
        raise ExportError(f"the model does not fit {spec.name}: {'; '.join(problems)}.\nFit report:\n  "
                          f"{fit_summary(Path(export_dir))}")
    image = out_dir / f"edgesmith-fw-{spec.name}.bin"
    objcopy = shutil.which(prefix + "objcopy")
    if objcopy:
        extra = ["-R", ".extflash"] if spec.external_sections else []
        _run([objcopy, "-O", "binary", *extra, str(elf), str(image)], "objcopy")
        if spec.external_sections and external:
            _run([objcopy, "-O", "binary", "-j", ".extflash", str(elf), str(out_dir / "extflash.bin")], "objcopy")
    notes = [spec.note] if spec.note else []
    if external:
        notes.append(f"external flash image: {out_dir / 'extflash.bin'} ({external} bytes, at 0x90000000)")
    return FirmwareImage(spec.name, elf, image if objcopy else None, flash + external, ram,
                         spec.flash_limit, spec.ram_limit, notes, sections)


def _check_weights_section(c_dir: Path, spec: BareMetalBoard) -> None:
    """Boards with external weight flash need the model exported with that section."""
    if spec.weights_section is None:
        return
    header = (c_dir / "model.h").read_text()
    if f'MODEL_WEIGHTS_SECTION "{spec.weights_section}"' not in header:
        raise ExportError(f"{spec.name} keeps weights in external flash: export the model with "
                          f"weights_section='{spec.weights_section}' (edgesmith export --target {spec.name} does); "
                          f"{c_dir / 'model.h'} has none")


ESP_DIR = "esp32s3"
#: the app headers the component needs besides APP_SOURCES
APP_HEADERS = ("es_app.h", "es_app_internal.h", "es_hal.h", "es_proto.h", "es_reply.h", "es_sha256.h", "es_slots.h", "es_util.h")


def build_esp32s3(export_dir: Path, out_dir: Path, defines: tuple[str, ...] = ()):
    """An ESP-IDF project (example app + the ``edgesmith_fw`` component with the app and the
    model copied in) under ``out_dir/esp32s3-project``; built with ``idf.py build`` when ESP-IDF
    is installed, else left for the user to build. Size: the export's fit report (no Xtensa
    compiler here). ``defines`` may hold the public key (``ES_BLOB_PUBLIC_KEY=...``): it goes into
    the component as ``app/es_blob_key.h``, which its CMakeLists.txt force-includes, adding the
    Ed25519 verifier's sources."""
    import json  # noqa: PLC0415

    from targets.build import APP_SOURCES, FIRMWARE_DIR, FirmwareImage, _run, fit_summary  # noqa: PLC0415

    c_dir = Path(export_dir) / "c"
    from targets.build import model_sources  # noqa: PLC0415

    model_sources(Path(export_dir))  # refuses a folder without a C export
    fit_path = Path(export_dir) / "fit.json"
    fit = json.loads(fit_path.read_text()) if fit_path.is_file() else {}
    if fit and fit.get("board") == "esp32s3" and not fit.get("fits", True):
        raise ExportError(f"the model does not fit esp32s3.\nFit report:\n  {fit_summary(Path(export_dir))}")
    project = Path(out_dir) / "esp32s3-project"
    if project.exists():
        shutil.rmtree(project)
    shutil.copytree(FIRMWARE_DIR / ESP_DIR / "example", project)
    comp = project / "components" / "edgesmith_fw"
    shutil.copytree(FIRMWARE_DIR / ESP_DIR / "components" / "edgesmith_fw", comp)
    (comp / "app").mkdir()
    for name in (*APP_SOURCES, *APP_HEADERS):
        shutil.copyfile(FIRMWARE_DIR / name, comp / "app" / name)
    key = _write_blob_key_header(comp / "app", defines)
    shutil.copytree(c_dir, comp / "model", ignore=shutil.ignore_patterns("*.json"))
    # the example's top-level CMakeLists points at ../components; in the copy they sit inside
    cmake = project / "CMakeLists.txt"
    cmake.write_text(cmake.read_text().replace("${CMAKE_CURRENT_LIST_DIR}/../components",
                                               "${CMAKE_CURRENT_LIST_DIR}/components"))
    notes = [f"ESP-IDF project: {project}; build and flash with `idf.py set-target esp32s3 build` and "
             "`idf.py -p PORT flash` (or edgesmith flash --image with esptool)"]
    if key:
        notes.append("the device verifies blob signatures (public key in components/edgesmith_fw/app/es_blob_key.h)")
    elf, image = project, None
    if shutil.which("idf.py"):
        _run(["idf.py", "set-target", "esp32s3", "build"], "idf.py build", cwd=project)
        elf = project / "build" / "edgesmith_device.elf"
        image = project / "build" / "edgesmith_device.bin"
    else:
        notes.append("ESP-IDF (idf.py) is not installed here: the project was generated, not compiled; "
                     "flash/RAM figures are the export's fit-report estimates")
    profile = get_board("esp32s3")
    if fit.get("board") != "esp32s3":
        notes.append(f"the export was made for board {fit.get('board')!r}: export with --target esp32s3 "
                     "for this board's fit report")
    return FirmwareImage("esp32s3", elf, image, int(fit.get("flash_needed_bytes", 0)),
                         int(fit.get("ram_needed_bytes", 0)), profile.internal_flash_bytes,
                         profile.model_ram_bytes, notes, {})


def _builder(spec: BareMetalBoard):
    return lambda export_dir, out_dir, defines: build_bare_metal(spec, Path(export_dir), Path(out_dir), defines)


def _write_blob_key_header(app_dir: Path, defines: tuple[str, ...]) -> bool:
    """``es_blob_key.h`` + the verifier's sources into the component's app folder when ``defines``
    carries the public key; True if it did. Any other define is refused (the component has no
    place for it)."""
    from targets.build import FIRMWARE_DIR, SIGNATURE_SOURCES  # noqa: PLC0415

    key = [d for d in defines if d.startswith("ES_BLOB_PUBLIC_KEY=")]
    other = [d for d in defines if d not in key]
    if other:
        raise ConfigError(f"esp32s3 builds take no extra defines besides the public key, got {other}")
    if not key:
        return False
    for name in SIGNATURE_SOURCES:
        shutil.copyfile(FIRMWARE_DIR / name, app_dir / name)
        shutil.copyfile(FIRMWARE_DIR / name.replace(".c", ".h"), app_dir / name.replace(".c", ".h"))
    value = key[0].split("=", 1)[1]
    (app_dir / "es_blob_key.h").write_text(
        "/* Written by `edgesmith build --public-key`: this firmware runs only blobs signed by the\n"
        " * matching private key (es_app_update.c). components/edgesmith_fw/CMakeLists.txt force-includes it. */\n"
        "#ifndef ES_BLOB_KEY_H\n#define ES_BLOB_KEY_H\n"
        f"#define ES_BLOB_PUBLIC_KEY {value}\n#endif\n")
    return True


def _esp32s3_builder(export_dir, out_dir, defines: tuple[str, ...]):
    return build_esp32s3(Path(export_dir), Path(out_dir), defines)


BUILDERS = {name: _builder(spec) for name, spec in _board_table().items()}
BUILDERS["esp32s3"] = _esp32s3_builder
