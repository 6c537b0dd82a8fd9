"""What the runner does when the GPU runs out of memory: a pure policy (checkpointing, then half the batch).

The policy only decides: `next_action` reads plain facts about the run (`OomState`) and says what to change next.
The training loop applies it (turns checkpointing on, re-cuts the batches, stretches the schedule) and reports it.
Halving the batch keeps the epoch count (every sample is still seen as often), so the step count grows and the
lr schedule is stretched to the new total. Each change is reported as a warning event and recorded in the
progress (it lands in the LoRA's ss_training_comment and in the resumable state).
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass

from gpurun.errors import GpurunError

GIVE_UP_HINT = "rent a GPU with more memory, or lower the resolution / network_dim"


class OutOfMemory(GpurunError):
    """Even gradient checkpointing at batch size 1 does not fit on this GPU."""


@dataclass(frozen=True)
class OomState:
    """The facts the policy decides from, read off the run's progress when a step ran out of memory."""

    #: optimizer steps done (the one that failed is step + 1)
    step: int
    gradient_checkpointing: bool
    batch_size: int
    #: sizes of this epoch's batches not trained yet (a bucket's last batch may be short)
    remaining_batches: tuple[int, ...]
    #: 1-based epoch in progress, and how many the run trains
    epoch: int
    epochs: int
    total_steps: int
    gradient_accumulation_steps: int
    #: max_train_steps is set: the step count is the user's and holds
    steps_fixed: bool
    #: batches in a whole epoch at `half_batch(batch_size)` (the caller knows the buckets; the policy does not)
    batches_per_epoch_at_half: int
    #: the error's own words, for the give-up message
    error: str = ""


@dataclass(frozen=True)
class EnableCheckpointing:
    """Turn on gradient checkpointing and retry the step."""

    message: str


@dataclass(frozen=True)
class HalveBatch:
    """Cut this epoch's remaining batches (and later epochs') to `batch_size`; the run now has `total_steps`."""

    batch_size: int
    total_steps: int
    message: str


@dataclass(frozen=True)
class GiveUp:
    """Nothing left to turn down: the run ends with `error()`."""

    message: str

    def error(self) -> OutOfMemory:
        return OutOfMemory(self.message, where="the GPU", hint=GIVE_UP_HINT)


OomAction = EnableCheckpointing | HalveBatch | GiveUp


def half_batch(batch_size: int) -> int:
    """The batch size after one halving; never below 1."""
    return max(1, batch_size // 2)


def next_action(state: OomState) -> OomAction:
    """What to change after an out-of-memory error: checkpointing first, then half the batch, then give up."""
    if not state.gradient_checkpointing:
        return EnableCheckpointing(f"out of memory at step {state.step + 1}: turned on gradient checkpointing")
    if state.batch_size > 1:
        new = half_batch(state.batch_size)
        total = state.total_steps
        if not state.steps_fixed:
            # the epochs hold: what is left of this epoch at the new size, then the whole later epochs
            accum = state.gradient_accumulation_steps
            this_epoch = math.ceil(sum(math.ceil(n / new) for n in state.remaining_batches) / accum)
            per_epoch = math.ceil(state.batches_per_epoch_at_half / accum)
            total = state.step + this_epoch + (state.epochs - state.epoch) * per_epoch
        return HalveBatch(
            batch_size=new,
            total_steps=total,
            message=f"out of memory at step {state.step + 1} with gradient checkpointing: batch size "
            f"{state.batch_size} -> {new}, {total} steps in all (the {state.epochs} epochs hold)",
        )
    return GiveUp(f"out of GPU memory even with gradient checkpointing at batch size 1 ({state.error})".strip())


def split_batches(batches: list[list[int]], start: int, size: int) -> list[list[int]]:
    """Batches before `start` unchanged; every later batch cut into pieces of at most `size`."""
    out = list(batches[:start])
    for batch in batches[start:]:
        out.extend(batch[i : i + size] for i in range(0, len(batch), size))
    return out


def is_out_of_memory(exc: BaseException) -> bool:
    import torch  # the training stack is the runner's; imported when an error needs classifying

    kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError) if k)
    return isinstance(exc, kinds)


def free_memory() -> None:
    """Drop what the failed step held, so the retry starts from the memory the model itself needs."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
