"""Build the EdgeSmith firmware app for a board from an exported model folder.

``build_firmware(export_dir, board, out_dir) -> FirmwareImage`` compiles the app
(``targets/firmware/``: protocol, A/B slots, INFER) with the model's generated C
(``export_dir/c``, from ``firmware_export.export.export_model``) and the board's HAL, then
checks flash and RAM use against the board profile. A model that does not fit raises
:class:`edgesmith.errors.ExportError` carrying the fit report (``export_dir/fit.json``) instead
of leaving a broken image behind.

Boards (one entry each in ``BUILDERS``; see :mod:`targets.fw_boards` for the MCU ones):

* ``host``: native executable (``edgesmith-fw-host``) speaking the protocol on a pty, stdio or
  TCP, with a simulated flash file and power-cut injection (``targets/firmware/hal_host.c``).
* ``mps2-an500``, ``stm32h747``, ``gd32vf103``, ``gd32vf103-qemu`` (sifive_e memory map),
  ``esp32s3`` (an ESP-IDF component + example app, not compiled here).

``public_key`` (an Ed25519 public key: PEM or 32-byte raw file, ``cryptography`` object or 32
raw bytes) compiles the key into the firmware as ``ES_BLOB_PUBLIC_KEY``; that firmware then
runs only weight blobs signed with the matching private key (``targets/firmware/es_app_update.c``).
For ``esp32s3`` the key is written into the ESP-IDF component as ``app/es_blob_key.h``.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from edgesmith.errors import ConfigError, ExportError

FIRMWARE_DIR = Path(__file__).resolve().parent / "firmware"
#: the board-independent app sources
#: command frames the host build takes (INFO's max payload; protocol.md, Clarifications): a pty
#: moves a 1 KiB frame faster than the host can prepare one, so bursts of bigger WRITEs do better
HOST_MAX_COMMAND_PAYLOAD = 16384
APP_SOURCES = ("es_app.c", "es_app_update.c", "es_app_detect.c", "es_proto.c", "es_reply.c", "es_slots.c",
               "es_sha256.c")
#: added to the app when a public key is compiled in (the Ed25519 verifier)
SIGNATURE_SOURCES = ("es_ed25519.c", "es_sha512.c")
#: warnings are errors in the app (small enough to keep clean on every compiler); the model and
#: runtime from the export get the same warnings without -Werror (a warning there must not
#: stop a user's build)
STRICT_FLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror")
MODEL_FLAGS = ("-std=c99", "-Wall", "-Wextra")
HOST_EXE = "edgesmith-fw-host"
#: process exit status of the host build after an injected power cut
HOST_POWER_CUT_EXIT = 75


@dataclasses.dataclass
class FirmwareImage:
    """A built firmware: the executable/ELF, the raw image to flash (MCU), and its sizes."""

    board: str
    elf: Path
    #: raw binary for vendor flash tools (None for host and ESP-IDF projects)
    image: Path | None
    #: bytes of flash used (code + read-only data + initialised data), from the ELF
    flash_bytes: int
    #: bytes of RAM used statically (data + bss, arena included)
    ram_bytes: int
    #: limits the build checked against (0 = not checked)
    flash_limit_bytes: int
    ram_limit_bytes: int
    #: where the sizes came from and anything the user should know
    notes: list[str] = dataclasses.field(default_factory=list)
    #: per linker section sizes (bytes) where known
    sections: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["elf"] = str(self.elf)
        d["image"] = str(self.image) if self.image else None
        return d


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise ExportError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd[:3])} ...\n"
                          f"{proc.stderr.strip()[-3000:]}")
    return proc


def _model_dir(export_dir: Path) -> Path:
    c_dir = Path(export_dir) / "c"
    if not (c_dir / "model.h").is_file() or not (c_dir / "model.c").is_file():
        raise ExportError(f"{export_dir} has no c/model.h and c/model.c; run `edgesmith export RUN_DIR "
                          "--target BOARD` (or firmware_export.export.export_model with the 'c' format) first")
    return c_dir


def compile_and_link(cc: str, app: list[Path], model: list[Path], compile_flags: list[str],
                     link_flags: list[str], out: Path, what: str) -> None:
    """Compile the app (-Werror) and the model (warnings only) into ``out.parent/obj`` and link
    ``out``; ``link_flags`` go after the objects (libraries, linker script)."""
    obj = out.parent / "obj"
    if obj.exists():
        shutil.rmtree(obj)
    obj.mkdir(parents=True)
    _run([cc, *STRICT_FLAGS, *compile_flags, "-c", *map(str, app)], f"{what} (app)", cwd=obj)
    _run([cc, *MODEL_FLAGS, *compile_flags, "-c", *map(str, model)], f"{what} (model)", cwd=obj)
    objects = sorted(str(p) for p in obj.glob("*.o"))
    _run([cc, *compile_flags, "-o", str(out), *objects, *link_flags], f"{what} (link)")


def model_sources(export_dir: Path) -> list[Path]:
    """Every C file of the exported model (generated model + runtime copy)."""
    return sorted(_model_dir(export_dir).glob("*.c"))


def fit_summary(export_dir: Path) -> str:
    """The export's fit report as text (what the user reads when a model does not fit)."""
    path = Path(export_dir) / "fit.json"
    if not path.is_file():
        return "(no fit.json in the export folder)"
    fit = json.loads(path.read_text())
    lines = fit.get("messages") or []
    keys = ("board", "fits", "ram_needed_bytes", "ram_available_bytes", "flash_needed_bytes",
            "internal_flash_bytes", "external_flash_bytes", "weights_location")
    head = ", ".join(f"{k}={fit[k]}" for k in keys if k in fit)
    return head + ("\n  " + "\n  ".join(map(str, lines)) if lines else "")


