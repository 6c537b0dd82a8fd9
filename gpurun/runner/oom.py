"""What the runner does when the GPU runs out of memory: gradient checkpointing first, then half the batch.

Halving the batch keeps the epoch count (every sample is still seen as often), so the step count grows and the
lr schedule is stretched to the new total. Each change is reported as a warning event and recorded in the
progress (it lands in the LoRA's ss_training_comment and in the resumable state).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gpurun import events
from gpurun.errors import GpurunError

if TYPE_CHECKING:
    from gpurun.runner.train import _Loop


class OutOfMemory(GpurunError):
    """Even gradient checkpointing at batch size 1 does not fit on this GPU."""


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError) if k)
    return isinstance(exc, kinds)


def split_batches(batches: list[list[int]], start: int, size: int) -> list[list[int]]:
    """Batches before `start` unchanged; every later batch cut into pieces of at most `size`."""
    out = list(batches[:start])
    for batch in batches[start:]:
        out.extend(batch[i : i + size] for i in range(0, len(batch), size))
    return out


class OomFallback:
    """Applies the next fallback on each out-of-memory error; gives up after batch size 1."""

    def __init__(self, loop: _Loop, enable_checkpointing: Callable[[Any], None]) -> None:
        self.loop = loop
        self.enable_checkpointing = enable_checkpointing

    def recover(self, exc: BaseException, batches: list[list[int]]) -> list[list[int]]:
        """Free memory, change one thing, and return the (possibly re-cut) batches of the current epoch."""
        _free_memory()
        loop, p = self.loop, self.loop.p
        if not p.gradient_checkpointing:
            self.enable_checkpointing(loop.ctx.model)
            p.gradient_checkpointing = True
            return self._changed(f"out of memory at step {p.step + 1}: turned on gradient checkpointing", batches)
        if p.batch_size > 1:
            old, new = p.batch_size, max(1, p.batch_size // 2)
            p.batch_size = new
            batches = split_batches(batches, p.batch_in_epoch, new)
            if not loop.config.max_train_steps:
                accum = loop.config.gradient_accumulation_steps
                this_epoch = math.ceil((len(batches) - p.batch_in_epoch) / accum)
                per_epoch = math.ceil(loop.ctx.data.batches_per_epoch(new) / accum)
                p.total_steps = p.step + this_epoch + (p.epochs - p.epoch) * per_epoch
                loop.schedule.total = p.total_steps
            return self._changed(
                f"out of memory at step {p.step + 1} with gradient checkpointing: batch size {old} -> {new}, "
                f"{p.total_steps} steps in all (the {p.epochs} epochs hold)",
                batches,
            )
        raise OutOfMemory(
            f"out of GPU memory even with gradient checkpointing at batch size 1 ({exc})".strip(),
            where="the GPU",
            hint="rent a GPU with more memory, or lower the resolution / network_dim",
        )

    def _changed(self, message: str, batches: list[list[int]]) -> list[list[int]]:
        self.loop.p.changes.append(message)
        self.loop.emit(events.WarningEvent(message=message, code="out-of-memory"))
        return batches


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
