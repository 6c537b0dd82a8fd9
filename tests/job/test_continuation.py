"""Continuing a run on a new machine, in numbers: the training left from the last pulled state, what finishing costs
on an offer, which offers the budget left allows (and the refusal when none), and an interruption's lost minutes."""

from __future__ import annotations

import pytest

from gpurun.errors import BudgetError
from gpurun.job import continuation
from gpurun.job.plan import TrainRequest
from gpurun.job.record import MachineUse, RunRecord
from gpurun.models import GpuSpec, Offer, Workload
from gpurun.pricing import estimate

JOB = Workload(family="sd15", resolution=512, images=20, repeats=10, epochs=10)


def priced(offer_id: str, price: float):
    offer = Offer(provider="vast", offer_id=offer_id, gpu=GpuSpec("RTX 4090", 1, 24.0), price_per_hour=price,
                  inet_down_mbps=800.0, inet_up_mbps=400.0)  # fmt: skip
    return estimate(JOB, offer)


def record(tmp_path, **fields) -> RunRecord:
    return RunRecord(run_id="r01kf3m9x2c7qzab", output_dir=tmp_path, estimate=priced("1", 0.3), **fields)


def test_the_training_left_comes_from_the_last_pulled_state(tmp_path) -> None:
    run = record(tmp_path)
    assert continuation.training_left(run) == 1.0  # nothing pulled: from the start
    run.training.total_steps, run.state_step = 40, 10
    assert continuation.training_left(run) == pytest.approx(0.75)
    run.state_step = 40
    assert continuation.training_left(run) == 0.0


def test_finishing_costs_every_phase_again_but_only_the_training_left() -> None:
    est = priced("1", 0.3)
    training = next(p.dollars for p in est.phases if p.name == "training")
    assert continuation.remaining_expected(est, 1.0) == pytest.approx(est.expected_dollars)
    assert continuation.remaining_expected(est, 0.25) == pytest.approx(est.dollars - 0.75 * training)


def test_the_budget_left_picks_the_offers_cheapest_to_finish_first() -> None:
    cheap, dear = priced("cheap", 0.2), priced("dear", 0.6)
    half = continuation.remaining_expected(dear, 0.5)
    choose = continuation.continuation_offers(half + 0.001, 0.5)
    assert [e.offer.offer_id for e in choose([dear, cheap], TrainRequest())] == ["cheap", "dear"]
    with pytest.raises(BudgetError) as caught:
        continuation.continuation_offers(0.001, 0.5)([dear, cheap], TrainRequest())
    message = caught.value.message
    assert "50% of the training left" in message and "vast:cheap" in message and "$0.00 of the budget left" in message
    assert "gpurun resume RUN --budget" in (caught.value.hint or "")


def test_the_budget_left_counts_every_earlier_machine(tmp_path) -> None:
    run = record(tmp_path, budget=2.0)
    run.machines = [MachineUse("vast", "vast:1", "1", "RTX 4090", 0.5, 1000.0, 1000.0 + 3600, "preempted")]
    assert continuation.budget_left(run) == pytest.approx(1.5)
    assert continuation.budget_left(record(tmp_path)) is None


def test_an_interruption_loses_the_work_since_the_last_state_and_the_new_machines_setup(tmp_path) -> None:
    run = record(tmp_path, state_at=1300.0)
    lost = MachineUse("vast", "vast:1", "1", "RTX 4090", 0.36, 1000.0, ended_at=1360.0, ended="preempted")
    current = MachineUse("vast", "vast:2", "2", "RTX 4090", 0.72, 1400.0)
    run.machines = [lost, current]
    continuation.price_lost(run, resumed_at=1500.0)
    # 60 s of training after the last state, then the new machine's 100 s until the runner ran again
    assert lost.lost_s == pytest.approx(160.0)
    assert lost.lost_usd == pytest.approx((60 * 0.36 + 100 * 0.72) / 3600)
    # no state pulled from the lost machine: everything it did is lost
    run.state_at = None
    continuation.price_lost(run, resumed_at=1500.0)
    assert lost.lost_s == pytest.approx(360.0 + 100.0)
