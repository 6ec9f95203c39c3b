"""A fault-injecting byte proxy between a host and a device: the flaky cable of the tests.

:class:`FaultProxy` listens on ``socket://127.0.0.1:PORT`` (:attr:`FaultProxy.url`) and forwards
bytes to and from a device port opened with pyserial (a pty of the host-built firmware, QEMU's
``socket://`` serial, a real UART). On the way, per :class:`FaultPlan`, it

* flips bits (``corrupt_rate``: probability per byte that the byte is XORed with a random
  non-zero value),
* drops bytes (``drop_rate``, per byte),
* stalls (``stall_rate`` per byte: the rest of the chunk waits ``stall_s``),
* cuts the host connection once the host has sent ``disconnect_after`` bytes (each entry cuts
  once; the host reconnects to the same URL, the device keeps running and its late answers are
  lost, as with a pulled USB cable),
* limits the rate to ``bytes_per_s`` in each direction (a baud rate: 115200 baud 8N1 is 11520
  bytes/s), so a pty or socket behaves like a real UART.

Every fault is counted in :attr:`FaultProxy.counters`, so a test can prove the faults happened.
Randomness comes from one seeded generator: the same plan and traffic give the same faults.

Run alone: ``python -m targets.faults DEVICE_URL --corrupt 1e-4`` prints the URL to flash through.
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import socket
import threading
import time
from typing import Any

from targets.client import open_port
from targets.protocol import DeviceConnectionError, DeviceError

#: how long blocking reads wait before the pumps look at the stop flag
_POLL_S = 0.02
_CHUNK = 4096


@dataclasses.dataclass
class FaultPlan:
    """Which faults to inject (module docstring); ``direction`` is "both", "to_device" or "to_host"."""

    corrupt_rate: float = 0.0
    drop_rate: float = 0.0
    stall_rate: float = 0.0
    stall_s: float = 0.0
    disconnect_after: tuple[int, ...] = ()
    bytes_per_s: float | None = None
    direction: str = "both"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("corrupt_rate", "drop_rate", "stall_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise DeviceError(f"fault plan: {name} is a probability per byte, 0..1; got {value}")
        if self.direction not in ("both", "to_device", "to_host"):
            raise DeviceError(f"fault plan: direction must be both, to_device or to_host; got "
                              f"{self.direction!r}")
        if self.bytes_per_s is not None and self.bytes_per_s <= 0:
            raise DeviceError(f"fault plan: bytes_per_s must be > 0, got {self.bytes_per_s}")
        self.disconnect_after = tuple(sorted(int(n) for n in self.disconnect_after))

    def applies(self, to_device: bool) -> bool:
        return self.direction == "both" or (self.direction == "to_device") == to_device


@dataclasses.dataclass
class FaultCounters:
    """What the proxy did (bytes are counted as they arrived, before faults)."""

    to_device_bytes: int = 0
    to_host_bytes: int = 0
    corrupted: int = 0
    dropped: int = 0
    stalls: int = 0
    disconnects: int = 0
    connections: int = 0
    lost_to_host: int = 0  # device bytes that arrived while no host was connected


class _Throttle:
    """Sleeps so that a byte stream never runs faster than ``rate`` bytes per second."""

    def __init__(self, rate: float | None):
        self.rate = rate
        self._t0 = time.monotonic()
        self._sent = 0

    def wait(self, nbytes: int) -> None:
        if not self.rate:
            return
        self._sent += nbytes
        ahead = self._t0 + self._sent / self.rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        elif ahead < -0.05:
            # idle link: do not bank credit for a burst later
            self._t0 = time.monotonic()
            self._sent = 0


class FaultProxy:
    """Forward bytes between a TCP client (the host) and ``device_url``, injecting faults.

    Use as a context manager; :attr:`url` is what the host opens. One host connection at a time.
    """

    def __init__(self, device_url: str, plan: FaultPlan | None = None, *, baud: int = 115200,
                 host: str = "127.0.0.1", port: int = 0):
        self.plan = plan or FaultPlan()
        self.counters = FaultCounters()
        self._rng = random.Random(self.plan.seed)
        self._rng_lock = threading.Lock()
        self._device = open_port(device_url, baud)
        self._device.timeout = _POLL_S
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(_POLL_S * 5)
        self.url = f"socket://{host}:{self._listener.getsockname()[1]}"
        self._client: socket.socket | None = None
        self._client_lock = threading.Lock()
        self._stop = threading.Event()
        self._cuts = list(self.plan.disconnect_after)
        self._to_device_throttle = _Throttle(self.plan.bytes_per_s)
        self._to_host_throttle = _Throttle(self.plan.bytes_per_s)
        self._threads = [threading.Thread(target=self._accept_loop, daemon=True, name="fault-accept"),
                         threading.Thread(target=self._device_to_host, daemon=True, name="fault-d2h")]
        for t in self._threads:
            t.start()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop forwarding and close both ends."""
        self._stop.set()
        self._drop_client()
        for t in self._threads:
            t.join(timeout=2)
        self._listener.close()
        self._device.close()

    # ---- faults

    def _mangle(self, data: bytes, to_device: bool) -> list[bytes | float]:
        """The bytes to forward, as pieces; a float piece is a stall (seconds) at that point."""
        plan = self.plan
        if not plan.applies(to_device) or not (plan.corrupt_rate or plan.drop_rate or plan.stall_rate):
            return [data]
        pieces: list[bytes | float] = []
        out = bytearray()
        with self._rng_lock:
            rnd = self._rng.random
            for b in data:
                if plan.stall_rate and rnd() < plan.stall_rate:
                    pieces += [bytes(out), plan.stall_s]
                    out.clear()
                    self.counters.stalls += 1
                if plan.drop_rate and rnd() < plan.drop_rate:
                    self.counters.dropped += 1
                    continue
                if plan.corrupt_rate and rnd() < plan.corrupt_rate:
                    b ^= self._rng.randrange(1, 256)
                    self.counters.corrupted += 1
                out.append(b)
        pieces.append(bytes(out))
        return pieces

    # ---- pumps

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._drop_client()
            with self._client_lock:
                self._client = conn
                self.counters.connections += 1
            threading.Thread(target=self._host_to_device, args=(conn,), daemon=True,
                             name="fault-h2d").start()

    def _drop_client(self) -> None:
        with self._client_lock:
            conn, self._client = self._client, None
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _host_to_device(self, conn: socket.socket) -> None:
        conn.settimeout(_POLL_S * 5)
        while not self._stop.is_set():
            try:
                data = conn.recv(_CHUNK)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            if self._cuts:
                sent = self.counters.to_device_bytes
                cut = self._cuts[0] - sent
                if cut < len(data):
                    # forward what came before the cut, then pull the cable
                    self._cuts.pop(0)
                    self._forward_to_device(data[:max(cut, 0)])
                    self.counters.disconnects += 1
                    self._drop_client()
                    return
            self._forward_to_device(data)

    def _forward_to_device(self, data: bytes) -> None:
        self.counters.to_device_bytes += len(data)
        for piece in self._mangle(data, to_device=True):
            if isinstance(piece, float):
                time.sleep(piece)
            elif piece:
                self._to_device_throttle.wait(len(piece))
                try:
                    self._device.write(piece)
                except Exception:  # noqa: BLE001 - the device end died: nothing left to forward
                    self._stop.set()
                    return

    def _device_to_host(self) -> None:
        while not self._stop.is_set():
            try:
                n = self._device.in_waiting
                data = self._device.read(min(n, _CHUNK) if n else 1)
            except Exception:  # noqa: BLE001 - device gone (emulator exited): stop forwarding
                self._drop_client()
                return
            if not data:
                continue
            self.counters.to_host_bytes += len(data)
            for piece in self._mangle(data, to_device=False):
                if isinstance(piece, float):
                    time.sleep(piece)
                    continue
                if not piece:
                    continue
                self._to_host_throttle.wait(len(piece))
                with self._client_lock:
                    conn = self._client
                if conn is None:
                    self.counters.lost_to_host += len(piece)
                    continue
                try:
                    conn.sendall(piece)
                except OSError:
                    self.counters.lost_to_host += len(piece)


