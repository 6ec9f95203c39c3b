"""Checkpoints as safetensors files: weights, training state and optimizer state, never pickle.

A run directory holds two files:

* ``checkpoint.safetensors``: the model weights as ``model.<param>`` tensors, extra tensors
  (EMA weights, RNG states) as ``extra.<name>``, and in the safetensors metadata the format
  tag, the EdgeSmith version, the model name + builder args and the JSON training state.
* ``optimizer.safetensors`` (optional): ``optimizer.state_dict()`` flattened to
  ``state.<param_index>.<key>`` tensors, with everything else (scalars, ``param_groups``)
  as JSON metadata.

Every write goes to a temporary file in the same directory, is fsynced and then renamed,
so a crash leaves either the old file or the new one. Both files carry the same random
``save_id``; the optimizer file is written first, so a crash between the two writes leaves
an old model with a new optimizer state, which :func:`load_checkpoint` detects and refuses.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

import edgesmith
from edgesmith.errors import CheckpointError
from trainer.models import build_model

CHECKPOINT_FILE = "checkpoint.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
FORMAT = "edgesmith-checkpoint"
OPTIMIZER_FORMAT = "edgesmith-optimizer"
FORMAT_VERSION = 1
_MAX_LISTED = 10  # keys listed per category in a state-dict mismatch error
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP/DataParallel


@dataclass
class Checkpoint:
    """Everything :func:`save_checkpoint` stored, as read back by :func:`load_checkpoint`."""

    model_name: str
    model_args: dict
    state_dict: dict[str, torch.Tensor]
    train_state: dict
    extra_tensors: dict[str, torch.Tensor]
    optimizer_state: dict | None
    path: Path | None = field(default=None, compare=False)


# --------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync and rename.

    Raises ``OSError`` (callers wrap it in their own error class); the temp file never
    outlives a failure and an existing file at ``path`` is left untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; not possible (nor needed) everywhere.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_safetensors_atomic(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write tensors + str->str metadata as a safetensors file, atomically (temp file + rename).

    Tensors are copied to contiguous CPU tensors first: safetensors refuses views and
    tensors that share storage (tied weights, optimizer buffers aliasing parameters).
    """
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise CheckpointError(f"safetensors metadata must map str to str; these keys do not: {bad[:_MAX_LISTED]}")
    cpu = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"cannot save '{name}' to {path}: expected a torch.Tensor, got {type(t).__name__}")
        cpu[name] = t.detach().to("cpu").clone(memory_format=torch.contiguous_format)
    try:
        data = safetensors_bytes(cpu, metadata=metadata)
    except (SafetensorError, ValueError, TypeError) as e:
        raise CheckpointError(f"cannot serialise tensors for {path}: {e}") from e
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise CheckpointError(
            f"could not write {path}: {e}; any previous file there is unchanged. "
            "Check free disk space and write permissions of the run directory."
        ) from e


# --------------------------------------------------------------------------- save


def save_checkpoint(
    run_dir: str | os.PathLike,
    *,
    model_name: str,
    model_args: dict,
    state_dict: dict[str, torch.Tensor],
    train_state: dict | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Save a checkpoint into ``run_dir`` and return the path of ``checkpoint.safetensors``.

    ``model_args`` and ``train_state`` must be JSON-serialisable. ``optimizer_state`` is an
    ``optimizer.state_dict()``; when given it goes to ``optimizer.safetensors`` (written
    first), otherwise a stale optimizer file from an earlier save is removed.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_id = uuid.uuid4().hex
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "edgesmith_version": edgesmith.__version__,
        "save_id": save_id,
        "model_name": str(model_name),
        "model_args": _to_json(model_args, "model_args"),
        "train_state": _to_json(train_state or {}, "train_state"),
    }
    tensors = {f"model.{k}": v for k, v in _strip_wrapper_prefix(state_dict).items()}
    tensors.update({f"extra.{k}": v for k, v in (extra_tensors or {}).items()})

    opt_path = run_dir / OPTIMIZER_FILE
    if optimizer_state is not None:
        opt_tensors, opt_json = _flatten_optimizer_state(optimizer_state)
        opt_meta = {"format": OPTIMIZER_FORMAT, "format_version": str(FORMAT_VERSION),
                    "save_id": save_id, "optimizer": opt_json}
        write_safetensors_atomic(opt_path, opt_tensors, opt_meta)
    else:
        # Old model + no optimizer is a consistent weights-only checkpoint if we crash next.
        opt_path.unlink(missing_ok=True)
    ckpt_path = run_dir / CHECKPOINT_FILE
    write_safetensors_atomic(ckpt_path, tensors, meta)
    return ckpt_path


