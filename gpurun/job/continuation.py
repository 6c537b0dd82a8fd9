"""Continuing a training run on a new machine when its machine is gone: noticing that the provider took it (Vast
stops an outbid interruptible instance, RunPod exits an interrupted spot pod, a host fails), ending what is left,
renting the next offer under the budget that is left, and resuming from the last pulled state (statepull.py).

The same steps serve a run that loses its machine while this client follows it (`follow_surviving`) and `gpurun
resume RUN` for one whose machine went while nobody watched (resume.py). Each machine is one `MachineUse` in the
run's record; an interruption's lost minutes are the work since the last pulled state plus the new machine's setup
until training runs again, and they are priced on the receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable

from gpurun.errors import BudgetError, GpurunError, NotFoundError, ProviderError, RemoteError
from gpurun.job import machine, setup, statepull
from gpurun.job.context import RunContext
from gpurun.job.follow import follow
from gpurun.job.options import Detached
from gpurun.job.payload import TrainingPayload
from gpurun.job.plan import TrainPlan, TrainRequest, plan_train
from gpurun.job.record import RunRecord
from gpurun.job.teardown import teardown
from gpurun.models import CostEstimate, InstanceState
from gpurun.phases import TRAINING, UPLOAD
from gpurun.provision.base import Provider
from gpurun.provision.registry import make_provider
from gpurun.remote.keys import RunKeys

#: what the provider says of a machine it took: Vast "stopped"/"exited", RunPod EXITED, or gone
GONE_STATES = (InstanceState.STOPPED, InstanceState.EXITED, InstanceState.TERMINATED)
#: how many times one run may move to a new machine before gpurun gives up (each move is priced and journalled)
MAX_MOVES = 10


# ---- what is left to do, and what it may cost -------------------------------------------------------------------


def training_left(record: RunRecord) -> float:
    """The fraction of the training still to do from the last pulled state (1.0 without one)."""
    total = record.training.total_steps
    if record.state_step is None or total <= 0:
        return 1.0
    return min(1.0, max(0.0, 1.0 - record.state_step / total))


def budget_left(record: RunRecord) -> float | None:
    """The budget less what every machine of the run cost so far (None: no budget)."""
    if record.budget is None:
        return None
    spent = record.earlier_usd()
    if record.created_at is not None:
        spent += max(0.0, time.time() - record.created_at) * record.price_per_hour / 3600.0
    return record.budget - spent


def remaining_expected(estimate: CostEstimate, fraction: float) -> float:
    """The expected cost of finishing on this offer: every phase again (boot, setup, model, upload, caching,
    samples, fetch), but only `fraction` of the training."""
    training = sum(p.dollars for p in estimate.phases if p.name == "training")
    ratio = estimate.expected_dollars / estimate.dollars if estimate.dollars > 0 else 1.0
    return max(0.0, estimate.dollars - training * (1.0 - fraction)) * ratio


def continuation_offers(
    left: float | None, fraction: float
) -> Callable[[list[CostEstimate], TrainRequest], list[CostEstimate]]:
    """plan_train's choice for a continued run: the offers whose cost to finish fits the budget that is left,
    cheapest to finish first."""

    def choose(pool: list[CostEstimate], request: TrainRequest) -> list[CostEstimate]:
        ranked = sorted(pool, key=lambda e: remaining_expected(e, fraction))
        if left is None:
            affordable = [e for e in ranked if e.offer.price_per_hour <= 0]
        else:
            affordable = [e for e in ranked if remaining_expected(e, fraction) <= left + 1e-9]
        if affordable:
            return affordable
        if not ranked:
            raise BudgetError("no offer can run this job now", where="offers",
                              hint="relax the --gpu/--provider filters, or try again later")  # fmt: skip
        cheapest = ranked[0]
        have = "no budget" if left is None else f"${max(0.0, left):.2f} of the budget left"
        raise BudgetError(
            f"finishing the run ({fraction:.0%} of the training left) is expected to cost "
            f"${remaining_expected(cheapest, fraction):.2f} on the cheapest offer ({cheapest.offer.key}); {have}",
            where="--budget",
            hint="raise the run's total budget with `gpurun resume RUN --budget DOLLARS`",
        )

    return choose


async def replan(request: TrainRequest, record: RunRecord) -> TrainPlan:
    """Offers ranked again for the rest of the run, under the budget left (an offer rented before is gone from
    the market; a pinned --offer no longer binds)."""
    request = dataclasses.replace(request, offer=None)
    return await plan_train(request, afford=continuation_offers(budget_left(record), training_left(record)))


# ---- noticing that the machine is gone ---------------------------------------------------------------------------


async def machine_is_gone(ctx: RunContext) -> bool:
    """Whether the provider says it no longer runs the run's machine. An answer it cannot give is not "gone"."""
    if ctx.provider is None or ctx.instance is None or not ctx.provider.rents_machines:
        return False
    try:
        instance = await ctx.provider.get(ctx.instance.instance_id)
    except NotFoundError:
        return True
    except ProviderError:
        return False
    return instance.state in GONE_STATES


async def watch_machine(ctx: RunContext) -> None:
    """Return once the provider says the machine is gone (asked every `machine_check_s`)."""
    while True:
        await asyncio.sleep(ctx.options.machine_check_s)
        if await machine_is_gone(ctx):
            return


