"""A procedurally generated 10-class image set that needs no download.

Each class is a shape or texture family drawn at a random position, scale,
small rotation, foreground/background colour and noise level, so a small CNN
has to learn shape and texture rather than a colour or a fixed pixel. The
images are a pure function of (GENERATOR_VERSION, seed, sizes): the same seed
always gives the same bytes, which makes it the dataset of choice for tests,
examples and smoke runs.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from .types import ArraySplit, Dataset

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "ring", "cross",
    "horizontal_stripes", "vertical_stripes", "diagonal_stripes", "checkerboard", "blob",
)
GENERATOR_VERSION = 1  # bump whenever the pixels for a given seed change
DEFAULT_TRAIN = 5000
DEFAULT_VAL = 1000
DEFAULT_SIZE = (32, 32)
_MAX_TILT = np.deg2rad(15.0)  # small enough that horizontal/vertical/diagonal stay distinct


def _masks(
    label: int, u: np.ndarray, v: np.ndarray, r: np.ndarray, period: np.ndarray, phase: np.ndarray
) -> np.ndarray:
    """Foreground coverage in [0, 1] for class ``label``; u, v are image coordinates in the shape's frame."""
    d2 = u * u + v * v
    patch = np.maximum(np.abs(u), np.abs(v)) <= r * 1.3  # textures fill a square patch
    wave = 2 * np.pi / period
    name = SYNTHETIC_CLASSES[label]
    if name == "circle":
        return d2 <= r * r
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= r * 0.85
    if name == "triangle":  # apex up, base down
        return (v >= -r) & (v <= 0.8 * r) & (np.abs(u) <= (v + r) * 0.55)
    if name == "ring":
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if name == "cross":
        arm = 0.3 * r
        return ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))
    if name == "horizontal_stripes":
        return patch & (np.sin(wave * v + phase) > 0)
    if name == "vertical_stripes":
        return patch & (np.sin(wave * u + phase) > 0)
    if name == "diagonal_stripes":
        return patch & (np.sin(wave * (u + v) / np.sqrt(2) + phase) > 0)
    if name == "checkerboard":
        return patch & (np.sin(wave * u + phase) * np.sin(wave * v + phase) > 0)
    # blob: a soft Gaussian spot, to be told apart from the hard-edged circle
    return np.exp(-d2 / (2 * (0.5 * r) ** 2))


_CHUNK = 500  # images rendered at a time; keeps float temporaries small enough for malloc to reuse


def _draw_params(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Every random choice for ``n`` images, drawn up front so rendering in chunks stays deterministic.

    Arrays are shaped [n, C, 1, 1] to broadcast over channel-major [n, C, H, W] images.
    """

    def per_image(low: float, high: float, channels: int = 1) -> np.ndarray:
        return rng.uniform(low, high, size=(n, channels, 1, 1)).astype(np.float32)

    bg = per_image(0.0, 1.0, 3)
    return {
        # Geometry in normalised coordinates, so any image_size draws the same scene.
        "cx": per_image(0.3, 0.7), "cy": per_image(0.3, 0.7), "r": per_image(0.16, 0.32),
        "tilt": per_image(-_MAX_TILT, _MAX_TILT), "period": per_image(0.12, 0.22), "phase": per_image(0.0, 2 * np.pi),
        # Foreground differs from background by 0.25..0.5 in every channel (wrapping), so shapes stay visible.
        "bg": bg, "fg": (bg + per_image(0.25, 0.75, 3)) % 1.0,
        # A brightness ramp across the background and a small off-colour speck: nuisances to ignore.
        "ramp": per_image(-0.25, 0.25), "ramp_dir": per_image(0.0, 2 * np.pi),
        "speck_x": per_image(0.05, 0.95), "speck_y": per_image(0.05, 0.95),
        "speck_size": per_image(0.03, 0.07) * (per_image(0.0, 1.0) < 0.6), "speck_colour": per_image(0.0, 1.0, 3),
        "noise": per_image(0.02, 0.14),
    }


def _render(labels: np.ndarray, p: dict[str, np.ndarray], noise: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Render one chunk as float32 [n, 3, H, W] in about 0..1; ``noise`` is grey noise [n, 1, H, W]."""
    h, w = image_size
    ys = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]
    xs = ((np.arange(w, dtype=np.float32) + 0.5) / w)[None, :]
    dx, dy = xs - p["cx"], ys - p["cy"]
    cos, sin = np.cos(p["tilt"]), np.sin(p["tilt"])
    u, v = dx * cos + dy * sin, dy * cos - dx * sin

    alpha = np.empty((len(labels), 1, h, w), dtype=np.float32)
    for c in range(len(SYNTHETIC_CLASSES)):
        idx = np.flatnonzero(labels == c)
        alpha[idx] = _masks(c, u[idx], v[idx], p["r"][idx], p["period"][idx], p["phase"][idx])
    speck = (np.abs(xs - p["speck_x"]) <= p["speck_size"]) & (np.abs(ys - p["speck_y"]) <= p["speck_size"])
    ramp = p["ramp"] * ((xs - 0.5) * np.cos(p["ramp_dir"]) + (ys - 0.5) * np.sin(p["ramp_dir"]))

    noise *= p["noise"]
    noise += ramp
    images = noise + p["bg"]
    images += (p["fg"] - p["bg"]) * alpha
    np.copyto(images, np.broadcast_to(p["speck_colour"], images.shape), where=speck)
    return images


def generate_split(n: int, seed: int, stream: int, image_size: tuple[int, int] = DEFAULT_SIZE) -> ArraySplit:
    """Generate ``n`` class-balanced images; ``stream`` separates train (0) from val (1)."""
    rng = np.random.default_rng([seed, stream, GENERATOR_VERSION])
    h, w = image_size
    labels = rng.permutation(np.arange(n) % len(SYNTHETIC_CLASSES)).astype(np.int64)
    params = _draw_params(rng, n)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        noise = rng.standard_normal((sl.stop - sl.start, 1, h, w), dtype=np.float32)
        images = _render(labels[sl], {k: a[sl] for k, a in params.items()}, noise, image_size)
        images *= 255.0
        images += 0.5
        np.clip(images, 0, 255, out=images)
        out[sl] = images.transpose(0, 2, 3, 1)  # rendered channel-major for speed; stored NHWC
    return ArraySplit(out, labels)


def synthetic_hash(seed: int, n_train: int, n_val: int, image_size: tuple[int, int]) -> str:
    """The content hash of a synthetic dataset: generator version plus every input."""
    spec = {"generator": "edgesmith-synthetic", "version": GENERATOR_VERSION, "seed": int(seed),
            "n_train": int(n_train), "n_val": int(n_val), "image_size": list(image_size)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def make_synthetic(seed: int = 0, n_train: int = DEFAULT_TRAIN, n_val: int = DEFAULT_VAL,
                   image_size: tuple[int, int] = DEFAULT_SIZE) -> Dataset:
    """Build the synthetic dataset (default 5,000 train / 1,000 val, 32x32 RGB), deterministic in ``seed``."""
    return Dataset(
        format="synthetic",
        classes=SYNTHETIC_CLASSES,
        train=generate_split(n_train, seed, 0, image_size),
        val=generate_split(n_val, seed, 1, image_size),
        image_size=tuple(image_size),
        source="synthetic",
        content_hash=synthetic_hash(seed, n_train, n_val, image_size),
        val_is_carved=False,
    )
