"""Following a run's runner: stream its events into the view and events.jsonl, pull each checkpoint (and the
resumable state saved with it, statepull.py) as it appears, keep the watchdog's lease fresh, honour the user's stop
requests and the budget; then fetch everything.

What the machine reports (file names, sizes, hashes) is checked by `gpurun.job.untrusted` before anything is
written, and only ever inside the run's folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from gpurun.errors import BudgetError, GpurunError, RunnerError
from gpurun.events import Checkpoint, Done, ErrorEvent, Event, Sample, Start, Step
from gpurun.job import machine, statepull, untrusted, watchdog
from gpurun.job.context import RunContext
from gpurun.job.options import Detached
from gpurun.phases import FETCH
from gpurun.remote.follow import EventFollower, follow_events
from gpurun.remote.sync import fetch_verified
from gpurun.remote.transport import Transport

# ---- the lease ----------------------------------------------------------------------------------------------------


def start_leases(ctx: RunContext) -> None:
    """Renew the watchdog's lease every `lease_interval_s` while this client follows the run."""
    ctx.lease_task = asyncio.create_task(_renew_leases(ctx))


async def _renew_leases(ctx: RunContext) -> None:
    seq = int(time.time())
    while True:
        await asyncio.sleep(ctx.options.lease_interval_s)
        seq += 1
        try:
            assert ctx.transport is not None and ctx.layout is not None
            await watchdog.renew_lease(ctx.transport, ctx.layout, ctx.run_id, seq)
        except GpurunError:
            continue  # the follower reconnects; the next renewal goes over the new connection


# ---- following --------------------------------------------------------------------------------------------------


async def reconnect(ctx: RunContext) -> Transport:
    assert ctx.transport is not None
    ctx.transport = await ctx.transport.reconnect(deadline=time.monotonic() + ctx.options.connect_timeout_s)
    if ctx.machine is not None:
        ctx.machine.transport = ctx.transport  # the machine's lease renewals go over the new connection too
    return ctx.transport


