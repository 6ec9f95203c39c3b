"""Quantization-aware training that exports QDQ ONNX with the same conventions as PTQ.

How the trained model and the exported QDQ agree exactly:

1. PTQ runs first on the FP32 ONNX; its QuantizeLinear nodes say *which* activations the scheme
   quantizes (after ReLU fusion, per residual add, pool, FC...).
2. The PyTorch model is traced with ``torch.fx``; Conv+BN pairs become :class:`QatConvBn2d`,
   other convs / linears get weight fake quantization.
3. Each quantized ONNX activation is found in the FX graph by value (same batch through both,
   same shape, equal within float tolerance) and an :class:`ActFakeQuant` is inserted there,
   initialised with the calibrated range. ONNX weight initializers are matched to the QAT modules
   the same way. Nothing depends on tensor names, so it works for any traceable model.
4. Fine-tuning: BN statistics update until ``freeze_bn_epoch``, observers until
   ``freeze_observer_epoch``; both then stay fixed so the last epochs train the exported function.
5. Export: the folded weights are written into the matched initializers of the FP32 ONNX graph and
   the learned ranges become the activation ranges of the same QDQ quantizer PTQ uses — so the
   file has the identical structure, scheme and checks.
"""
from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.fx as fx
from onnx import numpy_helper
from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData
from torch import nn

from edgesmith.errors import ExportError
from quantize.calibrators import compute_ranges
from quantize.fake_quant import WEIGHTED_QAT_MODULES, ActFakeQuant, QatConv2d, QatConvBn2d, QatLinear
from quantize.ptq import Int8Result, preprocess_model, quantize_int8
from quantize.sensitivity import with_extra_outputs, quant_points
from trainer.data.augment import Normalizer, augment_batch, batch_generator
from trainer.data.loader import make_loader

MATCH_RTOL = 1e-3  # relative to the tensor's max |value|
#: ops whose quantized output shares its input's scale and zero point in the QDQ graph (they move or
#: pick values, never compute new ones): a quant point after one needs no fake quantizer of its own
SAME_SCALE_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Gather",
                            "MaxPool", "Identity", "Dropout"})


@dataclass
class QatSettings:
    epochs: int = 2
    lr: float = 1e-4  # ~0.1% of a typical training peak: QAT fine-tunes a converged model, it does not retrain
    batch_size: int = 128
    weight_decay: float = 5e-5
    freeze_bn_epoch: int | None = None  # default: the last epoch runs with frozen BN
    freeze_observer_epoch: int | None = None  # default: the last epoch runs with frozen ranges
    crop_padding: int = 4
    flip: bool = True
    seed: int = 0
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    #: calibrator for the starting activation ranges (any of quantize.calibrators.METHODS)
    init_method: str = "minmax"


@dataclass
class QatResult:
    int8: Int8Result
    epochs: int
    seconds: float
    matched_activations: int
    total_activations: int
    history: list[dict] = field(default_factory=list)
    #: the fine-tuned model with fake quantization (eval mode, CPU): what the QDQ file computes
    model: nn.Module | None = None

    def to_dict(self) -> dict:
        return {**self.int8.to_dict(), "qat_epochs": self.epochs, "qat_seconds": round(self.seconds, 1),
                "qat_matched_activations": f"{self.matched_activations}/{self.total_activations}",
                "qat_history": self.history}


