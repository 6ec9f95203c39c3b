"""The ``Device`` client of the device protocol: one command at a time with the retry policy.

Send a frame, wait for the answer with the same seq, resend the *same* frame (same seq and CRC,
so the device answers from its stored response instead of executing twice) on NAK or silence,
at most ``COMMAND_ATTEMPTS`` tries; an ERR answer is final (:class:`DeviceCommandError`). Frame
codec, payload types and constants: :mod:`targets.protocol` (which re-exports this class).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import secrets
import select
import struct
import time
import typing
from typing import Any, Callable

from targets.protocol import (COMMAND_ATTEMPTS, CRC_SIZE, HEADER_SIZE, LONG_TIMEOUTS_S, MAX_DETECTIONS_PER_FRAME,
                              MAX_INPUT_DATA, MAX_PAYLOAD, MAX_WRITE_DATA, OK_FLAG, PROTOCOL_VERSION, RESP_ERR,
                              RESP_NAK, RESPONSE_TIMEOUT_S, SOCKET_BYTE_TIME_S, Cmd, DecodeFault, DetectAnswer,
                              Detection, DeviceCommandError, DeviceConnectionError, DeviceError, DeviceInfo,
                              DeviceTimeoutError, Frame, FrameDecoder, NakReason, Stats, encode_frame)

#: how often the reader wakes up to expire a half-received frame
_POLL_S = 0.02
#: WRITE payload header: slot u8, offset u32 (then the data)
_WRITE_HEAD = struct.Struct("<BI")
_SEQ_COLLISION = "an answer to another command with this seq (stored response of an earlier session)"


@dataclasses.dataclass
class LinkCounters:
    """What the client saw on the link (benchmarks and tests read these)."""

    commands: int = 0
    resends: int = 0
    naks: int = 0
    timeouts: int = 0
    bad_frames: int = 0
    stale_frames: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


class EncodedFrames(typing.NamedTuple):
    """Frames encoded for sending (:meth:`Device.encode_writes`): their seqs and bytes."""

    seqs: list[int]
    data: bytes


# ---------------------------------------------------------------- client


class Device:
    """A device on a pyserial port (``/dev/ttyUSB0``, a pty, ``socket://127.0.0.1:PORT``).

    ``port`` is an open pyserial object (anything with ``write``, ``read``, ``in_waiting``);
    :meth:`open` makes one from a URL. ``log`` receives one line per resend.
    """

    def __init__(self, port: Any, *, attempts: int = COMMAND_ATTEMPTS,
                 response_timeout_s: float = RESPONSE_TIMEOUT_S,
                 long_timeouts_s: dict[str, float] | None = None,
                 log: Callable[[str], None] | None = None, first_seq: int | None = None,
                 byte_time_s: float | None = None):
        if attempts < 1:
            raise DeviceError(f"attempts must be >= 1, got {attempts}")
        self.port = port
        self.attempts = attempts
        self.response_timeout_s = response_timeout_s
        self.long_timeouts_s = dict(LONG_TIMEOUTS_S if long_timeouts_s is None else long_timeouts_s)
        self.log = log
        # each try also waits for the frame and the longest answer to cross the link
        if byte_time_s is None:
            byte_time_s = 10.0 / port.baudrate if getattr(port, "baudrate", None) else 0.0
        self.byte_time_s = byte_time_s
        self.counters = LinkCounters()
        self._decoder = FrameDecoder()
        # decoded but not yet examined: one read can complete several answers (pipelining)
        self._events: collections.deque = collections.deque()
        # a new session starts at a random seq: the device may still remember the last seq of
        # an earlier session and answer a same-seq command from its stored response
        self._seq = (secrets.randbelow(256) if first_seq is None else first_seq) & 0xFF
        self._info: DeviceInfo | None = None
        # reads wake up every _POLL_S so a half-received frame can expire; set once (on a
        # real serial port, changing the timeout reconfigures the UART)
        if getattr(port, "timeout", _POLL_S) != _POLL_S:
            port.timeout = _POLL_S
        self._fd = _nonblocking_fd(port)

    @classmethod
    def open(cls, url: str, baud: int = 115200, **kwargs: Any) -> "Device":
        """Open ``url`` with pyserial (a path, ``socket://host:port``, ``rfc2217://``...).

        Network URLs have no baud rate: their byte time is ``SOCKET_BYTE_TIME_S`` (QEMU's
        emulated UART moves a few KB/s on a busy host)."""
        if "byte_time_s" not in kwargs and url.split("://", 1)[0] in ("socket", "rfc2217"):
            kwargs["byte_time_s"] = SOCKET_BYTE_TIME_S
        return cls(open_port(url, baud), **kwargs)

    def close(self) -> None:
        try:
            self.port.close()
        except Exception:  # noqa: BLE001 - closing a dead port must not hide the real error
            pass

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def next_seq(self) -> int:
        """The seq the next command will use (continue with it on a new connection)."""
        return self._seq

    # ---- transport

    def _send(self, data: bytes, while_full: Callable[[], None] | None = None) -> None:
        """Write ``data`` to the port, all of it. A pyserial port on a non-blocking descriptor (a
        tty or pty, ``socket://``) is written with os.write from a memoryview: pyserial copies
        the unsent rest after each partial write, and a pty takes ~4 KB at a time. There
        ``while_full`` runs once, the first time the port takes no more: the flasher encodes
        its next frame then, instead of after this write, when the device may have read all
        that the port held and be waiting."""
        if self._fd is not None:
            self._write_fd(memoryview(data), while_full)
        else:
            try:
                # no flush(): on a pty tcdrain() waits until the firmware has read the frame,
                # which would serialise pipelined WRITEs; the kernel sends queued bytes anyway
                self.port.write(data)
            except Exception as e:  # pyserial raises SerialException / OSError subclasses
                raise DeviceConnectionError(f"cannot write to the device port: {e}; check the cable or "
                                            f"that the emulator is still running") from None
        self.counters.bytes_sent += len(data)

    def _write_fd(self, view: memoryview, while_full: Callable[[], None] | None) -> None:
        """pyserial's write loop without its copies: write what the port takes, then run
        ``while_full`` once or wait (``select``) until it takes more, up to its write_timeout."""
        timeout = getattr(self.port, "write_timeout", None)
        while True:
            try:
                view = view[os.write(self._fd, view):]
            except BlockingIOError:
                pass  # full: nothing taken
            except (OSError, ValueError) as e:
                raise DeviceConnectionError(f"cannot write to the device port: {e}; check the cable or "
                                            f"that the emulator is still running") from None
            if not view:
                return
            if while_full is not None:
                work, while_full = while_full, None
                work()  # the caller's work while the device reads; then try again, it may have room
                continue
            try:
                writable = select.select([], [self._fd], [], timeout)[1]
            except (OSError, ValueError) as e:
                raise DeviceConnectionError(f"the device port went away: {e}") from None
            if not writable:
                raise DeviceConnectionError(f"the device port took no bytes for {timeout} s; check the "
                                            f"cable or that the firmware is still running")

    def send_bytes(self, data: bytes) -> None:
        """Write ``data`` as it is, through the same path as frames (:func:`targets.raw_link.
        raw_link` sends its junk this way)."""
        self._send(data)

    def _read_some(self) -> bytes:
        try:
            n = self.port.in_waiting
            data = self.port.read(n if n else 1)
            if not n and data:
                # woke up on the first byte of an answer: take what came with it in the same
                # call, instead of feeding the decoder one byte and going round again
                n = self.port.in_waiting
                if n:
                    data += self.port.read(n)
        except Exception as e:
            raise DeviceConnectionError(f"the device port went away: {e}; check the cable or that "
                                        f"the emulator is still running") from None
        self.counters.bytes_received += len(data)
        return data

    def _drain(self) -> None:
        """Drop stale input (late duplicates of earlier answers) before a new command."""
        try:
            while self.port.in_waiting:
                self.counters.bytes_received += len(self.port.read(self.port.in_waiting))
        except Exception as e:
            raise DeviceConnectionError(f"the device port went away: {e}") from None
        self._decoder.reset()
        self._events.clear()

    # ---- one command with the retry policy

    def _wait_for(self, name: str, payload_len: int, timeout_s: float | None) -> float:
        wait = timeout_s if timeout_s is not None else self.long_timeouts_s.get(name, self.response_timeout_s)
        return wait + self.byte_time_s * (HEADER_SIZE + payload_len + CRC_SIZE + MAX_PAYLOAD)

    def command(self, cmd: Cmd | int, payload: bytes = b"", *, timeout_s: float | None = None,
                attempts: int | None = None) -> bytes:
        """Run one command; return the OK payload.

        Resends the same frame on NAK or silence, at most ``attempts`` tries; raises
        :class:`DeviceTimeoutError` naming the command, the tries and the last fault, or
        :class:`DeviceCommandError` when the device answers ERR.
        """
        name = _name(cmd)
        wait = self._wait_for(name, len(payload), timeout_s)
        tries = attempts or self.attempts
        seq, frame = self._new_frame(cmd, payload)
        self.counters.commands += 1
        self._drain()
        last_fault = "no answer"
        for attempt in range(1, tries + 1):
            if attempt > 1:
                self.counters.resends += 1
                if self.log:
                    self.log(f"{name} seq {seq}: try {attempt}/{tries} after {last_fault}")
            self._send(frame)
            answer, last_fault = self._await(int(cmd), seq, wait)
            if answer is None:
                if last_fault == _SEQ_COLLISION:
                    # the device answered from its stored response of another command
                    seq, frame = self._new_frame(cmd, payload)
                continue
            return _ok_payload(name, answer)
        raise DeviceTimeoutError(f"{name} failed after {tries} tries ({wait:g} s each); last fault: "
                                 f"{last_fault}. Check the port, baud rate and that the device runs "
                                 f"EdgeSmith firmware")

    # ---- pipelining: several commands in flight (used for WRITE bursts on fast links)

    def send(self, cmd: Cmd | int, payload: bytes = b"") -> int:
        """Send one command without waiting; returns its seq for :meth:`receive`. No retries:
        a caller that pipelines falls back to :meth:`command` after any fault."""
        return self.send_many(cmd, [payload])[0]

    def send_many(self, cmd: Cmd | int, payloads: list[bytes], max_payload: int = MAX_PAYLOAD) -> list[int]:
        """Send one command per payload without waiting, all in ONE port write; returns their
        seqs, in order, for :meth:`receive`. One write per burst instead of one per frame saves
        a system call and a wake-up of the reader per frame (on a pty that is most of the cost
        of a 1 KiB frame). No retries, as :meth:`send`. ``max_payload``: up to the device's INFO
        max payload (bigger command frames on fast links)."""
        return self.send_encoded(self._encode(int(cmd), [(b"", p) for p in payloads], max_payload))

    def encode_writes(self, slot: int, chunks: list[tuple[int, bytes]],
                      max_payload: int = MAX_PAYLOAD) -> EncodedFrames:
        """WRITE frames, one per ``(offset, data)`` chunk, with the next seqs, ready for
        :meth:`send_encoded` (frames must go out in the order they were encoded). ``data`` (a
        memoryview slice of the blob) is copied once, straight into its frame."""
        return self._encode(int(Cmd.WRITE), [(_WRITE_HEAD.pack(slot, off), data) for off, data in chunks],
                            max_payload)

    def send_encoded(self, frames: EncodedFrames, while_full: Callable[[], None] | None = None) -> list[int]:
        """Send frames from :meth:`encode_writes` in ONE port write, without waiting for
        answers; returns their seqs for :meth:`receive`. ``while_full``: see :meth:`_send`."""
        self.counters.commands += len(frames.seqs)
        self._send(frames.data, while_full)
        return frames.seqs

    def send_writes(self, slot: int, chunks: list[tuple[int, bytes]], max_payload: int = MAX_PAYLOAD) -> list[int]:
        """:meth:`send_many` for WRITE: :meth:`encode_writes`, then :meth:`send_encoded`."""
        return self.send_encoded(self.encode_writes(slot, chunks, max_payload))

    def _encode(self, code: int, parts: list[tuple[bytes, bytes]], max_payload: int) -> EncodedFrames:
        """One frame per (payload prefix, payload) with consecutive seqs, joined."""
        seq = self._seq
        seqs, frames = [], []
        for prefix, payload in parts:
            seqs.append(seq)
            frames.append(encode_frame(code, seq, payload, max_payload, prefix=prefix))
            seq = (seq + 1) & 0xFF
        self._seq = seq
        return EncodedFrames(seqs, frames[0] if len(frames) == 1 else b"".join(frames))

    def receive(self, cmd: Cmd | int, seq: int, payload_len: int = MAX_PAYLOAD) -> bytes:
        """The OK payload answering :meth:`send`'s ``seq``: one wait, then
        :class:`DeviceTimeoutError` (silence or NAK) or :class:`DeviceCommandError` (ERR)."""
        events = self._events
        if events:
            # fast path of _await for pipelined WRITEs: the answer is already decoded and next
            ev = events[0]
            if type(ev) is Frame and ev.seq == seq and ev.type == int(cmd) | OK_FLAG:
                events.popleft()
                return ev.payload
        name = _name(cmd)
        wait = self._wait_for(name, payload_len, None)
        answer, fault = self._await(int(cmd), seq, wait)
        if answer is None:
            raise DeviceTimeoutError(f"{name} seq {seq}: {fault}")
        return _ok_payload(name, answer)

    def _new_frame(self, cmd: Cmd | int, payload: bytes) -> tuple[int, bytes]:
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFF
        return seq, encode_frame(int(cmd), seq, payload)

    def _await(self, cmd: int, seq: int, wait_s: float) -> tuple[Frame | None, str]:
        """Wait for the answer to (cmd, seq): (frame, "") or (None, what went wrong)."""
        deadline = time.monotonic() + wait_s
        while True:
            if not self._events:
                if deadline - time.monotonic() <= 0:
                    self.counters.timeouts += 1
                    return None, f"no answer within {wait_s:g} s"
                self._events.extend(self._decoder.feed(self._read_some()))
            while self._events:
                ev = self._events.popleft()
                if isinstance(ev, DecodeFault):
                    self.counters.bad_frames += 1
                    continue
                if ev.type == RESP_NAK:
                    # any NAK: our frame was damaged (perhaps in its seq byte) - resend now
                    self.counters.naks += 1
                    reason = ev.payload[0] if ev.payload else 0
                    why = NakReason(reason).name if reason in NakReason._value2member_map_ else str(reason)
                    return None, f"NAK ({why})"
                if ev.seq == seq and ev.type in (cmd | OK_FLAG, RESP_ERR):
                    return ev, ""
                if ev.seq == seq and ev.type & OK_FLAG:
                    self.counters.stale_frames += 1
                    return None, _SEQ_COLLISION
                self.counters.stale_frames += 1

    # ---- typed commands

    def info(self) -> DeviceInfo:
        """INFO: board, firmware, model hash, slot states (cached as ``last_info``)."""
        self._info = DeviceInfo.unpack(self.command(Cmd.INFO))
        if self._info.protocol_version != PROTOCOL_VERSION:
            raise DeviceError(f"device speaks protocol v{self._info.protocol_version}, this host "
                              f"v{PROTOCOL_VERSION}: update the firmware or edgesmith")
        return self._info

    @property
    def last_info(self) -> DeviceInfo | None:
        return self._info

    def erase(self, slot: int) -> None:
        self.command(Cmd.ERASE, struct.pack("<B", slot))

    def write(self, slot: int, offset: int, data: bytes) -> int:
        """WRITE ``data`` at ``offset``; returns the device's next expected offset."""
        if not 1 <= len(data) <= MAX_WRITE_DATA:
            raise DeviceError(f"WRITE carries 1..{MAX_WRITE_DATA} bytes, got {len(data)}")
        answer = self.command(Cmd.WRITE, _WRITE_HEAD.pack(slot, offset) + bytes(data))
        return _u32(answer, "WRITE")

    def verify(self, slot: int, length: int) -> bytes:
        """sha256 of slot bytes [0, length) as the device computes it."""
        answer = self.command(Cmd.VERIFY, struct.pack("<BI", slot, length))
        if len(answer) != 32:
            raise DeviceError(f"VERIFY answer is {len(answer)} bytes, expected a 32-byte sha256")
        return answer

    def commit(self, slot: int, length: int, sha256: bytes) -> None:
        self.command(Cmd.COMMIT, struct.pack("<BI", slot, length) + bytes(sha256))

    def read(self, slot: int, offset: int, length: int) -> bytes:
        answer = self.command(Cmd.READ, struct.pack("<BIH", slot, offset, length))
        if len(answer) != length:
            raise DeviceError(f"READ of {length} bytes answered {len(answer)}")
        return answer

    def stats(self) -> Stats:
        return Stats.unpack(self.command(Cmd.STATS))

    def reboot(self) -> None:
        """REBOOT: the device answers, then resets. Sent with ONE try: a resend after a lost
        answer would reach the rebooted device (empty dedupe memory) and reset it again, which
        reverts an unconfirmed trial. On :class:`DeviceTimeoutError` ask INFO what happened."""
        self.command(Cmd.REBOOT, attempts=1)

    def confirm(self) -> None:
        """CONFIRM the trial slot (ERR NOT_TRIAL when there is none)."""
        self.command(Cmd.CONFIRM)

    def _run_command(self, cmd: Cmd, data: bytes) -> bytes:
        """INFER or DETECT on ``data``: inline when it fits one frame, else INPUT chunks first."""
        if len(data) <= MAX_PAYLOAD:
            return self.command(cmd, bytes(data))
        for off in range(0, len(data), MAX_INPUT_DATA):
            self.command(Cmd.INPUT, struct.pack("<I", off) + bytes(data[off:off + MAX_INPUT_DATA]))
        return self.command(cmd)

    def infer(self, data: bytes, output_bytes: int | None = None) -> tuple[int, bytes]:
        """INFER on ``data`` (the model's input tensor bytes): (cycles, output bytes).

        Inputs over one frame go first through INPUT; outputs over one frame come back through
        OUTPUT. ``output_bytes`` defaults to INFO's (INFO is asked once when unknown).
        """
        if output_bytes is None:
            output_bytes = (self._info or self.info()).output_bytes
        answer = self._run_command(Cmd.INFER, data)
        cycles = _u32(answer[:4], "INFER")
        if output_bytes + 4 <= MAX_PAYLOAD:
            out = answer[4:]
        else:
            size = _u32(answer[4:8], "INFER output size")
            out = bytearray()
            while len(out) < size:
                n = min(MAX_PAYLOAD, size - len(out))
                out += self.command(Cmd.OUTPUT, struct.pack("<IH", len(out), n))
            out = bytes(out)
        if len(out) != output_bytes:
            raise DeviceError(f"INFER returned {len(out)} output bytes, the model has {output_bytes}")
        return cycles, out


    def detect(self, data: bytes) -> DetectAnswer:
        """DETECT on ``data`` (the model's input tensor bytes): network and post-processing
        cycles and every detection, best first (those past the first frame come through
        DETECTIONS). A classifier firmware answers ERR UNKNOWN_COMMAND
        (:class:`DeviceCommandError`)."""
        answer = DetectAnswer.unpack(self._run_command(Cmd.DETECT, data))
        records = list(answer.detections)
        while len(records) < answer.count:
            n = min(MAX_DETECTIONS_PER_FRAME, answer.count - len(records))
            page = self.command(Cmd.DETECTIONS, struct.pack("<HH", len(records), n))
            got = Detection.unpack_many(page)
            if len(got) != n:
                raise DeviceError(f"DETECTIONS asked for {n} records from {len(records)}, got {len(got)}")
            records += got
        return dataclasses.replace(answer, detections=records)


#: command names by code, looked up once per command (Cmd(code).name costs more than a WRITE's I/O)
_CMD_NAMES = {int(c): c.name for c in Cmd}


def _name(cmd: Cmd | int) -> str:
    return _CMD_NAMES.get(int(cmd)) or f"0x{int(cmd):02x}"


def _ok_payload(name: str, answer: Frame) -> bytes:
    if answer.type == RESP_ERR:
        code = answer.payload[0] if answer.payload else 0
        raise DeviceCommandError(name, code, answer.payload[1:].decode("ascii", "replace"))
    return answer.payload


def _u32(payload: bytes, what: str) -> int:
    if len(payload) != 4:
        raise DeviceError(f"{what} answer is {len(payload)} bytes, expected a u32")
    return struct.unpack("<I", payload)[0]


def _nonblocking_fd(port: Any) -> int | None:
    """The descriptor of a pyserial port whose writes never block (posix ttys and ptys,
    ``socket://``), for :meth:`Device._write_fd`; None for anything else (other ports, fakes)."""
    try:
        import serial  # noqa: PLC0415 - pyserial is only needed when a port is used
    except ImportError:
        return None
    if not isinstance(port, serial.SerialBase):
        return None
    try:
        fd = port.fileno()
        return fd if isinstance(fd, int) and not os.get_blocking(fd) else None
    except (AttributeError, OSError, ValueError, serial.SerialException):
        return None


def open_port(url: str, baud: int = 115200) -> Any:
    """Open a pyserial URL; failures become :class:`DeviceConnectionError` with the reason."""
    import serial  # noqa: PLC0415 - pyserial is only needed when a port is used

    try:
        return serial.serial_for_url(url, baudrate=baud, timeout=_POLL_S, write_timeout=10)
    except (serial.SerialException, OSError, ValueError) as e:
        raise DeviceConnectionError(f"cannot open port {url!r}: {e}; list ports with "
                                    f"'python -m serial.tools.list_ports' or pass socket://HOST:PORT "
                                    f"for QEMU") from None
