"""Seeded, stratified carving of a validation split out of a training split."""

from __future__ import annotations

import numpy as np

from edgesmith.errors import DataError


def check_val_fraction(val_fraction: float) -> float:
    """Return ``val_fraction`` as a float, or raise DataError when it is not in (0, 1)."""
    try:
        value = float(val_fraction)
    except (TypeError, ValueError):
        raise DataError(f"val_fraction must be a number between 0 and 1, got {val_fraction!r}") from None
    if not 0.0 < value < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {value}; 0.1 keeps 10% for validation")
    return value


def stratified_carve(
    labels: np.ndarray, val_fraction: float, seed: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of ``labels`` into (train_idx, val_idx), each sorted.

    Every class gives ``round(n_c * val_fraction)`` images to val, clamped so a
    class with at least two images keeps one on each side; the same ``seed``
    always picks the same images.
    """
    rng = np.random.default_rng(seed)
    val_parts = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            continue  # one image cannot be on both sides; it stays in train
        k = int(round(len(idx) * val_fraction))
        k = min(max(k, 1), len(idx) - 1)
        val_parts.append(rng.permutation(idx)[:k])
    if not val_parts:
        raise DataError(
            f"cannot carve a validation split: every class has fewer than 2 images ({len(labels)} images in all); "
            "add images or provide a separate val/ or test/ split"
        )
    val_idx = np.sort(np.concatenate(val_parts))
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx
