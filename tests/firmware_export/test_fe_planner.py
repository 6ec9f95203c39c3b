"""Static memory planner: safe on every graph, catches broken plans, reuse really saves RAM."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgesmith.errors import ExportError
from firmware_export.intgraph import IntGraph, Op, Tensor
from firmware_export.planner import ALIGNMENT, MemoryPlan, check_plan, plan_memory, tensor_lifetimes
from random_graphs import OP_BUILDERS, build_binary_conv_2d, random_multi_op_graph, random_op_graph


def _act(name, shape, scale=0.05, zp=0):
    return Tensor(name, tuple(shape), "int8", scale=np.array([scale], np.float32), zero_point=np.array([zp]))


def _chain_graph(n_ops: int, shape=(1, 8, 8, 16)) -> IntGraph:
    """x -> QUANTIZE -> LOGISTIC -> QUANTIZE -> ... : every op element-wise, same size."""
    tensors = [_act("x", shape)]
    ops = []
    prev = "x"
    for i in range(n_ops):
        kind = "LOGISTIC" if i % 2 else "QUANTIZE"
        scale, zp = (1 / 256, -128) if kind == "LOGISTIC" else (0.04 + 0.01 * i, i)
        tensors.append(_act(f"t{i}", shape, scale, zp))
        ops.append(Op(kind, [prev], [f"t{i}"], {}, name=f"op{i}"))
        prev = f"t{i}"
    g = IntGraph({t.name: t for t in tensors}, ops, ["x"], [prev], name="chain")
    g.validate()
    return g


def _residual_graph(blocks: int = 3, shape=(1, 8, 8, 8)) -> IntGraph:
    """x -> [QUANTIZE a -> LOGISTIC b -> ADD(a, b)] * blocks: every block keeps a skip tensor live."""
    tensors = [_act("x", shape)]
    ops = []
    prev = "x"
    for i in range(blocks):
        a, b, s = f"a{i}", f"b{i}", f"s{i}"
        tensors += [_act(a, shape, 0.05, 3), _act(b, shape, 1 / 256, -128), _act(s, shape, 0.06, -5)]
        ops += [Op("QUANTIZE", [prev], [a], {}, name=a), Op("LOGISTIC", [a], [b], {}, name=b),
                Op("ADD", [a, b], [s], {"act": "NONE"}, name=s)]
        prev = s
    g = IntGraph({t.name: t for t in tensors}, ops, ["x"], [prev], name="residual")
    g.validate()
    return g


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_checker_passes_on_every_random_graph(seed):
    rng = np.random.default_rng(seed)
    graphs = [random_op_graph(kind, rng)[0] for kind in OP_BUILDERS] + [random_multi_op_graph(rng)[0]]
    for g in graphs:
        plan = plan_memory(g)
        check_plan(g, plan)
        life = tensor_lifetimes(g)
        for name, region in plan.regions.items():
            if region == "arena":
                assert plan.offsets[name] % ALIGNMENT == 0
                assert plan.offsets[name] + plan.sizes[name] <= plan.arena_bytes
        assert plan.peak_live_bytes <= plan.arena_bytes <= plan.no_reuse_bytes
        assert set(plan.regions) == set(life)


def test_memory_json_round_trip(tmp_path):
    g, _ = random_multi_op_graph(np.random.default_rng(3))
    plan = plan_memory(g)
    path = plan.save(tmp_path / "memory.json")
    again = MemoryPlan.from_json(path.read_text())
    assert again == plan
    check_plan(g, again)
    with pytest.raises(ExportError, match="format"):
        MemoryPlan.from_json('{"format": "other", "version": 1}')


def test_overlapping_live_tensors_are_caught_with_names_and_op():
    g, _ = random_multi_op_graph(np.random.default_rng(7))
    plan = plan_memory(g)
    # conv0 is read by the residual ADD (add3), so it is live while dw1 and conv2 are written
    assert plan.lifetimes["conv0"][1] >= plan.lifetimes["conv2"][0]
    plan.offsets["conv2"] = plan.offsets["conv0"]
    with pytest.raises(ExportError) as err:
        check_plan(g, plan)
    msg = str(err.value)
    assert "'conv0'" in msg and "'conv2'" in msg and "op #" in msg


def test_illegal_in_place_is_caught():
    # a0 is still read by the ADD after LOGISTIC writes b0: b0 over a0 is not legal
    g = _residual_graph(1)
    plan = plan_memory(g)
    assert plan.offsets["b0"] != plan.offsets["a0"]
    plan.offsets["b0"] = plan.offsets["a0"]
    with pytest.raises(ExportError, match=r"'a0'.*'b0'|'b0'.*'a0'"):
        check_plan(g, plan)


def test_writing_into_the_callers_input_is_caught():
    g = _chain_graph(2)
    plan = plan_memory(g)
    plan.regions["t0"], plan.offsets["t0"] = "input:0", 0
    with pytest.raises(ExportError, match="read-only input"):
        check_plan(g, plan)


def test_misaligned_or_out_of_arena_offsets_are_caught():
    g = _chain_graph(3)
    plan = plan_memory(g)
    plan.offsets["t0"] = 3
    with pytest.raises(ExportError, match="misaligned"):
        check_plan(g, plan)
    plan = plan_memory(g)
    plan.offsets["t0"] = plan.arena_bytes
    with pytest.raises(ExportError, match="outside"):
        check_plan(g, plan)


def test_in_place_reuse_shrinks_a_chain_to_one_buffer():
    g = _chain_graph(6)
    size = math.prod((1, 8, 8, 16))
    reuse, no_reuse = plan_memory(g), plan_memory(g, in_place=False)
    check_plan(g, reuse)
    check_plan(g, no_reuse)
    # t0..t4 in the arena (t5 is the caller's output): in place they all share one buffer
    assert reuse.arena_bytes == size
    assert {reuse.offsets[f"t{i}"] for i in range(5)} == {0}
    # without reuse an op's input and output are both live: two buffers ping-pong
    assert no_reuse.arena_bytes == 2 * size
    assert reuse.arena_bytes < no_reuse.arena_bytes


def test_reshape_is_a_view_unless_it_is_a_graph_output():
    shape = (1, 4, 4, 8)
    tensors = [_act("x", shape), _act("q", shape, 0.03), _act("r", (1, 128), 0.03), _act("y", (1, 128), 1 / 256, -128),
               _act("z", (16, 8), 1 / 256, -128)]
    ops = [Op("QUANTIZE", ["x"], ["q"], {}), Op("RESHAPE", ["q"], ["r"], {"shape": (1, 128)}),
           Op("LOGISTIC", ["r"], ["y"], {}), Op("RESHAPE", ["y"], ["z"], {"shape": (16, 8)})]
    g = IntGraph({t.name: t for t in tensors}, ops, ["x"], ["z"], name="views")
    g.validate()
    plan = plan_memory(g)
    check_plan(g, plan)
    assert plan.regions["r"] == "arena" and plan.offsets["r"] == plan.offsets["q"]
    # LOGISTIC may write over its (dying) view input
    assert plan.offsets["y"] == plan.offsets["r"]
    assert plan.regions["z"] == "output:0"
    assert plan.arena_bytes == 128


def test_residual_arena_between_peak_live_and_no_reuse():
    g = _residual_graph(4)
    plan = plan_memory(g)
    check_plan(g, plan)
    size = math.prod((1, 8, 8, 8))
    # per block at most a (skip), b and the sum are live: 3 buffers; no reuse: every tensor one
    assert plan.peak_live_bytes <= plan.arena_bytes <= 3 * size
    assert plan.no_reuse_bytes == (3 * 4 - 1) * size
    assert plan.arena_bytes < plan.no_reuse_bytes
    # the ADD writes over its dying input in place
    assert plan.offsets["s0"] in (plan.offsets["a0"], plan.offsets["b0"])


def test_scratch_buffer_for_xnor_conv_is_planned():
    g, _ = build_binary_conv_2d(np.random.default_rng(11), binary_input=True)
    # make the conv output an intermediate (arena) tensor: y -> QUANTIZE -> z
    y = g.tensor("y")
    g.tensors["z"] = _act("z", y.shape, 0.1, 0)
    g.ops.append(Op("QUANTIZE", ["y"], ["z"], {}, name="requant"))
    g.outputs = ["z"]
    g.validate()
    plan = plan_memory(g)
    check_plan(g, plan)
    n, h, w, c = g.tensor("x").shape
    offset, nbytes = plan.scratch[0]
    assert nbytes >= n * h * w * ((c + 7) // 8)
    assert plan.regions["y"] == "arena"
    plan.scratch[0] = (plan.offsets["y"], nbytes)  # scratch over the op's own output
    with pytest.raises(ExportError, match="scratch"):
        check_plan(g, plan)
