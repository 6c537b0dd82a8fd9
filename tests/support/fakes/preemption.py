"""Preemption for the fake providers: take an interruptible machine away once its runner reaches a given training
step, as a marketplace does when a higher bid (Vast) or on-demand demand (RunPod spot) claims the host."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path


def reached_step(runs: Path, step: int) -> bool:
    """Whether a runner on the box has logged training step `step` (or later) in its run folder's events."""
    for events in runs.glob("*/events.jsonl") if runs.is_dir() else ():
        try:
            lines = events.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if '"type":"step"' not in line.replace(" ", ""):
                continue
            try:
                if int(json.loads(line).get("step", 0)) >= step:
                    return True
            except (ValueError, AttributeError):
                continue
    return False


def preempt_when_step(
    target: Callable[[], tuple[Path, str] | None],
    step: int,
    take: Callable[[str], None],
    ready: Callable[[], bool] | None = None,
) -> None:
    """In the background: once `target()` names (the box's run folders, an interruptible instance running there)
    and a runner there reached `step` (and `ready()`, when given, holds), `take(instance id)`; within 10 minutes,
    or never. `ready` lets a test wait for what it needs to have happened first (a state pulled by the client:
    on a loaded machine the runner can be many steps ahead of the client)."""

    def watch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            found = target()
            if found is not None and reached_step(found[0], step) and (ready is None or ready()):
                take(found[1])
                return
            time.sleep(0.02)

    threading.Thread(target=watch, name="fake-preemption", daemon=True).start()
