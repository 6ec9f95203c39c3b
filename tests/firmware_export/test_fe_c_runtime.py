"""Generated C + hand-written runtime, compiled with ASan/UBSan on the host, equal the reference bit for bit.

Each test compiles many graphs into one binary (``fe_c_build.CBatch``) so compiler start-up is
paid once per batch. The harness mallocs every buffer at its exact size (the arena at
``<PREFIX>_ARENA_BYTES``) and fills the arena with garbage, so out-of-bounds accesses abort and
reads of never-written memory show up as mismatches.
"""
from __future__ import annotations

import math
import re
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgesmith import __version__
from edgesmith.errors import ExportError
from fe_c_build import STRICT, CBatch, have_gcc
from firmware_export import reference
from firmware_export.blob import write_blob
from firmware_export.c_emitter import emit_c, runtime_sources
from firmware_export.c_table import weight_table
from firmware_export.intgraph import IntGraph, Op, Tensor
from firmware_export.planner import plan_memory
from random_graphs import (OP_BUILDERS, build_binary_conv_2d, build_dequantize, build_quantize,
                           random_multi_op_graph, random_op_graph)

pytestmark = pytest.mark.skipif(not have_gcc(), reason="host gcc is not installed")

HYPOTHESIS = settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _assert_bit_exact(batch: CBatch, results) -> None:
    bad = batch.mismatches(results)
    assert not bad, "C output differs from the reference:\n" + "\n".join(bad)


@HYPOTHESIS
@given(seed=st.integers(0, 2**32 - 1))
def test_every_op_kind_bit_exact(tmp_path_factory, seed):
    rng = np.random.default_rng(seed)
    batch = CBatch(tmp_path_factory.mktemp("kinds"))
    for kind in OP_BUILDERS:
        for _ in range(2):
            batch.add(*random_op_graph(kind, rng))
    for binary_input in (False, True):  # both binary paths every time
        batch.add(*build_binary_conv_2d(rng, binary_input=binary_input))
    _assert_bit_exact(batch, batch.run(batch.build()))


def test_multi_op_graphs_bit_exact(tmp_path):
    """Residual add, concat (requantizing), depthwise, channel shuffle, upsample, pool, mean, FC, softmax."""
    rng = np.random.default_rng(20261127)
    batch = CBatch(tmp_path)
    for _ in range(4):
        g, x = random_multi_op_graph(rng)
        kinds = {op.kind for op in g.ops}
        assert {"ADD", "CONCATENATION", "DEPTHWISE_CONV_2D", "TRANSPOSE", "RESIZE_NEAREST_NEIGHBOR"} <= kinds
        batch.add(g, x)
    batch.add(*_two_output_graph(rng))
    results = batch.run(batch.build())
    _assert_bit_exact(batch, results)
    assert len(results["m4"]) == 2


def _act(name, shape, scale, zp):
    return Tensor(name, tuple(shape), "int8", scale=np.array([scale], np.float32), zero_point=np.array([zp]))


def _two_output_graph(rng):
    """Two inputs, two outputs, an output that is also read by a later op, and a bilinear upsample."""
    shape = (1, 5, 4, 6)
    tensors = [_act("a", shape, 0.05, 3), _act("b", (1, 1, 1, 6), 0.02, -7), _act("s", shape, 0.06, 0),
               _act("up", (1, 10, 8, 6), 0.06, 0), _act("p", (1, 5, 4, 6), 1 / 256, -128)]
    ops = [Op("ADD", ["a", "b"], ["s"], {"act": "RELU"}, name="add"),
           Op("RESIZE_BILINEAR", ["s"], ["up"], {"size": (10, 8), "align_corners": False,
                                                 "half_pixel_centers": True}, name="up"),
           Op("LOGISTIC", ["s"], ["p"], {}, name="sig")]
    g = IntGraph({t.name: t for t in tensors}, ops, ["a", "b"], ["up", "s"], name="two_out")
    g.validate()
    x = {"a": rng.integers(-128, 128, shape).astype(np.int8), "b": rng.integers(-128, 128, (1, 1, 1, 6)).astype(np.int8)}
    return g, x


