"""One fresh run, from the journal's intent to the receipt, as one linear coroutine; every phase is entered through
`RunContext.phase` (journalled, shown, timed, bounded) and every failure ends in `finish`, which destroys.

    plan (plan.py) → journal intent → boot: create the exact offer, failing over (rent.py; the watchdog starts
    with the container where the provider runs a boot script, boot.py) → setup: connect, adopt or arm the
    watchdog (watchdog.py), ship the gpurun bundle, bootstrap the locked stack and the base model (machine.py)
    → upload: the dataset → training: launch the runner detached, follow events and pull checkpoints
    (follow.py) → fetch: every LoRA and grid, verified → finish: teardown, confirmed (teardown.py), receipt

Detaching (Ctrl-C once, or --detach) leaves the machine to the watchdog, which keeps it at most --artifact-grace
minutes after training ends for `gpurun attach` (control.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpurun.errors import GpurunError, RemoteError
from gpurun.job import boot, machine, watchdog
from gpurun.job.context import RunContext
from gpurun.job.deadline import deadline_from_budget
from gpurun.job.finish import finish
from gpurun.job.follow import follow, start_leases
from gpurun.job.offers import disk_needed_gb
from gpurun.job.options import Detached, JobOptions
from gpurun.job.payload import Payload
from gpurun.job.plan import TrainPlan, deadline_seconds
from gpurun.job.receipt import Receipt
from gpurun.job.record import RunRecord
from gpurun.job.rent import RentPolicy, rent
from gpurun.job.sampling import SamplePlan
from gpurun.job.view import View
from gpurun.journal import Journal
from gpurun.models import CostEstimate, LaunchSpec
from gpurun.phases import BOOT, SETUP, TRAINING, UPLOAD
from gpurun.provision.base import Provider, run_label
from gpurun.provision.images import image_cuda
from gpurun.provision.registry import make_provider
from gpurun.remote.bootstrap import BootstrapLine, run_bootstrap
from gpurun.remote.keys import RunKeys, ensure_run_keys
from gpurun.remote.local_transport import LocalTransport
from gpurun.remote.session import connect
from gpurun.remote.transport import Transport

#: what `run` executes: a training run, or a sampling job on the same kind of rented machine
RunnablePlan = TrainPlan | SamplePlan


def new_context(plan: RunnablePlan, view: View, journal: Journal, options: JobOptions) -> RunContext:
    """A fresh run's context: a new run id, its record as planned."""
    run_id = journal.new_run_id()
    request = plan.request
    record = RunRecord(
        run_id=run_id, output_dir=(request.output / run_id).resolve(), estimate=plan.chosen, budget=request.budget,
        artifact_grace_s=request.artifact_grace_min * 60, keep_on_failure_min=request.keep_on_failure_min,
    )  # fmt: skip
    record.training.resolution = plan.workload.resolution
    return RunContext(record, view, journal, options)


async def run(
    plan: RunnablePlan,
    view: View,
    journal: Journal,
    options: JobOptions,
    on_start: Callable[[RunContext], None] | None = None,
) -> Receipt:
    """Execute the plan. Returns the receipt; raises the run's error after tearing everything down. `on_start`
    sees the run's context before anything happens (the CLI wires Ctrl-C to it)."""
    ctx = new_context(plan, view, journal, options)
    if on_start is not None:
        on_start(ctx)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    payload = plan.payload()
    payload.prepare(ctx.out_dir)
    keys = ensure_run_keys(ctx.run_id)
    ctx.record.identity_file = str(keys.private_key)
    chosen = plan.chosen.offer
    described = plan.to_dict()
    journal.record_intent(
        ctx.run_id, provider=chosen.provider, offer_id=chosen.offer_id, gpu=chosen.gpu.name,
        quoted_price=chosen.price_per_hour, budget=plan.request.budget, workload=described["workload"],
        estimate=described["chosen"], output_dir=ctx.out_dir, config_toml=payload.config_text(),
        label=run_label(ctx.run_id),
    )  # fmt: skip
    ctx.save()
    view.message(f"run {ctx.run_id}: outputs in {ctx.out_dir}")
    providers = {e.offer.provider: make_provider(e.offer.provider) for e in plan.candidates}
    outcome, error = "failed", None
    try:
        await _boot(ctx, plan, providers, keys)
        await _on_machine(ctx, plan, payload, keys)
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


