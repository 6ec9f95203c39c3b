"""The raw link: the most a link carries into the device, to hold flashing throughput against.

:func:`raw_link` sends junk the device drops (zero bytes: no ``A5 5A`` start of frame) in the
writes the flasher uses for its WRITE frames, ``BURST_WRITE_BYTES`` each, through the same
:meth:`Device.send_bytes` path, then an INFO. ``benchmarks/flash_throughput.py`` compares each
flash with it, for the blob's number of bytes.
"""
from __future__ import annotations

import dataclasses
import statistics
import time

from targets.client import Device
from targets.protocol import Cmd

#: bytes per port write of WRITE frames (targets.flasher._write_window) and of raw_link's junk, so
#: the two are compared like with like. Much bigger writes cost the host CPU time: pyserial copies
#: the unsent rest after every partial write (a pty takes ~4 KB at a time), quadratic in the size
BURST_WRITE_BYTES = 16 * 1024
#: how long the INFO behind the junk bytes may take
RAW_LINK_TIMEOUT_S = 120.0
#: INFO round trips whose median is subtracted from each run
RAW_LINK_INFO_SAMPLES = 3


@dataclasses.dataclass(frozen=True)
class RawLink:
    """What :func:`raw_link` measured: bytes per second, best of its runs, two ways."""

    #: the link's one-way time: an INFO alone subtracted (the figure flashes are held against)
    one_way_Bps: float
    #: up to the answer of the INFO behind the junk, the end point a WRITE phase also has (its
    #: last ACK): one round trip more than one way
    to_answer_Bps: float
    #: median of the INFO round trips subtracted (seconds)
    info_s: float


def raw_link(device: Device, nbytes: int = 64 * 1024, repeats: int = 3) -> RawLink:
    """Bytes per second the link and the device's receive loop carry, for comparison with
    :attr:`targets.flasher.FlashResult.write_throughput` of a blob of ``nbytes``.

    Sends ``nbytes`` zero bytes (no ``A5 5A``, so the device's resync scan drops them unread),
    in writes of ``BURST_WRITE_BYTES`` through the path of the flasher's WRITE frames
    (:meth:`Device.send_bytes`), followed by INFO. One way: minus the time of an INFO alone
    (the median of ``RAW_LINK_INFO_SAMPLES`` taken just before; one sample jitters by as much as
    a 100 KB transfer takes on a pty), what is left is the time the link took to move ``nbytes``
    into the device. To the answer: nothing subtracted. The best of ``repeats`` runs each: the
    most the link carries (a flash also sends 15 bytes of framing per chunk, so in steady state
    it stays below this).
    """
    one_way = to_answer = 0.0
    infos = []
    burst = bytes(min(nbytes, BURST_WRITE_BYTES))
    for _ in range(repeats):
        info_s = statistics.median(_info_round_trip(device) for _ in range(RAW_LINK_INFO_SAMPLES))
        infos.append(info_s)
        t0 = time.perf_counter()
        for sent in range(0, nbytes, len(burst)):
            device.send_bytes(burst[:nbytes - sent])
        # one long try: a resend would only queue behind the junk
        device.command(Cmd.INFO, timeout_s=RAW_LINK_TIMEOUT_S, attempts=1)
        elapsed = time.perf_counter() - t0
        to_answer = max(to_answer, nbytes / elapsed)
        if elapsed > info_s:
            one_way = max(one_way, nbytes / (elapsed - info_s))
    return RawLink(one_way, to_answer, statistics.median(infos))


def measure_raw_link(device: Device, nbytes: int = 64 * 1024, repeats: int = 3) -> float:
    """:func:`raw_link`'s one-way figure: the most the link carries one way, bytes per second."""
    return raw_link(device, nbytes, repeats).one_way_Bps


def _info_round_trip(device: Device) -> float:
    """Seconds of one INFO command, the same call as the one behind measure_raw_link's junk."""
    t0 = time.perf_counter()
    device.command(Cmd.INFO)
    return time.perf_counter() - t0
