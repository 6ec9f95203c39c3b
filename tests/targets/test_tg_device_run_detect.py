"""``edgesmith run`` on a detector run: train a tiny nanodet-mcu (synthetic VOC, as
tests/edgesmith/test_cli_detect.py does), quantize, then ``edgesmith run RUN_DIR --target host
--input IMAGE`` exports with postprocess.json, builds the host firmware, flashes the blob, runs
DETECT and prints the detections (class names, original-image pixels) and "equals" when they
equal postprocess_np on the reference interpreter's outputs.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image
from tg_device_env import have_gcc

from conftest import copy_detector_run
from edgesmith.cli import main

pytestmark = pytest.mark.skipif(not have_gcc(), reason="gcc is not installed: no host firmware")


@pytest.fixture(scope="module")
def detector_run(pristine_detector_run, tmp_path_factory):
    data, run = copy_detector_run(pristine_detector_run, tmp_path_factory.mktemp("det_run"))
    assert main(["quantize", str(run), "--calib-size", "6"]) == 0
    return data, run


def test_tg_run_detector_prints_detections_equal_to_reference(detector_run, tmp_path, capsys):
    data, run = detector_run
    capsys.readouterr()
    # a non-square image: boxes come back through the letterbox into its 96 x 150 pixels
    src = np.asarray(Image.open(sorted((data / "JPEGImages").glob("*.png"))[0]).convert("RGB"))
    image = tmp_path / "wide.png"
    Image.fromarray(np.concatenate([src, src[:, :54]], axis=1)).save(image)
    assert main(["run", str(run), "--target", "host", "--input", str(image)]) == 0
    out = capsys.readouterr().out
    assert "device detection result equals the reference" in out
    head = re.search(r"(\d+) detections on host \(network (\d+) cycles, post-processing (\d+) cycles\)", out)
    assert head and int(head.group(1)) > 0 and int(head.group(3)) > 0
    rows = re.findall(r"^  (box|disc)\s+([\d.]+)\s+x1=([\d.]+) y1=([\d.]+) x2=([\d.]+) y2=([\d.]+)$", out, re.M)
    assert len(rows) == int(head.group(1))  # one line per detection, with the class name
    boxes = np.array([[float(v) for v in r[2:]] for r in rows])
    assert (boxes[:, 2] <= 150.0).all() and (boxes[:, 3] <= 96.0).all()  # original-image pixels
    assert (boxes[:, 2] > 64.0).any()  # beyond the 64 x 64 model input: the letterbox was undone
    header = (run / "targets" / "host" / "c" / "model.h").read_text()
    assert "#define MODEL_DETECT 1" in header


def test_tg_run_detector_unreadable_image_is_a_user_error(detector_run, tmp_path, capsys):
    _, run = detector_run
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["run", str(run), "--target", "host", "--input", str(bad)]) == 2
    assert "cannot read image" in capsys.readouterr().err
