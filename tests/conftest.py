"""Shared fixtures: tiny datasets written in real formats by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def write_cifar_binary(root: Path, n_train: int = 64, n_test: int = 32, seed: int = 0, learnable: bool = True) -> Path:
    """A CIFAR-10 binary-version folder (3073-byte records) with ``n_train`` + ``n_test`` images.

    With ``learnable`` each class gets its own mean colour, so a few steps of
    training visibly lower the loss.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)

    def records(n: int) -> bytes:
        labels = rng.integers(0, 10, n).astype(np.uint8)
        pix = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.int32)
        if learnable:
            colours = (np.arange(30).reshape(10, 3) * 37) % 256
            pix = (pix // 2 + colours[labels][:, :, None, None] // 2).astype(np.int32)
        rec = np.concatenate([labels[:, None], pix.reshape(n, -1).astype(np.uint8)], axis=1)
        return rec.astype(np.uint8).tobytes()

    (folder / "data_batch_1.bin").write_bytes(records(n_train))
    (folder / "test_batch.bin").write_bytes(records(n_test))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n")
    return folder


def session_tmpdir(prefix: str) -> Path:
    """A temporary folder for module-level test caches, removed when the test process exits."""
    import atexit
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


@pytest.fixture
def tiny_cifar(tmp_path_factory) -> Path:
    return write_cifar_binary(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own dataset cache, never the user's ~/.cache."""
    monkeypatch.setenv("EDGESMITH_CACHE", str(tmp_path_factory.mktemp("cache")))


TINY_TRAIN = ["--model", "resnet8", "--width-mult", "0.5", "--batch-size", "16", "--device", "cpu", "--no-progress",
              "--epochs", "1"]


@pytest.fixture(scope="session")
def pristine_run(tmp_path_factory):
    """ResNet-8 (x0.5) trained one epoch on a 96-image CIFAR-format set (checkpoint, model.onnx, manifest).

    Shared by the stage tests: never modify it, copy it (the ``run`` fixture).
    """
    from edgesmith.cli import main

    root = tmp_path_factory.mktemp("pristine")
    data = write_cifar_binary(root / "data", n_train=96, n_test=32)
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGESMITH_CACHE", str(root / "cache"))
    run = root / "run"
    assert main(["train", "--data", str(data), "--out", str(run), *TINY_TRAIN]) == 0
    yield run
    mp.undo()


def train_tiny_detector(root: Path, *, model: str = "nanodet-mcu", n: int = 6, seed: int = 3) -> tuple[Path, Path]:
    """A detector run trained 2 epochs on ``n`` synthetic VOC images at 64x64: (data dir, run dir)."""
    import torch

    from edgesmith.cli import main
    from trainer.detection.synthetic import write_synthetic_voc

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine: one thread is much faster than two
    try:
        data = write_synthetic_voc(root / "voc", n=n, size=96, seed=seed)
        run = root / "run"
        rc = main(["train", "--model", model, "--width-mult", "0.5", "--data", str(data), "--epochs", "2",
                   "--batch-size", "4", "--device", "cpu", "--out", str(run), "--no-progress",
                   "--set", "data.image_size=[64,64]", "--set", "data.num_workers=0", "--set", "optim.name=adamw",
                   "--set", "optim.lr=0.003", "--set", "detection.score_thr=0.0"])
    finally:
        torch.set_num_threads(before)
    assert rc == 0
    return data, run


@pytest.fixture(scope="session")
def pristine_detector_run(tmp_path_factory):
    """A tiny nanodet-mcu run (data dir, run dir) shared by the detector tests: copy it before changing it."""
    return train_tiny_detector(tmp_path_factory.mktemp("pristine_det"))


def copy_detector_run(pristine: tuple[Path, Path], dest: Path) -> tuple[Path, Path]:
    """(data dir, a fresh copy of the run under ``dest``)."""
    import shutil

    data, run = pristine
    shutil.copytree(run, dest / "run")
    return data, dest / "run"


@pytest.fixture(scope="module")
def run(pristine_run, tmp_path_factory):
    """This test module's own copy of the tiny trained run."""
    import shutil

    copy = tmp_path_factory.mktemp("run") / "run"
    shutil.copytree(pristine_run, copy)
    return copy