async def _boot(ctx: RunContext, plan: RunnablePlan, providers: dict[str, Provider], keys: RunKeys) -> None:
    """Rent the first candidate that comes up; the record learns what was rented."""
    base_spec = LaunchSpec(
        image="", disk_gb=disk_needed_gb(plan.workload), label=run_label(ctx.run_id),
        ssh_public_key=keys.public_key_text(), env={"GPURUN_RUN_ID": ctx.run_id},
    )  # fmt: skip
    async with ctx.phase(BOOT, plan.chosen.offer.key):
        rented = await rent(
            plan.candidates, providers,
            lambda choice: launch_spec(ctx, plan, base_spec, choice, providers[choice.offer.provider]),
            ctx.journal, ctx.run_id,
            policy=RentPolicy(max_attempts=plan.request.max_attempts, ready_timeout_s=ctx.options.ready_timeout_s,
                              poll_s=ctx.options.poll_s),
            notify=ctx.view.message,
        )  # fmt: skip
    ctx.instance, ctx.provider = rented.instance, rented.provider
    rented.apply_to(ctx.record)
    ctx.save()


async def _on_machine(ctx: RunContext, plan: RunnablePlan, payload: Payload, keys: RunKeys) -> None:
    """Everything between "the machine is up" and "the outputs are here"."""
    assert ctx.instance is not None
    async with ctx.phase(SETUP, "connecting"):
        ctx.transport = await _connect(ctx, keys)
        ctx.layout = await machine.make_layout(ctx.transport, ctx.run_id, ctx.instance.workdir)
        ctx.record.layout = ctx.layout
        ctx.save()
        await _arm(ctx)
        start_leases(ctx)
        ctx.note(SETUP.name, "the gpurun bundle, the locked environment, a smoke check, the base model")
        await machine.ship_bundle(ctx.transport, ctx.layout)
        model_path = await _bootstrap(ctx, plan)

    async with ctx.phase(UPLOAD, payload.upload_detail()):
        await payload.ship(ctx)

    async with ctx.phase(TRAINING, "runner launched"):
        await payload.launch(ctx, model_path)
        ctx.launched = True
        ctx.view.message(
            f"Ctrl-C once detaches (training goes on; `gpurun attach {ctx.run_id}` resumes); "
            "Ctrl-C twice cancels, fetches what exists and destroys the machine"
        )
        if ctx.options.detach:
            raise Detached()
        await follow(ctx, offset=0)


async def _connect(ctx: RunContext, keys: RunKeys) -> Transport:
    assert ctx.instance is not None
    endpoint = ctx.instance.ssh
    if endpoint is None:
        ctx.record.ssh = None
        workdir = ctx.instance.workdir
        return LocalTransport(Path(workdir) if workdir else Path.home())
    identity = endpoint.identity_file or str(keys.private_key)
    ctx.record.ssh, ctx.record.identity_file = endpoint, identity
    try:
        return await connect(
            endpoint, Path(identity), keys.known_hosts, deadline=time.monotonic() + ctx.options.connect_timeout_s
        )
    except GpurunError as exc:
        raise type(exc)(
            f"cannot reach the machine over SSH: {exc.message}", where=str(endpoint), hint=exc.hint
        ) from None


def launch_spec(
    ctx: RunContext, plan: RunnablePlan, spec: LaunchSpec, choice: CostEstimate, provider: Provider
) -> LaunchSpec:
    """The launch spec for one candidate: its image (and the CUDA that needs), its price cap or bid, and where
    the provider can run a boot script, the watchdog armed at container start with this offer's deadline."""
    offer = choice.offer
    image = (plan.request.image or provider.default_image or "") if provider.default_image else ""
    spec = dataclasses.replace(
        spec, image=image, min_cuda=image_cuda(image) if image else None, price_cap=offer.price_per_hour,
        bid_price=offer.min_bid if offer.spot else None,
    )  # fmt: skip
    if not provider.runs_boot_script:
        return spec
    options: dict[str, Any] = {"artifact_grace_s": ctx.record.artifact_grace_s, "poll_s": ctx.options.watchdog_poll_s}
    if not ctx.options.watchdog_fallback:
        options["fallback_command"] = None
    config = boot.boot_config(
        ctx.run_id, provider.self_destroy(None), boot_lease_s=ctx.options.boot_lease_s,
        deadline_in_s=deadline_seconds(ctx.record.budget, offer.price_per_hour), **options,
    )  # fmt: skip
    env = {**spec.env, **boot.boot_env(config)}
    return dataclasses.replace(spec, env=env, boot_script=boot.boot_script(ctx.run_id))


