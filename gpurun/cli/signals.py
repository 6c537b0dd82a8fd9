"""Ctrl-C during a run: once detaches (after a 3 s window, training goes on under the watchdog), twice cancels
(the runner saves a checkpoint, what exists is fetched, the machine destroyed); before the runner starts, it
stops the run and the machine is destroyed."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from gpurun.api import RunContext, View

#: how long a first Ctrl-C waits for a second before it detaches
DETACH_WINDOW_S = 3.0


def install_ctrl_c(run: RunContext, task: asyncio.Task[Any] | None, view: View) -> None:
    """Wire SIGINT to `run`'s stop requests for as long as this event loop runs."""
    loop = asyncio.get_running_loop()
    presses = {"n": 0}

    def on_sigint() -> None:
        presses["n"] += 1
        if not run.launched:
            # nothing to detach from yet: stop here, and the `finally` destroys whatever was rented
            view.message("interrupted before training started: destroying what was rented")
            if task is not None:
                task.cancel()
            return
        if presses["n"] == 1:
            view.message("detaching in 3 s — press Ctrl-C again to cancel the run and destroy the machine instead")
            loop.call_later(DETACH_WINDOW_S, lambda: None if run.cancel_request.is_set() else run.stop_request.set())
        else:
            view.message("cancelling: stopping the runner, fetching what exists, destroying the machine")
            run.cancel_request.set()
            run.stop_request.set()

    with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows has no loop signal handlers
        loop.add_signal_handler(signal.SIGINT, on_sigint)
