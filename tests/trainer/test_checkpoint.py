"""Checkpoints: safetensors only, atomic writes, exact optimizer round trip, clear errors."""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

import edgesmith
from edgesmith.errors import CheckpointError
from trainer import checkpoint as ckpt_mod
from trainer.checkpoint import (
    CHECKPOINT_FILE,
    OPTIMIZER_FILE,
    build_model_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_safetensors_atomic,
)
from trainer.models import build_model

ARGS = {"num_classes": 10, "width_mult": 0.5, "in_channels": 3}


def _model(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet8", **{**ARGS, **overrides})


def _save(run_dir, model, **kw):
    return save_checkpoint(run_dir, model_name="resnet8", model_args=ARGS, state_dict=model.state_dict(), **kw)


def test_metadata_and_tensors_round_trip(tmp_path):
    model = _model()
    train_state = {"epoch": 3, "step": 120, "config": {"lr": 0.1, "aug": ["flip", "crop"]}, "metrics": {"acc": 0.5}}
    extra = {"ema.fc.weight": torch.randn(10, 32), "rng.torch": torch.get_rng_state()}
    path = _save(tmp_path, model, train_state=train_state, extra_tensors=extra)

    assert path == tmp_path / CHECKPOINT_FILE
    for where in (tmp_path, path):  # a run directory or the file itself
        ck = load_checkpoint(where)
        assert ck.model_name == "resnet8" and ck.model_args == ARGS
        assert ck.train_state == train_state
        assert ck.optimizer_state is None
        assert set(ck.extra_tensors) == set(extra)
        assert all(torch.equal(ck.extra_tensors[k], v) for k, v in extra.items())
        assert ck.extra_tensors["rng.torch"].dtype == torch.uint8
        assert set(ck.state_dict) == set(model.state_dict())
        assert all(torch.equal(ck.state_dict[k], v) for k, v in model.state_dict().items())

    rebuilt = build_model_from_checkpoint(load_checkpoint(tmp_path))
    assert not rebuilt.training
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt(x), model.eval()(x))


def test_file_is_plain_safetensors_without_pickle(tmp_path, monkeypatch):
    # Any pickle use during save or load fails the test.
    def forbidden(*a, **k):
        raise AssertionError("pickle/torch.save/torch.load must not be used")

    for target, name in ((pickle, "dumps"), (pickle, "loads"), (pickle, "dump"), (pickle, "load"),
                         (torch, "save"), (torch, "load")):
        monkeypatch.setattr(target, name, forbidden)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_steps(model, opt, 1)
    _save(tmp_path, model, optimizer_state=opt.state_dict())
    load_checkpoint(tmp_path)

    for name in (CHECKPOINT_FILE, OPTIMIZER_FILE):
        raw = (tmp_path / name).read_bytes()
        (header_len,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + header_len])
        data_end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        assert 8 + header_len + data_end == len(raw)  # nothing but the header and raw tensor bytes
    header = _header(tmp_path / CHECKPOINT_FILE)
    m = header["__metadata__"]
    assert m["format"] == "edgesmith-checkpoint" and m["edgesmith_version"] == edgesmith.__version__
    assert m["model_name"] == "resnet8" and json.loads(m["model_args"]) == ARGS
    assert all(k.startswith("model.") for k in header if k != "__metadata__")
    assert m["save_id"] == _header(tmp_path / OPTIMIZER_FILE)["__metadata__"]["save_id"]


def _header(path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])


def test_failed_write_leaves_old_checkpoint_intact(tmp_path, monkeypatch):
    old = _model(seed=1)
    _save(tmp_path, old, train_state={"epoch": 1})
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(CheckpointError, match="No space left.*previous file there is unchanged"):
        _save(tmp_path, _model(seed=2), train_state={"epoch": 2})
    monkeypatch.undo()

    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]  # no temp files left
    ck = load_checkpoint(tmp_path)
    assert ck.train_state == {"epoch": 1}
    assert torch.equal(ck.state_dict["fc.weight"], old.state_dict()["fc.weight"])


def _train_steps(model, opt, steps, seed=123):
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x = torch.randn(4, 3, 16, 16, generator=gen)
        y = torch.randint(0, 10, (4,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
        lambda p: torch.optim.AdamW(p, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.05),
    ],
    ids=["sgd-nesterov", "adamw"],
)
def test_optimizer_round_trip_continues_bit_identically(tmp_path, make_opt):
    model = _model()
    opt = make_opt(model.parameters())
    _train_steps(model, opt, 2, seed=1)
    _save(tmp_path, model, optimizer_state=opt.state_dict())

    ck = load_checkpoint(tmp_path)
    resumed = build_model_from_checkpoint(ck)
    resumed_opt = make_opt(resumed.parameters())
    resumed_opt.load_state_dict(ck.optimizer_state)

    _train_steps(model, opt, 3, seed=2)  # the run that was never saved
    _train_steps(resumed, resumed_opt, 3, seed=2)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed_opt.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


