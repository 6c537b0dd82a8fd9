"""The hard deadline a run's watchdog enforces: the moment the remaining budget is spent at the billed price."""

from __future__ import annotations

import math


def affordable_seconds(budget_usd: float, spent_usd: float, price_per_hour: float) -> float:
    """Seconds the remaining budget buys at `price_per_hour` ($/h for the whole instance); inf when it is free."""
    for name, value in (("budget_usd", budget_usd), ("spent_usd", spent_usd), ("price_per_hour", price_per_hour)):
        if not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if price_per_hour == 0:
        return math.inf
    return max(0.0, budget_usd - spent_usd) / price_per_hour * 3600.0


def deadline_from_budget(
    budget_usd: float, spent_usd: float, price_per_hour: float, now: float, safety_margin: float
) -> float | None:
    """Unix time at which the watchdog must stop the run so the whole job stays within `budget_usd`.

    `spent_usd` is what the run has cost so far (boot, install, earlier instances); `price_per_hour` is the price
    the provider BILLS (read back after create, not the quote); `now` is the instance's clock (the watchdog compares
    against it, so read it over SSH rather than trusting the laptop's clock); `safety_margin` is seconds held back
    for what still costs money after the deadline fires: the runner's checkpoint grace and the destroy call.

    Returns None when the instance is free (a declared host at $0/h, or local): money sets no deadline then.
    A result at or before `now` means the budget is already spent; the caller must not start (or must stop).
    """
    if not isinstance(safety_margin, (int, float)) or math.isnan(safety_margin) or safety_margin < 0:
        raise ValueError(f"safety_margin must be seconds >= 0, got {safety_margin!r}")
    seconds = affordable_seconds(budget_usd, spent_usd, price_per_hour)
    if math.isinf(seconds):
        return None
    return now + max(0.0, seconds - safety_margin)
