"""The live money line's projection: what the run will have cost at its end, at the speed measured now.

    projected = spent + (the current phase's remaining seconds + the later phases' estimates) × the billed price
                + the estimate's storage and bandwidth dollars

In training, the current phase's remaining seconds come from the runner's measured speed (its ETA: the steps
left at the mean step time of the last steps, plus the estimate's final sampling); before training, from the
estimate less the time the phase has already taken. A run that speeds up sees its projection fall, one that
slows down sees it rise, with every step event.
"""

from __future__ import annotations

from gpurun.events import Step
from gpurun.models import CostEstimate
from gpurun.phases import RUN_PHASES, TRAINING, RunPhase

#: estimate lines that are not billed by the hour
FLAT_LINES = ("storage", "bandwidth")


def _estimated_seconds(estimate: CostEstimate, names: tuple[str, ...]) -> float:
    return sum(phase.seconds for phase in estimate.phases if phase.name in names)


def remaining_seconds(
    estimate: CostEstimate,
    *,
    done: set[str],
    current: RunPhase | None,
    current_elapsed_s: float,
    last_step: Step | None,
) -> float:
    """Billed seconds still to come: the current phase's remainder plus every later phase's estimate."""
    total = 0.0
    for phase in RUN_PHASES:
        if phase is current:
            if phase is TRAINING and last_step is not None and last_step.eta_s >= 0:
                # the runner's ETA is measured speed; the final grid after the last step is not in it
                total += last_step.eta_s + _estimated_seconds(estimate, ("samples",))
            else:
                total += max(0.0, _estimated_seconds(estimate, phase.covers) - current_elapsed_s)
        elif phase.name not in done:
            total += _estimated_seconds(estimate, phase.covers)
    return total


def projected_dollars(
    estimate: CostEstimate,
    *,
    spent: float,
    price_per_hour: float,
    done: set[str],
    current: RunPhase | None,
    current_elapsed_s: float,
    last_step: Step | None,
) -> float:
    """The run's total at its end, at today's measured pace (never less than what is already spent)."""
    seconds = remaining_seconds(estimate, done=done, current=current, current_elapsed_s=current_elapsed_s,
                                last_step=last_step)  # fmt: skip
    flat = sum(phase.dollars for phase in estimate.phases if phase.name in FLAT_LINES)
    return spent + seconds * price_per_hour / 3600.0 + flat
