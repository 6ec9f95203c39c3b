"""Training batches for detectors: seeded augmentation per (seed, epoch, position), resumable.

The order of an epoch is a permutation drawn from ``(seed, epoch)``; the augmentation of
the image at position ``p`` of epoch ``e`` uses a generator seeded with ``(seed, e, p)``.
So a resumed run sees exactly the batches it would have seen, and under DDP every rank
agrees on the global batch and takes its own slice of it.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from trainer.data.detection.transforms import DetectionAugment, collate
from trainer.data.detection.types import DetectionSplit


class _EpochBatches(torch.utils.data.Dataset):
    """Batch ``b`` of one epoch, as tensors (images uint8 NHWC, boxes [B, M, 4], labels [B, M])."""

    def __init__(self, loader: "DetectionLoader", epoch: int) -> None:
        self.loader, self.epoch = loader, epoch
        self.order = loader.epoch_order(epoch)

    def __len__(self) -> int:
        return self.loader.steps_per_epoch

    def __getitem__(self, b: int) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
        ld = self.loader
        lo = b * ld.batch_size + ld.rank * ld.local_batch
        items = []
        for pos in range(lo, lo + ld.local_batch):
            rng = np.random.default_rng([ld.seed, self.epoch, pos])
            sample = ld.split.load(int(self.order[pos % len(self.order)]))
            items.append(ld.augment(sample, rng, pool=ld.split if ld.augment.mosaic > 0 else None))
        images, boxes, labels = collate(items)
        return b, torch.from_numpy(images), torch.from_numpy(boxes), torch.from_numpy(labels)


class DetectionLoader:
    """Augmented, collated training batches of a :class:`DetectionSplit` (full batches only)."""

    def __init__(self, split: DetectionSplit, augment: DetectionAugment, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0) -> None:
        self.split, self.augment, self.seed = split, augment, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        # A batch larger than the data would repeat images within one step: cap it.
        self.batch_size = max(world_size, min(batch_size, len(split)) // world_size * world_size)
        self.local_batch = self.batch_size // world_size
        self.steps_per_epoch = max(1, len(split) // self.batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.split))

    def __len__(self) -> int:
        return self.steps_per_epoch

    def iterate(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(batch_index, images, boxes, labels)`` from ``start_batch`` to the end of the epoch."""
        batches = _EpochBatches(self, epoch)
        indices = list(range(start_batch, self.steps_per_epoch))
        if self.num_workers == 0:
            for b in indices:
                yield batches[b]
            return
        dl = torch.utils.data.DataLoader(batches, batch_size=None, sampler=indices, num_workers=self.num_workers,
                                         persistent_workers=False, prefetch_factor=2)
        yield from dl
