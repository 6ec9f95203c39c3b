"""Flashing throughput vs the raw link, and resume after a cut vs a full flash.

    .venv/bin/python benchmarks/flash_throughput.py [--repeats 3] [--pty-rounds 9] [--json OUT.json]

Model: a ResNet-8 shaped int8 graph (78 KB of weights, 83 KB blob), firmware built for it.
Links:

* ``pty``: the host build of the firmware on a pty (``edgesmith-fw-host --pty``);
* ``qemu``: the mps2-an500 build under ``qemu-system-arm`` with its UART on ``-serial tcp:``;
* ``pty@921600``: the pty through ``targets.faults.FaultProxy`` limited to 92160 bytes/s in each
  direction (921600 baud 8N1), i.e. what a real UART at that rate would allow.

"Raw link" is the most the link carries one way into the device: ``targets.flasher.measure_raw_link``
(1 MiB of zero bytes, which the device's frame scanner drops, sent in 16 KiB port writes like
the flasher's WRITE bursts, then an INFO; minus an INFO alone; best of 3). For the throttled link
it is the configured 92160 bytes/s. Effective throughput is blob bytes per second of the WRITE
phase (ERASE, VERIFY, COMMIT, reboot and confirm are reported separately as the total time).
Efficiency on the pty is the median, over ``--pty-rounds`` rounds, of one full flash's throughput
over the raw link measured just before it (the pty's rate follows the load of the shared host);
on QEMU the median over alternating short windows (see :func:`bench_qemu`).

Raw-link figures before this version are not comparable: the firmware's scanner read the clock
for every byte it dropped and the junk went out in one 1 MiB write, which pyserial sends with a
copy of the rest after every partial write, so the "raw link" then measured those two (about a
quarter of what the pty carries) and flattered the efficiency.

Resume: the power is cut (``--power-cut-at``) when half the blob is written, the firmware is
restarted on the same flash file and the flash is run again; its time is compared with a full
flash on a fresh flash file.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "firmware_export"))

import numpy as np  # noqa: E402

from firmware_export.blob import write_blob  # noqa: E402
from firmware_export.export import export_model  # noqa: E402
from targets import flasher  # noqa: E402
from targets.boards import get_board  # noqa: E402
from targets.build import build_firmware  # noqa: E402
from targets.faults import FaultPlan, FaultProxy  # noqa: E402
from targets.flasher import flash_blob, measure_raw_link  # noqa: E402
from targets.protocol import DeviceError  # noqa: E402
from targets.runner import HostFirmware, QemuBoard  # noqa: E402

BAUD_921600_BYTES_PER_S = 92160.0


def _flash_stats(results):
    tput = [r.write_throughput for r in results]
    return {"write_throughput_Bps": statistics.median(tput),
            "total_s": statistics.median(r.total_seconds for r in results),
            "write_s": statistics.median(r.write_seconds for r in results)}


def bench_pty(exe: Path, blob: bytes, tmp: Path, repeats: int, rounds: int) -> dict:
    """Raw link and a full flash_blob alternate, ``rounds`` times, on one firmware process: the
    pty's rate follows the load of the (shared) host, so each flash is compared with the raw
    link measured just before it, and the median of those ratios is reported."""
    raws, results = [], []
    with HostFirmware(exe, tmp / "pty.bin") as fw:
        for _ in range(max(rounds, repeats)):
            with fw.open() as dev:
                raws.append(measure_raw_link(dev, 1 << 20))
            results.append(flash_blob(fw.url, blob))
        stop_and_wait = [flash_blob(fw.url, blob, window=1) for _ in range(repeats)]
    ratios = [r.write_throughput / raw for r, raw in zip(results, raws)]
    return {"raw_Bps": statistics.median(raws), "raw_Bps_runs": raws,
            "write_Bps_runs": [r.write_throughput for r in results], "efficiency_runs": ratios,
            **_flash_stats(results),
            "stop_and_wait_Bps": _flash_stats(stop_and_wait)["write_throughput_Bps"]}


def bench_throttled(exe: Path, blob: bytes, tmp: Path, repeats: int) -> dict:
    with HostFirmware(exe, tmp / "thr.bin") as fw:
        with FaultProxy(fw.url, FaultPlan(bytes_per_s=BAUD_921600_BYTES_PER_S)) as proxy:
            results = [flash_blob(proxy.url, blob) for _ in range(repeats)]
    return {"raw_Bps": BAUD_921600_BYTES_PER_S, **_flash_stats(results)}


def bench_qemu(elf: Path, blob: bytes, rounds: int) -> dict:
    """QEMU's UART moves one byte per main-loop turn, so its rate swings with the host's load.
    Raw link and WRITE (pipelined as in flash_blob) are therefore measured in short alternating
    windows of 8 chunks of 992 bytes, and the median of the per-window ratios is reported; one
    full flash_blob gives the end-to-end time."""
    chunk, per_window = flasher.CHUNK_SIZES[0], 8
    raws, writes = [], []
    with QemuBoard(elf, icount_shift=None) as board:
        with board.open() as dev:
            dev.erase(0)
            off = 0
            for _ in range(min(rounds, len(blob) // (chunk * per_window))):
                raws.append(measure_raw_link(dev, chunk * per_window, repeats=1))
                t0 = time.perf_counter()
                end = off + chunk * per_window
                off, done = flasher._write_window(dev, 0, memoryview(blob)[:end], off,
                                                  flasher.WINDOW_FLOW_CONTROLLED)
                if not done:
                    raise DeviceError(f"a WRITE window failed at byte {off} (no faults injected)")
                writes.append(chunk * per_window / (time.perf_counter() - t0))
        flash_blob(board.url, blob)  # finishes slot A (resumes after the windows)
        full = flash_blob(board.url, blob)  # a whole flash into slot B
    ratios = [w / r for w, r in zip(writes, raws)]
    return {"raw_Bps": statistics.median(raws), "raw_Bps_runs": raws, "write_Bps_runs": writes,
            "efficiency_runs": ratios, **_flash_stats([full]),
            "window_write_Bps": statistics.median(writes)}


def _flash_via(fw: HostFirmware, blob: bytes, bytes_per_s: float | None):
    if bytes_per_s is None:
        return flash_blob(fw.url, blob)
    with FaultProxy(fw.url, FaultPlan(bytes_per_s=bytes_per_s)) as proxy:
        return flash_blob(proxy.url, blob)


def bench_resume(exe: Path, blob: bytes, tmp: Path, bytes_per_s: float | None) -> dict:
    """Full flash vs the flash run again after a power cut half-way through WRITE."""
    flasher.RECONNECT_ATTEMPTS = 1
    flasher.RECONNECT_PAUSE_S = 0.0
    probe = tmp / "probe.bin"
    probe.unlink(missing_ok=True)
    with HostFirmware(exe, probe) as fw, fw.open() as dev:
        at_boot = dev.stats().flash_writes
        chunk = flasher.burst_chunk(dev.info())  # what a WRITE carries on this device
        dev.erase(0)
        erase_ops = dev.stats().flash_writes - at_boot
    fresh = tmp / "fresh.bin"
    fresh.unlink(missing_ok=True)
    with HostFirmware(exe, fresh) as fw:
        full = _flash_via(fw, blob, bytes_per_s)
    cut_file = tmp / "cut.bin"
    cut_file.unlink(missing_ok=True)
    half_writes = max(1, -(-len(blob) // chunk) // 2)
    with HostFirmware(exe, cut_file, power_cut_at=at_boot + erase_ops + half_writes) as fw:
        try:
            flash_blob(fw.url, blob)
        except DeviceError:
            pass
        fw.wait()
    with HostFirmware(exe, cut_file) as fw:
        resumed = _flash_via(fw, blob, bytes_per_s)
    return {"full_total_s": full.total_seconds, "full_write_s": full.write_seconds,
            "resume_total_s": resumed.total_seconds, "resume_write_s": resumed.write_seconds,
            "resumed_from": resumed.resumed_from, "blob_bytes": len(blob)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pty-rounds", type=int, default=9,
                    help="alternating raw link / full flash rounds on the pty (at least --repeats)")
    ap.add_argument("--qemu-windows", type=int, default=10, help="alternating raw/WRITE windows on QEMU")
    ap.add_argument("--json", metavar="OUT.json")
    args = ap.parse_args()
    from random_graphs import resnet8_graph

    graph, _ = resnet8_graph(np.random.default_rng(3))
    blob = write_blob(graph)
    with tempfile.TemporaryDirectory(prefix="flash-bench-") as d:
        tmp = Path(d)
        export_model(graph, tmp / "export", get_board("host"), formats=["c", "blob"])
        exe = build_firmware(tmp / "export", "host", tmp / "fw-host").elf
        report = {"blob_bytes": len(blob),
                  "pty": bench_pty(exe, blob, tmp, args.repeats, args.pty_rounds),
                  "pty@921600": bench_throttled(exe, blob, tmp, args.repeats),
                  "resume": bench_resume(exe, blob, tmp, None),
                  "resume@921600": bench_resume(exe, blob, tmp, BAUD_921600_BYTES_PER_S)}
        if shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc"):
            elf = build_firmware(tmp / "export", "mps2-an500", tmp / "fw-mps2").elf
            report["qemu"] = bench_qemu(elf, blob, args.qemu_windows)
    for link in ("pty", "pty@921600", "qemu"):
        if link in report:
            r = report[link]
            r["efficiency"] = (statistics.median(r["efficiency_runs"]) if "efficiency_runs" in r
                               else r["write_throughput_Bps"] / r["raw_Bps"])
            tput = r.get("window_write_Bps", r["write_throughput_Bps"])
            print(f"{link:<11} raw {r['raw_Bps'] / 1024:8.1f} KiB/s  flash {tput / 1024:8.1f} "
                  f"KiB/s  = {r['efficiency']:.0%} of raw; full update {r['total_s']:.2f} s")
    if "stop_and_wait_Bps" in report["pty"]:
        r = report["pty"]
        print(f"pty, window 1 (stop-and-wait): {r['stop_and_wait_Bps'] / 1024:.1f} KiB/s "
              f"= {r['stop_and_wait_Bps'] / r['raw_Bps']:.0%} of raw")
    for name in ("resume", "resume@921600"):
        r = report[name]
        print(f"{name:<13} cut at byte {r['resumed_from']} of {r['blob_bytes']}: resumed flash "
              f"{r['resume_total_s']:.3f} s (write {r['resume_write_s']:.3f} s) vs full flash "
              f"{r['full_total_s']:.3f} s (write {r['full_write_s']:.3f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