async def follow(ctx: RunContext, offset: int) -> None:
    """Stream events from `offset` until the runner ends, then fetch everything it wrote. Raises Detached when the
    user detaches, BudgetError when the budget stopped it, RunnerError when it failed."""
    assert ctx.transport is not None and ctx.layout is not None
    layout = ctx.layout

    def events_from(start: int) -> EventFollower:
        assert ctx.transport is not None
        return follow_events(
            ctx.transport, layout.events, layout.pid, offset=start, reconnect=lambda: reconnect(ctx), python="python3"
        )

    follower = events_from(offset)
    terminal: Event | None = None
    budget_task = asyncio.create_task(_budget_guard(ctx))
    stop_wait = asyncio.create_task(ctx.stop_request.wait())
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    with (ctx.out_dir / "events.jsonl").open("a", encoding="utf-8") as log:
        try:
            iterator = follower.__aiter__()
            while True:
                item_task = asyncio.ensure_future(anext(iterator))
                done, _ = await asyncio.wait({item_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if item_task not in done:
                    item_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, GpurunError):
                        await item_task
                    if not ctx.cancel_request.is_set():
                        raise Detached()
                    await stop_runner(ctx, "cancel")
                    stop_wait = asyncio.create_task(asyncio.Event().wait())  # drain to the runner's end
                    follower = events_from(follower.offset)
                    iterator = follower.__aiter__()
                    continue
                try:
                    item = item_task.result()
                except StopAsyncIteration:
                    break
                log.write(item.line + "\n")
                log.flush()
                ctx.journal.record_event_offset(ctx.run_id, item.offset)
                on_event(ctx, item.event)
                if isinstance(item.event, (Done, ErrorEvent)):
                    terminal = item.event
        finally:
            budget_task.cancel()
            stop_wait.cancel()
    if ctx.state_due:  # the runner ended right after a checkpoint: its state is saved by now
        ctx.state_due = False
        statepull.schedule_pull(ctx)
    await drain_fetches(ctx)
    await fetch_everything(ctx)
    if ctx.stopped_for == "budget":
        raise BudgetError(
            "the budget ran out before training finished; the last checkpoint was fetched",
            where=str(ctx.out_dir),
            hint="raise --budget, or train fewer epochs",
        )
    if ctx.stopped_for == "cancel":
        return
    if isinstance(terminal, ErrorEvent):
        raise RunnerError(
            terminal.message,
            hint=terminal.hint or None,
            where="runner",
            last_lines=await machine.stderr_tail(ctx.transport, layout),
        )
    if terminal is None:
        lines = await machine.stderr_tail(ctx.transport, layout)
        raise RunnerError(
            f"the runner stopped without finishing (exit {follower.runner_exit})", where="runner",
            last_lines=lines, hint=("its last lines: " + " | ".join(lines[-3:])) if lines else None,
        )  # fmt: skip


def on_event(ctx: RunContext, event: Event) -> None:
    """Show one runner event and act on it: money on each step, facts on start, a fetch per file written."""
    ctx.view.event(event)
    record = ctx.record
    if ctx.state_due and not isinstance(event, (Checkpoint, Sample)):
        # the runner announces a checkpoint, then saves the state: any later event means that state is whole
        ctx.state_due = False
        statepull.schedule_pull(ctx)
    if isinstance(event, Step):
        ctx.last_step = event
        ctx.view.money(ctx.money())
    elif isinstance(event, Start):
        facts = record.training
        facts.device, facts.dtype, facts.family = event.device, event.dtype, event.family
        facts.batch_size, facts.total_steps = event.batch_size, event.total_steps
        ctx.journal.phase(ctx.run_id, "training", f"{event.device} {event.dtype}, {event.total_steps} steps")
    elif isinstance(event, (Checkpoint, Sample)) and event.path:
        ctx.fetches.append(asyncio.create_task(fetch(ctx, event.path, event.sha256, event.bytes)))
        if isinstance(event, Checkpoint):
            ctx.state_due = True
        if isinstance(event, Checkpoint) and event.final:
            record.final = event.path
    elif isinstance(event, Done):
        record.samples_per_s = event.samples_per_s
        if event.final:
            record.final = event.final


# ---- files ------------------------------------------------------------------------------------------------------


async def fetch(ctx: RunContext, rel_path: str, sha256: str, size: int) -> None:
    """Fetch one output file the machine reported. Its name, size and hash come from an untrusted host: they are
    checked first, and the file is written only inside this run's folder."""
    assert ctx.transport is not None and ctx.layout is not None
    where = ctx.transport.where
    name = untrusted.artifact_name(rel_path, where=where)
    digest = untrusted.sha256_hex(sha256, where=where)
    size = untrusted.artifact_size(size, where=where)
    if ctx.record.fetched.get(name) == digest:
        return
    local = untrusted.inside(ctx.out_dir, name)
    result = await fetch_verified(
        ctx.transport, ctx.layout.path("out", name), local, digest, size=size or None,
        max_bytes=untrusted.MAX_ARTIFACT_BYTES,
    )  # fmt: skip
    ctx.record.fetched[name] = digest
    ctx.journal.record_artifact(ctx.run_id, result.path, result.sha256, result.bytes)
    ctx.save()


async def drain_fetches(ctx: RunContext) -> None:
    pending, ctx.fetches = ctx.fetches, []
    results = await asyncio.gather(*pending, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    for failure in failures[1:]:
        ctx.view.message(f"fetch failed: {failure}")
    if failures:
        raise failures[0]


async def fetch_everything(ctx: RunContext) -> None:
    """Every LoRA and grid the runner wrote, verified against a checksum taken on the machine."""
    assert ctx.transport is not None and ctx.layout is not None
    async with ctx.phase(FETCH, "LoRA files and sample grids"):
        outputs = await machine.remote_outputs(ctx.transport, ctx.layout)
        for rel_path, (size, sha256) in sorted(outputs.items()):
            ctx.fetches.append(asyncio.create_task(fetch(ctx, rel_path, sha256, size)))
        await drain_fetches(ctx)


# ---- stopping ---------------------------------------------------------------------------------------------------


async def _budget_guard(ctx: RunContext) -> None:
    """Stop the runner shortly before the watchdog's hard deadline, so its last checkpoint reaches us."""
    if ctx.record.deadline is None:
        return
    await asyncio.sleep(max(0.0, ctx.record.deadline - ctx.options.client_deadline_margin_s - time.time()))
    ctx.view.message("the budget is nearly spent: stopping the runner (it saves a checkpoint first)")
    await stop_runner(ctx, "budget")


async def stop_runner(ctx: RunContext, why: str) -> None:
    """SIGTERM = "save a checkpoint and exit"; SIGKILL after the grace."""
    assert ctx.transport is not None and ctx.layout is not None
    ctx.stopped_for = why
    ctx.journal.phase(ctx.run_id, "training", f"stopping the runner: {why}")
    await ctx.transport.kill(ctx.layout.pid, grace_s=ctx.options.runner_stop_grace_s)
