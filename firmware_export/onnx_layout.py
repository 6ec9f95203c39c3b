"""Layout bookkeeping for the QDQ ONNX importer: ONNX NCHW tensors stored as NHWC (or other orders).

Every int8 activation the importer knows is an ONNX tensor of shape ``S`` stored in IntGraph as
``onnx_tensor.transpose(layout)``: the *layout* is a permutation of the ONNX axes. 4-D tensors
are normally stored NHWC, ``layout == (0, 2, 3, 1)``; other ranks keep ONNX order. Transposes are
done lazily (a Transpose node only relabels axes) and a Reshape keeps whatever layout its axis
groups allow, so a channel shuffle (reshape -> transpose -> reshape on the channel axis) becomes a
single TRANSPOSE of the two channel sub-axes between two RESHAPEs, all in NHWC.

Conventions: ``compose(a, b)`` is the permutation with
``x.transpose(a).transpose(b) == x.transpose(compose(a, b))``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

NHWC = (0, 2, 3, 1)


def natural_layout(rank: int) -> tuple[int, ...]:
    """The layout IntGraph ops and graph inputs/outputs use: NHWC for 4-D, ONNX order otherwise."""
    return NHWC if rank == 4 else tuple(range(rank))


def identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def compose(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """``x.transpose(a).transpose(b) == x.transpose(compose(a, b))``."""
    return tuple(int(a[i]) for i in b)


def inverse(p: Sequence[int]) -> tuple[int, ...]:
    inv = [0] * len(p)
    for i, a in enumerate(p):
        inv[a] = i
    return tuple(inv)


def stored_shape(onnx_shape: Sequence[int], layout: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(onnx_shape[a]) for a in layout)


def stored_axis(layout: Sequence[int], onnx_axis: int) -> int:
    """Where ONNX axis ``onnx_axis`` sits in the stored tensor."""
    return list(layout).index(onnx_axis)


def transpose_between(src: Sequence[int], dst: Sequence[int]) -> tuple[int, ...]:
    """The TRANSPOSE perm that turns a tensor stored in layout ``src`` into layout ``dst``."""
    return compose(inverse(src), dst)


def _axis_groups(in_shape: Sequence[int], out_shape: Sequence[int]):
    """Pair runs of non-unit input axes with runs of non-unit output axes of equal product.

    Returns a list of (input axes, output axes) or None when the element counts differ.
    """
    a = [i for i, s in enumerate(in_shape) if s != 1]
    b = [j for j, s in enumerate(out_shape) if s != 1]
    if math.prod(in_shape) != math.prod(out_shape):
        return None
    groups, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        ga, gb = [a[i]], [b[j]]
        pa, pb = in_shape[a[i]], out_shape[b[j]]
        while pa != pb:
            if pa < pb:
                i += 1
                ga.append(a[i])
                pa *= in_shape[a[i]]
            else:
                j += 1
                gb.append(b[j])
                pb *= out_shape[b[j]]
        groups.append((ga, gb))
        i += 1
        j += 1
    return groups


def plan_reshape(in_shape: Sequence[int], layout: Sequence[int], out_shape: Sequence[int]):
    """How to reshape an ONNX tensor stored in ``layout`` without going back to ONNX order.

    Returns ``(pre_layout, out_layout)``: first bring the stored tensor into ``pre_layout`` (equal
    to ``layout`` when no TRANSPOSE is needed), then a plain stored RESHAPE gives the output in
    ``out_layout``. ``pre_layout`` keeps each group of merged/split axes together and in ONNX
    order, changing as little of ``layout`` as possible.
    """
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    groups = _axis_groups(in_shape, out_shape)
    if groups is None:
        raise ValueError(f"cannot reshape {in_shape} to {out_shape}")
    stored_nonunit = [a for a in layout if in_shape[a] != 1]
    first_of = {g[0]: gi for gi, (g, _) in enumerate(groups)}
    compatible = all(
        stored_nonunit[stored_nonunit.index(g[0]):stored_nonunit.index(g[0]) + len(g)] == g
        for g, _ in groups)
    if compatible:
        pre_layout = tuple(layout)
    else:
        # order groups by where their first-stored axis sits, each group in ONNX order
        order = sorted(range(len(groups)), key=lambda gi: min(stored_nonunit.index(a) for a in groups[gi][0]))
        units = [a for a in layout if in_shape[a] == 1]
        pre_layout = tuple(units + [a for gi in order for a in groups[gi][0]])
        stored_nonunit = [a for a in pre_layout if in_shape[a] != 1]
        first_of = {g[0]: gi for gi, (g, _) in enumerate(groups)}
    out_nonunit = [b for a in stored_nonunit if a in first_of for b in groups[first_of[a]][1]]
    natural = natural_layout(len(out_shape))
    if [r for r in natural if out_shape[r] != 1] == out_nonunit:
        out_layout = natural
    else:
        out_layout = tuple([r for r in natural if out_shape[r] == 1] + out_nonunit)
    return pre_layout, out_layout


def flat_order(onnx_shape: Sequence[int], layout: Sequence[int]) -> np.ndarray:
    """For each element of the stored tensor (row-major), its row-major index in the ONNX tensor."""
    idx = np.arange(int(np.prod(onnx_shape)), dtype=np.int64).reshape(tuple(onnx_shape))
    return idx.transpose(tuple(layout)).reshape(-1)
