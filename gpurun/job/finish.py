"""The end of every run, however it ends: destroy the machine (or keep it for debugging, or leave it to the
watchdog when the user detached), record the measured speed and the cost, write the receipt, close the run."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

from gpurun.errors import GpurunError
from gpurun.job.context import RunContext
from gpurun.job.receipt import build_receipt
from gpurun.job.record import MachineUse
from gpurun.job.teardown import keep_for_debugging, teardown
from gpurun.report import write_report


async def finish(ctx: RunContext, outcome: str, error: GpurunError | None, *, report: bool = True) -> None:
    """Terminate (unless detached, or the machine belongs to a queue: `ctx.machine`), record everything, write the
    receipt (and report.html when `report`). `outcome`: done | failed | cancelled | detached."""
    if ctx.lease_task is not None:
        ctx.lease_task.cancel()
    for task in ctx.fetches:
        task.cancel()
    record = ctx.record
    destroyed = False
    if outcome == "detached":
        ctx.journal.phase(ctx.run_id, "detached", "the watchdog keeps the machine honest")
        ctx.view.message(
            f"detached: training goes on. `gpurun attach {ctx.run_id}` follows it and fetches "
            f"the result; `gpurun cancel {ctx.run_id}` stops it and destroys the machine"
        )
    elif ctx.machine is not None:
        pass  # one job of a queue: the machine goes on to the next job, and its own run destroys it
    elif ctx.instance is not None and ctx.provider is not None:
        keep = record.keep_on_failure_min
        if outcome == "failed" and keep > 0 and ctx.transport is not None and ctx.layout is not None:
            await keep_for_debugging(ctx, keep)
        else:
            destroyed = await teardown(ctx)
    billed = 0.0 if record.created_at is None or outcome == "detached" else time.time() - record.created_at
    now = time.time()
    for use in record.machines:  # the current machine's life ends here (unless the watchdog keeps it)
        if use.instance_id == record.instance_id and not use.ended and outcome != "detached":
            use.ended_at, use.ended = now, outcome
    if record.samples_per_s and outcome == "done":
        ctx.journal.record_throughput(
            ctx.run_id, gpu=record.estimate.offer.gpu.name, family=record.training.family,
            resolution=record.training.resolution, batch_size=record.training.batch_size or 1,
            samples_per_s=record.samples_per_s,
        )  # fmt: skip
    ctx.receipt = build_receipt(
        run_id=ctx.run_id, estimate=record.estimate, billed_per_hour=record.price_per_hour,
        actual_seconds=dict(record.timings), billed_seconds=billed, budget=record.budget, outcome=outcome,
        destroyed=destroyed, artifacts=[{"path": p, "sha256": s} for p, s in sorted(record.fetched.items())],
        earlier_usd=record.earlier_usd(), machines=[_machine_line(m, now) for m in record.machines],
    )  # fmt: skip
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    ctx.receipt.write(ctx.out_dir / "receipt.json")
    if outcome != "detached" and report:
        _write_report(ctx)
    if outcome != "detached":
        # a resumed run's earlier finishes recorded their part already: the journal adds up what is new
        already = ctx.journal.get(ctx.run_id).spent
        ctx.journal.record_cost(ctx.run_id, "total", billed, max(0.0, ctx.receipt.actual_total_usd - already))
    ctx.save()
    if outcome == "done":
        ctx.journal.mark_finished(ctx.run_id, "done")
    elif outcome in ("failed", "cancelled"):
        ctx.journal.mark_finished(ctx.run_id, outcome, None if error is None else error.one_line())
    if ctx.machine is not None:
        return
    if ctx.transport is not None:
        with contextlib.suppress(Exception):
            await ctx.transport.close()
    if ctx.provider is not None:
        with contextlib.suppress(Exception):
            await ctx.provider.aclose()


def _machine_line(use: MachineUse, now: float) -> dict[str, Any]:
    """One machine on the receipt."""
    minutes = max(0.0, (use.ended_at or now) - use.created_at) / 60.0
    return {**dataclasses.asdict(use), "minutes": round(minutes, 3), "usd": use.billed_usd(now)}


def _write_report(ctx: RunContext) -> None:
    """report.html next to the files. A report that cannot be written is a warning: the run itself is over and
    its files are safe, and `gpurun report RUN` can try again."""
    try:
        path = write_report(ctx.out_dir)
    except Exception as exc:  # the report must never turn a finished run into a failed one
        ctx.view.message(f"WARNING: the run report could not be written ({type(exc).__name__}: {exc})")
        return
    ctx.view.message(f"report: {path}")
