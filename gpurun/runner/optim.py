"""Optimizers (kohya's optimizer_type: gpurun.optimizers) and learning-rate schedules, built from kohya's keys.

The schedule is a pure function of (step, total steps), the formulas of diffusers' get_scheduler, held in a
LambdaLR whose total can change: after an out-of-memory fallback halves the batch, the run has more steps
left and the schedule stretches to fit instead of ending early.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gpurun import optimizers
from gpurun.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from gpurun.trainconfig import TrainConfig


def parse_optimizer_args(args: list[str]) -> dict[str, Any]:
    """kohya's `optimizer_args = ["weight_decay=0.01", "betas=0.9,0.99"]` → keyword arguments."""
    try:
        return optimizers.parse_optimizer_args(args)
    except optimizers.OptimizerArgsError as exc:
        raise ConfigError(str(exc), where="optimizer_args") from None


def make_optimizer(name: str, param_groups: list[dict[str, Any]], args: list[str], device: str) -> Any:
    """The optimizer kohya's `optimizer_type` names, over the LoRA parameter groups (arguments checked first)."""
    import torch

    try:
        spec = optimizers.optimizer(name)
        kwargs = optimizers.check_optimizer_args(name, args)
    except optimizers.OptimizerArgsError as exc:
        raise ConfigError(str(exc), where="optimizer_args") from None
    try:
        if spec.name == "Adafactor":
            return _adafactor(param_groups, kwargs)
        if spec.name == "AdamW":
            if device == "cuda":
                kwargs.setdefault("fused", True)  # one kernel for all LoRA tensors: a win on small tensors
            return torch.optim.AdamW(param_groups, **kwargs)
        return _load_class(spec)(param_groups, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad optimizer argument for {name}: {exc}", where="optimizer_args") from None


def _load_class(spec: optimizers.Optimizer) -> Any:
    """The optimizer class by its module path (kohya's ss_optimizer name); a missing package is a ConfigError."""
    module_name, _, class_name = spec.class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ConfigError(
            f"optimizer_type {spec.name} needs the {spec.package} package",
            where="optimizer_type",
            hint="pip install 'gpurun[train]' (the locked stack has it), or use AdamW8bit",
        ) from None
    return getattr(module, class_name)


def _adafactor(param_groups: list[dict[str, Any]], kwargs: dict[str, Any]) -> Any:
    """transformers' Adafactor as kohya builds it: relative_step defaults to True (and warmup_init forces it);
    then Adafactor computes its own step size, so the groups' learning rates are dropped (kohya does the same)."""
    from transformers.optimization import Adafactor

    kwargs.setdefault("relative_step", True)
    if kwargs.get("warmup_init"):
        kwargs["relative_step"] = True
    if kwargs["relative_step"]:
        groups = [{k: v for k, v in group.items() if k != "lr"} for group in param_groups]
        return Adafactor(groups, lr=None, **kwargs)
    return Adafactor(param_groups, lr=param_groups[0]["lr"], **kwargs)


def lr_factor(name: str, step: int, *, warmup: int, total: int, cycles: int = 1, power: float = 1.0) -> float:
    """The multiplier of the base lr at `step` (0-based), as diffusers' schedules compute it."""
    if name == "adafactor":  # Adafactor's own step size; the lr in the groups is only reported
        return 1.0
    if step < warmup:
        return float(step + 1) / float(max(1, warmup))  # +1: the first step is not wasted at lr 0
    if name in ("constant", "constant_with_warmup"):
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, float(step - warmup) / span)
    if name == "linear":
        return max(0.0, 1.0 - progress)
    if name == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    if name == "cosine_with_restarts":
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(cycles) * progress) % 1.0))))
    if name == "polynomial":
        return max(0.0, (1.0 - progress) ** power)
    raise ConfigError(f"unknown lr_scheduler {name!r}", where="lr_scheduler")


@dataclass
class Schedule:
    """A stretchable lr schedule: `total` may grow (OOM fallback) and the curve follows."""

    name: str
    warmup: int
    total: int
    cycles: int = 1
    power: float = 1.0
    #: the lr Adafactor's schedule reports before its first step (kohya: learning_rate)
    initial_lr: float = 0.0

    def factor(self, step: int) -> float:
        return lr_factor(self.name, step, warmup=self.warmup, total=self.total, cycles=self.cycles, power=self.power)

    def attach(self, optimizer: Any) -> torch.optim.lr_scheduler.LambdaLR:
        import torch

        if self.name == "adafactor":
            from transformers.optimization import AdafactorSchedule

            return AdafactorSchedule(optimizer, self.initial_lr)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor)


def schedule_for(config: TrainConfig, total_steps: int) -> Schedule:
    """kohya's `lr_scheduler` with `lr_warmup_steps` (a fraction of the run when below 1, as kohya reads a float;
    a warmup longer than the run is clamped to it)."""
    warmup = min(config.warmup_steps(total_steps), max(0, total_steps - 1))
    if config.optimizer_type == "Adafactor" and config.adafactor_relative_step:
        # kohya replaces any lr_scheduler with Adafactor's own here ("use adafactor_scheduler")
        return Schedule("adafactor", warmup=0, total=total_steps, initial_lr=config.learning_rate)
    return Schedule(
        config.lr_scheduler,
        warmup=warmup,
        total=total_steps,
        cycles=config.lr_scheduler_num_cycles,
        power=config.lr_scheduler_power,
    )
