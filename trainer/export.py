"""ONNX export of a trained classifier, with a parity check against PyTorch.

The model is exported from a CPU float32 eval-mode copy (so CUDA, AMP, channels_last,
``torch.compile`` and DDP models all export the same way and the caller's model is left
as it was) with the TorchScript exporter at the requested opset. That exporter folds
BatchNorm into the preceding Conv and emits ``GlobalAveragePool`` + ``Flatten`` + ``Gemm``:
the plain graph the INT8 stage and the IntGraph importer expect. (On torch 2.13 the dynamo
exporter cannot down-convert its graph to opset 17, emits ReduceMean instead of
GlobalAveragePool and needs seconds per model.) The input is named ``input``, the output
``logits``, and the batch axis is dynamic.

Nothing is written until the parity check has passed: the ONNX model is checked with
``onnx.checker``, run in onnxruntime on the caller's images (first at batch size 1, which
differs from the trace batch, then in larger batches) and compared with PyTorch.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from edgesmith.errors import ExportError
from trainer.checkpoint import atomic_write_bytes

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_OPSET = 17
_TRACE_BATCH = 2  # parity runs batch 1 first, so a batch axis frozen at trace time is caught
_PARITY_BATCH = 64


@dataclass
class ParityReport:
    """How closely onnxruntime reproduces PyTorch's logits on the parity images."""

    max_abs_diff: float
    top1_agreement: float  # fraction of images where argmax matches
    num_images: int
    tolerance: float
    passed: bool

    def to_dict(self) -> dict:
        """The report as a JSON-serialisable dict (for the run manifest)."""
        return asdict(self)


