"""C weight-blob verifier (runtime/es_blob.c): strict compiles, ASan/UBSan fuzz, parity with Python."""
from __future__ import annotations

import random
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from fe_blob_cases import make_graph, mutate, reseal

from edgesmith.errors import ExportError
from firmware_export import blob as fb

RUNTIME = Path(fb.__file__).parent / "runtime"
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]

# Reads cases from a file: 32-byte expected structure hash, then records of (uint32 length, bytes).
# Each case is copied into a buffer of exactly its length so ASan catches any over-read.
HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "es_blob.h"

static unsigned long rd(FILE *f) {
    unsigned char b[4];
    if (fread(b, 1, 4, f) != 4) return 0xFFFFFFFFul;
    return b[0] | (b[1] << 8) | ((unsigned long)b[2] << 16) | ((unsigned long)b[3] << 24);
}

int main(int argc, char **argv) {
    FILE *f;
    unsigned char hash[32];
    unsigned long len;
    es_blob_info info;
    const uint8_t *data;
    uint32_t size, i;
    if (argc != 2 || (f = fopen(argv[1], "rb")) == NULL || fread(hash, 1, 32, f) != 32) return 2;
    printf("crc %08lx\n", (unsigned long)es_blob_crc32(0, (const uint8_t *)"123456789", 9));
    while ((len = rd(f)) != 0xFFFFFFFFul) {
        uint8_t *buf = malloc(len ? len : 1);
        es_blob_status st;
        if (buf == NULL || fread(buf, 1, len, f) != len) return 3;
        st = es_blob_verify(buf, len, hash, &info);
        printf("%s", es_blob_status_name(st));
        if (st == ES_BLOB_OK) {
            printf(" k=%lu", (unsigned long)info.constant_count);
            for (i = 0; i < info.tensor_count; ++i) {
                if (es_blob_tensor(&info, i, &data, &size) != ES_BLOB_OK) return 4;
                printf(" %08lx", (unsigned long)es_blob_crc32(0, data, size));
            }
            if (es_blob_tensor(&info, info.tensor_count, &data, &size) != ES_BLOB_ERR_NO_TENSOR)
                return 5;
            {   /* the weights table of an accepted blob points at its entries */
                uint32_t *sizes = malloc(sizeof(uint32_t) * (info.tensor_count + 1));
                const void **table = malloc(sizeof(void *) * (info.tensor_count + 1));
                for (i = 0; i < info.tensor_count; ++i) {
                    es_blob_tensor(&info, i, &data, &size);
                    sizes[i] = size;
                }
                sizes[info.tensor_count] = 0;
                if (es_blob_fill_table(&info, sizes, info.tensor_count + 1, table) != ES_BLOB_ERR_TABLE_COUNT)
                    return 7;
                if (es_blob_fill_table(&info, sizes, info.tensor_count, table) != ES_BLOB_OK) return 8;
                for (i = 0; i < info.tensor_count; ++i) {
                    es_blob_tensor(&info, i, &data, &size);
                    if (table[i] != (const void *)data) return 9;
                }
                if (info.tensor_count > 0) {
                    sizes[0] += 1;
                    if (es_blob_fill_table(&info, sizes, info.tensor_count, table) != ES_BLOB_ERR_TABLE_SIZE)
                        return 10;
                }
                free(sizes);
                free((void *)table);
            }
        } else if (info.blob != NULL || info.tensor_count != 0 || info.structure_hash != NULL) {
            return 6;  /* a rejected blob must leave out zeroed */
        }
        printf("\n");
        free(buf);
    }
    return 0;
}
"""


def _compile(tmp_path: Path, sanitize: bool) -> Path:
    (tmp_path / "harness.c").write_text(HARNESS)
    exe = tmp_path / "harness"
    flags = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"] if sanitize else ["-O2"]
    cmd = ["gcc", *STRICT, *flags, "-I", str(RUNTIME), str(tmp_path / "harness.c"),
           str(RUNTIME / "es_blob.c"), "-o", str(exe)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return exe


def _run(exe: Path, tmp_path: Path, expected_hash: bytes, cases: list[bytes]) -> list[str]:
    blob_file = tmp_path / "cases.bin"
    blob_file.write_bytes(expected_hash + b"".join(struct.pack("<I", len(c)) + c for c in cases))
    result = subprocess.run([str(exe), str(blob_file)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "crc cbf43926"  # the standard CRC-32 check value, same as zlib
    return lines[1:]


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    """The harness built once without sanitizers (the fuzz test builds its own with them)."""
    return _compile(tmp_path_factory.mktemp("harness"), sanitize=False)


def test_c_verifier_compiles_clean_for_host_and_cortex_m7(tmp_path):
    src = str(RUNTIME / "es_blob.c")
    host = subprocess.run(["gcc", *STRICT, "-Wconversion", "-c", src, "-o", str(tmp_path / "h.o")],
                          capture_output=True, text=True)
    assert host.returncode == 0, host.stderr
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc is not installed")
    arm = subprocess.run(["arm-none-eabi-gcc", *STRICT, "-mcpu=cortex-m7", "-mthumb", "-Os", "-c",
                          src, "-o", str(tmp_path / "m7.o")], capture_output=True, text=True)
    assert arm.returncode == 0, arm.stderr


def test_c_and_python_agree_on_valid_blobs(harness, tmp_path):
    exe = harness
    g = make_graph(binary_width=13)
    priv, _ = fb.generate_keypair()
    valid = [fb.write_blob(g), fb.write_blob(g, signing_key=priv)]
    lines = _run(exe, tmp_path, bytes.fromhex(g.structure_hash()), valid)
    for data, line in zip(valid, lines):
        b = fb.parse_blob(data)
        crcs = [f"{t.crc32:08x}" for t in b.tensors]
        assert line.split() == ["ES_BLOB_OK", f"k={b.constant_count}", *crcs]
        assert len(b.tensors) > b.constant_count == len(g.constants())  # constants + records
    # retrained weights and scales keep the structure: still accepted
    assert _run(exe, tmp_path, bytes.fromhex(make_graph(seed=5, binary_width=13).structure_hash()),
                valid[:1])[0].startswith("ES_BLOB_OK")
    # another structure's hash, a flipped payload bit, a truncated blob: each named
    other = bytes.fromhex(make_graph(seed=5).structure_hash())  # 4 binary channels, not 13
    assert _run(exe, tmp_path, other, valid[:1]) == ["ES_BLOB_ERR_STRUCTURE_HASH"]
    flipped = bytearray(valid[0])
    flipped[struct.unpack_from("<I", flipped, 20)[0]] ^= 0x80
    cases = [bytes(flipped), reseal(bytearray(flipped)), valid[0][:-3], valid[0][:10]]
    assert _run(exe, tmp_path, bytes.fromhex(g.structure_hash()), cases) == [
        "ES_BLOB_ERR_CRC", "ES_BLOB_ERR_TENSOR_CRC", "ES_BLOB_ERR_SIZE_MISMATCH",
        "ES_BLOB_ERR_TRUNCATED"]


def test_fuzz_c_and_python_agree_and_c_never_crashes(tmp_path):
    if subprocess.run(["gcc", "-fsanitize=address", "-x", "c", "-", "-o", str(tmp_path / "probe")],
                      input="int main(void){return 0;}", capture_output=True, text=True).returncode:
        pytest.skip("gcc here has no AddressSanitizer runtime")
    exe = _compile(tmp_path, sanitize=True)
    rng = random.Random(20261127)
    g = make_graph(binary_width=13)
    shash = g.structure_hash()
    priv, _ = fb.generate_keypair()
    valids = [fb.write_blob(g), fb.write_blob(g, signing_key=priv)]
    cases = [mutate(valids[i % 2], rng) for i in range(4000)] + valids
    cases += [b"", b"ESWB", valids[0][:64]]
    lines = _run(exe, tmp_path, bytes.fromhex(shash), cases)
    assert len(lines) == len(cases)
    accepted = 0
    for i, (case, line) in enumerate(zip(cases, lines)):
        try:
            fb.parse_blob(case, expected_structure_hash=shash)
            py_ok = True
        except ExportError:
            py_ok = False
        c_ok = line.split()[0] == "ES_BLOB_OK"
        assert py_ok == c_ok, f"case {i}: python {'accepts' if py_ok else 'rejects'}, C says {line}"
        accepted += py_ok
    # the mutations reach deep checks: many distinct C reasons, some mutants still valid
    reasons = {line.split()[0] for line in lines}
    assert len(reasons) >= 12, reasons
    assert 2 < accepted < len(cases) // 4
    assert zlib.crc32(b"123456789") == 0xCBF43926


@pytest.mark.parametrize("offset,value,status", [
    (0, b"ESWX", "ES_BLOB_ERR_BAD_MAGIC"),
    (4, struct.pack("<H", 1), "ES_BLOB_ERR_BAD_VERSION"),
    (6, struct.pack("<H", 64), "ES_BLOB_ERR_BAD_HEADER_SIZE"),
    (8, struct.pack("<I", 6), "ES_BLOB_ERR_BAD_FLAGS"),
    (28, struct.pack("<I", 1000), "ES_BLOB_ERR_BAD_CONSTANT_COUNT"),
    (12, struct.pack("<I", 0xFFFFFFFF), "ES_BLOB_ERR_TOO_MANY_TENSORS"),
    (20, struct.pack("<I", 0), "ES_BLOB_ERR_BAD_PAYLOAD_OFFSET"),
    (24, struct.pack("<I", 5), "ES_BLOB_ERR_BAD_PAYLOAD_SIZE"),
    (96, struct.pack("<I", 5), "ES_BLOB_ERR_BAD_ID"),
    (100, b"\x09", "ES_BLOB_ERR_BAD_DTYPE"),
    (101, b"\x04", "ES_BLOB_ERR_BAD_BITS"),
    (102, b"\x07", "ES_BLOB_ERR_BAD_SHAPE"),
    (104, struct.pack("<I", 8), "ES_BLOB_ERR_MISALIGNED"),
    (104, struct.pack("<I", 16), "ES_BLOB_ERR_OVERLAP"),
    (104, struct.pack("<I", 0xFFFFFFF0), "ES_BLOB_ERR_OUT_OF_RANGE"),
    (108, struct.pack("<I", 9), "ES_BLOB_ERR_TENSOR_SIZE"),
    (112, struct.pack("<I", 1), "ES_BLOB_ERR_TENSOR_CRC"),
    (32, b"\xff", "ES_BLOB_ERR_STRUCTURE_HASH"),
])
def test_each_malformed_field_gets_its_named_status(offset, value, status, harness, tmp_path):
    g = make_graph()
    buf = bytearray(fb.write_blob(g))
    buf[offset:offset + len(value)] = value
    case = reseal(buf)
    assert _run(harness, tmp_path, bytes.fromhex(g.structure_hash()), [case]) == [status]
    with pytest.raises(ExportError):
        fb.parse_blob(case, expected_structure_hash=g.structure_hash())


# A bare-metal Cortex-M7 program for QEMU's mps2-an500 (code in ZBT SSRAM1 at 0, data in
# SSRAM2&3 at 0x20000000); newlib's rdimon crt0 + semihosting give printf and exit.
M7_LINKER = """
MEMORY { CODE (rx) : ORIGIN = 0x00000000, LENGTH = 4M  RAM (rwx) : ORIGIN = 0x20000000, LENGTH = 4M }
ENTRY(_start)
SECTIONS {
  .text : { KEEP(*(.vectors)) *(.text*) *(.rodata*) KEEP(*(.init)) KEEP(*(.fini)) . = ALIGN(4); } > CODE
  .ARM.exidx : { *(.ARM.exidx*) } > CODE
  .data : { *(.data*) . = ALIGN(4); } > RAM
  .bss : { __bss_start__ = .; *(.bss*) *(COMMON) . = ALIGN(4); __bss_end__ = .; } > RAM
  end = .; __end__ = .;
  __stack_top = ORIGIN(RAM) + LENGTH(RAM);
}
"""
M7_MAIN = r"""
#include <stdio.h>
#include "es_blob.h"
#include "cases.h"
extern void _start(void);
extern unsigned long __stack_top;
__attribute__((section(".vectors"), used))
const void *const vectors[2] = {&__stack_top, (const void *)_start};
int main(void) {
    unsigned c, i;
    for (c = 0; c < N_CASES; ++c) {
        es_blob_info info;
        const uint8_t *data;
        uint32_t size;
        es_blob_status st = es_blob_verify(CASES[c], CASE_LENS[c], EXPECTED_HASH, &info);
        printf("%s", es_blob_status_name(st));
        if (st == ES_BLOB_OK) {
            printf(" k=%lu", (unsigned long)info.constant_count);
        }
        for (i = 0; st == ES_BLOB_OK && i < info.tensor_count; ++i) {
            es_blob_tensor(&info, i, &data, &size);
            printf(" %08lx", (unsigned long)es_blob_crc32(0, data, size));
        }
        printf("\n");
    }
    return 0;
}
"""


def _c_array(name: str, data: bytes) -> str:
    body = ",".join(str(b) for b in data)
    return f"static const uint8_t {name}[{max(len(data), 1)}] = {{{body or '0'}}};\n"


def test_verifier_runs_on_cortex_m7_under_qemu(tmp_path):
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed here")
    g = make_graph(binary_width=13)
    priv, _ = fb.generate_keypair()
    valid = fb.write_blob(g)
    flipped = bytearray(valid)
    flipped[-40] ^= 4
    cases = [valid, fb.write_blob(g, signing_key=priv), bytes(flipped),
             reseal(bytearray(flipped)), fb.write_blob(make_graph(seed=3))]
    header = "".join(_c_array(f"case{i}", c) for i, c in enumerate(cases))
    header += _c_array("EXPECTED_HASH", bytes.fromhex(g.structure_hash()))
    header += f"#define N_CASES {len(cases)}u\n"
    header += f"static const uint8_t *const CASES[] = {{{', '.join(f'case{i}' for i in range(len(cases)))}}};\n"
    header += f"static const unsigned long CASE_LENS[] = {{{', '.join(str(len(c)) for c in cases)}}};\n"
    (tmp_path / "cases.h").write_text(header)
    (tmp_path / "main.c").write_text(M7_MAIN)
    (tmp_path / "link.ld").write_text(M7_LINKER)
    elf = tmp_path / "blob_m7.elf"
    build = subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=soft",
                            "-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "--specs=rdimon.specs",
                            "-I", str(RUNTIME), "-I", str(tmp_path), "-T", str(tmp_path / "link.ld"),
                            str(tmp_path / "main.c"), str(RUNTIME / "es_blob.c"), "-o", str(elf)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run(["qemu-system-arm", "-machine", "mps2-an500", "-cpu", "cortex-m7",
                          "-nographic", "-semihosting", "-kernel", str(elf)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    b = fb.parse_blob(valid)
    ok = " ".join(["ES_BLOB_OK", f"k={b.constant_count}", *[f"{t.crc32:08x}" for t in b.tensors]])
    assert run.stdout.splitlines() == [ok, ok, "ES_BLOB_ERR_CRC", "ES_BLOB_ERR_TENSOR_CRC",
                                       "ES_BLOB_ERR_STRUCTURE_HASH"]
