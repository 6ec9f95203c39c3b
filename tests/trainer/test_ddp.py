"""DDP through torchrun on CPU (gloo): two processes take the same optimizer step as one.

BatchNorm normalises with per-process batch statistics (SyncBatchNorm needs a GPU), so
the single-process reference computes the loss on each half of the global batch
separately and averages the gradients — exactly the objective DDP optimises.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import load_checkpoint
from trainer.config import config_from_dict
from trainer.data import open_dataset
from trainer.data.augment import Normalizer, augment_batch, batch_generator
from trainer.data.loader import make_loader
from trainer.engine.optim import build_optimizer
from trainer.engine.setup import channel_stats, seed_everything
from trainer.models import build_model

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_two_process_gloo_step_matches_single_process_gradients(tiny_cifar, tmp_path):
    run = tmp_path / "ddp"
    overrides = ["optim.lr=0.1", "schedule.name=constant", "max_steps=1", "augment.cutout=6", "seed=11"]
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "edgesmith", "train",
           "--data", str(tiny_cifar), "--model", "resnet8", "--width-mult", "0.5", "--batch-size", "32",
           "--device", "cpu", "--out", str(run), "--no-progress"]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "model.onnx").is_file()
    ddp = load_checkpoint(run)
    assert ddp.train_state["global_step"] == 1

    # single-process reference of the same step
    cfg = config_from_dict({"model": {"name": "resnet8", "width_mult": 0.5}, "data": {"path": str(tiny_cifar)},
                            "batch_size": 32, "device": "cpu", "seed": 11, "augment": {"cutout": 6},
                            "optim": {"lr": 0.1}, "schedule": {"name": "constant"}})
    seed_everything(cfg.seed)
    ds = open_dataset(str(tiny_cifar), seed=cfg.seed)
    model = build_model("resnet8", num_classes=10, width_mult=0.5).to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg.optim)
    mean, std = channel_stats(ds.train.images)
    loader = make_loader(ds.train, batch_size=32, train=True, device=torch.device("cpu"), seed=cfg.seed)
    _, x, y = next(loader.iterate(0))
    x = augment_batch(x, batch_generator(torch.device("cpu"), cfg.seed, 0, 0), crop_padding=4, flip=True,
                      cutout_size=6)
    x = Normalizer(mean, std, torch.device("cpu"), True)(x)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    opt.zero_grad()
    for half in (slice(0, 16), slice(16, 32)):
        (criterion(model(x[half]), y[half]) / 2).backward()
    opt.step()

    ref = model.state_dict()
    params = dict(model.named_parameters())
    for name in params:
        assert torch.allclose(ddp.state_dict[name], ref[name].detach(), atol=2e-6, rtol=1e-5), name
    # the step really moved the weights (so the comparison above is not trivially true)
    seed_everything(cfg.seed)
    fresh = build_model("resnet8", num_classes=10, width_mult=0.5)
    assert not torch.allclose(fresh.state_dict()["fc.weight"], ddp.state_dict["fc.weight"])