async def follow_surviving(
    ctx: RunContext, plan: TrainPlan, payload: TrainingPayload, keys: RunKeys, providers: dict[str, Provider]
) -> None:
    """Follow the runner to its end; whenever the provider takes the machine, continue on a new one."""
    for _ in range(MAX_MOVES + 1):
        following = asyncio.ensure_future(follow(ctx, offset=0))
        watching = asyncio.ensure_future(watch_machine(ctx))
        try:
            await asyncio.wait({following, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            if not following.done():
                following.cancel()
            with contextlib.suppress(asyncio.CancelledError, GpurunError, Detached):
                await watching
        if following.done() and not following.cancelled():
            error = following.exception()
            if error is None:
                return
            # the follower fails when the machine vanishes under it (SSH gone, the runner killed): ask the provider
            if isinstance(error, (Detached, BudgetError)) or not await machine_is_gone(ctx):
                raise error
        else:
            with contextlib.suppress(asyncio.CancelledError, GpurunError, Detached):
                await following
        ctx.view.message(f"the provider took machine {ctx.instance.instance_id if ctx.instance else '?'} "
                         f"({ctx.record.provider}): continuing on another")  # fmt: skip
        await end_lost_machine(ctx, "preempted")
        await move_to_new_machine(ctx, plan.request, payload, keys, providers)
    raise RemoteError(f"the run lost its machine {MAX_MOVES + 1} times; it stops here",
                      where=ctx.run_id, hint=f"`gpurun resume {ctx.run_id}` continues it later")  # fmt: skip


# ---- ending the lost machine, renting the next ---------------------------------------------------------------


async def end_lost_machine(ctx: RunContext, why: str) -> None:
    """Destroy what is left of the machine (a stopped instance still bills its disk) and close its record."""
    if ctx.lease_task is not None:
        ctx.lease_task.cancel()
        ctx.lease_task = None
    pending, ctx.fetches = ctx.fetches, []
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    ctx.state_due = False
    if ctx.transport is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ctx.transport.close(), 5.0)
        ctx.transport = None  # teardown must not wait on a box that is gone
    if ctx.instance is not None and ctx.provider is not None:
        await teardown(ctx)
    record = ctx.record
    now = time.time()
    for use in record.machines:
        if use.instance_id == record.instance_id and not use.ended:
            use.ended_at, use.ended = now, why
    record.instance_id, record.created_at, record.layout, record.deadline = None, None, None, None
    ctx.instance, ctx.layout, ctx.launched, ctx.last_step = None, None, False, None
    ctx.save()


async def move_to_new_machine(
    ctx: RunContext,
    request: TrainRequest,
    payload: TrainingPayload,
    keys: RunKeys,
    providers: dict[str, Provider],
    fresh: TrainPlan | None = None,
) -> None:
    """Rent the best offer for the rest of the run under the budget left (`fresh`, or ranked now), set it up,
    send the dataset and the last pulled state, and launch the runner with --resume (from the start when no state
    was pulled)."""
    fresh = fresh or await replan(request, ctx.record)
    for estimate in fresh.candidates:
        if estimate.offer.provider not in providers:
            providers[estimate.offer.provider] = make_provider(estimate.offer.provider)
    chosen = fresh.chosen.offer
    # intent before create: the new machine is the run's next attempt in the journal
    ctx.journal.record_failover(ctx.run_id, provider=chosen.provider, offer_id=chosen.offer_id,
                                gpu=chosen.gpu.name, quoted_price=chosen.price_per_hour)  # fmt: skip
    ctx.view.message(f"renting {chosen.key} ({chosen.gpu.name}, ${chosen.price_per_hour:.3f}/h) to continue")
    await setup.boot_machine(ctx, fresh, fresh.workload, providers, keys)
    await resume_on_machine(ctx, fresh, payload, keys)


async def resume_on_machine(ctx: RunContext, plan: TrainPlan, payload: TrainingPayload, keys: RunKeys) -> None:
    """On a machine that is up: setup, the dataset and the state up, the runner launched with --resume."""
    model_path = await setup.prepare_machine(ctx, keys, plan.base)
    resume = ctx.record.state_step is not None
    async with ctx.phase(UPLOAD, payload.upload_detail() + (", the training state" if resume else "")):
        await payload.ship(ctx)
        if resume:
            await statepull.push_state(ctx)
    assert ctx.transport is not None and ctx.layout is not None
    async with ctx.phase(TRAINING, f"runner relaunched from step {ctx.record.state_step or 0}"):
        await machine.launch_runner(ctx.transport, ctx.layout, machine.job_config(payload.config, model_path),
                                    resume=resume)  # fmt: skip
        ctx.launched = True
    price_lost(ctx.record, time.time())
    ctx.save()
    if ctx.options.detach:
        raise Detached()


def price_lost(record: RunRecord, resumed_at: float) -> None:
    """The interruption before the current machine: the time since the last pulled state (on the lost machine)
    and the new machine's time until training ran again, and what both cost."""
    if len(record.machines) < 2:
        return
    lost, current = record.machines[-2], record.machines[-1]
    since = record.state_at if record.state_at is not None and record.state_at >= lost.created_at else None
    old_s = max(0.0, (lost.ended_at or resumed_at) - (since or lost.created_at))
    new_s = max(0.0, resumed_at - current.created_at)
    lost.lost_s = old_s + new_s
    lost.lost_usd = (old_s * lost.price_per_hour + new_s * current.price_per_hour) / 3600.0
