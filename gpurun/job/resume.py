"""`gpurun resume RUN`: continue a training run whose machine is gone (taken while the laptop was away, a crashed
host, a deadline reached with budget left) on a new machine, from the last state pulled into its run folder. The
run keeps its id, its folder and its record, which gains the new machine; the offers are ranked again for what is
left of the training, under what is left of the budget (`--budget` raises the run's total).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace

from gpurun.errors import BudgetError, GpurunError, JournalError, NotFoundError, RemoteError, ResumeError
from gpurun.job import continuation, statepull
from gpurun.job.context import RunContext
from gpurun.job.finish import finish
from gpurun.job.offers import check_budget
from gpurun.job.options import Detached, JobOptions
from gpurun.job.plan import TrainPlan, TrainRequest
from gpurun.job.receipt import Receipt
from gpurun.job.record import RunRecord
from gpurun.job.view import View
from gpurun.journal import Journal
from gpurun.journal import RunRecord as RunSummary
from gpurun.models import Instance, InstanceState
from gpurun.provision.base import Provider
from gpurun.provision.registry import make_provider
from gpurun.remote.keys import ensure_run_keys


def why_not_resumable(summary: RunSummary, record: RunRecord | None) -> str | None:
    """Why the run cannot be continued on a new machine, from what is on this laptop; None when it can. (Whether
    its machine is really gone only its provider can say: `plan_resume` asks.)"""
    if summary.state == "done":
        return f"it is done: its LoRA is in {summary.output_dir}"
    if record is None:
        return "it never reached a machine"
    if not record.request:
        return "it is not a training run started by a gpurun that records how to plan it again"
    if record.state_step is None or not statepull.has_local_state(record.output_dir, record.state_files):
        return "no training state was pulled from it yet (the runner saves one with every checkpoint)"
    return None


def resumable(summary: RunSummary) -> tuple[bool, str | None]:
    """For `gpurun runs`: (can `gpurun resume` continue it, why not). A run whose machine the journal believes
    alive is not offered (`gpurun attach` follows it; `gpurun resume` asks the provider whether it is gone)."""
    try:
        record = RunRecord.load(summary.run_id)
    except JournalError:
        record = None
    why = why_not_resumable(summary, record)
    if why is None and summary.alive:
        why = "its machine may still be running: `gpurun attach` follows it"
    return why is None, why


@dataclass
class ResumePlan:
    """A run ready to continue: its record (with the budget it continues under) and the offers for the rest."""

    record: RunRecord
    plan: TrainPlan
    #: the run's last machine, where its provider still lists it (stopped, exited): destroyed first
    old: Instance | None
    #: the fraction of the training left, and the budget left
    training_left: float
    budget_left: float | None

    @property
    def expected_dollars(self) -> float:
        return continuation.remaining_expected(self.plan.chosen, self.training_left)


async def plan_resume(run_id: str, journal: Journal, *, budget: float | None = None) -> ResumePlan:
    """Every check before renting: the run exists, is not done, has a pulled state, its machine is gone (asked
    of its provider), the budget left buys the rest; then the offers for the rest. Raises what is wrong."""
    summary = journal.get(run_id)  # JournalError for an unknown run
    record: RunRecord | None = None
    with contextlib.suppress(JournalError):
        record = RunRecord.load(summary.run_id)
    why = why_not_resumable(summary, record)
    if why is not None or record is None:
        hint = None if summary.state == "done" else f"`gpurun runs` shows what happened to {summary.run_id}"
        raise ResumeError(f"run {summary.run_id} cannot be resumed: {why}", where=summary.run_id, hint=hint)
    check_budget(budget)
    if budget is not None:
        record.budget = budget
    old = await _old_machine(summary, record)
    left = continuation.budget_left(record)
    if left is not None and left <= 0:
        total = record.budget or 0.0
        raise BudgetError(
            f"run {record.run_id}'s budget of ${total:.2f} is spent (${total - left:.2f} so far)",
            where="--budget", hint=f"`gpurun resume {record.run_id} --budget DOLLARS` raises the run's total",
        )  # fmt: skip
    request = TrainRequest.from_dict(record.request)
    # the config the run was started with (settled, as its folder keeps it): the state only resumes that run
    request = replace(request, config=record.output_dir / "config.toml", budget=record.budget)
    plan = await continuation.replan(request, record)
    return ResumePlan(record, plan, old, continuation.training_left(record), left)


async def _old_machine(summary: RunSummary, record: RunRecord) -> Instance | None:
    """The run's last machine as its provider reports it, when the journal believes it alive: None when it is
    gone; ResumeError when it still runs (the run may be going on there)."""
    if not summary.alive or not record.instance_id:
        return None
    provider = make_provider(record.provider)
    try:
        instance = await provider.get(record.instance_id)
    except NotFoundError:
        return None
    finally:
        await provider.aclose()
    if instance.state is InstanceState.TERMINATED:
        return None
    if instance.state not in continuation.GONE_STATES:
        raise ResumeError(
            f"run {record.run_id}'s machine {record.provider}:{record.instance_id} is {instance.state.value}",
            where=record.run_id,
            hint=f"`gpurun attach {record.run_id}` follows it; `gpurun cancel {record.run_id}` ends it",
        )
    return instance


async def resume(
    ready: ResumePlan,
    view: View,
    journal: Journal,
    options: JobOptions,
    on_start: Callable[[RunContext], None] | None = None,
) -> Receipt:
    """Continue the run on the planned offers: destroy what is left of its last machine, rent, set up, send the
    dataset and the state, train from there to the end (surviving further losses), fetch, finish."""
    record, plan = ready.record, ready.plan
    ctx = RunContext(record, view, journal, options)
    if on_start is not None:
        on_start(ctx)
    journal.mark_resumed(record.run_id, record.budget)
    ctx.save()
    view.message(f"run {ctx.run_id}: continuing from step {record.state_step} in {ctx.out_dir}")
    keys = ensure_run_keys(ctx.run_id)
    payload = plan.payload()
    providers: dict[str, Provider] = {}
    outcome, error = "failed", None
    try:
        await _end_old_machine(ctx, ready.old, providers)
        await continuation.move_to_new_machine(ctx, plan.request, payload, keys, providers, fresh=plan)
        await continuation.follow_surviving(ctx, plan, payload, keys, providers)
        outcome = "cancelled" if ctx.stopped_for == "cancel" else "done"
    except Detached:
        outcome = "detached"
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    except GpurunError as exc:
        error = exc
        raise
    except Exception as exc:  # a bug must not leave a machine billing either
        error = RemoteError(f"unexpected {type(exc).__name__}: {exc}")
        raise
    finally:
        await asyncio.shield(finish(ctx, outcome, error))
        for provider in providers.values():
            if provider is not ctx.provider:
                await provider.aclose()
    assert ctx.receipt is not None
    return ctx.receipt


async def _end_old_machine(ctx: RunContext, old: Instance | None, providers: dict[str, Provider]) -> None:
    """The last machine: destroyed where its provider still lists it (a stopped instance bills its disk), and
    closed in the record either way."""
    record = ctx.record
    if old is not None:
        ctx.provider, ctx.instance = make_provider(record.provider), old
        providers[record.provider] = ctx.provider  # closed with the others
    await continuation.end_lost_machine(ctx, "lost")
