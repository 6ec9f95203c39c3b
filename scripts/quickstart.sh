#!/usr/bin/env bash
# Quick start: set up, then run the whole pipeline on the built-in synthetic dataset (no download):
# train ResNet-8 -> INT8 (calibrated PTQ, QDQ ONNX) -> compare the variants -> export for the
# Cortex-M7 board (.tflite, C, weight blob, fit report) -> boot that board in QEMU, flash the
# weights over its UART and classify an image on it. Extra arguments go to `edgesmith train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN=runs/quickstart-$(date +%Y%m%d-%H%M%S)   # a new run each time: earlier runs are never touched
.venv/bin/edgesmith train --config examples/configs/quickstart.yaml --out "$RUN" "$@"
.venv/bin/edgesmith quantize "$RUN" --int8
.venv/bin/edgesmith eval "$RUN" --variant all
.venv/bin/edgesmith export "$RUN" --target mps2-an500
# one validation image of the synthetic set, as a PNG, to classify on the emulated device
.venv/bin/python - "$RUN/sample.png" <<'PY'
import sys
from PIL import Image
from trainer.data import open_dataset
ds = open_dataset("synthetic")
Image.fromarray(ds.val.images[0]).save(sys.argv[1])
print(f"sample image: {sys.argv[1]} (class {ds.classes[int(ds.val.labels[0])]})")
PY
.venv/bin/edgesmith run "$RUN" --target mps2-an500 --input "$RUN/sample.png"
