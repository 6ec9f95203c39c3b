"""Batch loaders that hand uint8 NCHW batches to the training device.

Two sources, one batch plan:

* :class:`ArrayBatchLoader` — CIFAR-scale splits already decoded into a uint8
  array (see :mod:`trainer.data.cache`). The whole split is moved to the device
  once; a batch is an index into it. No worker processes, no per-image Python.
* :class:`StreamBatchLoader` — large-image folders, decoded and resized by
  DataLoader workers.

:class:`BatchPlan` decides which images form batch ``b`` of epoch ``e`` on rank
``r``: a permutation seeded by (seed, epoch), cut into global batches of
``batch_size``, each global batch cut into ``world_size`` contiguous shards. It
depends on nothing but those numbers, so a resumed run can start at any batch
and DDP ranks never overlap.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from PIL import Image

from edgesmith.errors import ConfigError, DataError
from trainer.data import ArraySplit, FileSplit


class BatchPlan:
    """The (seeded, sharded) order of images for every epoch."""

    def __init__(
        self, num_images: int, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int, rank: int, world_size: int
    ) -> None:
        if batch_size % world_size != 0:
            raise ConfigError(
                f"batch_size {batch_size} must be divisible by the number of processes ({world_size}); "
                f"use e.g. --batch-size {max(world_size, batch_size // world_size * world_size)}"
            )
        if drop_last and num_images < batch_size:
            raise ConfigError(
                f"batch_size {batch_size} is larger than the training split ({num_images} images); "
                f"use --batch-size {max(world_size, num_images // world_size * world_size)} or less"
            )
        self.num_images, self.batch_size = num_images, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        full, rest = divmod(self.num_images, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_images)
        gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        return torch.randperm(self.num_images, generator=gen)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(batch_index, indices for this rank)`` from batch ``start`` on."""
        order = self.order(epoch)
        for b in range(start, len(self)):
            glob = order[b * self.batch_size : (b + 1) * self.batch_size]
            # Contiguous shards; a short final batch (eval only) is split as evenly as possible.
            bounds = np.linspace(0, len(glob), self.world_size + 1).round().astype(int)
            yield b, glob[bounds[self.rank] : bounds[self.rank + 1]]


class ArrayBatchLoader:
    """Batches from a decoded uint8 split held on the device."""

    def __init__(self, split: ArraySplit, plan: BatchPlan, device: torch.device) -> None:
        # NHWC on device; a batch is permuted to an NCHW *view*, i.e. channels_last memory.
        self.images = torch.from_numpy(np.ascontiguousarray(split.images)).to(device)
        self.labels = torch.from_numpy(split.labels.astype(np.int64)).to(device)
        self.plan, self.device = plan, device

    def __len__(self) -> int:
        return len(self.plan)

    def iterate(self, epoch: int, start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        for b, idx in self.plan.batches(epoch, start):
            idx = idx.to(self.device)
            yield b, self.images[idx].permute(0, 3, 1, 2), self.labels[idx]


class _ImageFileDataset(torch.utils.data.Dataset):
    """Decode + resize one image file to uint8 HWC; used by DataLoader workers."""

    def __init__(self, split: FileSplit, image_size: tuple[int, int]) -> None:
        self.paths, self.labels, self.size = split.paths, split.labels, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            with Image.open(self.paths[i]) as im:
                im = im.convert("RGB").resize((self.size[1], self.size[0]), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image {self.paths[i]}: {e}") from None
        return torch.from_numpy(arr.copy()), int(self.labels[i])


class _PlanSampler(torch.utils.data.Sampler):
    def __init__(self, plan: BatchPlan, epoch: int, start: int) -> None:
        self.plan, self.epoch, self.start = plan, epoch, start

    def __iter__(self):
        for _, idx in self.plan.batches(self.epoch, self.start):
            yield idx.tolist()

    def __len__(self) -> int:
        return len(self.plan) - self.start


class StreamBatchLoader:
    """Batches decoded from image files by DataLoader workers."""

    def __init__(
        self, split: FileSplit, plan: BatchPlan, device: torch.device, image_size: tuple[int, int], num_workers: int
    ) -> None:
        self.dataset = _ImageFileDataset(split, image_size)
        self.plan, self.device, self.num_workers = plan, device, num_workers

    def __len__(self) -> int:
        return len(self.plan)

    def iterate(self, epoch: int, start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=_PlanSampler(self.plan, epoch, start),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for b, (x, y) in enumerate(loader, start=start):
            x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
            yield b, x, y.to(self.device, non_blocking=True)


def make_loader(
    split: ArraySplit | FileSplit,
    *,
    batch_size: int,
    train: bool,
    device: torch.device,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    image_size: tuple[int, int] | None = None,
    num_workers: int = 2,
) -> ArrayBatchLoader | StreamBatchLoader:
    """A loader for a training (shuffled, full batches) or evaluation (in order, all images) split."""
    plan = BatchPlan(
        len(split.labels), batch_size, shuffle=train, drop_last=train, seed=seed, rank=rank, world_size=world_size
    )
    if isinstance(split, ArraySplit):
        return ArrayBatchLoader(split, plan, device)
    if image_size is None:
        raise ValueError("image_size is required for streamed splits")
    return StreamBatchLoader(split, plan, device, image_size, num_workers)
