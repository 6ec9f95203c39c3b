"""Minimal protocol driver for the firmware tests (independent of targets/protocol.py).

Written from targets/protocol.md alone so the firmware tests check the C against the spec, not
against the host library they are meant to validate. Talks to the host build over a pty.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import select
import socket
import struct
import subprocess
import termios
import time
import tty
import zlib
from pathlib import Path

SOF = b"\xA5\x5A"
MAX_PAYLOAD = 1024
CMD = dict(INFO=1, ERASE=2, WRITE=3, VERIFY=4, COMMIT=5, INFER=6, STATS=7, REBOOT=8, CONFIRM=9,
           READ=10, INPUT=11, OUTPUT=12)
ERR, NAK = 0x7E, 0x7F
SLOT_STATES = {0: "EMPTY", 1: "WRITING", 2: "VALID", 3: "TRIAL", 4: "BAD"}
CHUNK = 992


def encode(ftype: int, seq: int, payload: bytes = b"") -> bytes:
    body = struct.pack("<BBH", ftype, seq, len(payload)) + payload
    return SOF + body + struct.pack("<I", zlib.crc32(body))


class DeviceError(Exception):
    """The device answered ERR (code, message) or NAK."""

    def __init__(self, ftype: int, payload: bytes):
        self.code = payload[0] if payload else 0
        self.message = payload[1:].decode("ascii", "replace") if ftype == ERR else f"NAK {self.code}"
        self.nak = ftype == NAK
        super().__init__(f"{'ERR' if ftype == ERR else 'NAK'} {self.code}: {self.message}")


@dataclasses.dataclass
class Info:
    version: int
    firmware: str
    board: str
    max_payload: int
    active: int
    structure_hash: bytes
    input_bytes: int
    output_bytes: int
    slot_size: int
    slots: list  # (state name, next offset, committed length, graph hash)


def parse_info(p: bytes) -> Info:
    assert len(p) == 168, len(p)
    slots = []
    for i in range(2):
        s = p[80 + 44 * i: 124 + 44 * i]
        slots.append((SLOT_STATES[s[0]], *struct.unpack_from("<II", s, 4), s[12:44]))
    return Info(p[0], p[1:17].rstrip(b"\0").decode(), p[17:33].rstrip(b"\0").decode(),
                struct.unpack_from("<H", p, 33)[0], p[35], p[36:68], *struct.unpack_from("<III", p, 68), slots)


class HostDevice:
    """The host firmware on a pty: start, talk, restart after a power cut."""

    def __init__(self, exe: Path, flash: Path, *extra: str, slot_size: int = 64 * 1024):
        self.exe, self.flash, self.extra, self.slot_size = exe, flash, list(extra), slot_size
        self.seq = 0
        self.timeout = 5.0  # seconds per response
        self._rx = b""
        self.proc = None
        self.fd = None

    def start(self, *extra: str) -> "HostDevice":
        self.proc = subprocess.Popen([str(self.exe), "--pty", "--flash", str(self.flash), "--slot-size",
                                      str(self.slot_size), *self.extra, *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stdout.readline().decode()
        assert line.startswith("PTY "), (line, self.proc.stderr.read() if self.proc.poll() is not None else "")
        self._rx = b""
        self.fd = os.open(line.split()[1], os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)
        termios.tcflush(self.fd, termios.TCIOFLUSH)
        return self

    def stop(self) -> int | None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            rc = self.proc.wait()
            self.proc.stdout.close()
            self.proc.stderr.close()
            self.proc = None
            return rc
        return None

    def send_raw(self, data: bytes) -> None:
        os.write(self.fd, data)

    def read_frame(self, timeout: float | None = None) -> tuple[int, int, bytes]:
        """One response frame (type, seq, payload); raises TimeoutError."""
        timeout = self.timeout if timeout is None else timeout
        buf = self._rx  # bytes after the previous frame belong to the next one
        deadline = time.monotonic() + timeout
        while True:
            i = buf.find(SOF)
            if i >= 0 and len(buf) >= i + 6:
                n = struct.unpack_from("<H", buf, i + 4)[0]
                if len(buf) >= i + 10 + n:
                    body = buf[i + 2:i + 6 + n]
                    crc = struct.unpack_from("<I", buf, i + 6 + n)[0]
                    self._rx = buf[i + 10 + n:]
                    assert crc == zlib.crc32(body), "response CRC mismatch"
                    return body[0], body[1], body[4:]
            left = deadline - time.monotonic()
            if left <= 0:
                self._rx = buf
                raise TimeoutError(f"no complete response within {timeout}s (got {buf[:40].hex()})")
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:  # the device process exited (pty hung up)
                    data = b""
                if not data:
                    self._rx = b""
                    raise TimeoutError("device closed the pty")
                buf += data

    def command(self, name: str, payload: bytes = b"", timeout: float | None = None, seq: int | None = None) -> bytes:
        """Send one command, return the OK payload; raise DeviceError on ERR/NAK."""
        if seq is None:
            self.seq = (self.seq + 1) % 256
            seq = self.seq
        self.send_raw(encode(CMD[name], seq, payload))
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:  # skip late answers to earlier, timed-out commands
            ftype, rseq, body = self.read_frame(max(0.0, deadline - time.monotonic()))
            if rseq == seq:
                break
        if ftype in (ERR, NAK):
            raise DeviceError(ftype, body)
        assert ftype == 0x80 | CMD[name] and rseq == seq, (ftype, rseq, seq)
        return body

    # ---- commands

    def info(self) -> Info:
        return parse_info(self.command("INFO"))

    def stats(self) -> dict:
        names = ("inferences", "last_cycles", "arena", "boots", "frames", "crc_errors", "naks", "flash_ops")
        return dict(zip(names, struct.unpack("<8I", self.command("STATS"))))

    def write_blob(self, slot: int, blob: bytes, start: int = 0) -> None:
        for off in range(start, len(blob), CHUNK):
            nxt = struct.unpack("<I", self.command("WRITE", struct.pack("<BI", slot, off) + blob[off:off + CHUNK]))[0]
            assert nxt == min(off + CHUNK, len(blob)), (nxt, off)

    def update(self, slot: int, blob: bytes) -> None:
        """ERASE, WRITE, VERIFY, COMMIT (no reboot)."""
        self.command("ERASE", bytes([slot]))
        self.write_blob(slot, blob)
        assert self.command("VERIFY", struct.pack("<BI", slot, len(blob))) == hashlib.sha256(blob).digest()
        self.command("COMMIT", struct.pack("<BI", slot, len(blob)) + hashlib.sha256(blob).digest())

    def reboot(self, wait: float = 10.0) -> None:
        """REBOOT, then poll INFO until the new boot answers (bytes sent during a reset are lost)."""
        self.command("REBOOT")
        deadline = time.monotonic() + wait
        while True:
            try:
                self.command("INFO", timeout=0.5)
                return
            except TimeoutError:
                if time.monotonic() > deadline or (self.proc is not None and self.proc.poll() is not None):
                    raise

    def infer(self, x: bytes) -> tuple[int, bytes]:
        """Run one inference; returns (cycles, output bytes); large inputs go through INPUT."""
        if len(x) <= MAX_PAYLOAD:
            p = self.command("INFER", x, timeout=60)
        else:
            for off in range(0, len(x), MAX_PAYLOAD - 4):
                self.command("INPUT", struct.pack("<I", off) + x[off:off + MAX_PAYLOAD - 4])
            p = self.command("INFER", b"", timeout=60)
        cycles = struct.unpack_from("<I", p)[0]
        info_out = None
        if len(p) == 8 and self._out_bytes() + 4 > MAX_PAYLOAD:
            info_out = struct.unpack_from("<I", p, 4)[0]
            out = b""
            while len(out) < info_out:
                n = min(MAX_PAYLOAD, info_out - len(out))
                out += self.command("OUTPUT", struct.pack("<IH", len(out), n))
            return cycles, out
        return cycles, p[4:]

    def _out_bytes(self) -> int:
        if not hasattr(self, "_out"):
            self._out = self.info().output_bytes
        return self._out


class QemuDevice(HostDevice):
    """The firmware ELF under qemu-system-*, its UART on a unix socket (no TCP port races)."""

    def __init__(self, argv: list[str], sock_path: Path):
        super().__init__(Path(argv[0]), sock_path)
        self.argv, self.sock_path, self.sock = list(argv), Path(sock_path), None

    def start(self, *extra: str) -> "QemuDevice":
        self.sock_path.unlink(missing_ok=True)
        self.proc = subprocess.Popen([*self.argv, *extra, "-serial", f"unix:{self.sock_path},server=on,wait=on"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(self.sock_path))
                break
            except OSError:
                self.sock.close()
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"QEMU did not open its serial socket: {self.proc.stderr.read()[-2000:]!r}")
                time.sleep(0.05)
        self.fd = self.sock.fileno()
        self._rx = b""
        return self

    def stop(self) -> int | None:
        if self.sock is not None:
            self.sock.close()
            self.sock, self.fd = None, None
        return super().stop()
