"""Flash a weight blob into a device's inactive A/B slot, resumably, and never report a false success.

The workflow (protocol.md, "Slots and updates"), one step per function below:

1. check the blob on the host: CRCs, and the Ed25519 signature when a public key is given (the
   firmware checks CRCs and the structure hash, and the signature too when it was built with a
   release key: INFO's ``signature_required``);
2. INFO: the device's structure hash must be the blob's; pick the slot that is not active;
3. resume or ERASE: a slot left WRITING by an earlier, interrupted flash whose bytes below the
   device's next expected offset hash (VERIFY) to the same prefix of this blob is continued;
4. WRITE chunks; each answer is the device's next expected offset. A command that fails after
   its bounded tries is retried with a smaller chunk; a lost connection is reopened and the flash
   resumes from the device's next expected offset. Both are bounded by
   ``MAX_ROUNDS_WITHOUT_PROGRESS``: a round that moves the offset forward resets the count;
5. VERIFY: the device's sha256 of the slot must equal the blob's;
6. COMMIT (the device re-hashes and verifies the blob), REBOOT, wait for INFO;
7. the device must boot the new slot as TRIAL; INFER a smoke input; CONFIRM; INFO must show the
   slot VALID and active. Only then :func:`flash_blob` returns. Any other outcome raises
   :class:`FlashError` (and an unconfirmed trial is reverted by the device at its next reset).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import struct
import time
from typing import Any, Callable

from targets.client import Device, EncodedFrames
from targets.protocol import (COMPILED_IN_SLOT, CRC_SIZE, HEADER_SIZE, WRITE_HEADER_SIZE, Cmd,
                              DeviceCommandError, DeviceConnectionError, DeviceError, DeviceInfo,
                              DeviceTimeoutError, ErrCode, SlotState)
from targets.raw_link import BURST_WRITE_BYTES

#: WRITE chunk sizes, largest first: multiples of 32 bytes (STM32H7 flash words; protocol.md)
CHUNK_SIZES = (992, 256, 64, 32)
#: largest WRITE chunk in a burst, for devices that advertise big command frames (host build)
MAX_BURST_CHUNK = 16352
FLASH_WORD = 32
#: WRITE frames in flight on links with flow control (ptys, sockets to QEMU or a proxy): the
#: device processes them in order, a lost one makes the rest ERR BAD_OFFSET and the flash goes
#: back to the last acknowledged offset. Real UARTs get 1: a polled UART without flow control
#: cannot buffer the next frame while the device programs flash. 32 frames is more than a Linux
#: pty buffers (~12 KB), so on a pty the host sleeps in its write like the raw-link measurement
#: does, instead of waking per answer (992-byte frames go out 16 at a time, 16 KiB frames one at
#: a time, see _write_window).
WINDOW_FLOW_CONTROLLED = 32
#: consecutive successful WRITEs before the chunk grows back one step
GROW_AFTER_SUCCESSES = 16
#: failed rounds (timeouts, reconnects, refused offsets) in a row before the flash gives up
MAX_ROUNDS_WITHOUT_PROGRESS = 8
#: opening the port again after a disconnect: tries and the pause between them
RECONNECT_ATTEMPTS = 10
RECONNECT_PAUSE_S = 0.5
#: after REBOOT, how long to wait for the device to answer INFO again
BOOT_TIMEOUT_S = 30.0
#: REBOOT commands (one try each, see _reboot) before giving up
REBOOT_ATTEMPTS = 3
#: rounds of COMMAND_ATTEMPTS tries for the read-only steps (INFO, VERIFY, smoke INFER): a noisy
#: link can lose all tries of one round for a long answer such as INFO's 168 bytes
READ_ROUNDS = 3


class FlashError(DeviceError):
    """The flash did not complete verified; the device keeps (or reverts to) its previous model."""


@dataclasses.dataclass
class FlashResult:
    """What a verified flash did."""

    slot: int
    blob_bytes: int
    sha256: str
    resumed_from: int
    written_bytes: int
    write_seconds: float
    total_seconds: float
    reconnects: int
    chunk_failures: int
    smoke_cycles: int
    info: DeviceInfo

    @property
    def write_throughput(self) -> float:
        """Blob bytes written per second during the WRITE phase."""
        return self.written_bytes / self.write_seconds if self.write_seconds > 0 else float("inf")


class _Session:
    """The open Device plus how to open it again (after a disconnect or a reboot)."""

    def __init__(self, connect: Callable[[int | None], Device], log: Callable[[str], None]):
        self._connect = connect
        self.log = log
        self.reconnects = 0
        self.device = self._open(first_seq=None)

    def _open(self, first_seq: int | None) -> Device:
        last: Exception | None = None
        for attempt in range(1, RECONNECT_ATTEMPTS + 1):
            try:
                return self._connect(first_seq)
            except DeviceConnectionError as e:
                last = e
                time.sleep(RECONNECT_PAUSE_S)
        raise FlashError(f"cannot reach the device after {RECONNECT_ATTEMPTS} tries: {last}")

    def read_step(self, what: str, fn: Callable[[Device], Any]) -> Any:
        """Run a read-only step (INFO, VERIFY, INFER) for up to READ_ROUNDS rounds of tries,
        reopening the port when the link dropped."""
        for round_ in range(1, READ_ROUNDS + 1):
            try:
                return fn(self.device)
            except DeviceTimeoutError as e:
                if round_ == READ_ROUNDS:
                    raise FlashError(f"{what}: {e} ({READ_ROUNDS} rounds)") from None
                self.log(f"{what}: round {round_} failed ({e}); trying again")
            except DeviceConnectionError:
                if round_ == READ_ROUNDS:
                    raise
                self.reconnect()
        raise AssertionError("unreachable")

    def reconnect(self) -> Device:
        seq = self.device.next_seq
        self.device.close()
        self.reconnects += 1
        self.log(f"reconnecting (#{self.reconnects})")
        self.device = self._open(first_seq=seq)
        return self.device


def check_blob(blob: bytes, public_key: Any = None, require_signature: bool = False) -> Any:
    """Verify the blob on the host (CRCs, signature); return the parsed :class:`firmware_export.blob.Blob`."""
    from edgesmith.errors import ExportError  # noqa: PLC0415
    from firmware_export.blob import parse_blob  # noqa: PLC0415

    try:
        parsed = parse_blob(blob, public_key=public_key, require_signature=require_signature)
    except ExportError as e:
        raise FlashError(f"refusing to flash: {e}") from None
    return parsed


def flash_blob(connect: Callable[[int | None], Device] | str, blob: bytes, *, baud: int = 115200,
               public_key: Any = None, require_signature: bool = False, host_checks: bool = True,
               smoke_input: bytes | None = None, log: Callable[[str], None] = lambda s: None,
               device_kwargs: dict[str, Any] | None = None, window: int | None = None) -> FlashResult:
    """Flash ``blob`` into the inactive slot of the device at ``connect`` (a pyserial URL, or a
    function ``first_seq -> Device``); returns only after the steps in the module docstring all
    passed, else raises :class:`FlashError` (or another :class:`DeviceError`).

    ``host_checks=False`` skips step 1 (tests use it to prove the firmware refuses bad blobs).
    ``smoke_input`` defaults to a zero tensor of the model's input size. ``window``: WRITE
    frames in flight (default: ``WINDOW_FLOW_CONTROLLED`` for ``socket://`` URLs and ptys, else 1).
    """
    if window is None:
        window = WINDOW_FLOW_CONTROLLED if isinstance(connect, str) and _flow_controlled(connect) else 1
    if isinstance(connect, str):
        url = connect
        kwargs = dict(device_kwargs or {})
        connect = lambda first_seq: Device.open(url, baud, first_seq=first_seq, **kwargs)  # noqa: E731
    t0 = time.monotonic()
    blob = bytes(blob)
    if not blob:
        raise FlashError("the blob is empty; pass the weights.bin that edgesmith export wrote")
    parsed = check_blob(blob, public_key, require_signature) if host_checks else None
    structure = parsed.structure_hash if parsed is not None else None
    digest = hashlib.sha256(blob).digest()
    session = _Session(connect, log)
    try:
        info = session.read_step("INFO", Device.info)
        if info.signature_required and parsed is not None and not parsed.signed:
            raise FlashError("the device runs only blobs signed with its release key and this blob is unsigned; "
                             "export it with --sign-key (the key pair of the firmware's --public-key)")
        if public_key is None and host_checks:
            log("note: no public key given, so the host does not check the blob's signature; the device "
                + ("verifies it (built with a release key)" if info.signature_required
                   else "checks CRCs and the structure hash only"))
        if _is_trial_of(session, info, blob, digest):
            # an earlier flash of this blob was cut after its trial boot: finish it
            slot = info.active_slot
            log(f"the device runs this blob as an unconfirmed trial in slot {_slot_name(slot)}; "
                f"finishing that update")
            return _finish(session, info, slot, blob, digest, len(blob), 0.0, 0, smoke_input, t0, log)
        slot = _pick_slot(info, blob, structure)
        log(f"device {info.board} fw {info.firmware_version}: active slot {_slot_name(info.active_slot)}, "
            f"flashing slot {_slot_name(slot)} ({len(blob)} bytes)")
        start = _resume_or_erase(session, info, slot, blob, log)
        t_write = time.monotonic()
        failures = _write_all(session, slot, blob, start, log, window, burst_chunk(info))
        write_s = time.monotonic() - t_write
        _verify(session, slot, blob, digest)
        session.device.commit(slot, len(blob), digest)
        log(f"committed slot {_slot_name(slot)}; rebooting into the trial")
        info = _reboot(session, slot)
        return _finish(session, info, slot, blob, digest, start, write_s, failures, smoke_input, t0, log)
    finally:
        session.device.close()


def _finish(session: _Session, info: DeviceInfo, slot: int, blob: bytes, digest: bytes, start: int,
            write_s: float, failures: int, smoke_input: bytes | None, t0: float,
            log: Callable[[str], None]) -> FlashResult:
    """Step 7: smoke INFER on the trial, CONFIRM, and INFO must show the slot VALID and active."""
    cycles = _check_trial(session, info, slot, smoke_input, log)
    session.device.confirm()
    info = session.read_step("INFO", Device.info)
    if info.active_slot != slot or info.slots[slot].state != SlotState.VALID:
        raise FlashError(f"after CONFIRM the device reports active slot "
                         f"{_slot_name(info.active_slot)} in state {_state(info, slot)}; "
                         f"expected slot {_slot_name(slot)} VALID")
    return FlashResult(slot, len(blob), digest.hex(), start, len(blob) - start, write_s,
                       time.monotonic() - t0, session.reconnects, failures, cycles, info)


def _is_trial_of(session: _Session, info: DeviceInfo, blob: bytes, digest: bytes) -> bool:
    """Whether the device booted ``blob`` as its unconfirmed trial (hash read-back checked)."""
    slot = info.active_slot
    if slot not in (0, 1) or info.slots[slot].state != SlotState.TRIAL:
        return False
    if info.slots[slot].committed_length != len(blob):
        return False
    return session.read_step("VERIFY", lambda dev: dev.verify(slot, len(blob))) == digest


def _slot_name(slot: int) -> str:
    return {0: "A", 1: "B", COMPILED_IN_SLOT: "compiled-in"}.get(slot, str(slot))


def _state(info: DeviceInfo, slot: int) -> str:
    s = info.slots[slot].state
    return s.name if isinstance(s, SlotState) else str(s)


def _pick_slot(info: DeviceInfo, blob: bytes, structure: str | None) -> int:
    """The slot to write: not the active one, nor the fallback of an unconfirmed trial."""
    if structure is not None and info.structure_hash.hex() != structure:
        raise FlashError(f"the blob is for model structure {structure[:16]}…, the firmware runs "
                         f"{info.structure_hash.hex()[:16]}…: build and flash firmware for this "
                         f"model (edgesmith build), or export the blob from the firmware's model")
    if len(blob) > info.slot_size:
        raise FlashError(f"the blob is {len(blob)} bytes, a slot holds {info.slot_size} bytes "
                         f"(missing {len(blob) - info.slot_size}); build firmware with larger slots")
    if info.active_slot in (0, 1):
        slot = 1 - info.active_slot
    else:
        slot = 0
    if info.slots[slot].state == SlotState.TRIAL or info.slots[1 - slot].state == SlotState.TRIAL:
        raise FlashError("the device runs another blob as an unconfirmed trial; reboot it (it "
                         "reverts to its previous model) or flash that blob again to confirm it, "
                         "then flash this one")
    return slot


def _resume_or_erase(session: _Session, info: DeviceInfo, slot: int, blob: bytes,
                     log: Callable[[str], None]) -> int:
    """Offset to write from: a verified prefix of an interrupted flash, else 0 after ERASE."""
    s = info.slots[slot]
    if s.state == SlotState.WRITING and 0 < s.next_offset <= len(blob):
        start = s.next_offset - s.next_offset % FLASH_WORD
        if start and _prefix_matches(session, slot, blob, start):
            log(f"resuming at byte {start} of {len(blob)} (the slot holds a verified prefix)")
            return start
    session.device.erase(slot)
    return 0


def _prefix_matches(session: _Session, slot: int, blob: bytes, length: int) -> bool:
    got = session.read_step("VERIFY", lambda dev: dev.verify(slot, length))
    return got == hashlib.sha256(blob[:length]).digest()


def _flow_controlled(url: str) -> bool:
    """socket:// links (QEMU, the fault proxy) and ptys never drop bytes the device has no room for."""
    if url.startswith(("socket://", "rfc2217://")):
        return True
    return os.path.realpath(url).startswith("/dev/pts/")


def burst_chunk(info: DeviceInfo) -> int:
    """WRITE data per frame in bursts: what the device's INFO max payload allows (a multiple of 32,
    at most MAX_BURST_CHUNK), never less than the protocol's 992."""
    room = (min(info.max_payload, MAX_BURST_CHUNK + WRITE_HEADER_SIZE) - WRITE_HEADER_SIZE) // 32 * 32
    return max(CHUNK_SIZES[0], room)


def _write_window(device: Device, slot: int, view: memoryview, offset: int, window: int,
                  size: int = CHUNK_SIZES[0]) -> tuple[int, bool]:
    """Pipelined WRITEs of ``size``-byte chunks, up to ``window`` in flight, from ``offset``;
    returns (the device's last acknowledged next offset, whether everything went through).
    Stops at the first fault; the caller continues stop-and-wait from the returned offset.

    Frames go out in port writes of about ``BURST_WRITE_BYTES`` (:meth:`Device.send_encoded`):
    sixteen 992-byte frames per write, or one 16 KiB frame, as soon as the window has room (for
    small frames: once half the window is acknowledged). A pty buffers only ~12 KB, which the
    device reads faster than the host encodes a 16 KiB frame (CRC32 and a copy): the device
    ran dry and slept whenever the host encoded between two writes. So the next burst is
    encoded while the port is full (``while_full``) and goes out the moment the write before
    it is done. It is encoded for the room the window has then, and acknowledgements only add
    room, so it always fits when it goes out."""
    frame_bytes = HEADER_SIZE + WRITE_HEADER_SIZE + size + CRC_SIZE
    per_write = max(1, min(BURST_WRITE_BYTES // frame_bytes, window))
    refill_at = max(1, min(window // 2, per_write))
    max_payload = WRITE_HEADER_SIZE + size
    acked = encoded = offset
    inflight: collections.deque[int] = collections.deque()
    ahead: EncodedFrames | None = None  # the next burst, encoded while the port was full

    def encode(count: int) -> EncodedFrames:
        nonlocal encoded
        chunks = []
        while len(chunks) < count and encoded < len(view):
            chunks.append((encoded, view[encoded:encoded + size]))
            encoded = min(encoded + size, len(view))
        return device.encode_writes(slot, chunks, max_payload)

    def encode_ahead() -> None:
        nonlocal ahead
        room = window - len(inflight)  # acknowledgements only add to it until ``ahead`` is sent
        if ahead is None and encoded < len(view) and room > 0:
            ahead = encode(min(room, per_write))

    try:
        while acked < len(view):
            free = window - len(inflight)
            more = ahead is not None or encoded < len(view)
            if more and (free >= refill_at or not inflight):
                burst = ahead if ahead is not None else encode(min(free, per_write))
                ahead = None
                inflight.extend(burst.seqs)
                device.send_encoded(burst, while_full=encode_ahead)
                if (ahead is not None or encoded < len(view)) and len(inflight) < window:
                    continue  # keep writing: the acknowledgements wait in the port's buffer
            seq = inflight.popleft()
            nxt = struct.unpack("<I", device.receive(Cmd.WRITE, seq, max_payload))[0]
            if not acked < nxt <= len(view):
                return acked, False
            acked = nxt
    except (DeviceTimeoutError, DeviceCommandError):
        return acked, False
    return acked, True


def _write_all(session: _Session, slot: int, blob: bytes, offset: int,
               log: Callable[[str], None], window: int = 1, burst: int = CHUNK_SIZES[0]) -> int:
    """WRITE blob[offset:] (module docstring, step 4); returns how many rounds failed."""
    level = 0
    streak = 0
    failed_rounds = 0
    failures = 0
    last_fault = ""
    view = memoryview(blob)
    while offset < len(blob):
        if window > 1 and level == 0 and (failures == 0 or streak >= GROW_AFTER_SUCCESSES):
            try:
                offset, done = _write_window(session.device, slot, view, offset, window, burst)
            except DeviceConnectionError as e:
                last_fault = str(e)
                offset = _resync(session, slot, blob, offset, log)
                done = False
            if done:
                break
            # a fault in the burst: one stop-and-wait chunk re-syncs (answers in flight are
            # ignored by seq), then bursts resume after GROW_AFTER_SUCCESSES clean chunks
            streak = 0
            failures += 1
            if offset >= len(blob):
                break
        size = CHUNK_SIZES[level]
        try:
            nxt = session.device.write(slot, offset, view[offset:offset + size])
        except DeviceTimeoutError as e:
            last_fault = str(e)
            level = min(level + 1, len(CHUNK_SIZES) - 1)
            streak = 0
        except DeviceConnectionError as e:
            last_fault = str(e)
            offset = _resync(session, slot, blob, offset, log)
        except DeviceCommandError as e:
            if e.code != ErrCode.BAD_OFFSET:
                raise FlashError(f"the device refused WRITE at byte {offset}: {e}") from None
            last_fault = str(e)
            offset = _resync(session, slot, blob, offset, log)
        else:
            if not offset < nxt <= len(blob):
                raise FlashError(f"WRITE at byte {offset} answered next offset {nxt}; expected "
                                 f"{offset + 1}..{len(blob)} (firmware/protocol mismatch)")
            offset = nxt
            failed_rounds = 0
            streak += 1
            if level and streak >= GROW_AFTER_SUCCESSES:
                level -= 1
                streak = 0
            continue
        failures += 1
        failed_rounds += 1
        if failed_rounds >= MAX_ROUNDS_WITHOUT_PROGRESS:
            raise FlashError(f"WRITE made no progress at byte {offset} of {len(blob)} in "
                             f"{failed_rounds} rounds (chunk down to {CHUNK_SIZES[level]} bytes); "
                             f"last fault: {last_fault}. The link is too noisy or the device "
                             f"stopped answering; run flash again to resume from here")
    return failures


def _resync(session: _Session, slot: int, blob: bytes, offset: int, log: Callable[[str], None]) -> int:
    """After a lost connection or a refused offset: where to continue (device's view, verified)."""
    try:
        info = session.read_step("INFO", Device.info)
    except DeviceConnectionError:
        session.reconnect()
        info = session.read_step("INFO", Device.info)
    s = info.slots[slot]
    if s.state != SlotState.WRITING:
        raise FlashError(f"slot {_slot_name(slot)} is {_state(info, slot)} after a link fault, "
                         f"expected WRITING; run flash again")
    nxt = min(s.next_offset, len(blob))
    start = nxt - nxt % FLASH_WORD
    if start and not _prefix_matches(session, slot, blob, start):
        raise FlashError(f"slot {_slot_name(slot)} bytes [0, {start}) do not match the blob after a "
                         f"link fault; run flash again (it erases the slot)")
    log(f"resuming at byte {start} (was at {offset})")
    return start


def _verify(session: _Session, slot: int, blob: bytes, digest: bytes) -> None:
    got = session.read_step("VERIFY", lambda dev: dev.verify(slot, len(blob)))
    if got != digest:
        raise FlashError(f"hash read-back of slot {_slot_name(slot)} is {got.hex()[:16]}…, the blob "
                         f"is {digest.hex()[:16]}…: flash holds other bytes than were sent; nothing "
                         f"was committed, run flash again")


def _reboot(session: _Session, slot: int) -> DeviceInfo:
    """REBOOT into the committed trial and return the INFO the new boot answers.

    REBOOT is sent with ONE try: a resend after a lost answer would reach the freshly booted
    trial (its dedupe memory is empty), reset it again unconfirmed and make it revert. INFO
    tells instead whether the reboot happened (the trial slot is active) or the frame was lost
    (the slot is TRIAL but not active yet), and only then is REBOOT sent again.
    """
    for _ in range(REBOOT_ATTEMPTS):
        try:
            session.device.reboot()
        except DeviceTimeoutError:
            pass  # answer lost, or the frame never arrived: INFO tells which
        except DeviceConnectionError:
            pass  # the reset may cut the link; _wait_info reconnects
        info = _wait_info(session)
        if not (info.slots[slot].state == SlotState.TRIAL and info.active_slot != slot):
            return info
        session.log("the device did not reboot yet; sending REBOOT again")
    raise FlashError(f"the device did not reboot after {REBOOT_ATTEMPTS} REBOOT commands; power-cycle "
                     f"it (it boots the committed trial) and run flash again")


def _wait_info(session: _Session) -> DeviceInfo:
    """INFO, retried until BOOT_TIMEOUT_S (a booting device is silent for a while)."""
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return session.device.info()
        except DeviceConnectionError as e:
            last = e
            session.reconnect()
        except DeviceTimeoutError as e:
            last = e
    raise FlashError(f"the device did not answer INFO within {BOOT_TIMEOUT_S:g} s after REBOOT: "
                     f"{last}")


def _check_trial(session: _Session, info: DeviceInfo, slot: int, smoke_input: bytes | None,
                 log: Callable[[str], None]) -> int:
    """The device must run the new slot as TRIAL and INFER; else reboot it so it reverts."""
    if info.active_slot != slot or info.slots[slot].state != SlotState.TRIAL:
        raise FlashError(f"after COMMIT and REBOOT the device runs slot {_slot_name(info.active_slot)} "
                         f"with slot {_slot_name(slot)} {_state(info, slot)}; expected slot "
                         f"{_slot_name(slot)} TRIAL. The device kept its previous model")
    data = smoke_input if smoke_input is not None else bytes(info.input_bytes)
    try:
        cycles, out = session.read_step("smoke INFER", lambda dev: dev.infer(data, info.output_bytes))
    except DeviceError as e:
        log("smoke INFER failed; rebooting so the device reverts to the previous slot")
        try:
            session.device.reboot()
        except DeviceError:
            pass
        raise FlashError(f"the new weights did not pass the smoke INFER ({e}); the trial was not "
                         f"confirmed, so the device reverts to its previous model at its next reset "
                         f"(a REBOOT was sent)") from None
    log(f"smoke INFER: {len(out)} output bytes in {cycles} cycles")
    return cycles