def _to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{what} must be JSON-serialisable (dicts, lists, str, numbers, bool, None): {e}; "
            "store tensors in extra_tensors instead."
        ) from e


def _strip_wrapper_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # A state dict taken from torch.compile or DDP wrappers would not load into a plain model.
    stripped = True
    while stripped and state_dict:  # DDP around a compiled model nests both prefixes
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                stripped = True
    return state_dict


# --------------------------------------------------------------------------- optimizer state


def _flatten_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], str]:
    """Split an optimizer state_dict into tensors and a JSON string referencing them."""
    if not isinstance(state, dict) or "state" not in state or "param_groups" not in state:
        raise CheckpointError("optimizer_state must be an optimizer.state_dict() with 'state' and 'param_groups'")
    tensors: dict[str, torch.Tensor] = {}
    per_param = {str(idx): {key: _encode(val, f"state.{idx}.{key}", tensors) for key, val in entry.items()}
                 for idx, entry in state["state"].items()}
    groups = [{key: _encode(val, f"param_groups.{i}.{key}", tensors) for key, val in group.items()}
              for i, group in enumerate(state["param_groups"])]
    return tensors, json.dumps({"state": per_param, "param_groups": groups})


def _encode(value: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    # Tensors go to the safetensors body and are referenced by name; tuples are tagged
    # because JSON would turn them into lists (load_state_dict keeps values as saved).
    if isinstance(value, torch.Tensor):
        tensors[name] = value
        return {"__tensor__": name}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{name}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{name}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _encode(v, f"{name}.{k}", tensors) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"cannot store optimizer state value '{name}' of type {type(value).__name__}")


def _decode(value: Any, tensors: dict[str, torch.Tensor], path: Path) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            name = value["__tensor__"]
            if name not in tensors:
                raise CheckpointError(f"{path} is damaged: the optimizer state refers to tensor '{name}', which is missing")
            return tensors[name]
        if "__tuple__" in value:
            return tuple(_decode(v, tensors, path) for v in value["__tuple__"])
        return {k: _decode(v, tensors, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors, path) for v in value]
    return value


def _unflatten_optimizer_state(tensors: dict[str, torch.Tensor], opt_json: str, path: Path) -> dict:
    data = _parse_json(opt_json, "optimizer", path)
    state = {int(idx) if idx.isdigit() else idx: _decode(entry, tensors, path) for idx, entry in data["state"].items()}
    return {"state": state, "param_groups": _decode(data["param_groups"], tensors, path)}


# --------------------------------------------------------------------------- load


def load_checkpoint(path: str | os.PathLike, *, load_optimizer: bool = True) -> Checkpoint:
    """Load a checkpoint from a run directory or a ``.safetensors`` file.

    The optimizer state is read from ``optimizer.safetensors`` beside the checkpoint when
    present (and ``load_optimizer`` is true); it must carry the checkpoint's ``save_id``.
    """
    ckpt_path = _resolve(Path(path))
    tensors, meta = _read_safetensors(ckpt_path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{ckpt_path} is a safetensors file but not an EdgeSmith checkpoint "
            f"(metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r}); "
            "use a checkpoint written by EdgeSmith training (trainer.checkpoint.save_checkpoint)."
        )
    _check_version(meta, ckpt_path)
    missing = [k for k in ("model_name", "model_args", "train_state", "save_id") if k not in meta]
    if missing:
        raise CheckpointError(f"{ckpt_path} is damaged: its metadata lacks {missing}; re-save it from training")

    state_dict = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    optimizer_state = None
    opt_path = ckpt_path.parent / OPTIMIZER_FILE
    if load_optimizer and opt_path.is_file():
        optimizer_state = _load_optimizer(opt_path, meta["save_id"], ckpt_path)
    return Checkpoint(
        model_name=meta["model_name"],
        model_args=_parse_json(meta["model_args"], "model_args", ckpt_path),
        state_dict=state_dict,
        train_state=_parse_json(meta["train_state"], "train_state", ckpt_path),
        extra_tensors=extra,
        optimizer_state=optimizer_state,
        path=ckpt_path,
    )


