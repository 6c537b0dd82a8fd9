"""Terminal output shared by the CLI commands: JSON documents, the one-line error, consoles.

Data goes to stdout (tables, or one JSON document with --json); progress, warnings and errors go to stderr,
so `gpurun ... --json | jq` always sees clean JSON.
"""

from __future__ import annotations

import json
import math
import sys
import unicodedata
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from gpurun.errors import GpurunError

if TYPE_CHECKING:
    from gpurun.api import Receipt

#: stdout: the data a command reports
out = Console(soft_wrap=True)
#: stderr: progress, warnings, errors
err = Console(stderr=True, soft_wrap=True)


def printable(text: object, *, one_line: bool = False) -> str:
    """Text from outside (vendor answers, the rented machine, file and folder names) as a terminal may show it:
    control characters, escape sequences included, become visible escapes instead of acting on the terminal.
    With `one_line`, newlines and tabs are escaped too (a file name must not forge a line of the report)."""
    kept = "" if one_line else "\n\t"
    return "".join(
        ch if ch in kept or unicodedata.category(ch)[0] != "C" else ch.encode("unicode_escape").decode("ascii")
        for ch in str(text)
    )


def safe(text: object) -> str:
    """Outside text to put inside rich markup: printable, and its brackets shown, never parsed as markup
    (`[/]` in a vendor message would crash the renderer; `[dataset].batch_size` would lose its section)."""
    return escape(printable(text))


def finite(document: Any) -> Any:
    """`document` with NaN and infinities replaced by null: JSON has no such numbers."""
    if isinstance(document, float):
        return document if math.isfinite(document) else None
    if isinstance(document, dict):
        return {key: finite(value) for key, value in document.items()}
    if isinstance(document, (list, tuple)):
        return [finite(value) for value in document]
    return document


def print_json(document: Any) -> None:
    """Write one JSON document to stdout (plain, no colour codes, stable key order as given, standard JSON)."""
    sys.stdout.write(json.dumps(finite(document), indent=2, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def print_error(error: GpurunError, *, as_json: bool = False) -> None:
    """The one line a user sees for a failure: what is wrong, where, how to fix it."""
    if as_json:
        print_json({"ok": False, **error.to_dict()})
    err.print(f"[bold red]error:[/] {safe(error.one_line())}", highlight=False, markup=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {safe(message)}", highlight=False)


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


def render_receipt(receipt: Receipt) -> Any:
    """A rich table of the receipt."""
    from rich.table import Table  # (rich's tables load only when there is one to print)

    table = Table(
        title=f"receipt {receipt.run_id} — {receipt.offer} ({receipt.gpu}) at ${receipt.billed_per_hour:.3f}/h",
        title_justify="left",
    )
    for column in ("phase", "est. time", "actual", "est. $", "actual $"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for line in receipt.lines:
        table.add_row(
            line.phase,
            human_seconds(line.estimated_s),
            "—" if line.actual_s is None else human_seconds(line.actual_s),
            f"{line.estimated_usd:.4f}",
            "—" if line.actual_usd is None else f"{line.actual_usd:.4f}",
        )
    budget = f" of ${receipt.budget:.2f} budget" if receipt.budget is not None else ""
    table.caption = (
        f"billed {human_seconds(receipt.billed_seconds)}: ${receipt.actual_total_usd:.4f}{budget} "
        f"(estimated ${receipt.estimated_total_usd:.4f}, expected ${receipt.estimated_expected_usd:.4f}); "
        f"instance {'destroyed' if receipt.destroyed else 'NOT confirmed destroyed — run `gpurun runs --all`'}"
    )
    return table
