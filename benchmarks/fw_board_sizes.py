"""Flash and RAM per board for ResNet-8, a small ResNet-18 and NanoDet-MCU (issue #5 benchmark).

For each model: FP32 ONNX (random init, or a run's int8 variant) -> int8 PTQ on random
calibration images -> export per board -> targets.build.build_firmware -> sizes from the ELF
(or the fit report where the board cannot be built here / the model does not fit). Weight values
do not change sizes, so random initialisation is enough for this table.

    .venv/bin/python benchmarks/fw_board_sizes.py [--out DIR] [--r8-run runs/bench-r8-30ep]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from edgesmith.errors import EdgeSmithError
from firmware_export.export import export_model, load_model
from targets.boards import get_board
from targets.build import build_firmware

BOARDS = ("host", "mps2-an500", "stm32h747", "gd32vf103", "esp32s3")


def _qdq_from_zoo(name: str, size: int, classes: int, width: float, work: Path) -> Path:
    import torch  # noqa: PLC0415

    from quantize.ptq import quantize_int8  # noqa: PLC0415
    from trainer.export import export_onnx  # noqa: PLC0415
    from trainer.models import build_model  # noqa: PLC0415

    torch.manual_seed(0)
    model = build_model(name, num_classes=classes, width_mult=width).eval()
    fp32 = work / f"{name}.onnx"
    if name.startswith("nanodet"):
        from trainer.detection.export import export_detector_onnx  # noqa: PLC0415
        from trainer.detection.postprocess_np import PostprocessParams  # noqa: PLC0415

        params = PostprocessParams(num_classes=classes, strides=tuple(model.strides),
                                   reg_max=int(getattr(model.spec, "reg_max", 7)), input_hw=(size, size))
        export_detector_onnx(model, fp32, params)
    else:
        export_onnx(model, fp32, input_shape=(3, size, size))
    rng = np.random.default_rng(0)
    import onnx  # noqa: PLC0415

    input_name = onnx.load(str(fp32)).graph.input[0].name
    feeds = [{input_name: rng.normal(0, 1, (8, 3, size, size)).astype(np.float32)} for _ in range(2)]
    out = work / f"{name}-int8.onnx"
    quantize_int8(fp32, out, feeds)
    return out


def board_row(qdq: Path, board: str, work: Path) -> dict:
    graph = load_model(qdq)
    section = ".extflash" if board == "stm32h747" else None
    exp = work / f"export-{qdq.stem}-{board}"
    res = export_model(graph, exp, get_board(board), formats=["c", "blob"], weights_section=section)
    fit = res.fit.to_dict()
    row = {"board": board, "arena_bytes": res.arena_bytes, "weights_bytes": fit["weight_bytes"],
           "blob_bytes": (exp / "weights.bin").stat().st_size, "fit_fits": fit["fits"]}
    try:
        img = build_firmware(exp, board, work / f"fw-{qdq.stem}-{board}")
        row.update(built=board != "esp32s3" or img.image is not None, flash_bytes=img.flash_bytes,
                   ram_bytes=img.ram_bytes, sections={k: v for k, v in img.sections.items() if not k.startswith(".debug")})
    except EdgeSmithError as exc:
        row.update(built=False, error=str(exc).splitlines()[0])
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--r8-run", default="runs/bench-r8-30ep")
    parser.add_argument("--boards", default=",".join(BOARDS))
    args = parser.parse_args(argv)
    work = Path(args.out or tempfile.mkdtemp(prefix="fw-sizes-"))
    work.mkdir(parents=True, exist_ok=True)
    models = {}
    r8 = Path(args.r8_run) / "variants" / "int8-minmax.onnx"
    models["resnet8"] = r8 if r8.is_file() else _qdq_from_zoo("resnet8", 32, 10, 1.0, work)
    models["resnet18-w0.25"] = _qdq_from_zoo("resnet18", 32, 10, 0.25, work)
    models["nanodet-mcu"] = _qdq_from_zoo("nanodet-mcu", 160, 1, 1.0, work)
    table = {}
    for name, qdq in models.items():
        table[name] = [board_row(qdq, b, work) for b in args.boards.split(",")]
        for row in table[name]:
            print(name, json.dumps({k: v for k, v in row.items() if k != "sections"}))
    (work / "fw_board_sizes.json").write_text(json.dumps(table, indent=2))
    print("written", work / "fw_board_sizes.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
