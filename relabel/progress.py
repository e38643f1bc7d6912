"""Progress for long work: a rich bar on a terminal; on a cluster job's log, ``nohup`` or CI (no
terminal) a plain line every ``RELABEL_PROGRESS_SECONDS`` (default 60) with done/total, rate and
ETA, as timm's train.py logs; nothing when disabled (non-zero ranks, --quiet, tests)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

log = logging.getLogger("relabel.progress")


class _NoBar:
    def advance(self, n: float = 1) -> None:
        pass


class _RichBar:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, n: float = 1) -> None:
        self.progress.advance(self.task, n)


class _LineBar:
    """A line every ``every`` seconds, and a last one if any was written (short work stays silent)."""

    def __init__(self, description: str, total: float, unit: str, every: float):
        self.description, self.total, self.unit, self.every = description, total, unit, every
        self.done, self.t0 = 0.0, time.monotonic()
        self.last, self.lines = self.t0, 0

    def advance(self, n: float = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.say(now)

    def say(self, now: float) -> None:
        el = max(now - self.t0, 1e-9)
        rate = self.done / el
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        log.info("%s: %s/%s %s (%.1f%%), %.1f %s/s, elapsed %s, ETA %s", self.description, f"{self.done:,.0f}",
                 f"{self.total:,.0f}", self.unit, pct, rate, self.unit, _hms(el), _hms(eta))
        self.lines += 1

    def close(self) -> None:
        if self.lines:
            self.say(time.monotonic())


def _hms(s: float) -> str:
    if s == float("inf"):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, total: float, unit: str = "it"):
    if not enabled:
        yield _NoBar()
        return
    if not sys.stderr.isatty():
        bar = _LineBar(description, total, unit, float(os.environ.get("RELABEL_PROGRESS_SECONDS", "60")))
        try:
            yield bar
        finally:
            bar.close()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:,.1f} {unit}/s" if task.speed else f"- {unit}/s")

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    console = Console(file=sys.stderr)
    with Progress(*columns, console=console, transient=False) as p:
        task = p.add_task(description, total=total)
        yield _RichBar(p, task)