# --------------------------------------------------------------------------- conv fast paths

def _conv_graph(rng, k, stride, pads, dilation, cin, cout, hw, act="NONE"):
    h, w = hw
    kh_eff = (k - 1) * dilation + 1
    oh = (h + pads[0] + pads[1] - kh_eff) // stride + 1
    ow = (w + pads[2] + pads[3] - kh_eff) // stride + 1
    in_scale = 0.02
    w_scale = rng.uniform(0.002, 0.02, cout).astype(np.float32)
    acc_std = math.sqrt(k * k * cin) * 80 * 73
    out_scale = in_scale * float(np.median(w_scale)) * acc_std / 45
    tensors = [
        _act("x", (1, h, w, cin), in_scale, int(rng.integers(-50, 50))),
        Tensor("w", (cout, k, k, cin), "int8", scale=w_scale, zero_point=np.zeros(cout, np.int64), quant_axis=0,
               data=rng.integers(-127, 128, (cout, k, k, cin)).astype(np.int8)),
        Tensor("b", (cout,), "int32", scale=(in_scale * w_scale).astype(np.float32), zero_point=np.zeros(cout, np.int64),
               quant_axis=0, data=rng.integers(-20000, 20000, cout).astype(np.int32), bits=32),
        _act("y", (1, oh, ow, cout), out_scale, int(rng.integers(-20, 20))),
    ]
    attrs = {"stride": (stride, stride), "dilation": (dilation, dilation), "pads": pads, "act": act}
    g = IntGraph({t.name: t for t in tensors}, [Op("CONV_2D", ["x", "w", "b"], ["y"], attrs, name="conv")],
                 ["x"], ["y"], name=f"conv{k}x{k}")
    g.validate()
    return g, {"x": rng.integers(-128, 128, (1, h, w, cin)).astype(np.int8)}


def test_conv_fast_paths_match_general_path(tmp_path):
    rng = np.random.default_rng(5)
    batch = CBatch(tmp_path)
    cases = [  # (k, stride, pads, dilation): 1x1 fast path, 3x3 with interior + border pixels
        (1, 1, (0, 0, 0, 0), 1), (1, 2, (0, 0, 0, 0), 1), (1, 1, (1, 1, 1, 1), 1),
        (3, 1, (1, 1, 1, 1), 1), (3, 2, (1, 1, 1, 1), 1), (3, 1, (0, 0, 0, 0), 1),
        (3, 1, (2, 2, 2, 2), 2), (3, 2, (0, 1, 2, 0), 1), (2, 1, (0, 1, 0, 1), 1),
    ]
    couts = [1, 3, 4, 5, 8, 13]  # the fast paths block 4 output channels: full blocks and remainders
    for i, (k, stride, pads, dil) in enumerate(cases):
        for j, act in enumerate(("NONE", "RELU6")):
            cin, cout = int(rng.integers(1, 20)), couts[(2 * i + j) % len(couts)]
            hw = (int(rng.integers(3, 12)), int(rng.integers(3, 12)))
            batch.add(*_conv_graph(rng, k, stride, pads, dil, cin, cout, hw, act))
    fast = batch.run(batch.build(name="fast"))
    _assert_bit_exact(batch, fast)
    generic = batch.run(batch.build(["-DES_CONV_FORCE_GENERIC"], name="generic"))
    _assert_bit_exact(batch, generic)
    for prefix in fast:
        assert np.array_equal(fast[prefix][0], generic[prefix][0]), prefix


# --------------------------------------------------------------------------- portability

def _cross_compilers():
    return [
        ("gcc", ["gcc"]),
        ("arm-none-eabi-gcc", ["arm-none-eabi-gcc", "-mcpu=cortex-m7", "-mthumb", "-Os"]),
        ("riscv64-unknown-elf-gcc", ["riscv64-unknown-elf-gcc", "-march=rv32imac", "-mabi=ilp32", "-ffreestanding", "-Os"]),
    ]


