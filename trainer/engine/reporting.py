"""What a run tells the user: a rich progress bar, a JSONL metrics log, phase timings."""

from __future__ import annotations

import json
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class MetricsLog:
    """Append-only JSON-lines log (``metrics.jsonl``); one record per line, flushed at once."""

    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        """Drop records written after ``step`` (a crashed run logged past its last checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a half-written last line from a crash
            if rec.get("step", 0) <= step:
                kept.append(line)
        self.path.write_text("".join(k + "\n" for k in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class TrainProgress:
    """A rich progress bar on a terminal; one plain line per epoch elsewhere (CI, logs)."""

    def __init__(self, *, enabled: bool, live: bool, total_epochs: int, steps_per_epoch: int) -> None:
        self.console = Console(file=sys.stderr)
        self.enabled = enabled
        self.live = enabled and live and self.console.is_terminal
        self.total_epochs, self.steps_per_epoch = total_epochs, steps_per_epoch
        self.progress: Progress | None = None
        self.task = None

    def __enter__(self) -> "TrainProgress":
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.1%}  {task.fields[ips]:.0f} img/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start_epoch(self, epoch: int, start_step: int) -> None:
        if self.progress is not None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(
                "train", total=self.steps_per_epoch, completed=start_step,
                epoch=epoch + 1, epochs=self.total_epochs, loss=float("nan"), acc=0.0, ips=0.0,
            )

    def set_stats(self, loss: float, acc: float, img_per_s: float) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, loss=loss, acc=acc, ips=img_per_s)

    def advance(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, advance=1)

    def epoch_line(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False, soft_wrap=True)


class PhaseTimer:
    """Wall time per training phase (data, forward, backward, optimizer) and peak memory.

    CUDA work is asynchronous, so each phase boundary synchronises the device;
    that costs some throughput, which is why timing only runs with ``--profile``.
    """

    PHASES = ("data", "forward", "backward", "optimizer")

    def __init__(self, enabled: bool, device: torch.device) -> None:
        self.enabled, self.device = enabled, device
        self.totals = {p: 0.0 for p in self.PHASES}
        self.steps = 0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self._sync()
        t0 = time.perf_counter()
        yield
        self._sync()
        self.totals[name] += time.perf_counter() - t0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def peak_memory_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        # ru_maxrss is KiB on Linux: the process's peak resident memory.
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def report(self) -> dict[str, Any]:
        total = sum(self.totals.values()) or 1e-12
        return {
            "steps": self.steps,
            "seconds": {k: round(v, 4) for k, v in self.totals.items()},
            "percent": {k: round(100 * v / total, 1) for k, v in self.totals.items()},
            "ms_per_step": {k: round(1000 * v / max(1, self.steps), 3) for k, v in self.totals.items()},
            "peak_memory_bytes": self.peak_memory_bytes(),
            "peak_memory_kind": "cuda_allocated" if self.device.type == "cuda" else "process_max_rss",
        }
