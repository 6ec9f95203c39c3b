"""Run the firmware somewhere the host can talk to it, flash a blob, infer, compare with the oracle.

* :class:`HostFirmware` starts the native build (``edgesmith-fw-host --pty``) and exposes its pty
  as :attr:`url`; with ``power_cut_at`` the process dies at that flash operation (exit 75).
* :class:`QemuBoard` boots a firmware ELF under ``qemu-system-arm -M mps2-an500`` with its UART
  on ``-serial tcp:127.0.0.1:PORT,server`` and exposes ``socket://127.0.0.1:PORT``.
* :func:`infer_on_device` sends one input, reads the output and compares it bit for bit with
  :func:`firmware_export.reference.run` on the same IntGraph.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from targets.client import Device
from targets.protocol import DeviceConnectionError, DeviceError

#: how long a started firmware may take to announce its pty / accept the serial socket
START_TIMEOUT_S = 20.0


class HostFirmware:
    """The host build of the firmware on a pty (context manager).

    ``flash_file`` persists the simulated flash across processes (a "power cycle" is a new
    :class:`HostFirmware` on the same file).
    """

    def __init__(self, exe: str | Path, flash_file: str | Path, *, slot_size: int | None = None,
                 power_cut_at: int | None = None, extra_args: Sequence[str] = ()):
        exe = Path(exe)
        if not exe.is_file():
            raise DeviceError(f"no host firmware at {exe}; build it with edgesmith build RUN_DIR --target host")
        cmd = [str(exe), "--pty", "--flash", str(flash_file)]
        if slot_size is not None:
            cmd += ["--slot-size", str(slot_size)]
        if power_cut_at is not None:
            cmd += ["--power-cut-at", str(power_cut_at)]
        cmd += list(extra_args)
        self.cmd = cmd
        # stderr goes to a file (a full pipe would block the firmware); stdout is drained by a
        # thread after the first line for the same reason
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._err = ""
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("PTY "):
            self.close()  # stops the process; its stderr file stays readable until then
            raise DeviceError(f"host firmware did not announce its pty (got {line!r}); {self._err}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self.pty = line[4:]
        self.url = self.pty

    def stderr_text(self) -> str:
        """What the firmware wrote to stderr so far (diagnostics)."""
        self._stderr.seek(0)
        return self._stderr.read().strip()[-2000:]

    def open(self, **kwargs: Any) -> Device:
        """A :class:`Device` on the firmware's pty."""
        return Device.open(self.url, **kwargs)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit (after a power cut); its exit status."""
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        _stop(self.proc)
        if not self._stderr.closed:
            self._err = self.stderr_text()
            self._stderr.close()

    def __enter__(self) -> "HostFirmware":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _stop(proc: subprocess.Popen) -> None:
    """Terminate a firmware process (host build or QEMU), killing it if it ignores SIGTERM for 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QemuBoard:
    """A firmware ELF under QEMU with its first UART on a local TCP socket (context manager)."""

    def __init__(self, elf: str | Path, board: str = "mps2-an500", *, icount_shift: int | None = 0,
                 extra_args: Sequence[str] = ()):
        from targets.boards import get_board  # noqa: PLC0415

        profile = get_board(board)
        if not profile.emulator:
            raise DeviceError(f"board {board} has no emulator; boards with one: mps2-an500")
        if shutil.which(profile.emulator[0]) is None:
            raise DeviceError(f"{profile.emulator[0]} is not installed (Debian: apt install qemu-system-arm)")
        self.port = free_tcp_port()
        cmd = [a.replace("{image}", str(elf)) for a in profile.emulator]
        cmd += ["-serial", f"tcp:127.0.0.1:{self.port},server=on,wait=off", "-monitor", "none"]
        if icount_shift is not None:
            # deterministic instruction counting: the firmware's SysTick then counts instructions
            cmd += ["-icount", f"shift={icount_shift}"]
        cmd += list(extra_args)
        self.cmd = cmd
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._stderr, text=True)
        self.url = f"socket://127.0.0.1:{self.port}"
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._stderr.seek(0)
                err = self._stderr.read().strip()[-500:]
                raise DeviceError(f"QEMU exited with status {self.proc.returncode}: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise DeviceError(f"QEMU did not open its serial socket on port {self.port} within "
                          f"{START_TIMEOUT_S:g} s")

    def open(self, **kwargs: Any) -> Device:
        """A :class:`Device` on the emulated UART (retries while QEMU starts up)."""
        last: Exception | None = None
        for _ in range(20):
            try:
                return Device.open(self.url, **kwargs)
            except DeviceConnectionError as e:
                last = e
                time.sleep(0.1)
        raise DeviceConnectionError(f"cannot connect to QEMU's UART at {self.url}: {last}")

    def close(self) -> None:
        _stop(self.proc)
        self._stderr.close()

    def __enter__(self) -> "QemuBoard":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclasses.dataclass
class InferResult:
    """One inference on the device next to the reference interpreter's."""

    output: np.ndarray
    reference: np.ndarray
    cycles: int

    @property
    def bit_exact(self) -> bool:
        return self.output.shape == self.reference.shape and bool(np.array_equal(self.output, self.reference))


def graph_io_bytes(graph: Any) -> tuple[int, int]:
    """(input bytes, output bytes) of an IntGraph as the firmware concatenates them."""
    nin = sum(graph.tensor(n).nbytes for n in graph.inputs)
    nout = sum(graph.tensor(n).nbytes for n in graph.outputs)
    return nin, nout


def infer_on_device(device: Device, graph: Any, x: np.ndarray | dict[str, np.ndarray]) -> InferResult:
    """INFER ``x`` (the graph's quantized input, or a dict for several inputs) on the device and
    run the reference interpreter on the same input. Outputs are concatenated in graph order."""
    from firmware_export.reference import run  # noqa: PLC0415

    inputs = x if isinstance(x, dict) else {graph.inputs[0]: x}
    data = b"".join(np.ascontiguousarray(inputs[n]).tobytes() for n in graph.inputs)
    _, nout = graph_io_bytes(graph)
    cycles, out = device.infer(data, nout)
    ref = run(graph, inputs)
    reference = np.concatenate([np.asarray(ref[n]).reshape(-1).view(np.uint8) for n in graph.outputs])
    output = np.frombuffer(out, dtype=np.uint8)
    return InferResult(output, reference, cycles)


def qemu_available() -> bool:
    """Whether qemu-system-arm is on PATH (tests skip the QEMU runs without it)."""
    return shutil.which("qemu-system-arm") is not None and os.name == "posix"