def _resolve(path: Path) -> Path:
    candidate = path / CHECKPOINT_FILE if path.is_dir() else path
    if not candidate.is_file():
        where = f"{candidate} (inside run directory {path})" if path.is_dir() else str(candidate)
        raise CheckpointError(f"no checkpoint found: looked for {where}; pass a run directory or its {CHECKPOINT_FILE}")
    if candidate.name == OPTIMIZER_FILE:
        raise CheckpointError(f"{candidate} holds optimizer state only; pass the run directory or {CHECKPOINT_FILE}")
    return candidate


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"cannot read {path}: not a valid safetensors file ({e}); it may be truncated by an "
            "interrupted copy or not a checkpoint at all. Copy it again or use another checkpoint."
        ) from e
    return tensors, meta


def _check_version(meta: dict[str, str], path: Path) -> None:
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{path} has an invalid format_version {meta.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format {version}, this EdgeSmith ({edgesmith.__version__}) reads up to "
            f"{FORMAT_VERSION}; it was written by EdgeSmith {meta.get('edgesmith_version', '?')}: upgrade EdgeSmith."
        )


def _parse_json(text: str, what: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is damaged: metadata '{what}' is not valid JSON ({e})") from e


def _load_optimizer(opt_path: Path, save_id: str, ckpt_path: Path) -> dict:
    tensors, meta = _read_safetensors(opt_path)
    if meta.get("format") != OPTIMIZER_FORMAT or "optimizer" not in meta:
        raise CheckpointError(f"{opt_path} is not an EdgeSmith optimizer state (metadata 'format' is {meta.get('format')!r})")
    _check_version(meta, opt_path)
    if meta.get("save_id") != save_id:
        raise CheckpointError(
            f"the optimizer state in {opt_path} does not belong to the checkpoint {ckpt_path} "
            f"(save_id {meta.get('save_id')!r} vs {save_id!r}): a save was interrupted between the two files. "
            "The weights are valid: resume from the weights only by removing or renaming "
            f"{opt_path.name} (or call load_checkpoint(..., load_optimizer=False))."
        )
    return _unflatten_optimizer_state(tensors, meta["optimizer"], opt_path)


# --------------------------------------------------------------------------- model


def build_model_from_checkpoint(ckpt: Checkpoint) -> torch.nn.Module:
    """Rebuild the model named in the checkpoint, load its weights strictly and return it in eval mode."""
    try:
        model = build_model(ckpt.model_name, **ckpt.model_args)
    except TypeError as e:
        raise CheckpointError(
            f"checkpoint {ckpt.path or ''} has model_args {ckpt.model_args} that model '{ckpt.model_name}' "
            f"does not accept ({e}); expected keys: num_classes, width_mult, in_channels"
        ) from e
    _check_state_dict_fits(model, ckpt)
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.eval()


def _check_state_dict_fits(model: torch.nn.Module, ckpt: Checkpoint) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in ckpt.state_dict]
    unexpected = [k for k in ckpt.state_dict if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
              for k, v in ckpt.state_dict.items() if k in expected and v.shape != expected[k].shape]
    if not (missing or unexpected or shapes):
        return
    parts = [f"{title} ({len(items)}): {_listing(items)}"
             for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
             if items]
    raise CheckpointError(
        f"the weights in checkpoint {ckpt.path or ''} do not fit model '{ckpt.model_name}' with args {ckpt.model_args}; "
        + "; ".join(parts)
        + ". Check that model name and args match the run that wrote these weights."
    )


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")
