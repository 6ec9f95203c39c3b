#!/usr/bin/env bash
# Quick start: set up, then run the pipeline on the built-in synthetic dataset (no download):
# train ResNet-8 -> INT8 (calibrated PTQ, QDQ ONNX) -> compare the variants -> export for the
# Cortex-M7 board (.tflite, C sources, weight blob, fit report). Extra arguments go to `edgesmith train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN=runs/quickstart-$(date +%Y%m%d-%H%M%S)   # a new run each time: earlier runs are never touched
.venv/bin/edgesmith train --config examples/configs/quickstart.yaml --out "$RUN" "$@"
.venv/bin/edgesmith quantize "$RUN" --int8
.venv/bin/edgesmith eval "$RUN" --variant all
.venv/bin/edgesmith export "$RUN" --target mps2-an500
