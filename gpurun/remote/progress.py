"""Transfer progress for people: a rich bar on a terminal, a plain line every 10 % when output is not a TTY."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from gpurun.remote.rsync import ProgressCallback, TransferProgress


@contextmanager
def transfer_progress(
    description: str, *, total_bytes: int | None = None, console: Console | None = None
) -> Iterator[ProgressCallback]:
    """A callback for `sync.push/pull/fetch_verified(progress=...)` that draws the transfer.

    rsync reports bytes done and the percentage of the whole transfer, so the total is inferred when the
    caller does not know it (e.g. the upload plan's bytes)."""
    out = console or Console(stderr=True)
    if not out.is_terminal:
        last = -10

        def plain(update: TransferProgress) -> None:
            nonlocal last
            if update.percent >= last + 10 or (update.percent == 100 and last < 100):
                last = update.percent
                rate = f" at {update.rate}" if update.rate else ""
                out.print(f"{description}: {update.percent}% ({update.bytes_done:,} bytes){rate}", highlight=False)

        yield plain
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=out, transient=True) as bar:
        task = bar.add_task(description, total=total_bytes)

        def draw(update: TransferProgress) -> None:
            total = total_bytes
            if total is None and update.percent > 0:
                total = max(update.bytes_done, int(update.bytes_done * 100 / update.percent))
            bar.update(task, completed=update.bytes_done, total=total)

        yield draw
