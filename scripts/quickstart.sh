#!/usr/bin/env bash
# Quick start: set up, then train ResNet-8 on the built-in synthetic dataset (no download)
# and export a parity-checked ONNX model. Extra arguments go to `edgesmith train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/edgesmith train --config examples/configs/quickstart.yaml "$@"
