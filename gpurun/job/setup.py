"""Getting a rented machine ready for jobs, step by step: rent the first candidate that comes up (its watchdog
started with the container where the provider runs a boot script), connect, adopt or arm the watchdog, and bootstrap
the locked stack and a base model. A one-shot run (run.py), a queue on one machine (queue.py) and a run continued on a
new machine all take these same steps."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from gpurun.errors import GpurunError
from gpurun.job import boot, machine, watchdog
from gpurun.job.bases import BaseSpec
from gpurun.job.context import RunContext
from gpurun.job.deadline import deadline_from_budget
from gpurun.job.follow import start_leases
from gpurun.job.offers import disk_needed_gb
from gpurun.job.plan import OfferChoice, deadline_seconds
from gpurun.job.rent import RentPolicy, rent
from gpurun.models import CostEstimate, LaunchSpec, Workload
from gpurun.phases import BOOT, SETUP
from gpurun.provision.base import Provider, run_label
from gpurun.provision.images import image_cuda
from gpurun.remote.bootstrap import BootstrapLine, run_bootstrap
from gpurun.remote.keys import RunKeys
from gpurun.remote.local_transport import LocalTransport
from gpurun.remote.session import connect
from gpurun.remote.transport import Transport


async def boot_machine(
    ctx: RunContext, plan: OfferChoice, workload: Workload, providers: dict[str, Provider], keys: RunKeys
) -> None:
    """Rent the first of `plan`'s candidates that comes up (with the disk `workload` needs); the record learns
    what was rented."""
    base_spec = LaunchSpec(
        image="", disk_gb=disk_needed_gb(workload), label=run_label(ctx.run_id),
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


async def prepare_machine(ctx: RunContext, keys: RunKeys, base: BaseSpec) -> str:
    """The setup phase on a machine that is up: connect, lay out the run folder, adopt or arm the watchdog, keep
    its lease, ship the bundle, bootstrap the stack and `base`. Returns the base model's path on the machine."""
    assert ctx.instance is not None
    async with ctx.phase(SETUP, "connecting"):
        ctx.transport = await connect_machine(ctx, keys)
        ctx.layout = await machine.make_layout(ctx.transport, ctx.run_id, ctx.instance.workdir)
        ctx.record.layout = ctx.layout
        ctx.save()
        await arm_watchdog(ctx)
        start_leases(ctx)
        ctx.note(SETUP.name, "the gpurun bundle, the locked environment, a smoke check, the base model")
        await machine.ship_bundle(ctx.transport, ctx.layout)
        return await bootstrap(ctx, base)


async def connect_machine(ctx: RunContext, keys: RunKeys) -> Transport:
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
    ctx: RunContext, plan: OfferChoice, spec: LaunchSpec, choice: CostEstimate, provider: Provider
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
        deadline_in_s=deadline_seconds(_budget_left(ctx), offer.price_per_hour), **options,
    )  # fmt: skip
    env = {**spec.env, **boot.boot_env(config)}
    return dataclasses.replace(spec, env=env, boot_script=boot.boot_script(ctx.run_id))


def _budget_left(ctx: RunContext) -> float | None:
    """The budget a new machine may spend: what the run's earlier machines cost is gone (a continued run)."""
    budget = ctx.record.budget
    return None if budget is None else max(0.0, budget - ctx.record.earlier_usd())


async def arm_watchdog(ctx: RunContext) -> None:
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


def bootstrap_progress(ctx: RunContext, line: BootstrapLine) -> None:
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


async def bootstrap(ctx: RunContext, base: BaseSpec) -> str:
    """The locked stack, the smoke check and the base model on the machine; returns the model's path there."""
    assert ctx.transport is not None and ctx.layout is not None
    env = machine.local_python_env() if ctx.record.ssh is None else machine.bootstrap_env()
    if base.gated and os.environ.get("HF_TOKEN"):
        env["HF_TOKEN"] = os.environ["HF_TOKEN"]  # a gated model downloads only with the user's token
    model = None if base.kind == "local" else machine.model_spec(base)
    result = await run_bootstrap(
        ctx.transport, home=ctx.layout.home, bundle=machine.bundle_dir(ctx.layout), model=model,
        model_files=base.files, env=env, on_line=lambda line: bootstrap_progress(ctx, line),
    )  # fmt: skip
    ctx.layout = dataclasses.replace(ctx.layout, python=result.python or "python3", pythonpath=result.pythonpath)
    ctx.record.layout = ctx.layout
    ctx.save()
    if base.kind == "local":
        return await machine.upload_base_model(ctx.transport, ctx.layout, base)
    if base.kind == "builtin":
        return base.ref
    return result.model_path or base.ref


async def point_watchdog(ctx: RunContext, runner_pid_file: str) -> None:
    """Have the machine's watchdog watch another runner (the next job of a queue, `runner_pid_file` relative to
    the machine's run folder), with the same deadline, lease and grace: while the job trains, a client that goes
    away leaves the job to finish before the machine is destroyed, as for a single run."""
    assert ctx.transport is not None and ctx.layout is not None and ctx.provider is not None
    await watchdog.arm_watchdog(
        ctx.transport, ctx.layout, ctx.run_id, ctx.provider.self_destroy(ctx.instance), deadline=ctx.record.deadline,
        lease_ttl_s=ctx.options.lease_ttl_s, artifact_grace_s=ctx.record.artifact_grace_s,
        poll_s=ctx.options.watchdog_poll_s, fallback=ctx.options.watchdog_fallback, runner_pid_file=runner_pid_file,
    )  # fmt: skip