# ----------------------------------------------------------------------------- preparation
def fuse_for_qat(model: nn.Module) -> fx.GraphModule:
    """Trace ``model``; Conv+BN -> QatConvBn2d, other Conv2d -> QatConv2d, Linear -> QatLinear."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:
        raise ExportError(f"QAT needs a torch.fx-traceable model; tracing {type(model).__name__} failed: {e}") from e
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Conv2d):
            continue
        users = list(node.users)
        bn_node = users[0] if len(users) == 1 else None
        if bn_node is not None and bn_node.op == "call_module" and isinstance(modules.get(bn_node.target), nn.BatchNorm2d):
            _set_module(gm, node.target, QatConvBn2d(modules[node.target], modules[bn_node.target]))
            bn_node.replace_all_uses_with(node)
            gm.graph.erase_node(bn_node)
        else:
            _set_module(gm, node.target, QatConv2d(modules[node.target]))
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), nn.Linear):
            _set_module(gm, node.target, QatLinear(modules[node.target]))
    gm.graph.lint()
    gm.recompile()
    return gm


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent_name, _, attr = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, attr, module)


class _Capture(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, torch.Tensor] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.values[n] = out.detach().clone()  # a later in-place op (ReLU(inplace=True)) must not change it
        return out


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    tol = MATCH_RTOL * max(float(np.abs(a).max(initial=0.0)), 1e-6)
    return float(np.abs(a - b).max(initial=0.0)) <= tol


def _set_quantization(gm: nn.Module, on: bool) -> None:
    for m in gm.modules():
        if isinstance(m, ActFakeQuant):
            m.enabled = on
        elif isinstance(m, WEIGHTED_QAT_MODULES):
            m.quantize_weight = on


def insert_fake_quant(gm: fx.GraphModule, pre_onnx: onnx.ModelProto, points: Sequence[str],
                      ranges: dict[str, tuple[float, float]], sample: np.ndarray) -> dict[str, str]:
    """Put an ActFakeQuant after the FX node matching each ONNX quant point; returns point -> module name."""
    _set_quantization(gm, False)
    gm.eval()
    cap = _Capture(gm)
    with torch.no_grad():
        cap.run(torch.from_numpy(sample))
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    sess = _session(with_extra_outputs(pre_onnx, list(points)))
    input_name = sess.get_inputs()[0].name
    onnx_values = dict(zip(points, sess.run(list(points), {input_name: sample})))
    matched: dict[str, str] = {}
    for k, point in enumerate(points):
        target = onnx_values[point]
        hits = [n for n, v in cap.values.items() if _close(v.numpy(), target)]
        if not hits:
            continue
        node = max(hits, key=order.__getitem__)  # the last op producing these values (after ReLU)
        name = f"act_fq_{k}"
        lo, hi = ranges.get(point, (None, None))
        gm.add_submodule(name, ActFakeQuant(lo, hi))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)
        matched[point] = name
    gm.graph.lint()
    gm.recompile()
    _set_quantization(gm, True)
    return matched


def match_weights(gm: fx.GraphModule, pre_onnx: onnx.ModelProto) -> dict[str, tuple[str, str | None, bool]]:
    """ONNX weight initializer -> (QAT module name, bias initializer, transposed) by comparing values."""
    inits = {i.name: numpy_helper.to_array(i) for i in pre_onnx.graph.initializer}
    modules = {name: m for name, m in gm.named_modules() if isinstance(m, WEIGHTED_QAT_MODULES)}
    folded = {name: tuple(t.numpy() for t in m.folded()) for name, m in modules.items()}
    result = {}
    for node in pre_onnx.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        trans = node.op_type == "Gemm" and not any(a.name == "transB" and a.i == 1 for a in node.attribute)
        w_cmp = w.T if trans else w
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
        for name, (fw, _fb) in folded.items():
            if name not in {v[0] for v in result.values()} and _close(fw, w_cmp):
                result[node.input[1]] = (name, bias, trans)
                break
    return result


# ----------------------------------------------------------------------------- training
class QatTask:
    """What QAT fine-tunes on: batches of normalised inputs with targets, and the task's loss.

    The loop in :func:`_train` is the same for every task; a classifier and a detector differ only
    in their batches, loss and the running figure they log.
    """

    steps_per_epoch: int = 1

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, Any]]:
        """The epoch's batches as (normalised NCHW input on the task's device, target)."""
        raise NotImplementedError

    def loss(self, outputs: Any, target: Any) -> tuple[torch.Tensor, dict[str, float], int]:
        """The loss to minimise, figures to sum over the epoch (each weighted by batch size), and
        the batch size (the epoch's figures are divided by the images seen)."""
        raise NotImplementedError

    def summary(self, sums: dict[str, float], count: int) -> dict[str, float]:
        return {k: v / max(1, count) for k, v in sums.items()}


class ClassifierQatTask(QatTask):
    """Cross-entropy on the run's training split with its crop/flip augmentation."""

    def __init__(self, split, image_size, mean: Sequence[float], std: Sequence[float], settings: QatSettings,
                 device: torch.device = torch.device("cpu")) -> None:
        self.s, self.device = settings, device
        self._loss = nn.CrossEntropyLoss()
        self._loader = make_loader(split, batch_size=min(settings.batch_size, len(split)), train=True, device=device,
                                   seed=settings.seed, image_size=tuple(image_size), num_workers=0)
        self._normalizer = Normalizer(list(mean), list(std), device, channels_last=False)
        self.steps_per_epoch = len(self._loader)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, Any]]:
        s = self.s
        for batch, xb, yb in self._loader.iterate(epoch):
            xb = augment_batch(xb, batch_generator(self.device, s.seed, epoch, batch), crop_padding=s.crop_padding,
                               flip=s.flip, cutout_size=0)
            yield self._normalizer(xb), yb

    def loss(self, outputs: Any, target: Any) -> tuple[torch.Tensor, dict[str, float], int]:
        loss = self._loss(outputs, target)
        n = len(target)
        return loss, {"loss": loss.item() * n, "train_top1": float((outputs.argmax(1) == target).sum())}, n


