"""``edgesmith export``, ``edgesmith inspect`` and ``edgesmith boards``: firmware export from the CLI.

``export`` takes a run directory (its ``variants/<variant>.onnx``, default ``int8``) or any QDQ
ONNX / int8 ``.tflite`` file, and a board from ``targets.boards``; it writes into
``RUN_DIR/targets/<board>/`` (or ``--out``) and records the files in the run's manifest.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgesmith.errors import ConfigError, ExportError
from edgesmith.manifest import load_manifest, now_iso, record_artifact, write_manifest

VARIANTS_DIR = "variants"


def resolve_model(target: str | Path, variant: str | None) -> tuple[Path, Path | None]:
    """(model file, run directory or None) for a run directory + variant, or a model file."""
    target = Path(target).expanduser()
    if target.is_dir():
        name = variant or "int8"
        path = target / VARIANTS_DIR / f"{name}.onnx"
        if not path.is_file():
            have = sorted(p.stem for p in (target / VARIANTS_DIR).glob("*.onnx"))
            hint = f"it has: {', '.join(have)}" if have else "it has none yet: run edgesmith quantize " + str(target)
            raise ConfigError(f"run {target} has no variant {name!r} ({path}); {hint}")
        return path, target
    if variant:
        raise ConfigError("--variant picks a file inside a run directory; with a model file, pass the file alone")
    if not target.is_file():
        raise ConfigError(f"{target} is neither a run directory nor a model file (.onnx QDQ or int8 .tflite)")
    return target, None


def export(target: str, board_name: str, *, variant: str | None = None, formats: str | None = None,
           out: str | None = None, weights_section: str | None = None, signing_key_path: str | None = None,
           log: Callable[[str], None] = print):
    """Compile the model for ``board_name``; returns firmware_export.export.ExportResult."""
    from firmware_export.export import export_model, load_model, parse_formats  # noqa: PLC0415
    from targets.boards import get_board  # noqa: PLC0415

    board = get_board(board_name)
    fmts = parse_formats(formats)
    model_path, run_dir = resolve_model(target, variant)
    if out:
        out_dir = Path(out)
    elif run_dir is not None:
        out_dir = run_dir / "targets" / board.name
    else:
        out_dir = model_path.parent / f"{model_path.stem}-{board.name}"
    key = None
    if signing_key_path:
        from firmware_export.blob import load_private_key  # noqa: PLC0415

        key = load_private_key(signing_key_path)
    if board.runtime != "c" and "c" in fmts and formats is not None:
        log(f"note: {board.name} runs {board.runtime}; the C sources are written anyway")
    graph = load_model(model_path)
    # a detector run: the C model also decodes boxes and runs NMS on the device
    postprocess = run_dir / "postprocess.json" if run_dir is not None else None
    if postprocess is not None and not postprocess.is_file():
        postprocess = None
    result = export_model(graph, out_dir, board, formats=fmts, weights_section=weights_section, signing_key=key,
                          postprocess=postprocess)
    if run_dir is not None:
        _record(run_dir, board.name, model_path, result)
    return result


def _record(run_dir: Path, board: str, model_path: Path, result) -> None:
    manifest = load_manifest(run_dir)
    for fmt, paths in result.files.items():
        for p in paths:
            if p.is_file() and p.resolve().is_relative_to(run_dir.resolve()):
                rel = str(p.resolve().relative_to(run_dir.resolve()))
                record_artifact(manifest, run_dir, rel, kind=f"target_{fmt}", board=board,
                                source=str(model_path.relative_to(run_dir)), graph_hash=result.graph_hash)
    manifest["lineage"].append({"stage": "export", "time": now_iso(), "board": board,
                                "source": str(model_path.relative_to(run_dir)), "fits": result.fit.fits})
    write_manifest(run_dir, manifest)


def inspect(path: str | Path) -> str:
    """A text report of a QDQ ONNX or int8 .tflite: ops, tensors, bytes, MACs, arena."""
    from firmware_export.analysis import analyse, format_table  # noqa: PLC0415
    from firmware_export.c_emitter import strip_float_edges  # noqa: PLC0415
    from firmware_export.export import load_model  # noqa: PLC0415
    from firmware_export.planner import plan_memory  # noqa: PLC0415

    graph = load_model(path)
    stats = analyse(graph)
    try:
        arena = f"{plan_memory(strip_float_edges(graph)).arena_bytes:,} bytes"
    except ExportError as e:
        arena = f"not planned ({e})"
    return (f"{path}: {len(graph.ops)} ops, {len(graph.tensors)} tensors, graph hash {graph.graph_hash()[:16]}\n"
            f"{format_table(stats)}\nstatic arena (activations): {arena}")


def boards_table() -> str:
    from targets.boards import BOARDS  # noqa: PLC0415

    rows = [f"{'board':<18} {'core':<22} {'clock':>9} {'RAM':>10} {'flash':>10} {'ext. flash':>11} "
            f"{'toolchain':<22} {'emulator':<16} runtime"]
    for b in BOARDS.values():
        emu = b.emulator[0] if b.emulator else "-"
        rows.append(f"{b.name:<18} {b.core:<22} {b.clock_hz / 1e6:7.0f}MHz {_kib(b.ram_bytes):>10} "
                    f"{_kib(b.internal_flash_bytes):>10} {_kib(b.external_flash_bytes):>11} "
                    f"{b.toolchain.compiler:<22} {emu:<16} {b.runtime}")
    return "\n".join(rows)


def _kib(n: int) -> str:
    if n == 0:
        return "-"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"
