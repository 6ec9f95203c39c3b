#!/usr/bin/env bash
# Set up EdgeSmith in ./.venv: Debian packages (as root), a virtualenv, and the package
# with its test extras. Safe to run again: it only reinstalls when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# Debian packages the test suite needs (real components, not mocks).
APT_PACKAGES=(python3-venv gcc gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm gcc-riscv64-unknown-elf
              qemu-system-misc gcc-aarch64-linux-gnu mosquitto)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "setup: installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi

stamp=.venv/.edgesmith-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing EdgeSmith and its dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    # torch first and pinned: where a wheel of this version is on local disk pip takes it,
    # instead of resolving the open range in pyproject.toml to a multi-GB CUDA download.
    .venv/bin/python -m pip install -q "torch==${EDGESMITH_TORCH_VERSION:-2.13.0}"
    .venv/bin/python -m pip install -q -e ".[dev]"
    echo "$want" > "$stamp"
fi
