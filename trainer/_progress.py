"""The trainer's progress bar on stderr, shared by training epochs and slow corpus loads.

``mbd-cert train --no-progress`` turns it off. rich is imported only when the bar is
shown.

Stability: internal to the trainer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int,
                 unit: str = "epoch") -> Iterator[Callable[[str], None]]:
    """Show a rich progress bar of ``total`` steps on stderr and yield ``advance(status)``.

    Args:
        enabled: False yields an ``advance`` that does nothing and shows no bar.
        total: Steps until the bar is full.
        unit: Name of one step, shown before the count, such as ``epoch``.
    """
    if not enabled:
        yield lambda status: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (TextColumn(unit), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(unit, total=total, status="")

        def advance(status: str) -> None:
            bar.update(task, advance=1, status=status)

        yield advance
