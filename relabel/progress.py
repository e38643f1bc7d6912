"""A rich progress bar that costs nothing when disabled (non-zero ranks, --quiet, tests)."""
from __future__ import annotations

import contextlib
import sys


class _NoBar:
    def advance(self, n: float = 1) -> None:
        pass


class _RichBar:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, n: float = 1) -> None:
        self.progress.advance(self.task, n)


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, total: float, unit: str = "it"):
    if not enabled:
        yield _NoBar()
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