@pytest.mark.parametrize("name,cmd", _cross_compilers(), ids=[c[0] for c in _cross_compilers()])
def test_strict_c99_clean_on_every_toolchain(tmp_path, name, cmd):
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"{cmd[0]} is not installed")
    rng = np.random.default_rng(9)
    emit_c(random_multi_op_graph(rng)[0], tmp_path, prefix="multi", weights_section=".extflash")
    emit_c(build_binary_conv_2d(rng, binary_input=True)[0], tmp_path, prefix="bnn")
    emit_c(_two_output_graph(rng)[0], tmp_path, prefix="two")
    sources = sorted(tmp_path.glob("*.c"))
    assert {p.name for p in runtime_sources() if p.suffix == ".c"} <= {p.name for p in sources}
    for src in sources:
        proc = subprocess.run(cmd + STRICT + ["-c", str(src), "-o", str(tmp_path / (src.stem + ".o"))],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{name} {src.name}:\n{proc.stderr[-4000:]}"
    # no floating point and no libc in the runtime: only the allowed headers
    for src in runtime_sources():
        includes = set(re.findall(r"#include <([^>]+)>", src.read_text()))
        assert includes <= {"stdint.h", "stddef.h"}, (src.name, includes)
        assert not re.search(r"\b(float|double)\b", src.read_text()), src.name


def test_generated_files_banner_defines_and_section(tmp_path):
    g, _ = random_multi_op_graph(np.random.default_rng(4))
    paths = emit_c(g, tmp_path, prefix="net", weights_section=".extflash")
    names = {p.name for p in paths}
    assert {"net.h", "net.c", "net_memory.json", "es_runtime.h", "es_conv.c"} <= names
    header, source = (tmp_path / "net.h").read_text(), (tmp_path / "net.c").read_text()
    for text in (header, source):
        assert "DO NOT EDIT" in text and __version__ in text and g.graph_hash() in text
    arena = int(re.search(r"#define NET_ARENA_BYTES (\d+)", header).group(1))
    assert arena == plan_memory(g).arena_bytes > 0
    x = g.tensor("x")
    assert "#define NET_INPUT_ZERO_POINT NET_INPUT0_ZERO_POINT" in header
    assert f"#define NET_INPUT0_ZERO_POINT ({x.per_tensor_zero_point()})" in header
    assert "#define NET_INPUT0_SHAPE {" + ", ".join(map(str, x.shape)) + "}" in header
    assert "#define NET_OUTPUT0_BYTES 10" in header
    n_consts = len(g.constants())
    table = weight_table(g)
    assert source.count('__attribute__((section(".extflash")))') == n_consts == table.constant_count
    assert f"static const void *const net_weights[{len(table.entries)}]" in source
    assert f'#define NET_STRUCTURE_HASH "{g.structure_hash()}"' in header
    assert f"#define NET_NUM_WEIGHTS {len(table.entries)}" in header
    assert re.search(r"\bfloat\b|\bdouble\b", source) is None


def test_emitter_refuses_bad_prefix_and_inner_float(tmp_path):
    g, _ = random_op_graph("LOGISTIC", np.random.default_rng(0))
    with pytest.raises(ExportError, match="C identifier"):
        emit_c(g, tmp_path, prefix="9lives")
    # DEQUANTIZE in the middle of a graph (its float output read by another op) has no C form
    g, _ = random_op_graph("DEQUANTIZE", np.random.default_rng(0))
    y = g.tensor("y")
    g.tensors["z"] = _act("z", y.shape, 0.1, 0)
    g.ops.append(Op("QUANTIZE", ["y"], ["z"], {}, name="requant"))
    g.outputs = ["z"]
    with pytest.raises(ExportError, match="'y' is float32"):
        emit_c(g, tmp_path, prefix="bad")


# --------------------------------------------------------------------------- weights from a blob

_BLOB_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "net.h"
#include "es_blob.h"

int main(int argc, char **argv)
{
    static uint8_t blob[1 << 20];  /* static: aligned for the int32 entries */
    const void *table[NET_NUM_WEIGHTS];
    int8_t in[NET_INPUT_BYTES], out[NET_OUTPUT_BYTES];
    uint8_t *arena = malloc(NET_ARENA_BYTES);
    FILE *f = fopen(argv[1], "rb");
    size_t n = fread(blob, 1, sizeof blob, f);
    es_blob_info info;
    es_blob_status st;
    int rc;
    (void)argc;
    fclose(f);
    f = fopen(argv[2], "rb");
    if (fread(in, 1, sizeof in, f) != sizeof in) return 3;
    fclose(f);
    st = es_blob_verify(blob, n, net_structure_hash, &info);
    if (st == ES_BLOB_OK) st = es_blob_fill_table(&info, net_weight_bytes, NET_NUM_WEIGHTS, table);
    printf("blob:%s\n", es_blob_status_name(st));
    if (st != ES_BLOB_OK) return 4;
    {
        const int8_t *ins[1];
        int8_t *outs[1];
        const void *saved = table[0];
        ins[0] = in;
        outs[0] = out;
        printf("null:%d %s\n", net_invoke(NULL, out, arena), es_status_str(net_invoke(NULL, out, arena)));
        table[0] = NULL;
        printf("weights:%d %s\n", net_invoke_table(table, ins, outs, arena), es_status_str(ES_ERR_WEIGHTS));
        table[0] = saved;
        rc = net_invoke_table(table, ins, outs, arena);
    }
    printf("rc:%d\n", rc);
    f = fopen(argv[3], "wb");
    fwrite(out, 1, sizeof out, f);
    fclose(f);
    free(arena);
    return rc;
}
"""


def test_weights_from_a_blob_in_ram(tmp_path):
    """The generated code runs other weights through <prefix>_invoke_table, straight from a blob
    verified and mapped by es_blob_verify / es_blob_fill_table (retrained scales: test_fe_ota_structure)."""
    rng = np.random.default_rng(12)
    g, x = build_binary_conv_2d(rng, binary_input=False)
    emit_c(g, tmp_path, prefix="net")
    # same structure and scales, new weights: what a model-only update ships
    g2 = IntGraph({n: t for n, t in g.tensors.items()}, g.ops, g.inputs, g.outputs, name=g.name)
    w = g.tensor("w")
    g2.tensors["w"] = Tensor("w", w.shape, "int8", scale=w.scale, zero_point=w.zero_point, quant_axis=0,
                             data=(-w.data).astype(np.int8), bits=1)
    b = g.tensor("b")
    g2.tensors["b"] = Tensor("b", b.shape, "int32", scale=b.scale, zero_point=b.zero_point, quant_axis=0,
                             data=(b.data // 2).astype(np.int32), bits=32)
    (tmp_path / "w.blob").write_bytes(write_blob(g2))
    (tmp_path / "x.bin").write_bytes(x["x"].tobytes())
    (tmp_path / "driver.c").write_text(_BLOB_DRIVER)
    exe = tmp_path / "driver"
    runtime_c = [str(tmp_path / p.name) for p in runtime_sources() if p.suffix == ".c"]
    proc = subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-g", "-fsanitize=address,undefined",
                           "-fno-sanitize-recover=all", "-I", str(tmp_path), "-o", str(exe), str(tmp_path / "driver.c"),
                           str(tmp_path / "net.c")] + runtime_c, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = subprocess.run([str(exe), str(tmp_path / "w.blob"), str(tmp_path / "x.bin"), str(tmp_path / "y.bin")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "blob:ES_BLOB_OK" in run.stdout
    assert "null:1 ES_ERR_NULL: a required pointer argument is NULL" in run.stdout
    assert "weights:5 ES_ERR_WEIGHTS" in run.stdout
    got = np.frombuffer((tmp_path / "y.bin").read_bytes(), np.int8).reshape(g.tensor("y").shape)
    want2, want1 = reference.run(g2, x)["y"], reference.run(g, x)["y"]
    assert np.array_equal(got, want2)
    assert not np.array_equal(want1, want2)  # the new weights really changed the answer



def test_float_edges_are_stripped_to_int8_io(tmp_path):
    """QUANTIZE on a float input and DEQUANTIZE on a float output leave the caller int8 I/O plus
    the scale and zero point to (de)quantize with."""
    rng = np.random.default_rng(3)
    gq, _ = build_quantize(rng, from_float=True)
    gd, _ = build_dequantize(rng)
    emit_c(gq, tmp_path, prefix="q")
    emit_c(gd, tmp_path, prefix="d")
    yq, xd = gq.tensor("y"), gd.tensor("x")
    hq, hd = (tmp_path / "q.h").read_text(), (tmp_path / "d.h").read_text()
    assert f"#define Q_INPUT0_ZERO_POINT ({yq.per_tensor_zero_point()})" in hq
    assert f"#define D_OUTPUT0_ZERO_POINT ({xd.per_tensor_zero_point()})" in hd
    scale = float(re.search(r"#define D_OUTPUT0_SCALE (\S+)f", hd).group(1))
    assert scale == pytest.approx(xd.per_tensor_scale(), rel=1e-7)
    assert gq.graph_hash() in hq  # the banner names the model as given, not the stripped graph


_FIXEDPOINT_DRIVER = r"""
#include <stdio.h>
#include "es_fixedpoint.h"

int main(void)
{
    char op;
    long long a, b, c;
    while (scanf(" %c %lld %lld %lld", &op, &a, &b, &c) == 4) {
        int32_t r = 0;
        if (op == 'h') r = es_srdhm((int32_t)a, (int32_t)b);
        if (op == 'd') r = es_rdbpot((int32_t)a, (int)b);
        if (op == 'm') r = es_mbqm((int32_t)a, (int32_t)b, (int32_t)c);
        if (op == 's') r = es_sat_shl((int32_t)a, (int)b);
        printf("%ld\n", (long)r);
    }
    return 0;
}
"""


def test_fixedpoint_primitives_match_python_on_edge_values(tmp_path):
    """es_fixedpoint.h against firmware_export.fixedpoint, including INT32 extremes and ties."""
    from firmware_export import fixedpoint as fp

    rng = np.random.default_rng(8)
    edge = [0, 1, -1, 2, -2, 3, (1 << 30), -(1 << 30), (1 << 31) - 1, -(1 << 31), (1 << 31) - 2, -(1 << 31) + 1]
    rand = rng.integers(-(1 << 31), 1 << 31, 300).tolist()
    cases = []
    for a in edge + rand[:60]:
        for b in edge + rand[60:80]:
            cases.append(("h", a, b, 0))
    for x in edge + rand + [5, -5, 6, -6, 7, -7, 96, -96]:  # ties round away from zero
        for e in (0, 1, 2, 3, 5, 17, 30, 31):
            cases.append(("d", x, e, 0))
        for e in (0, 1, 2, 4, 7):
            cases.append(("s", x, e, 0))
    mults = [0, 1 << 30, (1 << 31) - 1, 1518500250] + rng.integers(1 << 30, 1 << 31, 10).tolist()
    for x in edge + rand[:100]:
        for m in mults:
            for s in (-31, -20, -7, -1, 0, 1, 3, 10):
                cases.append(("m", x, m, s))
    (tmp_path / "fp.c").write_text(_FIXEDPOINT_DRIVER)
    include = str(runtime_sources()[0].parent)
    exe = tmp_path / "fp"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-fsanitize=undefined",
                    "-fno-sanitize-recover=all", "-I", include, "-o", str(exe), str(tmp_path / "fp.c")], check=True)
    stdin = "".join(f"{op} {a} {b} {c}\n" for op, a, b, c in cases)
    proc = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True)
    got = np.array([int(v) for v in proc.stdout.split()], np.int64)
    assert got.size == len(cases)
    ops = np.array([c[0] for c in cases])
    a, b, c = (np.array([case[i] for case in cases], np.int64) for i in (1, 2, 3))
    want = np.zeros_like(got)
    for op, fn in (("h", lambda m: fp.saturating_rounding_doubling_high_mul(a[m], b[m])),
                   ("d", lambda m: fp.rounding_divide_by_pot(a[m], b[m])),
                   ("m", lambda m: fp.multiply_by_quantized_multiplier(a[m], b[m], c[m]))):
        want[ops == op] = fn(ops == op)
    for i in np.flatnonzero(ops == "s"):  # the Python version takes one scalar exponent
        want[i] = fp.saturating_rounding_multiply_by_pot(a[i], int(b[i]))
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, [(cases[i], int(got[i]), int(want[i])) for i in bad[:10]]