def elf_sizes(size_tool: str, elf: Path) -> dict[str, int]:
    """Section name -> size from ``<prefix>size -A`` (sections with size 0 left out)."""
    proc = _run([size_tool, "-A", str(elf)], "size")
    sizes: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit() and int(parts[1]) > 0:
            sizes[parts[0]] = int(parts[1])
    return sizes


def public_key_defines(public_key: Any) -> tuple[str, ...]:
    """The compiler define that builds ``public_key`` into the firmware (``()`` for None):
    ``ES_BLOB_PUBLIC_KEY={0x..,...}``, the key's 32 raw bytes as a C initializer."""
    if public_key is None:
        return ()
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    from firmware_export.blob_keys import _public_key, load_public_key  # noqa: PLC0415

    key = load_public_key(public_key) if isinstance(public_key, (str, Path)) else _public_key(public_key)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return ("ES_BLOB_PUBLIC_KEY={" + ",".join(f"0x{b:02x}" for b in raw) + "}",)


def app_sources(defines: tuple[str, ...] = ()) -> list[Path]:
    """The board-independent app sources for a build with these extra defines: the verifier
    too when the public key is one of them."""
    names = list(APP_SOURCES)
    if any(d.startswith("ES_BLOB_PUBLIC_KEY=") for d in defines):
        names += SIGNATURE_SOURCES
    return [FIRMWARE_DIR / n for n in names]


# --------------------------------------------------------------------------- host

def build_host(export_dir: Path, out_dir: Path, *, sanitize: bool = False,
               defines: tuple[str, ...] = ()) -> FirmwareImage:
    """The native firmware (``edgesmith-fw-host``); ``sanitize`` adds ASan/UBSan for tests;
    ``defines`` are extra ``-D`` values (e.g. :func:`public_key_defines`)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise ExportError("no C compiler (gcc or cc) on PATH; install gcc to build the host firmware")
    c_dir = _model_dir(export_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / HOST_EXE
    app = app_sources(defines) + [FIRMWARE_DIR / "hal_host.c"]
    flags = ["-O2", "-g"]
    if sanitize:
        flags = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    flags += [f"-D{d}" for d in (f"ES_MAX_COMMAND_PAYLOAD={HOST_MAX_COMMAND_PAYLOAD}u", *defines)]
    compile_and_link(cc, app, model_sources(export_dir), [*flags, "-I", str(FIRMWARE_DIR), "-I", str(c_dir)],
                     [], exe, "host firmware build")
    sections = {}
    if shutil.which("size"):
        sections = elf_sizes("size", exe)
    flash = sum(v for k, v in sections.items() if k in (".text", ".rodata", ".data"))
    ram = sum(v for k, v in sections.items() if k in (".data", ".bss"))
    return FirmwareImage("host", exe, None, flash, ram, 0, 0,
                         [f"run: {exe} --pty --flash FLASH_FILE (see targets/firmware/hal_host.c)"],
                         sections)


# --------------------------------------------------------------------------- registry

def _builders() -> dict[str, Any]:
    from targets import fw_boards  # noqa: PLC0415  (MCU builders; kept in their own module)

    return {"host": lambda e, o, defines: build_host(e, o, defines=defines), **fw_boards.BUILDERS}


def firmware_boards() -> list[str]:
    """Boards ``build_firmware`` can build for."""
    return sorted(_builders())


def build_firmware(export_dir: str | Path, board: Any, out_dir: str | Path, *,
                   public_key: Any = None) -> FirmwareImage:
    """Compile the firmware app + the exported model for ``board`` (name or BoardProfile) into
    ``out_dir`` and check its size; raises ExportError (with the fit report) when it does not fit.
    With ``public_key`` the firmware requires blobs signed by its private key (module docstring)."""
    name = board if isinstance(board, str) else getattr(board, "name", None)
    builders = _builders()
    key = str(name).strip().lower()
    if key not in builders:
        raise ConfigError(f"no firmware build for board {name!r}; choose from: {', '.join(sorted(builders))}")
    # absolute paths: the compiler runs inside out_dir/obj, where relative -I paths would not resolve
    defines = public_key_defines(public_key)
    return builders[key](Path(export_dir).resolve(), Path(out_dir).resolve(), defines)


def main(argv: list[str] | None = None) -> int:
    """``python -m targets.build EXPORT_DIR --board BOARD --out DIR``: build and print the image as JSON."""
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m targets.build", description=main.__doc__)
    parser.add_argument("export_dir")
    parser.add_argument("--board", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--public-key", metavar="KEY.pem", help="require blobs signed by this key's private key")
    args = parser.parse_args(argv)
    image = build_firmware(args.export_dir, args.board, args.out, public_key=args.public_key)
    print(json.dumps(image.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["FirmwareImage", "HOST_EXE", "HOST_POWER_CUT_EXIT", "SIGNATURE_SOURCES", "app_sources",
           "build_firmware", "build_host", "firmware_boards", "fit_summary", "public_key_defines"]