async def _arm(ctx: RunContext) -> None:
    """Adopt the dead-man switch the container started with (or arm it now, where nothing ran at boot)."""
    assert ctx.transport is not None and ctx.layout is not None and ctx.provider is not None
    assert ctx.instance is not None
    record = ctx.record
    deadline = None
    if record.budget is not None and record.price_per_hour > 0:
        now = await machine.remote_clock(ctx.transport)
        deadline = deadline_from_budget(record.budget, ctx.money().spent, record.price_per_hour, now,
                                        safety_margin=120.0)  # fmt: skip
    record.deadline = deadline
    ctx.save()
    armed = await watchdog.arm_watchdog(
        ctx.transport, ctx.layout, ctx.run_id, ctx.provider.self_destroy(ctx.instance), deadline=deadline,
        lease_ttl_s=ctx.options.lease_ttl_s, artifact_grace_s=record.artifact_grace_s,
        poll_s=ctx.options.watchdog_poll_s, fallback=ctx.options.watchdog_fallback,
    )  # fmt: skip
    when = "no deadline (free machine)" if deadline is None else f"hard deadline in {deadline - time.time():.0f} s"
    if armed.adopted:
        ctx.view.message(f"watchdog adopted (armed when the container started; {when})")
    elif record.boot_armed:
        ctx.view.message(f"the watchdog armed at container start was not running; armed it now ({when})")
    else:
        ctx.view.message(f"watchdog armed ({when}): it ends the machine if this client goes away")
    credential = armed.credential.get("status")
    if credential not in (None, "ok", "n/a"):
        ctx.view.message(
            f"WARNING: the provider did not accept the instance's own key ({credential}): if this client "
            "goes away the watchdog may not be able to destroy the machine; keep gpurun running until it ends"
        )


def _bootstrap_progress(ctx: RunContext, line: BootstrapLine) -> None:
    """One bootstrap.sh progress line, as a person reads it."""
    fields = line.fields
    if line.phase == "model" and line.status == "progress":
        done, total = int(fields.get("bytes") or 0), fields.get("total") or ""
        size = f"{done / 1e9:.2f} of {int(total) / 1e9:.2f} GB" if total.isdigit() else f"{done / 1e9:.2f} GB"
        ctx.view.phase(SETUP.name, f"base model: {size}")
    elif line.phase == "env":
        ctx.view.phase(SETUP.name, f"environment {line.status}: {fields.get('stack', '')}".strip())
    elif line.phase == "smoke" and line.status == "ok":
        ctx.view.phase(SETUP.name, f"smoke check passed in {fields.get('seconds', '?')} s")
    else:
        ctx.view.phase(SETUP.name, f"{line.phase}: {line.status}")


async def _bootstrap(ctx: RunContext, plan: RunnablePlan) -> str:
    """The locked stack, the smoke check and the base model on the machine; returns the model's path there."""
    assert ctx.transport is not None and ctx.layout is not None
    base = plan.base
    env = machine.local_python_env() if ctx.record.ssh is None else machine.bootstrap_env()
    if base.gated and os.environ.get("HF_TOKEN"):
        env["HF_TOKEN"] = os.environ["HF_TOKEN"]  # a gated model downloads only with the user's token
    model = None if base.kind == "local" else machine.model_spec(base)
    result = await run_bootstrap(
        ctx.transport, home=ctx.layout.home, bundle=machine.bundle_dir(ctx.layout), model=model,
        model_files=base.files, env=env, on_line=lambda line: _bootstrap_progress(ctx, line),
    )  # fmt: skip
    ctx.layout = dataclasses.replace(ctx.layout, python=result.python or "python3", pythonpath=result.pythonpath)
    ctx.record.layout = ctx.layout
    ctx.save()
    if base.kind == "local":
        return await machine.upload_base_model(ctx.transport, ctx.layout, base)
    if base.kind == "builtin":
        return base.ref
    return result.model_path or base.ref
