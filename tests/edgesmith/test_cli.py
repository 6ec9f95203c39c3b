"""The edgesmith CLI end to end: train → run directory → eval; errors; signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgesmith.cli import main
from edgesmith.manifest import load_manifest, sha256_file

TRAIN_ARGS = ["--model", "resnet8", "--width-mult", "0.5", "--batch-size", "16", "--device", "cpu", "--no-progress"]


@pytest.fixture
def trained_run(tiny_cifar, tmp_path):
    run = tmp_path / "run"
    rc = main(["train", "--data", str(tiny_cifar), "--epochs", "2", "--out", str(run), *TRAIN_ARGS,
               "--set", "optim.lr=0.05"])
    assert rc == 0
    return run


def test_train_writes_a_complete_run_directory(trained_run, capsys):
    for name in ("checkpoint.safetensors", "optimizer.safetensors", "model.onnx", "metrics.jsonl", "manifest.json"):
        assert (trained_run / name).is_file(), name
    m = load_manifest(trained_run)
    assert m["status"] == "trained"
    assert m["config"]["optim"]["lr"] == 0.05 and m["config"]["model"]["name"] == "resnet8"
    for name, entry in m["artifacts"].items():
        assert entry["sha256"] == sha256_file(trained_run / name), name
    parity = m["artifacts"]["model.onnx"]["parity"]
    assert parity["passed"] and parity["max_abs_diff"] < 1e-3 and parity["top1_agreement"] >= 0.99
    assert {"torch", "onnxruntime", "numpy", "python"} <= set(m["packages"])
    assert m["model"]["classes"][0] == "airplane" and len(m["model"]["preprocessing"]["mean"]) == 3
    assert m["metrics"]["train"]["val"]["num_images"] == 32


def test_eval_pytorch_and_onnx_agree(trained_run, tiny_cifar, capsys):
    capsys.readouterr()
    assert main(["eval", str(trained_run), "--data", str(tiny_cifar), "--device", "cpu", "--json"]) == 0
    torch_report = json.loads(capsys.readouterr().out)
    assert main(["eval", str(trained_run), "--onnx", str(trained_run / "model.onnx"), "--json"]) == 0
    onnx_report = json.loads(capsys.readouterr().out)
    assert torch_report["num_images"] == onnx_report["num_images"] == 32
    assert torch_report["top1"] == onnx_report["top1"]
    assert set(torch_report["per_class"]) == {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                               "horse", "ship", "truck"}
    assert main(["eval", str(trained_run), "--device", "cpu"]) == 0  # table output, data from the run
    out = capsys.readouterr().out
    assert "top-1:" in out and "airplane" in out


def test_eval_any_onnx_without_run_dir(trained_run, tiny_cifar, capsys):
    m = load_manifest(trained_run)["model"]["preprocessing"]
    capsys.readouterr()
    rc = main(["eval", "--onnx", str(trained_run / "model.onnx"), "--data", str(tiny_cifar), "--json",
               "--mean", ",".join(map(str, m["mean"])), "--std", ",".join(map(str, m["std"]))])
    assert rc == 0
    bare = json.loads(capsys.readouterr().out)
    main(["eval", str(trained_run), "--onnx", str(trained_run / "model.onnx"), "--json"])
    assert bare["top1"] == json.loads(capsys.readouterr().out)["top1"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "resnet50"], "unknown model 'resnet50'; choose from: nanodet-m, nanodet-mcu, nanodet-plus-m, resnet18, resnet8, shufflenetv2"),
        (["train", "--set", "optim.lrr=1"], "unknown config key 'optim.lrr'"),
        (["train", "--set", "epochs=abc"], "epochs: expected an integer, got str 'abc'"),
        (["train", "--set", "optim.name=adam"], "choose from: sgd, adamw"),
        (["train", "--config", "/nonexistent.yaml"], "config file not found"),
        (["eval"], "eval needs a RUN_DIR"),
        (["eval", "/nonexistent-run"], "/nonexistent-run"),
        (["eval", "--onnx", "x.onnx", "--mean", "1,2"], "--mean expects three comma-separated numbers"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_refuses_to_overwrite_a_run_and_resume_takes_no_new_settings(trained_run, capsys):
    assert main(["train", "--out", str(trained_run)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(trained_run), "--epochs", "9"]) == 2
    assert "remove --epochs" in capsys.readouterr().err


def test_sigterm_checkpoints_exits_130_and_resume_completes(tiny_cifar, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "edgesmith", "train", "--data", str(tiny_cifar), "--epochs", "60",
           "--out", str(run), *TRAIN_ARGS, "--set", "log_every=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and f"--resume {run}" in err
    m = load_manifest(run)
    assert m["status"] == "interrupted" and "model.onnx" not in m["artifacts"]
    # resume with fewer epochs left is not possible (config is fixed) — run it to the end
    done = subprocess.run([sys.executable, "-m", "edgesmith", "train", "--resume", str(run), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    m = load_manifest(run)
    assert m["status"] == "trained" and "model.onnx" in m["artifacts"]
    assert [e["interrupted"] for e in m["lineage"]] == [True, False]
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if '"type": "step"' in x]
    assert steps == list(range(1, 60 * 4 + 1))  # no step lost or repeated across the interruption


def test_large_image_folder_streams_through_workers_and_exports(tmp_path, capsys):
    """Images larger than CIFAR scale are not cached: DataLoader workers decode and resize them."""
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    root = tmp_path / "parts"
    for split, n in (("train", 8), ("val", 4)):
        for c, colour in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                arr = np.clip(rng.normal(colour, 40, (96, 120, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.jpg")
    from trainer.data import FileSplit, open_dataset

    assert isinstance(open_dataset(root, image_size=(48, 40)).train, FileSplit)
    run = tmp_path / "run"
    rc = main(["train", "--data", str(root), "--epochs", "2", "--out", str(run), "--model", "resnet8",
               "--batch-size", "8", "--device", "cpu", "--no-progress",
               "--set", "data.image_size=[48, 40]", "--set", "data.num_workers=1"])
    assert rc == 0, capsys.readouterr().err
    m = load_manifest(run)
    assert m["dataset"]["format"] == "imagefolder" and m["dataset"]["num_train"] == 24
    assert m["model"]["preprocessing"]["image_size"] == [48, 40]
    assert m["artifacts"]["model.onnx"]["parity"]["num_images"] == 12
    capsys.readouterr()
    assert main(["eval", str(run), "--onnx", str(run / "model.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 12
