"""The live money line projects the run's total from the speed measured now: a run that speeds up mid-way sees
its projection fall, one that slows down sees it rise, and the figure is the same in --json."""

from __future__ import annotations

import asyncio
import io
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from gpurun.cli.live import JsonView
from gpurun.events import Step
from gpurun.job.context import RunContext
from gpurun.job.follow import on_event
from gpurun.job.options import JobOptions
from gpurun.job.record import RunRecord
from gpurun.job.view import Money, SilentView
from gpurun.journal import Journal
from gpurun.models import GpuSpec, Offer, Workload
from gpurun.phases import SETUP, TRAINING
from gpurun.pricing import estimate

PRICE = 3.6  # $/h: a tenth of a cent per second, easy to reason about


class MoneyView(SilentView):
    def __init__(self) -> None:
        self.seen: list[Money] = []

    def money(self, money: Money) -> None:
        self.seen.append(money)


def _context(tmp_path: Path, view=None) -> RunContext:
    offer = Offer(provider="vast", offer_id="7", gpu=GpuSpec("RTX 4090", 1, 24.0), price_per_hour=PRICE,
                  reliability=0.99, inet_down_mbps=800.0, inet_up_mbps=400.0, disk_gb=30.0)  # fmt: skip
    chosen = estimate(Workload(family="sd15", images=20, repeats=10, epochs=2), offer)
    record = RunRecord(run_id="r01kf3m9x2c7qzab", output_dir=tmp_path / "out", estimate=chosen, budget=5.0,
                       price_per_hour=PRICE, created_at=time.time() - 100.0,
                       timings={"boot": 40.0, "setup": 50.0, "upload": 10.0})  # fmt: skip
    journal = Journal.open(tmp_path / "journal.sqlite3")
    journal.record_intent(
        record.run_id, provider="vast", offer_id="7", gpu="RTX 4090", quoted_price=PRICE, budget=5.0, workload={},
        estimate={}, output_dir=record.output_dir, config_toml="", label="gpurun-" + record.run_id,
    )  # fmt: skip
    return RunContext(record, view or MoneyView(), journal, JobOptions())


def _step(step: int, eta_s: float) -> Step:
    return Step(epoch=1, epochs=2, step=step, total_steps=400, loss=0.1, loss_avg=0.1, lr=1e-4,
                samples_per_s=1.0, eta_s=eta_s)  # fmt: skip


def _later(ctx: RunContext) -> float:
    """$ of what follows training in the estimate: the final sampling, fetch and teardown, storage, bandwidth."""
    est = {p.name: p for p in ctx.record.estimate.phases}
    seconds = sum(est[n].seconds for n in ("samples", "fetch") if n in est)
    return seconds * PRICE / 3600 + sum(est[n].dollars for n in ("storage", "bandwidth") if n in est)


async def test_a_run_that_speeds_up_mid_way_projects_less_and_one_that_slows_projects_more(tmp_path) -> None:
    ctx = _context(tmp_path)
    view = ctx.view
    assert isinstance(view, MoneyView)
    async with ctx.phase(TRAINING):
        on_event(ctx, _step(100, eta_s=1500.0))  # 300 steps left at 5 s a step
        on_event(ctx, _step(200, eta_s=200.0))  # the box got faster: 200 left at 1 s
        on_event(ctx, _step(300, eta_s=1000.0))  # and slower again: 100 left at 10 s
    first, faster, slower = view.seen
    for money, eta in ((first, 1500.0), (faster, 200.0), (slower, 1000.0)):
        expected = money.spent + eta * PRICE / 3600 + _later(ctx)
        assert money.projected == pytest.approx(expected, abs=2e-3)
        assert money.budget == 5.0 and money.spent == pytest.approx(0.1, abs=0.01)  # 100 s at $0.001/s
    assert first.projected > slower.projected > faster.projected
    # not max(spent, estimate): the projection follows the measured speed, below and above the estimate
    assert faster.projected < ctx.record.estimate.dollars < first.projected + 1.0


async def test_before_training_the_projection_is_the_estimate_less_what_is_done(tmp_path) -> None:
    ctx = _context(tmp_path)
    ctx.record = replace(ctx.record, timings={"boot": 40.0})
    async with ctx.phase(SETUP):
        before = ctx.money()
        await asyncio.sleep(0.2)
        after = ctx.money()
    # time passing inside the phase moves money from "to come" to "spent", the total stays put
    assert after.spent > before.spent
    assert after.projected == pytest.approx(before.projected, abs=1e-3)
    est = sum(p.seconds for p in ctx.record.estimate.phases if p.name not in ("boot",))
    flat = sum(p.dollars for p in ctx.record.estimate.phases if p.name in ("storage", "bandwidth"))
    assert before.projected == pytest.approx(before.spent + est * PRICE / 3600 + flat, abs=2e-3)


async def test_the_json_money_event_carries_the_same_projection(tmp_path) -> None:
    stream = io.StringIO()
    ctx = _context(tmp_path, view=JsonView(stream))
    async with ctx.phase(TRAINING):
        on_event(ctx, _step(100, eta_s=720.0))
    money = [json.loads(line) for line in stream.getvalue().splitlines() if '"money"' in line]
    assert money, stream.getvalue()
    last = money[-1]
    assert last["projected"] == pytest.approx(last["spent"] + 720 * PRICE / 3600 + _later(ctx), abs=2e-3)
