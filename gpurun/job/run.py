"""One fresh run, from the journal's intent to the receipt, as one linear coroutine; every phase is entered through
`RunContext.phase` (journalled, shown, timed, bounded) and every failure ends in `finish`, which destroys.

    plan (plan.py) → journal intent → boot: create the exact offer, failing over (rent.py; the watchdog starts
    with the container where the provider runs a boot script, boot.py) → setup: connect, adopt or arm the
    watchdog (watchdog.py), ship the gpurun bundle, bootstrap the locked stack and the base model (setup.py)
    → upload: the dataset → training: launch the runner detached, follow events and pull checkpoints
    (follow.py) → fetch: every LoRA and grid, verified → finish: teardown, confirmed (teardown.py), receipt

Detaching (Ctrl-C once, or --detach) leaves the machine to the watchdog, which keeps it at most --artifact-grace
minutes after training ends for `gpurun attach` (control.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gpurun.errors import GpurunError, RemoteError
from gpurun.job import continuation, setup
from gpurun.job.context import RunContext
from gpurun.job.finish import finish
from gpurun.job.follow import follow
from gpurun.job.options import Detached, JobOptions
from gpurun.job.payload import Payload, TrainingPayload
from gpurun.job.plan import TrainPlan
from gpurun.job.receipt import Receipt
from gpurun.job.record import RunRecord
from gpurun.job.sampling import SamplePlan
from gpurun.job.view import View
from gpurun.journal import Journal
from gpurun.phases import TRAINING, UPLOAD
from gpurun.provision.base import Provider, run_label
from gpurun.provision.registry import make_provider
from gpurun.remote.keys import RunKeys, ensure_run_keys

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
    if isinstance(plan, TrainPlan):
        record.request = plan.request.to_dict()  # what `gpurun resume` plans again from
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
        await setup.boot_machine(ctx, plan, plan.workload, providers, keys)
        await _on_machine(ctx, plan, payload, keys, providers)
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


async def _on_machine(
    ctx: RunContext, plan: RunnablePlan, payload: Payload, keys: RunKeys, providers: dict[str, Provider]
) -> None:
    """Everything between "the machine is up" and "the outputs are here"."""
    assert ctx.instance is not None
    model_path = await setup.prepare_machine(ctx, keys, plan.base)

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
        if isinstance(plan, TrainPlan) and isinstance(payload, TrainingPayload):
            # a training run survives losing its machine: it continues on another (continuation.py)
            await continuation.follow_surviving(ctx, plan, payload, keys, providers)
        else:
            await follow(ctx, offset=0)
