"""Over-the-air model updates without new code: firmware compiled for G1 runs the blob of G2.

G2 is G1 retrained and requantized (``fe_retrain.retrained``): same ops, attributes and shapes,
new weights, new activation and weight scales, new zero points. The generated C depends only on
``structure_hash()``; every quantization-dependent number comes from the weights table, which
the blob carries (graph constants + per-op parameter records).
"""
from __future__ import annotations

import dataclasses
import re
import subprocess

import numpy as np
import pytest
from fe_c_build import SANITIZE, STRICT, CBatch, have_gcc, runtime_objects
from fe_retrain import retrained
from random_graphs import OP_BUILDERS, build_binary_conv_2d, build_quantize, random_multi_op_graph, random_op_graph

from edgesmith.errors import ExportError
from firmware_export import blob as fb
from firmware_export import reference
from firmware_export.c_emitter import emit_c
from firmware_export.c_table import decode_io_record, weight_table
from firmware_export.intgraph import IntGraph, Op

# Jobs: "<prefix> <mode> <blob file> <input file> <output file>"; mode is "default" (compiled-in
# table), "blob" (verify with the model's structure hash, fill the table, invoke_table),
# "nohash" (verify without the hash: reaches es_blob_fill_table's own checks) or "misaligned"
# (the blob one byte off a 4-byte boundary). Prints "<prefix> <blob status> <invoke rc>", and
# for a blob also " io=<zero point>,<scale bits>" of input 0 from the table's I/O record.
DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "es_runtime.h"
#include "es_blob.h"

#define ES_MODEL(p) extern const es_model_desc p##_desc;
#include "models.inc"
#undef ES_MODEL
#define ES_MODEL(p) &p##_desc,
static const es_model_desc *const models[] = {
#include "models.inc"
    NULL};
#undef ES_MODEL

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    long n;
    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0) return NULL;
    rewind(f);
    buf = (uint8_t *)malloc((size_t)n + 1);
    if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n) return NULL;
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void unhex(const char *hex, uint8_t *out)
{
    int i;
    for (i = 0; i < 32; ++i) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
}

static void run(const es_model_desc *m, const char *mode, const char *blob_path, const char *in_path,
                const char *out_path)
{
    const int8_t *inputs[8];
    int8_t *outputs[8];
    uint8_t hash[32];
    uint8_t *in_all, *blob = NULL, *raw = NULL;
    const void **table = NULL;
    size_t in_len, blob_len = 0, pos = 0;
    es_blob_status st = ES_BLOB_OK;
    es_blob_info info;
    uint8_t *arena = (uint8_t *)malloc(m->arena_bytes ? m->arena_bytes : 1);
    int rc = -1;
    uint32_t i;
    FILE *f;
    in_all = read_all(in_path, &in_len);
    for (i = 0; i < m->num_inputs; ++i) {
        inputs[i] = (const int8_t *)in_all + pos;
        pos += m->input_bytes[i];
    }
    for (i = 0; i < m->num_outputs; ++i) {
        outputs[i] = (int8_t *)malloc(m->output_bytes[i]);
        memset(outputs[i], 0x5A, m->output_bytes[i]);
    }
    memset(arena, 0xA5, m->arena_bytes);
    if (strcmp(mode, "default") == 0) {
        rc = m->invoke_multi(inputs, outputs, arena);
    } else {
        raw = read_all(blob_path, &blob_len);
        blob = raw;
        if (strcmp(mode, "misaligned") == 0) {  /* malloc is 16-aligned: +1 is misaligned */
            blob = (uint8_t *)malloc(blob_len + 1) + 1;
            memcpy(blob, raw, blob_len);
        }
        unhex(m->structure_hash, hash);
        st = es_blob_verify(blob, blob_len, strcmp(mode, "nohash") == 0 ? NULL : hash, &info);
        if (st == ES_BLOB_OK) {
            table = (const void **)malloc(sizeof(void *) * m->num_weights);
            st = es_blob_fill_table(&info, m->weight_bytes, m->num_weights, table);
        }
        if (st == ES_BLOB_OK) {
            rc = m->invoke_table(table, inputs, outputs, arena);
        }
    }
    printf("%s %s %d", m->name, es_blob_status_name(st), rc);
    if (table != NULL && st == ES_BLOB_OK) {  /* the I/O record: last table entry */
        const int32_t *io = (const int32_t *)table[m->num_weights - 1];
        printf(" io=%ld,%ld", (long)io[0], (long)io[1]);
    }
    printf("\n");
    f = fopen(out_path, "wb");
    for (i = 0; i < m->num_outputs; ++i) {
        fwrite(outputs[i], 1, m->output_bytes[i], f);
        free(outputs[i]);
    }
    fclose(f);
    if (blob != raw) free(blob - 1);
    free(raw);
    free((void *)table);
    free(in_all);
    free(arena);
}

