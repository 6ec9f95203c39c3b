"""The training loop: learning, exact resume, interrupts, NaN handling, profile, EMA."""

from __future__ import annotations

import math

import pytest
import torch

from edgesmith.errors import TrainingError
from trainer.checkpoint import load_checkpoint
from trainer.config import config_from_dict
from trainer.engine import train
from trainer.engine.reporting import read_metrics


def tiny_config(data, **over):
    cfg = {
        "model": {"name": "resnet8", "width_mult": 0.5},
        "data": {"path": str(data)},
        "epochs": 2,
        "batch_size": 16,
        "eval_batch_size": 32,
        "device": "cpu",
        "log_every": 1,
        "optim": {"lr": 0.05},
        "seed": 3,
    }
    for k, v in over.items():
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return config_from_dict(cfg)


def step_losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "step"]


def test_training_lowers_the_loss_and_writes_checkpoint(tiny_cifar, tmp_path):
    cfg = tiny_config(tiny_cifar, epochs=4, **{"optim.lr": 0.1})
    result = train(cfg, tmp_path / "run", show_progress=False)
    losses = step_losses(tmp_path / "run")
    assert len(losses) == 4 * 4  # 64 images / batch 16, 4 epochs
    assert sum(losses[-4:]) < sum(losses[:4])
    epochs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["type"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert all(0 <= e["val_acc"] <= 1 and e["img_per_s"] > 0 for e in epochs)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.train_state["epoch"] == 4 and ckpt.train_state["global_step"] == 16
    assert ckpt.model_name == "resnet8" and ckpt.model_args["num_classes"] == 10
    assert result.metrics["val"]["num_images"] == 32
    assert len(result.preprocessing["mean"]) == 3


def test_interrupt_and_resume_reproduce_the_uninterrupted_loss_sequence(tiny_cifar, tmp_path):
    cfg = tiny_config(tiny_cifar, **{"augment.cutout": 4})
    train(cfg, tmp_path / "full", show_progress=False)
    reference = step_losses(tmp_path / "full")
    assert len(reference) == 8

    def stop_at_3(step, model, stop):
        if step == 3:  # mid-epoch: batch index 2 of epoch 0
            stop.request("test")

    part = train(cfg, tmp_path / "part", on_step=stop_at_3, show_progress=False)
    assert part.interrupted
    st = load_checkpoint(tmp_path / "part").train_state
    assert (st["epoch"], st["next_batch"], st["global_step"]) == (0, 3, 3)
    train(cfg, tmp_path / "part", resume=True, show_progress=False)
    assert step_losses(tmp_path / "part") == reference  # bit-identical, not approximately
    a = load_checkpoint(tmp_path / "full").state_dict
    b = load_checkpoint(tmp_path / "part").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_on_different_data_is_refused(tiny_cifar, tmp_path):
    from edgesmith.errors import CheckpointError
    from conftest import write_cifar_binary

    cfg = tiny_config(tiny_cifar, epochs=2)
    train(cfg, tmp_path / "run", on_step=lambda s, m, stop: stop.request() if s == 2 else None, show_progress=False)
    other = write_cifar_binary(tmp_path / "other", seed=9)
    with pytest.raises(CheckpointError, match="not the data this run was trained on"):
        train(tiny_config(other, epochs=2), tmp_path / "run", resume=True, show_progress=False)


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tiny_cifar, tmp_path):
    cfg = tiny_config(tiny_cifar, epochs=3)

    def poison(step, model, stop):
        if step == 5:  # after the epoch-1 checkpoint (step 4)
            with torch.no_grad():
                model.fc.weight.fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"training loss became nan at epoch 2.*last good checkpoint"):
        train(cfg, tmp_path / "run", on_step=poison, show_progress=False)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.train_state["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt.state_dict.values() if v.is_floating_point())


def test_profile_reports_every_phase_and_peak_memory(tiny_cifar, tmp_path):
    result = train(tiny_config(tiny_cifar, epochs=1, profile=True), tmp_path / "run", show_progress=False)
    prof = result.profile
    assert prof["steps"] == 4
    assert set(prof["seconds"]) == {"data", "forward", "backward", "optimizer"}
    assert all(v > 0 for v in prof["seconds"].values())
    assert math.isclose(sum(prof["percent"].values()), 100, abs_tol=0.5)
    assert prof["peak_memory_bytes"] > 10 * 2**20


def test_ema_and_adamw_cosine_run_and_resume_restores_ema(tiny_cifar, tmp_path):
    cfg = tiny_config(tiny_cifar, ema_decay=0.9, **{"optim.name": "adamw", "optim.lr": 0.003,
                                                     "schedule.name": "cosine"})
    result = train(cfg, tmp_path / "run", show_progress=False)
    ckpt = load_checkpoint(tmp_path / "run")
    ema_keys = [k for k in ckpt.extra_tensors if k.startswith("ema.")]
    assert ema_keys and ckpt.train_state["ema_updates"] == 8
    # the shipped model is the EMA, which differs from the raw weights
    raw = ckpt.state_dict["fc.weight"]
    assert torch.allclose(result.model.state_dict()["fc.weight"], ckpt.extra_tensors["ema.fc.weight"])
    assert not torch.equal(raw, ckpt.extra_tensors["ema.fc.weight"])


def test_bf16_autocast_and_torch_compile_on_cpu(tiny_cifar, tmp_path):
    """amp=on (bf16 autocast on CPU) and torch.compile run the real loop; the shipped model is plain fp32."""
    cfg = tiny_config(tiny_cifar, epochs=1, amp="on", compile=True, channels_last=False)
    result = train(cfg, tmp_path / "run", show_progress=False)
    assert result.metrics["precision"] == "bf16"
    losses = step_losses(tmp_path / "run")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert not hasattr(result.model, "_orig_mod")
    # checkpoint keys are the plain module's, loadable without torch.compile
    assert "fc.weight" in load_checkpoint(tmp_path / "run").state_dict


def test_unknown_device_request_is_clear(tiny_cifar, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the error path is for machines without it")
    from edgesmith.errors import ConfigError

    with pytest.raises(ConfigError, match="no CUDA device is visible.*use --device cpu"):
        train(tiny_config(tiny_cifar, device="cuda"), tmp_path / "run", show_progress=False)
