"""Terminal output shared by the CLI commands: JSON documents, the one-line error, consoles.

Data goes to stdout (tables, or one JSON document with --json); progress, warnings and errors go to stderr,
so `gpurun ... --json | jq` always sees clean JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from gpurun.errors import GpurunError

#: stdout: the data a command reports
out = Console(soft_wrap=True)
#: stderr: progress, warnings, errors
err = Console(stderr=True, soft_wrap=True)


def print_json(document: Any) -> None:
    """Write one JSON document to stdout (plain, no colour codes, stable key order as given)."""
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_error(error: GpurunError, *, as_json: bool = False) -> None:
    """The one line a user sees for a failure: what is wrong, where, how to fix it."""
    if as_json:
        print_json({"ok": False, **error.to_dict()})
    err.print(f"[bold red]error:[/] {error.one_line()}", highlight=False, markup=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False)


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def human_seconds(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
