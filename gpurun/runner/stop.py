"""How a run is told to stop: SIGTERM/SIGINT set a flag; the loop saves a checkpoint and exits STOPPED_EXIT."""

from __future__ import annotations

import signal
from typing import Any

#: the exit code of a run stopped by SIGTERM after saving (128 + SIGTERM, what a killed process reports)
STOPPED_EXIT = 143


class StopRequest:
    """SIGTERM/SIGINT set a flag the loop checks between optimizer steps."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> dict[int, Any]:
        """Take over SIGTERM/SIGINT; returns the previous handlers."""
        return {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
