"""Small models and data for the quantization tests (built here, no shared datasets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainer.data import ArraySplit
from trainer.export import export_onnx

STRIPE_CLASSES = 8
AMPLITUDE = 3.0
MEAN, STD = (0.5, 0.5, 0.5), (0.05, 0.05, 0.05)


def stripe_images(n: int, rng: np.random.Generator, size: int = 16, glare: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Faint oriented stripes on grey (class = orientation); ``glare`` images get a saturated patch."""
    labels = rng.integers(0, STRIPE_CLASSES, n)
    yy, xx = np.mgrid[:size, :size]
    patterns = [np.sin(a * f) for f in (1.0, 1.9) for a in (yy, xx, (xx + yy) * 0.7, (xx - yy) * 0.7)]
    imgs = 128 + AMPLITUDE * np.stack([patterns[k] for k in labels])[..., None] + rng.normal(0, 1.5, (n, size, size, 3))
    for i in range(glare):
        y, x = rng.integers(0, size - 6, 2)
        imgs[i, y:y + 6, x:x + 6] = 255
    return np.clip(imgs, 0, 255).astype(np.uint8), labels.astype(np.int64)


def normalise(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32) / 255
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class SmallNet(nn.Module):
    """conv-bn-relu ×2 with a residual 1×1 branch, global pool, linear: the topology hazards PTQ meets."""

    def __init__(self, classes: int = STRIPE_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.short = nn.Conv2d(8, 16, 1, stride=2)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)) + self.short(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def train_small(model: nn.Module, images: np.ndarray, labels: np.ndarray, epochs: int = 30, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    x, y = torch.from_numpy(normalise(images)), torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def export(model: nn.Module, path: Path, size: int = 16) -> Path:
    export_onnx(model, path, input_shape=(3, size, size))
    return path


def split(images: np.ndarray, labels: np.ndarray) -> ArraySplit:
    return ArraySplit(np.ascontiguousarray(images), labels)


def add_outlier_channel(model: SmallNet, channel: int = 0, gain: float = 300.0) -> SmallNet:
    """Scale one first-layer channel by ``gain`` and its consumers by 1/gain.

    ReLU commutes with a positive scale, so the float model computes exactly the same function,
    but one activation channel is now ``gain`` times larger than the rest: a per-tensor int8
    range stretched that far leaves the other channels a few levels (the outlier-channel problem
    of real networks, built on purpose).
    """
    with torch.no_grad():
        model.bn1.weight[channel] *= gain
        model.bn1.bias[channel] *= gain
        model.conv2.weight[:, channel] /= gain
        model.short.weight[:, channel] /= gain
    return model