def _train(gm: fx.GraphModule, task: QatTask, s: QatSettings, device: torch.device,
           log: Callable[[str], None]) -> list[dict]:
    decay, no_decay = [], []
    for p in gm.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0}],
                          lr=s.lr, momentum=0.9, nesterov=True)
    freeze_bn = s.freeze_bn_epoch if s.freeze_bn_epoch is not None else max(0, s.epochs - 1)
    freeze_obs = s.freeze_observer_epoch if s.freeze_observer_epoch is not None else max(0, s.epochs - 1)
    history, step, steps = [], 0, max(1, task.steps_per_epoch * s.epochs)
    gm.to(device)
    for epoch in range(s.epochs):
        gm.train()
        for m in gm.modules():
            if isinstance(m, QatConvBn2d):
                m.bn_frozen = epoch >= freeze_bn
            elif isinstance(m, ActFakeQuant):
                m.observe = epoch < freeze_obs
        sums: dict[str, float] = {}
        count = 0
        for xb, target in task.batches(epoch):
            for g in opt.param_groups:
                g["lr"] = s.lr * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
            loss, figures, n = task.loss(gm(xb), target)
            if not torch.isfinite(loss):
                raise ExportError(f"QAT loss became {loss.item()} at epoch {epoch + 1}; try a lower --qat-lr "
                                  f"(now {s.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if s.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(gm.parameters(), s.grad_clip)
            opt.step()
            step += 1
            count += n
            for k, v in figures.items():
                sums[k] = sums.get(k, 0.0) + v
        entry = {"epoch": epoch + 1, **task.summary(sums, count)}
        history.append(entry)
        log(f"QAT epoch {epoch + 1}/{s.epochs}: " + ", ".join(
            f"{k} {v:.2%}" if k.endswith("top1") else f"{k} {v:.4f}" for k, v in entry.items() if k != "epoch"))
    gm.eval()
    return history


# ----------------------------------------------------------------------------- the whole flow
def qat_to_qdq(model: nn.Module, fp32_path: str | Path, out_path: str | Path, *, task: QatTask,
               feeds: Sequence[dict[str, np.ndarray]], settings: QatSettings = QatSettings(), per_channel: bool = True,
               fuse_leaky_relu: bool = True, device: torch.device = torch.device("cpu"), log: Callable[[str], None] = print) -> QatResult:
    """Fine-tune ``model`` (float, the weights behind ``fp32_path``) with fake quantization on ``task``
    (:class:`ClassifierQatTask`, :class:`quantize.qat_detection.DetectorQatTask`); write QDQ at ``out_path``."""
    if not per_channel:
        raise ExportError("QAT trains per-channel weights; drop --per-tensor or use PTQ for per-tensor models")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgesmith-qat-") as tmp:
        tmp = Path(tmp)
        pre = onnx.load(str(preprocess_model(fp32_path, tmp / "pre.onnx")))
        # its QuantizeLinear nodes are the fake-quantization points (none between a conv and a fused LeakyReLU)
        ptq = quantize_int8(fp32_path, tmp / "ptq.onnx", feeds, method="minmax", fuse_leaky_relu=fuse_leaky_relu)
        points = [p[0] for p in quant_points(onnx.load(str(ptq.path)))]
        calibrated = compute_ranges(tmp / "pre.onnx", feeds, settings.init_method)
        ranges = {k: tuple(float(np.asarray(v).reshape(-1)[0]) for v in td.range_value) for k, td in calibrated.data.items()}

        gm = fuse_for_qat(copy.deepcopy(model).float().cpu().eval())  # never train the caller's model
        sample = next(iter(feeds[0].values()))[:16]
        weights = match_weights(gm, pre)
        n_weighted = sum(1 for n in pre.graph.node if n.op_type in ("Conv", "Gemm"))
        if len(weights) != n_weighted:
            raise ExportError(f"QAT could match only {len(weights)} of {n_weighted} conv/FC weights of {fp32_path} to "
                              "the PyTorch model; is model.onnx exported from this checkpoint?")
        matched = insert_fake_quant(gm, pre, points, ranges, sample)
        _check_all_matched(pre, points, matched, fp32_path)
        log(f"QAT: fake quantization at {len(matched)}/{len(points)} activations, {len(weights)} weighted layers")

        history = _train(gm, task, settings, device, log)
        gm.cpu()

        qat_fp32 = _write_folded_weights(pre, gm, weights, tmp / "qat_fp32.onnx", sample)
        modules = dict(gm.named_modules())
        learned = {p: modules[name].range() for p, name in matched.items()}
        data = TensorsData(CalibrationMethod.MinMax, {k: (np.float32(lo), np.float32(hi)) for k, (lo, hi) in learned.items()})
        result = quantize_int8(qat_fp32, out_path, feeds, method="minmax", ranges=data,
                               calibration_images=sum(len(next(iter(f.values()))) for f in feeds),
                               fuse_leaky_relu=fuse_leaky_relu)
    result.notes.append(f"QAT {settings.epochs} epoch(s), lr {settings.lr}")
    return QatResult(result, settings.epochs, time.perf_counter() - t0, len(matched), len(points), history, gm)


def _check_all_matched(pre: onnx.ModelProto, points: Sequence[str], matched: dict[str, str], fp32_path) -> None:
    """Every quantized activation that computes new values must be fake-quantized during training;
    otherwise QAT would train a different function from the one it exports."""
    producer = {out: node for node in pre.graph.node for out in node.output}
    missing = [p for p in points if p not in matched and p in producer and producer[p].op_type not in SAME_SCALE_OPS]
    if missing:
        shown = ", ".join(f"{p} ({producer[p].op_type})" for p in missing[:8])
        raise ExportError(f"QAT could not find {len(missing)} quantized activation(s) of {fp32_path} in the PyTorch "
                          f"model: {shown}{' ...' if len(missing) > 8 else ''}; is model.onnx exported from this "
                          "checkpoint? Use PTQ (--int8) otherwise")


def _write_folded_weights(pre: onnx.ModelProto, gm: fx.GraphModule, weights: dict, path: Path,
                          sample: np.ndarray) -> Path:
    """The FP32 graph with the QAT-trained folded weights; checked against the PyTorch model."""
    m = onnx.ModelProto()
    m.CopyFrom(pre)
    modules = dict(gm.named_modules())
    new_values = {}
    for w_name, (mod_name, b_name, trans) in weights.items():
        w, b = (t.numpy() for t in modules[mod_name].folded())
        new_values[w_name] = w.T if trans else w
        if b_name:
            new_values[b_name] = b
    for init in m.graph.initializer:
        if init.name in new_values:
            init.CopyFrom(numpy_helper.from_array(new_values[init.name].astype(np.float32), init.name))
    onnx.save(m, str(path))
    # parity: the float ONNX with QAT weights must equal the QAT model with quantization switched off
    _set_quantization(gm, False)
    with torch.no_grad():
        ref = _as_arrays(gm(torch.from_numpy(sample)))
    _set_quantization(gm, True)
    sess = _session(m.SerializeToString())
    got = sess.run(None, {sess.get_inputs()[0].name: sample})
    if len(got) != len(ref) or not all(_close(g, r) for g, r in zip(got, ref)):
        diff = max((float(np.abs(g - r).max()) for g, r in zip(got, ref) if g.shape == r.shape), default=float("nan"))
        raise ExportError(f"QAT weights written into ONNX do not reproduce the PyTorch model "
                          f"({len(got)} vs {len(ref)} outputs, max |diff| {diff:.3g}); this is a bug, please report it")
    return path


def _as_arrays(outputs: Any) -> list[np.ndarray]:
    """A model's output(s) — one tensor or a tuple (detector heads) — as numpy arrays."""
    if isinstance(outputs, torch.Tensor):
        return [outputs.numpy()]
    return [o.numpy() for o in outputs]


def _session(model: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
