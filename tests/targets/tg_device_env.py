"""Test helpers for the device-protocol tests: small models, their blobs, host firmware builds.

A *model pair* is a random multi-op int8 graph (residual ADD, concat, depthwise, channel shuffle,
upsample, pool, MEAN, FC, SOFTMAX) and the same architecture retrained and requantized
(``fe_retrain.retrained``): one firmware runs both blobs, so flashing one then the other
switches the model the device runs. Builds are cached per pytest session in a temp folder.
"""
from __future__ import annotations

import dataclasses
import functools
import shutil
import sys
from pathlib import Path

from conftest import session_tmpdir
import numpy as np
import pytest

_FE_TESTS = Path(__file__).resolve().parents[1] / "firmware_export"
if str(_FE_TESTS) not in sys.path:
    sys.path.insert(0, str(_FE_TESTS))

from fe_retrain import retrained  # noqa: E402
from random_graphs import random_multi_op_graph, resnet8_graph  # noqa: E402

from firmware_export import reference  # noqa: E402
from firmware_export.blob import write_blob  # noqa: E402
from firmware_export.intgraph import IntGraph  # noqa: E402


@dataclasses.dataclass
class ModelPair:
    """Firmware built for ``old``'s structure; blobs of ``old`` and ``new`` (same structure)."""

    old: IntGraph
    new: IntGraph
    old_blob: bytes
    new_blob: bytes
    x: np.ndarray
    export_dir: Path

    def expected(self, graph: IntGraph, x: np.ndarray | None = None) -> bytes:
        """The reference interpreter's output bytes (graph output order) for ``x``."""
        out = reference.run(graph, {graph.inputs[0]: self.x if x is None else x})
        return b"".join(np.ascontiguousarray(out[n]).tobytes() for n in graph.outputs)


def have_gcc() -> bool:
    return shutil.which("gcc") is not None


def export_graph(graph: IntGraph, out_dir: Path) -> Path:
    """C sources + weights.bin of ``graph`` for the host board (no .tflite: not needed here)."""
    from firmware_export.export import export_model
    from targets.boards import get_board

    export_model(graph, out_dir, get_board("host"), formats=["c", "blob"])
    return out_dir


@functools.lru_cache(maxsize=None)
def _build_root() -> Path:
    import tempfile

    return session_tmpdir("tg_device_env_")


@functools.lru_cache(maxsize=None)
def model_pair(seed: int = 5, kind: str = "multi") -> ModelPair:
    """The (cached) model pair for ``seed`` and its export folder; ``kind`` "multi" (the small
    multi-op net, 3 KB blob) or "resnet8" (78 KB of weights)."""
    rng = np.random.default_rng(seed)
    old, inputs = random_multi_op_graph(rng) if kind == "multi" else resnet8_graph(rng)
    new = retrained(old, rng)
    assert old.structure_hash() == new.structure_hash() and old.graph_hash() != new.graph_hash()
    out = export_graph(old, _build_root() / f"pair-{kind}-{seed}")
    x = inputs[old.inputs[0]]
    return ModelPair(old, new, write_blob(old), write_blob(new), x, out)


@functools.lru_cache(maxsize=None)
def resnet8(seed: int = 3) -> tuple[IntGraph, np.ndarray, Path]:
    """A ResNet-8 shaped int8 graph, its input and its export folder (cached)."""
    graph, inputs = resnet8_graph(np.random.default_rng(seed))
    out = export_graph(graph, _build_root() / f"resnet8-{seed}")
    return graph, inputs[graph.inputs[0]], out


@functools.lru_cache(maxsize=None)
def host_firmware(export_dir: Path) -> Path:
    """The host firmware executable for an export folder (built once per session)."""
    from targets.build import build_firmware

    if not have_gcc():
        pytest.skip("gcc is not installed: the host firmware cannot be built")
    return build_firmware(export_dir, "host", export_dir / "fw-host").elf


#: Device timeouts for the host build on a pty, which answers within milliseconds: a lost frame
#: then costs 0.25 s instead of the defaults sized for emulators and real boards
HOST_TIMEOUTS = {"response_timeout_s": 0.25, "byte_time_s": 1e-5,
                 "long_timeouts_s": {"ERASE": 2.0, "VERIFY": 2.0, "COMMIT": 2.0, "INFER": 2.0}}


class RecordingPort:
    """A pyserial port that records the size of every write made to it (everything else is the
    real port's). Not a SerialBase, so the client writes through ``write`` rather than os.write."""

    def __init__(self, port):
        self._port = port
        self.sizes: list[int] = []

    def write(self, data):
        self.sizes.append(len(data))
        return self._port.write(data)

    def __getattr__(self, name):
        return getattr(self._port, name)
