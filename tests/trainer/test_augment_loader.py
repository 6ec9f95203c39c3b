"""On-device augmentation and the sharded, resumable batch plan."""

import numpy as np
import pytest
import torch

from edgesmith.errors import ConfigError
from trainer.data import ArraySplit
from trainer.data.augment import Normalizer, augment_batch, batch_generator, cutout, random_crop, random_flip
from trainer.data.loader import BatchPlan, make_loader

CPU = torch.device("cpu")


def test_random_crop_is_a_shifted_window_per_image():
    x = torch.arange(4 * 1 * 8 * 8, dtype=torch.uint8).view(4, 1, 8, 8)
    out = random_crop(x, 2, batch_generator(CPU, 0, 0, 0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = []
    for i in range(4):  # every output image is some 8x8 window of its padded input
        hits = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(padded[i, :, dy:dy + 8, dx:dx + 8], out[i])]
        assert hits, f"image {i} is not a crop of its padded input"
        offsets.append(hits[0])
    big = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8).repeat(64, 1, 1, 1)
    out = random_crop(big, 2, batch_generator(CPU, 1, 0, 0))
    assert len({tuple(o.flatten().tolist()) for o in out}) > 5, "offsets must differ between images"


def test_flip_flips_about_half_the_images_and_nothing_else():
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(200, 1, 1, 1)
    out = random_flip(x, batch_generator(CPU, 0, 0, 0))
    flipped = torch.tensor([torch.equal(o, x[0].flip(2)) for o in out])
    same = torch.tensor([torch.equal(o, x[0]) for o in out])
    assert bool((flipped | same).all())
    assert 60 < int(flipped.sum()) < 140


def test_cutout_zeroes_a_square():
    x = torch.full((50, 3, 16, 16), 7, dtype=torch.uint8)
    out = cutout(x, 4, batch_generator(CPU, 0, 0, 0))
    zeros = (out == 0).all(dim=1).sum(dim=(1, 2))
    assert bool((zeros <= 16).all()) and bool((zeros > 0).all())
    assert int((zeros == 16).sum()) > 10  # most squares lie fully inside


def test_augmentation_is_a_function_of_seed_epoch_batch():
    x = torch.randint(0, 255, (16, 3, 8, 8), dtype=torch.uint8)
    a = augment_batch(x, batch_generator(CPU, 3, 1, 5), crop_padding=2, flip=True, cutout_size=3)
    b = augment_batch(x, batch_generator(CPU, 3, 1, 5), crop_padding=2, flip=True, cutout_size=3)
    c = augment_batch(x, batch_generator(CPU, 3, 1, 6), crop_padding=2, flip=True, cutout_size=3)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_normalizer_matches_formula_and_layout():
    x = torch.randint(0, 255, (2, 3, 4, 4), dtype=torch.uint8)
    n = Normalizer([0.1, 0.2, 0.3], [0.5, 0.25, 2.0], CPU, channels_last=True)
    y = n(x)
    ref = (x.float() / 255 - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    assert torch.allclose(y, ref, atol=1e-6)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_batch_plan_shards_are_disjoint_and_cover_each_global_batch():
    plans = [BatchPlan(103, 20, shuffle=True, drop_last=True, seed=4, rank=r, world_size=2) for r in range(2)]
    assert len(plans[0]) == 5
    single = BatchPlan(103, 20, shuffle=True, drop_last=True, seed=4, rank=0, world_size=1)
    for (b0, i0), (b1, i1), (bs, iref) in zip(plans[0].batches(2), plans[1].batches(2), single.batches(2)):
        assert b0 == b1 == bs
        assert len(i0) == len(i1) == 10
        assert torch.equal(torch.cat([i0, i1]), iref)
    # different epochs shuffle differently; same epoch is reproducible
    assert not torch.equal(single.order(0), single.order(1))
    assert torch.equal(single.order(1), BatchPlan(103, 20, shuffle=True, drop_last=True, seed=4, rank=0, world_size=1).order(1))


def test_batch_plan_resume_starts_at_any_batch():
    plan = BatchPlan(50, 8, shuffle=True, drop_last=True, seed=0, rank=0, world_size=1)
    full = list(plan.batches(3))
    tail = list(plan.batches(3, start=4))
    assert [b for b, _ in tail] == [4, 5]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(full[4:], tail))


def test_eval_plan_keeps_every_image_in_order():
    plan = BatchPlan(23, 10, shuffle=False, drop_last=False, seed=0, rank=0, world_size=1)
    assert torch.equal(torch.cat([i for _, i in plan.batches(0)]), torch.arange(23))
    ranks = [BatchPlan(23, 10, shuffle=False, drop_last=False, seed=0, rank=r, world_size=2) for r in range(2)]
    seen = torch.cat([i for p in ranks for _, i in p.batches(0)])
    assert sorted(seen.tolist()) == list(range(23))


def test_batch_plan_errors():
    with pytest.raises(ConfigError, match="divisible by the number of processes"):
        BatchPlan(100, 9, shuffle=True, drop_last=True, seed=0, rank=0, world_size=2)
    with pytest.raises(ConfigError, match="larger than the training split"):
        BatchPlan(10, 16, shuffle=True, drop_last=True, seed=0, rank=0, world_size=1)


def test_array_loader_yields_nchw_uint8_with_matching_labels():
    images = np.random.default_rng(0).integers(0, 255, (30, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(30, dtype=np.int64) % 3
    loader = make_loader(ArraySplit(images, labels), batch_size=10, train=True, device=CPU, seed=1)
    for _, x, y in loader.iterate(0):
        assert x.dtype == torch.uint8 and x.shape == (10, 3, 8, 8)
        for xi, yi in zip(x, y):  # find the image back and check its label travelled with it
            idx = int(np.where((images == xi.permute(1, 2, 0).numpy()).all(axis=(1, 2, 3)))[0][0])
            assert labels[idx] == int(yi)
