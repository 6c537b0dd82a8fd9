"""The live view of a run: phase, progress, loss, speed, ETA and dollars, for a TTY, a log, or a script.

Three renderers share one interface: `RichView` (a progress bar on a terminal), `PlainView` (one line per
phase and a throttled progress line, for logs and CI) and `JsonView` (every runner event and client phase
as a JSON line on stdout, for scripts). The orchestrator calls the same methods whatever the renderer.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO

from gpurun.api import Money, View
from gpurun.cli.render import human_seconds, printable, safe
from gpurun.events import Event, LogLine, Step


def _step_summary(step: Step) -> str:
    return (
        f"epoch {step.epoch}/{step.epochs} step {step.step}/{step.total_steps} "
        f"loss {step.loss_avg:.4f} {step.samples_per_s:.2f} img/s ETA {human_seconds(step.eta_s)}"
    )


class PlainView:
    """Line output for non-TTY use: phases, warnings and a progress line at most every `interval` seconds."""

    def __init__(self, stream: IO[str] | None = None, interval: float = 10.0) -> None:
        self._stream = stream or sys.stderr
        self._interval = interval
        self._last_step_print = float("-inf")  # the first step always prints
        self._money = Money()

    def _print(self, text: str) -> None:
        # what the runner reports comes from the rented machine: no escape sequence reaches the terminal
        self._stream.write(printable(text) + "\n")
        self._stream.flush()

    def phase(self, name: str, detail: str = "") -> None:
        self._print(f"[{name}] {detail}".rstrip())

    def event(self, event: Event) -> None:
        kind = event.kind
        if kind == "step":
            assert isinstance(event, Step)
            now = time.monotonic()
            last = event.step >= event.total_steps > 0
            if last or now - self._last_step_print >= self._interval:
                self._last_step_print = now
                self._print(f"  {_step_summary(event)} | {self._money.line()}")
        elif kind in ("checkpoint", "sample"):
            self._print(f"  {kind}: {getattr(event, 'path', '')}")
        elif kind in ("warning", "error"):
            hint = getattr(event, "hint", "")
            self._print(f"  {kind}: {getattr(event, 'message', '')}" + (f" — {hint}" if hint else ""))
        elif kind == "start":
            steps = getattr(event, "total_steps", 0)
            what = f"{_doing(event)} on {getattr(event, 'device', '?')} ({getattr(event, 'dtype', '?')})"
            self._print(
                f"  {what}" + (f", {steps} steps" if steps else "") + f"; {getattr(event, 'detected', '')}".rstrip("; ")
            )
        elif kind == "done":
            self._print(f"  done: {getattr(event, 'steps', 0)} steps in {human_seconds(getattr(event, 'seconds', 0))}")

    def money(self, money: Money) -> None:
        self._money = money

    def message(self, text: str) -> None:
        self._print(text)

    def close(self) -> None:
        pass


class JsonView:
    """Every event as one JSON line on stdout; client phases and money as their own event types."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stdout

    def _write(self, data: dict[str, object]) -> None:
        self._stream.write(json.dumps(data, default=str, separators=(",", ":")) + "\n")
        self._stream.flush()

    def phase(self, name: str, detail: str = "") -> None:
        self._write({"v": 1, "type": "client_phase", "t": time.time(), "name": name, "detail": detail})

    def event(self, event: Event) -> None:
        if isinstance(event, LogLine):
            return  # library noise from the runner; kept in the run's log file, not in the stream
        self._write(event.to_dict())

    def money(self, money: Money) -> None:
        self._write(
            {
                "v": 1,
                "type": "money",
                "t": time.time(),
                "spent": round(money.spent, 6),
                "projected": round(money.projected, 6),
                "budget": money.budget,
            }
        )

    def message(self, text: str) -> None:
        self._write({"v": 1, "type": "message", "t": time.time(), "text": text})

    def close(self) -> None:
        pass


class RichView:
    """A terminal view: the current phase, a progress bar over training steps, loss, speed, ETA and dollars."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.fields[phase]}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=self._console,
            transient=False,
        )
        self._task = self._progress.add_task("run", total=None, phase="starting", stats="")
        self._money = Money()
        self._stats = ""
        self._progress.start()

    def _refresh(self) -> None:
        stats = " | ".join(part for part in (self._stats, self._money.line()) if part)
        self._progress.update(self._task, stats=stats)

    def phase(self, name: str, detail: str = "") -> None:
        self._progress.update(self._task, phase=name)
        if detail:
            self._progress.console.print(f"[dim]{safe(name)}:[/] {safe(detail)}", highlight=False)
        self._refresh()

    def event(self, event: Event) -> None:
        kind = event.kind
        if kind == "step":
            assert isinstance(event, Step)
            self._progress.update(self._task, total=event.total_steps or None, completed=event.step)
            self._stats = (
                f"loss {event.loss_avg:.4f} · {event.samples_per_s:.2f} img/s · ETA {human_seconds(event.eta_s)}"
            )
            self._refresh()
        elif kind in ("checkpoint", "sample"):
            self._progress.console.print(f"[green]{kind}[/] {safe(getattr(event, 'path', ''))}", highlight=False)
        elif kind in ("warning", "error"):
            colour = "yellow" if kind == "warning" else "red"
            hint = getattr(event, "hint", "")
            self._progress.console.print(
                f"[{colour}]{kind}:[/] {safe(getattr(event, 'message', ''))}" + (f" — {safe(hint)}" if hint else ""),
                highlight=False,
            )
        elif kind == "start":
            self._progress.update(self._task, total=getattr(event, "total_steps", 0) or None, completed=0)
            self._progress.console.print(
                safe(
                    f"{_doing(event)} on {getattr(event, 'device', '?')} ({getattr(event, 'dtype', '?')}): "
                    f"{getattr(event, 'detected', '')}"
                ),
                highlight=False,
            )

    def money(self, money: Money) -> None:
        self._money = money
        self._refresh()

    def message(self, text: str) -> None:
        self._progress.console.print(printable(text), highlight=False, markup=False)

    def close(self) -> None:
        self._progress.stop()


def make_view(*, as_json: bool, stream_is_tty: bool | None = None) -> View:
    """JSON for scripts, a rich bar on a terminal, plain lines otherwise."""
    if as_json:
        return JsonView()
    tty = sys.stderr.isatty() if stream_is_tty is None else stream_is_tty
    return RichView() if tty else PlainView()


def _doing(start: Event) -> str:
    """What the machine does: a start without steps is a sampling job (`gpurun sample`)."""
    return "training" if getattr(start, "total_steps", 0) else "sampling"
