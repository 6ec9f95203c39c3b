"""edgesmith run on a trained run (the tiny ResNet-8 of tests/conftest.py): quantize, then
``edgesmith run RUN_DIR --target host --input IMAGE`` exports, builds the host firmware, flashes
the run's blob over the pty, classifies the image on the device and compares with the reference
interpreter. (The mps2-an500 path boots QEMU the same way; test_tg_qemu_mps2.py covers QEMU.)
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest
from tg_device_env import have_gcc

from edgesmith import device


def _parser():
    p = argparse.ArgumentParser(prog="edgesmith")
    device.add_parsers(p.add_subparsers(dest="command"))
    return p


@pytest.mark.skipif(not have_gcc(), reason="gcc is not installed: no host firmware")
def test_tg_cli_build_and_run_host(run, tmp_path, capsys):
    """A trained run: quantize, then edgesmith run --target host on one of its images."""
    from edgesmith.cli import main
    from PIL import Image

    assert main(["quantize", str(run), "--calib-size", "16"]) == 0
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(image)
    args = _parser().parse_args(["run", str(run), "--target", "host", "--input", str(image)])
    assert device.COMMANDS["run"](args) == 0
    out = capsys.readouterr().out
    assert "prediction:" in out and "equals the reference interpreter's" in out
    assert (run / "targets" / "host" / "firmware").is_dir()
    assert (run / "targets" / "host" / "weights.bin").is_file()