def test_optimizer_encoding_keeps_scalars_tuples_and_none(tmp_path):
    state = {
        "state": {0: {"step": 7.0, "exp_avg": torch.ones(3)}, 1: {"momentum_buffer": None, "step": torch.tensor(4.0)}},
        "param_groups": [{"lr": torch.tensor(0.01), "betas": (0.9, 0.999), "params": [0, 1], "foreach": None}],
    }
    _save(tmp_path, _model(), optimizer_state=state)
    got = load_checkpoint(tmp_path).optimizer_state
    assert got["state"][0]["step"] == 7.0 and isinstance(got["state"][0]["step"], float)
    assert torch.equal(got["state"][0]["exp_avg"], torch.ones(3))
    assert got["state"][1]["momentum_buffer"] is None
    assert torch.equal(got["state"][1]["step"], torch.tensor(4.0))
    group = got["param_groups"][0]
    assert group["betas"] == (0.9, 0.999) and isinstance(group["betas"], tuple)
    assert torch.equal(group["lr"], torch.tensor(0.01)) and group["params"] == [0, 1] and group["foreach"] is None
    assert "state.0.exp_avg" in _header(tmp_path / OPTIMIZER_FILE)


def test_optimizer_from_another_save_is_refused(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_steps(model, opt, 1)
    _save(tmp_path / "a", model, optimizer_state=opt.state_dict())
    _save(tmp_path / "b", model, optimizer_state=opt.state_dict())
    # Simulate a crash between the two writes: b's model file next to a's optimizer file.
    os.replace(tmp_path / "a" / OPTIMIZER_FILE, tmp_path / "b" / OPTIMIZER_FILE)

    with pytest.raises(CheckpointError, match="does not belong to the checkpoint.*weights only"):
        load_checkpoint(tmp_path / "b")
    ck = load_checkpoint(tmp_path / "b", load_optimizer=False)
    assert ck.optimizer_state is None and ck.model_name == "resnet8"


def test_save_without_optimizer_removes_stale_optimizer_file(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_steps(model, opt, 1)
    _save(tmp_path, model, optimizer_state=opt.state_dict())
    _save(tmp_path, model)
    assert not (tmp_path / OPTIMIZER_FILE).exists()
    assert load_checkpoint(tmp_path).optimizer_state is None


def test_missing_checkpoint_says_where_it_looked(tmp_path):
    with pytest.raises(CheckpointError, match=f"looked for {tmp_path / CHECKPOINT_FILE}"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="nope.safetensors"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_truncated_file_error_names_the_path(tmp_path):
    path = _save(tmp_path, _model())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(CheckpointError, match=f"cannot read {path}.*truncated"):
        load_checkpoint(tmp_path)
    path.write_bytes(b"PK\x03\x04 a zip from torch.save, not safetensors")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(path)


def test_plain_safetensors_is_not_an_edgesmith_checkpoint(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError, match="not an EdgeSmith checkpoint.*format' is None"):
        load_checkpoint(path)


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    write_safetensors_atomic(path, {"model.w": torch.zeros(1)},
                             {"format": "edgesmith-checkpoint", "format_version": "99", "edgesmith_version": "9.0"})
    with pytest.raises(CheckpointError, match="format 99.*upgrade EdgeSmith"):
        load_checkpoint(path)


def test_wrong_model_state_dict_lists_keys_and_shapes(tmp_path):
    small = _model(width_mult=0.5)
    sd = dict(small.state_dict())
    sd["head.extra"] = torch.zeros(1)
    del sd["fc.bias"]
    save_checkpoint(tmp_path, model_name="resnet8", model_args={**ARGS, "width_mult": 1.0}, state_dict=sd)
    with pytest.raises(CheckpointError) as err:
        build_model_from_checkpoint(load_checkpoint(tmp_path))
    msg = str(err.value)
    assert "missing keys (1): fc.bias" in msg
    assert "unexpected keys (1): head.extra" in msg
    assert "fc.weight: checkpoint (10, 32), model (10, 64)" in msg
    assert "... and" in msg  # many shape mismatches: the list is capped
    assert msg.count(": checkpoint (") == ckpt_mod._MAX_LISTED


def test_compiled_or_ddp_prefixes_are_stripped(tmp_path):
    model = _model()
    sd = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}  # DDP(torch.compile(model))
    save_checkpoint(tmp_path, model_name="resnet8", model_args=ARGS, state_dict=sd)
    rebuilt = build_model_from_checkpoint(load_checkpoint(tmp_path))
    assert torch.equal(rebuilt.fc.weight, model.fc.weight)


def test_non_json_train_state_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="train_state must be JSON-serialisable.*extra_tensors"):
        _save(tmp_path, _model(), train_state={"rng": torch.get_rng_state()})
    assert not (tmp_path / CHECKPOINT_FILE).exists()


def test_shared_storage_tensors_are_saved(tmp_path):
    # Tied / aliased tensors make plain safetensors.save_file refuse; the writer clones them.
    w = torch.randn(4, 4)
    write_safetensors_atomic(tmp_path / "x.safetensors", {"a": w, "b": w, "c": w.t()}, {"k": "v"})
    h = _header(tmp_path / "x.safetensors")
    assert h["c"]["shape"] == [4, 4] and h["__metadata__"] == {"k": "v"}
