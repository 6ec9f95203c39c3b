"""The shared loop (``run_training``) drives any TrainTask: logs, checkpoints, validation, errors and resume.

A toy task on in-memory tensors shows what the engine takes from a task and what it adds itself;
the detector task is then checked for the records only it writes (loss parts, mAP on eval epochs).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from edgesmith.errors import TrainingError
from trainer.checkpoint import load_checkpoint
from trainer.config import config_from_dict
from trainer.detection.synthetic import write_synthetic_voc
from trainer.detection.train import train_detector
from trainer.engine.loop import Batch, StepLoss, TrainTask, run_training
from trainer.engine.reporting import read_metrics
from trainer.models import build_model

STEPS_PER_EPOCH = 2


class ToyTask(TrainTask):
    """Two seeded random batches per epoch, two classes; validates on even epochs and the last one."""

    loss_label = "toy loss"
    grad_clip_hint = "7"

    def __init__(self, cfg, device, dist, *, calls: list | None = None, nan_at_step: int = 0) -> None:
        self.cfg, self.device = cfg, device
        self.calls = calls if calls is not None else []
        self.nan_at_step, self.steps = nan_at_step, 0
        self.dataset = SimpleNamespace(format="toy", source="memory", content_hash="toy-hash")
        self.classes = ["a", "b"]
        self.preprocessing = {"image_size": [32, 32]}
        self.steps_per_epoch = STEPS_PER_EPOCH

    def build_model(self, model_args, resume):
        return build_model(self.cfg.model.name, **model_args)

    def batches(self, epoch, start_batch):
        self.calls.append((epoch, start_batch))
        for b in range(start_batch, STEPS_PER_EPOCH):
            gen = torch.Generator().manual_seed(1000 * epoch + b)  # a function of (epoch, batch): resumable
            x = torch.randn(4, 3, 32, 32, generator=gen)
            yield Batch(b, x.to(self.device), torch.tensor([0, 1, 0, 1]), 4)

    def loss(self, outputs, target):
        self.steps += 1
        loss = nn.functional.cross_entropy(outputs.float(), target)
        if self.steps == self.nan_at_step:
            loss = loss * float("nan")
        return StepLoss(loss, {"toy_part": 0.5})

    def validate(self, model, epoch, last_epoch, precision):
        return {"seen_epoch": epoch} if epoch % 2 == 0 or last_epoch else None

    def epoch_report(self, stats, val):
        record = {"type": "epoch", "epoch": stats.epoch, "step": stats.step, "train_acc": stats.train_acc,
                  "img_per_s": stats.img_per_s}
        if val is not None:
            record["val"] = val["seen_epoch"]
        return record, f"toy epoch {stats.epoch}/{stats.total_epochs}"

    def train_state(self):
        return {"task": "toy", "classes": self.classes, "dataset": {"content_hash": self.dataset.content_hash}}

    def final_metrics(self, last_val):
        return {"toy_val": last_val}


def toy_config(**over):
    cfg = {"model": {"name": "resnet8", "width_mult": 0.5}, "epochs": 3, "device": "cpu", "log_every": 1,
           "seed": 5, "optim": {"lr": 0.05}, "ema_decay": 0.9, **over}
    return config_from_dict(cfg)


def test_engine_writes_task_records_and_its_own_state(tmp_path, capsys):
    result = run_training(toy_config(), tmp_path / "run", ToyTask, show_progress=False)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in records if r["type"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert list(steps[0]) == ["type", "epoch", "batch", "step", "loss", "lr", "toy_part"]  # task parts come last
    epochs = [r for r in records if r["type"] == "epoch"]
    # validation only where the task validated; the accuracy is None for a task that does not report one
    assert [(r["epoch"], r.get("val")) for r in epochs] == [(1, 0), (2, None), (3, 2)]
    assert all(r["train_acc"] is None for r in epochs)
    assert capsys.readouterr().err.splitlines() == ["toy epoch 1/3", "toy epoch 2/3", "toy epoch 3/3"]

    st = load_checkpoint(tmp_path / "run").train_state
    assert st["task"] == "toy" and st["classes"] == ["a", "b"]
    assert (st["epoch"], st["next_batch"], st["global_step"], st["steps_per_epoch"]) == (3, 0, 6, 2)
    assert st["ema_updates"] == 6 and [h["epoch"] for h in st["history"]] == [1, 2, 3]
    assert result.metrics["toy_val"] == {"seen_epoch": 2} and result.metrics["global_step"] == 6
    assert result.classes == ["a", "b"] and result.dataset.format == "toy"


def test_non_finite_loss_names_the_task_loss_and_its_clipping_hint(tmp_path):
    def open_task(cfg, device, dist):
        return ToyTask(cfg, device, dist, nan_at_step=2)

    with pytest.raises(TrainingError, match=r"toy loss became nan at epoch 1, step 2; no checkpoint was written "
                                            r"yet\..*optim\.lr is 0\.05.*--set optim\.grad_clip=7\)"):
        run_training(toy_config(), tmp_path / "run", open_task, show_progress=False)


def test_interrupted_task_resumes_at_the_batch_it_stopped_before(tmp_path):
    full = run_training(toy_config(), tmp_path / "full", ToyTask, show_progress=False)
    calls: list = []

    def open_task(cfg, device, dist):
        return ToyTask(cfg, device, dist, calls=calls)

    def stop_at_3(step, model, stop):
        if step == 3:  # epoch 1 (0-based), after its batch 0
            stop.request("test")

    part = run_training(toy_config(), tmp_path / "part", open_task, on_step=stop_at_3, show_progress=False)
    assert part.interrupted and part.stop_reason == "test"
    st = load_checkpoint(tmp_path / "part").train_state
    assert (st["epoch"], st["next_batch"], st["global_step"]) == (1, 1, 3)
    calls.clear()
    resumed = run_training(toy_config(), tmp_path / "part", open_task, resume=True, show_progress=False)
    assert calls == [(1, 1), (2, 0)]  # the rest of epoch 1, then epoch 2 from its start
    steps = [r["step"] for r in read_metrics(tmp_path / "part" / "metrics.jsonl") if r["type"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_detector_logs_loss_parts_and_map_on_eval_epochs(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine: one thread is much faster
    try:
        data = write_synthetic_voc(tmp_path / "voc", n=6, size=64, seed=2)
        cfg = config_from_dict({
            "model": {"name": "nanodet-mcu", "width_mult": 0.5},
            "data": {"path": str(data), "image_size": [64, 64], "num_workers": 0},
            "epochs": 3, "batch_size": 2, "seed": 0, "log_every": 2, "device": "cpu",
            "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0},
            "detection": {"eval_every": 2, "score_thr": 0.0},
        })
        result = train_detector(cfg, tmp_path / "run", show_progress=False)
    finally:
        torch.set_num_threads(before)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in records if r["type"] == "step"]
    assert steps and all({"qfl", "giou", "dfl", "num_pos"} <= set(r) for r in steps)
    epochs = [r for r in records if r["type"] == "epoch"]
    assert ["val_map" in r for r in epochs] == [False, True, True]  # eval_every 2, and always the last epoch
    assert "train_acc" not in epochs[0]
    st = load_checkpoint(tmp_path / "run").train_state
    assert st["task"] == "detection" and st["postprocess"]["input_hw"] == [64, 64]
    assert result.metrics["assigner"] in ("atss", "dynamic") and "map50" in result.metrics["val"]