def main(argv: list[str] | None = None) -> int:
    """``python -m targets.faults DEVICE_URL [--corrupt P] ...``: run a proxy until Ctrl-C."""
    ap = argparse.ArgumentParser(prog="python -m targets.faults", description=__doc__.split("\n")[0])
    ap.add_argument("device_url")
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--corrupt", type=float, default=0.0, help="probability per byte of a bit flip")
    ap.add_argument("--drop", type=float, default=0.0, help="probability per byte of a drop")
    ap.add_argument("--stall", type=float, default=0.0, help="probability per byte of a stall")
    ap.add_argument("--stall-s", type=float, default=0.5)
    ap.add_argument("--disconnect-after", type=int, action="append", default=[], metavar="BYTES")
    ap.add_argument("--bytes-per-s", type=float)
    ap.add_argument("--direction", default="both", choices=["both", "to_device", "to_host"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    plan = FaultPlan(args.corrupt, args.drop, args.stall, args.stall_s, tuple(args.disconnect_after),
                     args.bytes_per_s, args.direction, args.seed)
    try:
        proxy = FaultProxy(args.device_url, plan, baud=args.baud)
    except DeviceConnectionError as e:
        print(f"error: {e}")
        return 2
    print(proxy.url, flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        proxy.close()
        print(proxy.counters)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
