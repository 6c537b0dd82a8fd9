"""Step losses kept where they were computed until someone reads them: one host sync per event, not one per step."""

from __future__ import annotations

from typing import Any


class LossMeter:
    """A window of the last `size` step losses. `add` takes a device tensor (no sync) or a float; `window` reads
    the pending ones in one transfer and returns the window as floats."""

    def __init__(self, window: list[float], size: int) -> None:
        self.size = size
        self._window = list(window)[-size:]
        self._pending: list[Any] = []

    def add(self, loss: Any) -> None:
        # older pending losses would fall out of the window anyway: dropping them keeps the list bounded
        self._pending = [*self._pending, loss][-self.size :]

    def window(self) -> list[float]:
        if self._pending:
            self._window = [*self._window, *_to_floats(self._pending)][-self.size :]
            self._pending = []
        return list(self._window)


def _to_floats(values: list[Any]) -> list[float]:
    """Floats from 0-d tensors (stacked, so a device reads back once) or plain numbers."""
    tensors = [v for v in values if not isinstance(v, (int, float))]
    if not tensors:
        return [float(v) for v in values]
    import torch

    read = iter(torch.stack([t.detach().float().reshape(()) for t in tensors]).tolist())
    return [float(v) if isinstance(v, (int, float)) else float(next(read)) for v in values]
