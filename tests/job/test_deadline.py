"""The budget → deadline arithmetic the watchdog enforces."""

from __future__ import annotations

import math

import pytest

from gpurun.job.deadline import affordable_seconds, deadline_from_budget

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("budget", "spent", "price", "margin", "expected_offset"),
    [
        (10.0, 0.0, 0.40, 0.0, 25 * 3600),  # $10 at $0.40/h buys 25 h
        (10.0, 2.0, 0.40, 0.0, 20 * 3600),  # $2 already spent
        (10.0, 2.0, 0.40, 120.0, 20 * 3600 - 120),  # the margin pays for checkpoint + destroy
        (1.0, 0.0, 3.60, 0.0, 1000),  # an H100-class price: $1 lasts 1000 s
        (1.0, 1.0, 0.40, 0.0, 0),  # budget exactly spent: the deadline is now
        (1.0, 1.5, 0.40, 0.0, 0),  # overspent: never in the past of `now`, the caller stops
        (0.01, 0.0, 0.40, 600.0, 0),  # the margin eats everything
    ],
)
def test_deadline_from_budget(budget, spent, price, margin, expected_offset) -> None:
    deadline = deadline_from_budget(budget, spent, price, NOW, margin)
    assert deadline == pytest.approx(NOW + expected_offset)


def test_a_free_instance_has_no_money_deadline() -> None:
    assert deadline_from_budget(5.0, 0.0, 0.0, NOW, 60.0) is None
    assert math.isinf(affordable_seconds(5.0, 0.0, 0.0))


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((10.0, 0.0, -0.4, NOW, 0.0), "price_per_hour"),
        ((float("nan"), 0.0, 0.4, NOW, 0.0), "budget_usd"),
        ((10.0, -1.0, 0.4, NOW, 0.0), "spent_usd"),
        ((10.0, 0.0, 0.4, NOW, -5.0), "safety_margin"),
    ],
)
def test_nonsense_is_refused_by_name(args, name) -> None:
    with pytest.raises(ValueError, match=name):
        deadline_from_budget(*args)