def export_onnx(
    model: nn.Module,
    out_path: str | os.PathLike,
    *,
    input_shape: tuple[int, int, int],
    opset: int = 17,
    parity_inputs: torch.Tensor | None = None,
    tolerance: float = 1e-3,
    min_top1_agreement: float = 0.99,
) -> ParityReport | None:
    """Export ``model`` to a single-file ONNX model at ``out_path`` and check parity.

    ``input_shape`` is (channels, height, width). With ``parity_inputs`` (an NCHW batch of
    real images) the ONNX model must reproduce PyTorch's logits within ``tolerance`` and
    agree on the top-1 class for at least ``min_top1_agreement`` of the images, otherwise
    :class:`ExportError` is raised and nothing is written. Returns the parity report, or
    None when no parity inputs were given.
    """
    input_shape = _check_input_shape(input_shape)
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: EdgeSmith exports at opset >= {MIN_OPSET}; pass opset={MIN_OPSET}")
    if parity_inputs is not None:
        parity_inputs = parity_inputs.detach().to("cpu", torch.float32).contiguous()
        if parity_inputs.ndim != 4 or tuple(parity_inputs.shape[1:]) != input_shape or len(parity_inputs) == 0:
            raise ExportError(
                f"parity_inputs must be a non-empty (N, {', '.join(map(str, input_shape))}) batch, "
                f"got shape {tuple(parity_inputs.shape)}; pass images shaped like the model input"
            )

    cpu_model = _cpu_float_copy(model)
    proto = _export_proto(cpu_model, input_shape, opset)
    _materialise_shared_initializers(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported ONNX model is invalid: {e}") from e
    data = proto.SerializeToString()

    report = None
    if parity_inputs is not None:
        report = _parity(cpu_model, data, parity_inputs, tolerance, min_top1_agreement)
        if not report.passed:
            raise ExportError(
                f"ONNX export of {type(cpu_model).__name__} does not match PyTorch on {report.num_images} images: "
                f"max |logit diff| {report.max_abs_diff:.3g} (tolerance {tolerance:g}), top-1 agreement "
                f"{report.top1_agreement:.2%} (required {min_top1_agreement:.2%}); {out_path} was not written "
                "(any previous file there is unchanged). "
                "Check the model's forward for tracing-dependent or data-dependent behaviour."
            )
    try:
        atomic_write_bytes(out_path, data)
    except OSError as e:
        raise ExportError(f"could not write {out_path}: {e}; check free disk space and permissions") from e
    return report


class OnnxClassifier:
    """An ONNX classifier loaded once into onnxruntime (CPU), run on batch after batch."""

    def __init__(self, onnx_path: str | os.PathLike) -> None:
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise ExportError(f"no ONNX model at {self.path}; `edgesmith train` writes model.onnx into the run directory")
        try:
            self.session = _session(str(self.path))
        except Exception as e:  # onnxruntime raises its own pybind error types
            raise ExportError(f"onnxruntime cannot load {self.path}: {e}") from e

    def logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """float32 logits for NCHW ``images`` (rank, channels and size checked against the model)."""
        return _run_session(self.session, images, batch_size, str(self.path))


def onnx_logits(onnx_path: str | os.PathLike, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Run an ONNX classifier in onnxruntime (CPU) over NCHW ``images`` and return float32 logits.

    The images' rank, channels and size are checked against the model's declared input
    shape. Models with a fixed batch size are fed in batches of exactly that size.
    """
    return OnnxClassifier(onnx_path).logits(images, batch_size)


# --------------------------------------------------------------------------- export


def _check_input_shape(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ExportError(f"input_shape must be (channels, height, width) of positive ints, got {input_shape!r}")
    return shape  # type: ignore[return-value]


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile's OptimizedModule keeps the eager module in _orig_mod; DDP keeps it in .module.
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def _cpu_float_copy(model: nn.Module) -> nn.Module:
    """A CPU float32 contiguous eval-mode copy, leaving the caller's model (mode, device, dtype) untouched."""
    eager = _unwrap(model)
    with torch.no_grad():
        dup = copy.deepcopy(eager)
        dup = dup.to(device="cpu", dtype=torch.float32, memory_format=torch.contiguous_format)
    return dup.eval()


def _export_proto(model: nn.Module, input_shape: tuple[int, int, int], opset: int) -> onnx.ModelProto:
    # A private generator: exporting must not consume the training run's global RNG stream.
    gen = torch.Generator().manual_seed(0)
    example = torch.randn((_TRACE_BATCH, *input_shape), generator=gen)
    buf = io.BytesIO()
    try:
        # The exporter's deprecation and tracer warnings are not actionable for the user.
        with warnings.catch_warnings(), torch.no_grad(), torch.autocast("cpu", enabled=False):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                buf,
                dynamo=False,  # see module docstring: exact opset, BN folded, GlobalAveragePool
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
    except Exception as e:  # tracing and symbolic errors come in many types
        raise ExportError(
            f"torch.onnx could not export {type(model).__name__} at opset {opset}: {e}; "
            "the model may use an operation ONNX lacks or Python control flow on tensor values."
        ) from e
    proto = onnx.load_model_from_string(buf.getvalue())
    if len(proto.graph.output) != 1:
        raise ExportError(f"{type(model).__name__} returns {len(proto.graph.output)} outputs; a classifier must return one logits tensor")
    return proto


def _materialise_shared_initializers(proto: onnx.ModelProto) -> None:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer.

    Constant folding deduplicates equal tensors (e.g. the zero biases of a freshly folded
    BatchNorm) and routes them through Identity nodes; a per-node quantizer would then give
    one shared bias two different scales.
    """
    inits = {t.name: t for t in proto.graph.initializer}
    keep, sources = [], set()
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            arr = numpy_helper.to_array(inits[node.input[0]])
            proto.graph.initializer.append(numpy_helper.from_array(arr.copy(), name=node.output[0]))
            sources.add(node.input[0])
        else:
            keep.append(node)
    if not sources:
        return
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    used = {name for n in keep for name in n.input} | {o.name for o in proto.graph.output}
    for name in sources - used:  # a source only reached through Identity is now dead weight
        proto.graph.initializer.remove(inits[name])


# --------------------------------------------------------------------------- parity


def _session(model: str | bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: keep ORT's optimizer notices out of the CLI output
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def _parity(model: nn.Module, data: bytes, images: torch.Tensor, tolerance: float, min_top1: float) -> ParityReport:
    with torch.no_grad():
        expected = torch.cat([model(chunk) for chunk in images.split(_PARITY_BATCH)]).numpy()
    try:
        session = _session(data)
    except Exception as e:
        raise ExportError(f"onnxruntime cannot load the exported model: {e}") from e
    x = images.numpy()
    # Batch 1 first: it differs from the trace batch, proving the batch axis is dynamic.
    got = np.concatenate([_run_session(session, x[:1], 1, "the exported model"),
                          _run_session(session, x[1:], _PARITY_BATCH, "the exported model")])
    if got.shape != expected.shape:
        raise ExportError(
            f"the exported model returns logits of shape {got.shape} for {len(x)} images, PyTorch {expected.shape}; "
            "the batch axis was probably frozen at trace time (e.g. a reshape to a fixed batch size in forward)"
        )
    max_diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    agreement = float(np.mean(got.argmax(axis=1) == expected.argmax(axis=1)))
    passed = bool(np.isfinite(max_diff) and max_diff <= tolerance and agreement >= min_top1)
    return ParityReport(max_diff, agreement, len(x), tolerance, passed)


def _run_session(session: ort.InferenceSession, images: np.ndarray, batch_size: int, where: str) -> np.ndarray:
    meta = session.get_inputs()[0]
    declared = list(meta.shape)
    images = np.asarray(images)
    _check_images(images, declared, where)
    dtype = np.float16 if meta.type == "tensor(float16)" else np.float32
    images = images.astype(dtype, copy=False)
    fixed_batch = declared[0] if isinstance(declared[0], int) and declared[0] > 0 else None
    step = fixed_batch or max(1, int(batch_size))
    outputs = []
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        n = len(chunk)
        if fixed_batch and n < fixed_batch:  # pad the last chunk of a fixed-batch model
            chunk = np.concatenate([chunk, np.zeros((fixed_batch - n, *chunk.shape[1:]), dtype)])
        try:
            out = session.run(None, {meta.name: np.ascontiguousarray(chunk)})[0]
        except Exception as e:
            raise ExportError(f"onnxruntime failed to run {where} on a batch of {len(chunk)}: {e}") from e
        outputs.append(np.asarray(out, dtype=np.float32)[:n])
    if not outputs:  # no images: an empty result with the declared class axis
        tail = [d if isinstance(d, int) else 0 for d in session.get_outputs()[0].shape[1:]]
        return np.zeros((0, *tail), np.float32)
    return np.concatenate(outputs)


def _check_images(images: np.ndarray, declared: list, where: str) -> None:
    shown = "(" + ", ".join(str(d) if isinstance(d, int) else "N" for d in declared) + ")"
    if images.ndim != len(declared):
        raise ExportError(
            f"{where} expects {len(declared)}-D input {shown}, got {images.ndim}-D images of shape {images.shape}; "
            "pass an NCHW batch"
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise ExportError(
            f"{where} expects float images (normalised as in training), got dtype {images.dtype}; "
            "apply the evaluation transform first"
        )
    for axis, (want, have) in enumerate(zip(declared[1:], images.shape[1:]), start=1):
        if isinstance(want, int) and want != have:
            what = {1: "channels", 2: "height", 3: "width"}.get(axis, f"axis {axis}")
            raise ExportError(
                f"{where} expects input {shown}, got images of shape {images.shape}: {what} {have} instead of {want}; "
                "resize or convert the images to the model's input shape"
            )
