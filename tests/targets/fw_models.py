"""Models, blobs and host firmware builds shared by the firmware tests (tests/targets/test_fw_*).

``variant(graph, seed)`` gives a graph of the same structure (same structure hash: the same
compiled code runs it) with different weights, so slot updates visibly change the output.
Builds are cached per test session in one temporary folder.
"""
from __future__ import annotations

import copy
import functools
import sys
import tempfile
from pathlib import Path

from conftest import session_tmpdir
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware_export"))

from random_graphs import random_multi_op_graph, resnet8_graph  # noqa: E402

from firmware_export import reference  # noqa: E402
from firmware_export.blob import write_blob  # noqa: E402
from firmware_export.c_table import strip_float_edges  # noqa: E402
from firmware_export.export import export_model  # noqa: E402
from targets.boards import get_board  # noqa: E402
from targets.build import build_host  # noqa: E402

WORK = session_tmpdir("es_fw_tests_")


def host_board() -> dict:
    """The host profile without its toolchain: export_model then skips its code-size compile."""
    board = get_board("host").to_dict()
    board.pop("toolchain")
    return board


def variant(graph, seed: int):
    """Same structure, other int8 weights (each weight moved by -3..+3, kept in [-127, 127])."""
    rng = np.random.default_rng(seed)
    g = copy.deepcopy(graph)
    for t in g.tensors.values():
        if t.data is not None and t.dtype == "int8" and t.bits == 8:
            moved = t.data.astype(np.int16) + rng.integers(-3, 4, t.data.shape)
            t.data = np.clip(moved, -127, 127).astype(np.int8)
    assert g.structure_hash() == graph.structure_hash() and g.graph_hash() != graph.graph_hash()
    return g


def expected(graph, x: np.ndarray) -> bytes:
    """Reference interpreter output (int8 outputs back to back) for input ``x``."""
    name = strip_float_edges(graph).inputs[0]
    values = reference.run(graph, {name: x})
    outs = strip_float_edges(graph).outputs
    return b"".join(np.ascontiguousarray(values[n]).astype(np.int8).tobytes() for n in outs)


@functools.lru_cache(maxsize=None)
def small_model():
    """(graphs [compiled-in, B, C], input) for the multi-op test network (6x6x3 input)."""
    g, inputs = random_multi_op_graph(np.random.default_rng(1))
    return [g, variant(g, 11), variant(g, 12)], next(iter(inputs.values()))


@functools.lru_cache(maxsize=None)
def small_firmware(sanitize: bool = False) -> Path:
    """Host firmware compiled with the small model's graph A built in."""
    graphs, _ = small_model()
    exp = WORK / "export_small"
    if not (exp / "c" / "model.h").is_file():
        export_model(graphs[0], exp, host_board(), formats=["c"])
    return build_host(exp, WORK / f"fw_small_{int(sanitize)}", sanitize=sanitize).elf


@functools.lru_cache(maxsize=None)
def small_blobs() -> list[bytes]:
    graphs, _ = small_model()
    return [write_blob(g) for g in graphs]


@functools.lru_cache(maxsize=None)
def resnet8_export():
    """(graph, input, export folder) for the ResNet-8 shaped network (32x32x3 input)."""
    g, inputs = resnet8_graph(np.random.default_rng(8))
    exp = WORK / "export_r8"
    export_model(g, exp, host_board(), formats=["c"])
    return g, next(iter(inputs.values())), exp


def resnet8():
    """(graph, input, host firmware) for the ResNet-8 shaped network."""
    g, x, exp = resnet8_export()
    return g, x, _resnet8_host(exp)


@functools.lru_cache(maxsize=None)
def _resnet8_host(exp: Path) -> Path:
    return build_host(exp, WORK / "fw_r8").elf
