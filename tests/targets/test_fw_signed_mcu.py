"""Signed-blobs-only firmware on the MCU toolchains: warning-free builds for Cortex-M7 and
RV32IMAC with a public key, the COMMIT check running for real under QEMU mps2-an500, and the
verifier's instruction count there (``-icount shift=0``: hal_cycles() counts instructions).
"""
from __future__ import annotations

import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from fw_driver import DeviceError
from fw_models import WORK, expected, small_model
from test_fw_mcu import ARM, RISCV, _export, _qemu

from firmware_export.blob import write_blob
from targets.boards import get_board
from targets.build import FIRMWARE_DIR, build_firmware
from targets.fw_boards import libgcc_path

pytest.importorskip("cryptography")
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

RELEASE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PEDANTIC = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffreestanding", "-O2", "-c"]
HERE = Path(__file__).resolve().parent


@pytest.mark.skipif(not shutil.which("arm-none-eabi-gcc") or not RISCV, reason="needs both MCU toolchains")
@pytest.mark.parametrize("cc,flags", [("arm-none-eabi-gcc", ["-mcpu=cortex-m7", "-mthumb"]),
                                      ("riscv64-unknown-elf-gcc", ["-march=rv32imac", "-mabi=ilp32"])])
def test_verifier_compiles_pedantic_warning_free(cc, flags, tmp_path):
    for name in ("es_ed25519.c", "es_sha512.c"):
        proc = subprocess.run([cc, *flags, *PEDANTIC, str(FIRMWARE_DIR / name), "-o", str(tmp_path / "x.o")],
                              capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.skipif(not RISCV, reason="needs riscv64-unknown-elf-gcc")
@pytest.mark.parametrize("board", ["gd32vf103", "gd32vf103-qemu"])
def test_riscv_builds_with_public_key(board, tmp_path):
    graphs, _ = small_model()
    img = build_firmware(_export("small", graphs[0], "host"), board, tmp_path / board,
                         public_key=RELEASE_KEY.public_key())
    # the verifier is linked in (not garbage-collected) and the image still fits the board
    nm = subprocess.run(["riscv64-unknown-elf-nm", str(img.elf)], capture_output=True, text=True).stdout
    assert "es_ed25519_verify" in nm and img.flash_bytes <= img.flash_limit_bytes


@pytest.mark.skipif(not ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_mps2_commit_requires_signature(tmp_path):
    graphs, x = small_model()
    img = build_firmware(_export("small", graphs[0], "host"), "mps2-an500", tmp_path / "fw",
                         public_key=RELEASE_KEY.public_key())
    d = _qemu("mps2-an500", img.elf, tmp_path / "uart.sock")
    try:
        assert d.command("INFO")[81] & 1 == 1
        with pytest.raises(DeviceError) as err:
            d.update(1, write_blob(graphs[2]))
        assert err.value.code == 6 and err.value.message.startswith("signature missing")
        start = time.monotonic()
        d.timeout = 60.0
        d.update(1, write_blob(graphs[1], signing_key=RELEASE_KEY))
        print(f"\nmps2-an500 (QEMU): signed update of {len(write_blob(graphs[1]))} B incl. COMMIT "
              f"{time.monotonic() - start:.2f} s wall")
        d.reboot()
        assert d.info().active == 1 and d.infer(x.tobytes())[1] == expected(graphs[1], x)
    finally:
        d.stop()


@pytest.mark.skipif(not ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_mps2_verify_instruction_count(tmp_path):
    message = bytes((i * 7 + 1) & 0xFF for i in range(4096))
    key = RELEASE_KEY
    raw = key.public_key().public_bytes_raw()
    sig = key.sign(message)
    (tmp_path / "ed25519_bench_data.h").write_text(
        f"#define ES_BENCH_MSG_LEN {len(message)}u\n"
        f"#define ES_BENCH_KEY {{{', '.join(f'0x{b:02x}' for b in raw)}}}\n"
        f"#define ES_BENCH_SIG {{{', '.join(f'0x{b:02x}' for b in sig)}}}\n")
    cc = "arm-none-eabi-gcc"
    cpu = list(get_board("mps2-an500").toolchain.flags)
    elf = tmp_path / "bench.elf"
    srcs = [HERE / "ed25519_bench_mps2.c", FIRMWARE_DIR / "es_ed25519.c", FIRMWARE_DIR / "es_sha512.c",
            FIRMWARE_DIR / "hal_mps2.c", FIRMWARE_DIR / "startup_cortexm.c", FIRMWARE_DIR / "es_libc_min.c"]
    common = [cc, *cpu, "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-ffreestanding", "-fno-builtin",
              "-ffunction-sections", "-fdata-sections", "-I", str(FIRMWARE_DIR), "-I", str(tmp_path), "-c"]
    # hal_mps2.c alone gets its main() renamed: startup_cortexm.c must call the bench's main()
    for src, extra in ((srcs[3], ["-Dmain=board_main_unused"]), *((s, []) for s in srcs if s != srcs[3])):
        proc = subprocess.run([*common, *extra, str(src)], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    objects = sorted(str(p) for p in tmp_path.glob("*.o"))
    proc = subprocess.run([cc, *cpu, "-nostdlib", "-nostartfiles", "-T", str(FIRMWARE_DIR / "mps2_an500.ld"),
                           "-Wl,--gc-sections", "-o", str(elf), *objects, libgcc_path(cc, tuple(cpu))],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    qemu = subprocess.Popen(["qemu-system-arm", "-M", "mps2-an500", "-cpu", "cortex-m7", "-nographic",
                             "-monitor", "none", "-icount", "shift=0", "-kernel", str(elf), "-serial", "stdio"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out = b""
    try:
        deadline = time.monotonic() + 60
        while b"bad " not in out or not out.endswith(b"\n"):
            ready, _, _ = select.select([qemu.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no bench output within 60 s: {out!r}"
            chunk = qemu.stdout.read1(256)
            assert chunk, qemu.stderr.read()[-2000:]
            out += chunk
    finally:
        qemu.kill()
        qemu.wait()
    m = re.search(rb"verify (\d+) (\d+)\nbad (\d+)\n", out)
    assert m, out
    status, instructions, bad_status = (int(v) for v in m.groups())
    assert status == 0 and bad_status == 4  # OK, then MISMATCH after one changed byte
    assert 1e5 < instructions < 1e9
    print(f"\nEd25519 verify of a 4 KiB message on mps2-an500 (Cortex-M7, QEMU -icount shift=0): "
          f"{instructions} instructions")
