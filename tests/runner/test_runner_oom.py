"""The out-of-memory policy on its own: plain facts in, the next change out (no torch, no training loop)."""

from __future__ import annotations

import ast
import math
from dataclasses import replace

import pytest

from gpurun.dataset.check import plan_steps
from gpurun.runner.oom import (
    EnableCheckpointing,
    GiveUp,
    HalveBatch,
    OomState,
    OutOfMemory,
    half_batch,
    next_action,
    split_batches,
)
from tests.support.env import REPO_ROOT

OOM_PY = REPO_ROOT / "gpurun" / "runner" / "oom.py"

#: 2 images x 5 repeats at batch 2, no checkpointing yet, first step of epoch 1 of 2 (tests/runner/test_runner_loop.py)
BASE = OomState(
    step=0,
    gradient_checkpointing=False,
    batch_size=2,
    remaining_batches=(2, 2, 2, 2, 2),
    epoch=1,
    epochs=2,
    total_steps=10,
    gradient_accumulation_steps=1,
    steps_fixed=False,
    batches_per_epoch_at_half=10,
    error="CUDA out of memory",
)

CASES = [
    pytest.param(
        {},
        EnableCheckpointing("out of memory at step 1: turned on gradient checkpointing"),
        id="checkpointing-first",
    ),
    pytest.param(
        {"batch_size": 1, "remaining_batches": (1,) * 10},
        EnableCheckpointing("out of memory at step 1: turned on gradient checkpointing"),
        id="checkpointing-first-even-at-batch-1",
    ),
    pytest.param(
        {"gradient_checkpointing": True},
        HalveBatch(
            1,
            20,
            "out of memory at step 1 with gradient checkpointing: batch size 2 -> 1, "
            "20 steps in all (the 2 epochs hold)",
        ),
        id="then-half-the-batch-epochs-hold",
    ),
    pytest.param(
        # mid-epoch: 3 steps done, 2 batches of 2 left (-> 4 steps), one more epoch of 10 batches at 1
        {"gradient_checkpointing": True, "step": 3, "remaining_batches": (2, 2)},
        HalveBatch(
            1,
            17,
            "out of memory at step 4 with gradient checkpointing: batch size 2 -> 1, "
            "17 steps in all (the 2 epochs hold)",
        ),
        id="mid-epoch",
    ),
    pytest.param(
        # short batches (a bucket's tail) are cut on their own: 7, 5, 2 at 3 are 3 + 2 + 1 batches, not 14 / 3
        {
            "gradient_checkpointing": True,
            "batch_size": 7,
            "remaining_batches": (7, 5, 2),
            "epochs": 1,
            "batches_per_epoch_at_half": 6,
        },
        HalveBatch(
            3,
            6,
            "out of memory at step 1 with gradient checkpointing: batch size 7 -> 3, "
            "6 steps in all (the 1 epochs hold)",
        ),
        id="short-batches-and-odd-size",
    ),
    pytest.param(
        # accumulation: 5 batches left -> 10 at batch 1 -> 4 optimizer steps (ceil 10/3); later epoch 12/3
        {"gradient_checkpointing": True, "step": 2, "gradient_accumulation_steps": 3, "batches_per_epoch_at_half": 12},
        HalveBatch(
            1,
            10,
            "out of memory at step 3 with gradient checkpointing: batch size 2 -> 1, "
            "10 steps in all (the 2 epochs hold)",
        ),
        id="gradient-accumulation",
    ),
    pytest.param(
        # max_train_steps set: the user's step count holds, only the batch changes
        {"gradient_checkpointing": True, "steps_fixed": True, "total_steps": 7},
        HalveBatch(
            1,
            7,
            "out of memory at step 1 with gradient checkpointing: batch size 2 -> 1, "
            "7 steps in all (the 2 epochs hold)",
        ),
        id="max-train-steps-holds",
    ),
    pytest.param(
        {"gradient_checkpointing": True, "batch_size": 1, "remaining_batches": (1, 1)},
        GiveUp("out of GPU memory even with gradient checkpointing at batch size 1 (CUDA out of memory)"),
        id="give-up-at-batch-1",
    ),
]


@pytest.mark.parametrize(("changes", "expected"), CASES)
def test_next_action(changes: dict, expected: object) -> None:
    assert next_action(replace(BASE, **changes)) == expected


def test_halving_never_goes_below_one() -> None:
    assert [half_batch(n) for n in (1, 2, 3, 4, 5, 8)] == [1, 1, 1, 2, 2, 4]


@pytest.mark.parametrize("sizes", [(2, 2, 1), (4, 3, 4, 1), (5,), ()])
def test_the_step_count_matches_the_recut_batches(sizes: tuple[int, ...]) -> None:
    """The policy counts the remaining batches the way split_batches cuts them (it never sees the indices)."""
    done = [[0, 0]] * 3
    batches = [*done, *([7] * n for n in sizes)]
    state = replace(BASE, gradient_checkpointing=True, batch_size=4, remaining_batches=sizes, epochs=1, step=3)
    action = next_action(state)
    assert isinstance(action, HalveBatch)
    assert action.total_steps == 3 + len(split_batches(batches, len(done), action.batch_size)) - len(done)


def test_giving_up_is_the_out_of_memory_error_with_its_hint() -> None:
    action = next_action(replace(BASE, gradient_checkpointing=True, batch_size=1))
    assert isinstance(action, GiveUp)
    error = action.error()
    assert isinstance(error, OutOfMemory)
    assert error.message == action.message and error.where == "the GPU"
    assert error.hint == "rent a GPU with more memory, or lower the resolution / network_dim"


def test_the_policy_module_depends_on_nothing_above_it() -> None:
    """oom.py imports no runner module (the loop applies the policy, not the other way round) and no torch at
    import time."""
    tree = ast.parse(OOM_PY.read_text(encoding="utf-8"))
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    everywhere = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    modules = {n.module for n in everywhere if isinstance(n, ast.ImportFrom)}
    assert not {m for m in modules if m and m.startswith("gpurun.runner")}
    top_names = {a.name for n in top_level if isinstance(n, ast.Import) for a in n.names}
    top_names |= {n.module for n in top_level if isinstance(n, ast.ImportFrom)}
    assert "torch" not in top_names


def test_total_steps_formula_matches_the_plan() -> None:
    """Out of memory on an epoch's first step: the stretched count is the client's plan at the new batch size."""
    state = replace(
        BASE,
        gradient_checkpointing=True,
        batch_size=4,
        remaining_batches=(4, 4, 2),
        epochs=3,
        batches_per_epoch_at_half=5,
        gradient_accumulation_steps=2,
    )
    action = next_action(state)
    assert isinstance(action, HalveBatch)
    assert action.total_steps == plan_steps(5, 2, 3, None)[2] == 3 * math.ceil(5 / 2)
