"""What the orchestrator tells the person watching: the `View` it reports to, and the money line it shows.

The renderers (a progress bar, plain lines, JSON lines) live with the CLI (`gpurun.cli.live`); the orchestrator
only knows this interface, so a library caller can pass its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gpurun.events import Event


@dataclass
class Money:
    """What the run has cost so far, what it will cost at this pace, and the ceiling."""

    spent: float = 0.0
    projected: float = 0.0
    budget: float | None = None

    def line(self) -> str:
        text = f"${self.spent:.3f} spent, ~${self.projected:.3f} projected"
        if self.budget is not None:
            text += f" / ${self.budget:.2f} budget"
        return text


class View(Protocol):
    def phase(self, name: str, detail: str = "") -> None: ...
    def event(self, event: Event) -> None: ...
    def money(self, money: Money) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


class SilentView:
    """A View that shows nothing (library calls that want only the receipt)."""

    def phase(self, name: str, detail: str = "") -> None:
        pass

    def event(self, event: Event) -> None:
        pass

    def money(self, money: Money) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class LabelledView:
    """Another view, with every phase and message marked with whose it is (a queue's job, a fleet's machine)."""

    def __init__(self, inner: View, label: str) -> None:
        self.inner, self.label = inner, label

    def phase(self, name: str, detail: str = "") -> None:
        self.inner.phase(f"{self.label}: {name}", detail)

    def event(self, event: Event) -> None:
        self.inner.event(event)

    def money(self, money: Money) -> None:
        self.inner.money(money)

    def message(self, text: str) -> None:
        self.inner.message(f"{self.label}: {text}")

    def close(self) -> None:
        """The inner view outlives its labels: the queue closes it."""
