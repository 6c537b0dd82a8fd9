"""Taking up a run another process started: reconnect to its machine from the journal and run.json, then follow it
again (`gpurun attach`), stop it (`gpurun cancel`), or read the runner's stderr (`gpurun logs --stderr`)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gpurun.errors import GpurunError, JournalError
from gpurun.job import machine
from gpurun.job.context import RunContext
from gpurun.job.finish import finish
from gpurun.job.follow import fetch_everything, follow, start_leases, stop_runner
from gpurun.job.options import Detached, JobOptions
from gpurun.job.receipt import Receipt
from gpurun.job.record import RunRecord
from gpurun.job.view import View
from gpurun.journal import Journal
from gpurun.models import SshEndpoint
from gpurun.phases import TRAINING
from gpurun.provision.registry import make_provider
from gpurun.remote.keys import ensure_run_keys
from gpurun.remote.local_transport import LocalTransport
from gpurun.remote.session import connect
from gpurun.remote.transport import Transport


async def open_transport(
    run_id: str, ssh: SshEndpoint | None, identity_file: str | None, workdir: str | None, connect_timeout_s: float
) -> Transport:
    """The transport to a run's machine: SSH with the run's key and pinned host key, or this machine."""
    if ssh is None:
        return LocalTransport(Path(workdir) if workdir else Path.home())
    keys = ensure_run_keys(run_id)
    identity = Path(identity_file or keys.private_key)
    return await connect(ssh, identity, keys.known_hosts, deadline=time.monotonic() + connect_timeout_s)


async def reopen(run_id: str, view: View, journal: Journal, options: JobOptions) -> RunContext:
    """The run's machine, reconnected from the journal and run.json; JournalError if there is none."""
    entry = journal.get(run_id)
    record = RunRecord.load(entry.run_id)
    if record.instance_id is None or record.layout is None:
        raise JournalError(f"run {entry.run_id} never reached its machine", hint="nothing to attach to")
    if not entry.alive:
        raise JournalError(
            f"run {entry.run_id}'s machine is already destroyed ({entry.phase})",
            hint=f"its outputs are in {record.output_dir}",
        )
    ctx = RunContext(record, view, journal, options)
    ctx.provider = make_provider(record.provider)
    ctx.instance = await ctx.provider.get(record.instance_id)
    ctx.layout = record.layout
    ctx.transport = await open_transport(
        record.run_id, record.ssh, record.identity_file, record.workdir, options.connect_timeout_s
    )
    ctx.launched = True
    return ctx


async def attach(ctx: RunContext) -> Receipt:
    """Resume following where the journal stopped, fetch what is missing, destroy, receipt."""
    entry = ctx.journal.get(ctx.run_id)
    outcome, error = "failed", None
    try:
        start_leases(ctx)
        async with ctx.phase(TRAINING, "attached"):
            await follow(ctx, offset=entry.event_offset)
        outcome = "cancelled" if ctx.stopped_for == "cancel" else "done"
    except Detached:
        outcome = "detached"
    except GpurunError as exc:
        error = exc
        raise
    finally:
        await asyncio.shield(finish(ctx, outcome, error))
    assert ctx.receipt is not None
    return ctx.receipt


async def cancel(ctx: RunContext) -> Receipt:
    """Stop the runner (it saves a checkpoint), fetch what exists, destroy."""
    outcome, error = "cancelled", None
    try:
        assert ctx.transport is not None and ctx.layout is not None
        if await ctx.transport.is_running(ctx.layout.pid):
            await stop_runner(ctx, "cancel")
        await fetch_everything(ctx)
    except GpurunError as exc:
        outcome, error = "failed", exc
        raise
    finally:
        await asyncio.shield(finish(ctx, outcome, error))
    assert ctx.receipt is not None
    return ctx.receipt


async def runner_stderr(ctx: RunContext, lines: int = 200) -> list[str]:
    """The last lines the runner wrote to stderr on its machine."""
    assert ctx.transport is not None and ctx.layout is not None
    try:
        return await machine.stderr_tail(ctx.transport, ctx.layout, lines=lines)
    finally:
        await ctx.transport.close()