int main(int argc, char **argv)
{
    char name[64], mode[16], blob[1024], in[1024], out[1024];
    FILE *jobs = fopen(argv[1], "r");
    (void)argc;
    while (fscanf(jobs, "%63s %15s %1023s %1023s %1023s", name, mode, blob, in, out) == 5) {
        const es_model_desc *const *m = models;
        while (*m != NULL && strcmp((*m)->name, name) != 0) ++m;
        if (*m == NULL) return 2;
        run(*m, mode, blob, in, out);
    }
    fclose(jobs);
    return 0;
}
"""

pytestmark = pytest.mark.skipif(not have_gcc(), reason="host gcc is not installed")


def _multi_op(rng) -> tuple[IntGraph, dict]:
    """random_multi_op_graph with inner tensors as extra outputs, so a wrong concat, add or FC
    shows even where the final softmax saturates."""
    g, x = random_multi_op_graph(rng)
    g.outputs = ["prob", "cat5", "add3", "fc12"]
    g.validate()
    return g, x


def _cases(rng) -> list[tuple[IntGraph, dict]]:
    """The multi-op network, one graph per C-lowerable op kind, both binary conv paths."""
    cases = [_multi_op(rng)]
    cases += [random_op_graph(kind, rng) for kind in OP_BUILDERS if kind not in ("QUANTIZE", "DEQUANTIZE")]
    cases += [build_quantize(rng, from_float=False), build_binary_conv_2d(rng, binary_input=True)]
    return cases


class _Firmware:
    """One host binary with every G1 compiled in; runs jobs and returns (status lines, outputs)."""

    def __init__(self, tmp_path, graphs: list[tuple[IntGraph, dict]]):
        self.dir = tmp_path
        self.batch = CBatch(tmp_path)
        self.prefixes = [self.batch.add(g, x) for g, x in graphs]
        self.batch.build()  # writes all_models.c and models.inc; we link our own driver
        (tmp_path / "driver.c").write_text(DRIVER)
        self.exe = tmp_path / "ota_driver"
        models = tmp_path / "models"
        cmd = (["gcc"] + STRICT + SANITIZE + ["-I", str(models), "-o", str(self.exe), str(tmp_path / "driver.c"),
                                              str(models / "all_models.c")] + list(runtime_objects()))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-4000:]

    def run(self, jobs: list[tuple[str, str, bytes | None, dict, list]]) -> list[tuple[list[str], list[np.ndarray]]]:
        """jobs: (prefix, mode, blob bytes, inputs by name, output shapes)."""
        lines = []
        for j, (prefix, mode, blob, inputs, _shapes) in enumerate(jobs):
            (self.dir / f"j{j}.blob").write_bytes(blob or b"")
            (self.dir / f"j{j}.in").write_bytes(b"".join(np.ascontiguousarray(v).astype(np.int8).tobytes()
                                                         for v in inputs))
            lines.append(f"{prefix} {mode} {self.dir / f'j{j}.blob'} {self.dir / f'j{j}.in'} {self.dir / f'j{j}.out'}\n")
        (self.dir / "jobs.txt").write_text("".join(lines))
        proc = subprocess.run([str(self.exe), str(self.dir / "jobs.txt")], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        status = proc.stdout.splitlines()
        assert len(status) == len(jobs), proc.stdout
        results = []
        for j, (_p, _m, _b, _i, shapes) in enumerate(jobs):
            raw = np.frombuffer((self.dir / f"j{j}.out").read_bytes(), np.int8)
            arrays, pos = [], 0
            for shape in shapes:
                n = int(np.prod(shape))
                arrays.append(raw[pos:pos + n].reshape(shape))
                pos += n
            results.append((status[j].split(), arrays))
        return results


def _io(g: IntGraph, x: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    values = reference.run(g, x)
    return [x[n] for n in g.inputs], [values[n] for n in g.outputs]


def _concat_flags(g: IntGraph) -> list[int]:
    table = weight_table(g)
    k = next(i for i, op in enumerate(g.ops) if op.kind == "CONCATENATION")
    rec = table.entries[table.record_index[k]].data
    n = len(g.ops[k].inputs)
    return rec[n * 256:].tolist()


def test_firmware_for_g1_runs_retrained_g2_blob_bit_exact(tmp_path):
    rng = np.random.default_rng(20261127)
    g1s = _cases(rng)
    g2s = [retrained(g, rng) for g, _ in g1s]
    fw = _Firmware(tmp_path, g1s)
    jobs, want = [], []
    for prefix, (g1, x), g2 in zip(fw.prefixes, g1s, g2s):
        assert g1.structure_hash() == g2.structure_hash() and g1.graph_hash() != g2.graph_hash()
        ins, out1 = _io(g1, x)
        _, out2 = _io(g2, x)
        shapes = [o.shape for o in out1]
        jobs += [(prefix, "default", None, ins, shapes), (prefix, "blob", fb.write_blob(g2), ins, shapes)]
        want += [out1, out2]
    results = fw.run(jobs)
    bad = []
    for (prefix, mode, *_), (status, got), expected in zip(jobs, results, want):
        assert status[1:3] == ["ES_BLOB_OK", "0"], (prefix, mode, status)
        for g, e in zip(got, expected):
            if not np.array_equal(g, e):
                bad.append(f"{prefix} {mode}: {int((g != e).sum())}/{e.size} differ")
    assert not bad, "\n".join(bad)
    # the update really changed the answer, and took the concat through a requantizing table
    # where G1 copies (use_lut flips from 0 to 1)
    assert not np.array_equal(want[0][0], want[1][0])  # multi-op network: G1 vs G2 reference
    differ = sum(not np.array_equal(want[2 * i][0], want[2 * i + 1][0]) for i in range(len(g1s)))
    assert differ >= len(g1s) - 8, differ  # shape-only ops (reshape, transpose, resize) cannot differ
    assert 0 in _concat_flags(g1s[0][0]) and _concat_flags(g2s[0]) == [1, 1]
    # the application reads the running model's input quantization from the table, not the header
    for (prefix, mode, *_), (status, _), g2 in zip(jobs[1::2], results[1::2], g2s):
        table = weight_table(g2)
        (scale, zp) = decode_io_record(table.entries[table.io_index].data)[0]
        bits = int(np.array([scale], np.float32).view(np.int32)[0])
        assert status[3] == f"io={zp},{bits}", (prefix, status)
        assert (np.float32(scale), zp) == (np.float32(g2.tensor(g2.inputs[0]).per_tensor_scale()),
                                           g2.tensor(g2.inputs[0]).per_tensor_zero_point())
    # and the old blob path still works for G1's own blob
    again = fw.run([(fw.prefixes[0], "blob", fb.write_blob(g1s[0][0]), _io(*g1s[0])[0], [want[0][0].shape])])
    assert again[0][0][1:3] == ["ES_BLOB_OK", "0"] and np.array_equal(again[0][1][0], want[0][0])


def _other_structure(g: IntGraph) -> IntGraph:
    """The same network with one fused activation changed: other code, other structure hash."""
    ops = [Op(op.kind, list(op.inputs), list(op.outputs), dict(op.attrs), op.name) for op in g.ops]
    ops[0].attrs["act"] = "RELU6" if ops[0].attrs.get("act") != "RELU6" else "RELU"
    return IntGraph(dict(g.tensors), ops, list(g.inputs), list(g.outputs), g.name)


def test_blob_for_another_structure_is_refused_by_python_and_c(tmp_path):
    rng = np.random.default_rng(7)
    g1, x = _multi_op(rng)
    other = _other_structure(retrained(g1, rng))
    assert other.structure_hash() != g1.structure_hash()
    wrong = fb.write_blob(other)
    with pytest.raises(ExportError, match="is for model structure .* the firmware runs structure"):
        fb.parse_blob(wrong, expected_structure_hash=g1.structure_hash())
    with pytest.raises(ExportError, match="model structure"):
        fb.load_weights_into(g1, fb.parse_blob(wrong))
    fb.parse_blob(fb.write_blob(retrained(g1, rng)), expected_structure_hash=g1.structure_hash())

    # tables that pass the hash check but do not fit: caught by es_blob_fill_table
    entries, k = fb.table_entries(g1)
    short = fb.pack_blob(entries[:-1], k, g1.structure_hash(), g1.graph_hash())
    big = list(entries)
    big[k] = dataclasses.replace(big[k], shape=(big[k].shape[0] + 1,),
                                 data=np.concatenate([big[k].data, big[k].data[:1]]))
    resized = fb.pack_blob(big, k, g1.structure_hash(), g1.graph_hash())
    fw = _Firmware(tmp_path, [(g1, x)])
    ins, out1 = _io(g1, x)
    shapes = [o.shape for o in out1]
    p = fw.prefixes[0]
    good = fb.write_blob(g1)
    results = fw.run([(p, "blob", wrong, ins, shapes), (p, "blob", short, ins, shapes),
                      (p, "nohash", short, ins, shapes), (p, "blob", resized, ins, shapes),
                      (p, "misaligned", good, ins, shapes), (p, "blob", good[:-1], ins, shapes),
                      (p, "blob", good, ins, shapes)])
    statuses = [r[0][1:3] for r in results]
    assert statuses == [["ES_BLOB_ERR_STRUCTURE_HASH", "-1"], ["ES_BLOB_ERR_TABLE_COUNT", "-1"],
                        ["ES_BLOB_ERR_TABLE_COUNT", "-1"], ["ES_BLOB_ERR_TABLE_SIZE", "-1"],
                        ["ES_BLOB_ERR_BUFFER_ALIGN", "-1"], ["ES_BLOB_ERR_SIZE_MISMATCH", "-1"],
                        ["ES_BLOB_OK", "0"]]
    assert np.array_equal(results[-1][1][0], out1[0])


def test_structure_hash_ignores_values_and_sees_structure():
    rng = np.random.default_rng(3)
    g1, _ = random_multi_op_graph(rng)
    g2 = retrained(g1, rng)
    assert g1.structure_hash() == g2.structure_hash()
    assert g1.graph_hash() != g2.graph_hash()
    renamed = IntGraph(dict(g1.tensors), [dataclasses.replace(op, name=op.name + "_x") for op in g1.ops],
                       list(g1.inputs), list(g1.outputs), "other_name")
    assert renamed.structure_hash() == g1.structure_hash()  # names of ops/graph are comments in C

    def variant(tensor=None, op_index=None, **change) -> IntGraph:
        tensors, ops = dict(g1.tensors), [dataclasses.replace(op, attrs=dict(op.attrs)) for op in g1.ops]
        if tensor is not None:
            tensors[tensor] = dataclasses.replace(tensors[tensor], **change)
        else:
            kind = change.pop("kind", ops[op_index].kind)
            ops[op_index] = dataclasses.replace(ops[op_index], kind=kind, attrs={**ops[op_index].attrs, **change})
        return IntGraph(tensors, ops, list(g1.inputs), list(g1.outputs), g1.name)

    pool = next(i for i, op in enumerate(g1.ops) if op.kind == "AVERAGE_POOL_2D")
    x = g1.tensor("x")
    changed = [
        variant(tensor="x", shape=(1, x.shape[1] + 2, x.shape[2], 3)),   # a shape
        variant(op_index=pool, kind="MAX_POOL_2D"),                        # an op kind
        variant(op_index=0, stride=(2, 2)),                                # an attribute
        variant(tensor="conv0_w", bits=1),                                 # bits
        variant(tensor="conv0_w", quant_axis=3),                           # quantization axis
        variant(tensor="x", dtype="int16"),                                # a dtype
    ]
    hashes = {g.structure_hash() for g in changed}
    assert len(hashes) == len(changed) and g1.structure_hash() not in hashes
    # scales, zero points and data alone never change it
    assert variant(tensor="x", zero_point=np.array([5])).structure_hash() == g1.structure_hash()
    assert variant(tensor="conv0_w", data=-g1.tensor("conv0_w").data).structure_hash() == g1.structure_hash()


_DATA_ARRAY = re.compile(r"/\* (weight|record|io record) \d+: [^\n]*\*/\nstatic const \w+ net_w\d+\[\d+\][^=]*= \{[^}]*\};\n")


def _code_only(source: str) -> str:
    """Generated C without the table's data arrays and the graph hash (which names the values)."""
    source = _DATA_ARRAY.sub("", source)
    return re.sub(r" \* graph_hash: \w+\n", "", source)


def test_generated_code_of_g1_and_g2_differs_only_in_table_data(tmp_path):
    """Nothing quantization-dependent is compiled into code: strip the data arrays and the two
    sources are the same text."""
    rng = np.random.default_rng(11)
    for i, (g1, _) in enumerate(_cases(rng)):
        g2 = retrained(g1, rng)
        emit_c(g1, tmp_path / f"a{i}", prefix="net")
        emit_c(g2, tmp_path / f"b{i}", prefix="net")
        s1, s2 = (tmp_path / f"a{i}" / "net.c").read_text(), (tmp_path / f"b{i}" / "net.c").read_text()
        n_arrays = len(weight_table(g1).entries)
        assert len(_DATA_ARRAY.findall(s1)) == n_arrays, g1.name
        assert _code_only(s1) == _code_only(s2), g1.name
        if n_arrays:
            assert s1 != s2, g1.name
