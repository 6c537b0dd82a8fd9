"""The library: everything the `gpurun` commands do, as calls. A façade over `gpurun.job` (the orchestrator);
it never imports torch.

    import asyncio
    from pathlib import Path
    from gpurun.api import offers, plan, train, TrainRequest
    from gpurun.models import Workload

    result = asyncio.run(offers(Workload(family="sdxl", resolution=1024, images=40), budget=5))
    best = result.ranking.estimates[0]
    print(best.offer.key, best.expected_dollars, [(p.name, p.seconds) for p in best.phases])

    the_plan = asyncio.run(plan(TrainRequest(dataset=Path("training_data"), base="sd15", budget=5)))
    receipt = asyncio.run(train(the_plan))          # rent, train, fetch, verify, destroy
    print(receipt.actual_total_usd, receipt.artifacts)

`offers()` asks every usable provider concurrently; one that fails is reported in `errors` and the others still
count. `attach`, `cancel` and `runner_stderr` take up a run another process started; `plan_resume` and `resume`
continue a run whose machine is gone on a new one; `runs`, `find_strays`,
`down_targets`, `destroy` and `forget_stray_keys` answer "what is alive, and end it".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpurun.errors import JournalError
from gpurun.job import control, fleet, run, sampling, teardown
from gpurun.job import resume as resuming
from gpurun.job.context import RunContext
from gpurun.job.offers import OffersResult, ProviderFailure, offers
from gpurun.job.options import JobOptions
from gpurun.job.plan import TrainPlan, TrainRequest, measured_calibration, plan_train
from gpurun.job.queuefile import QueuedJob, jobs_from_datasets, load_queue
from gpurun.job.queueplan import QueuePlan, QueueRequest
from gpurun.job.queueplan import plan_queue as plan_queue_jobs
from gpurun.job.queuereceipt import QueueReceipt
from gpurun.job.receipt import Receipt
from gpurun.job.resume import ResumePlan
from gpurun.job.sampling import SamplePlan, SampleRequest
from gpurun.job.teardown import Stray, Target
from gpurun.job.view import Money, SilentView, View
from gpurun.job.workload import WorkloadSource, build_workload
from gpurun.journal import Journal, RunRecord
from gpurun.provision import status
from gpurun.provision.http import mask_secret
from gpurun.provision.registry import PROVIDER_NAMES, min_cuda_for
from gpurun.report import write_report
from gpurun.report.index import read_queue_receipt
from gpurun.report.index import write_index as write_index_page
from gpurun.safenames import component_problem

__all__ = [
    "PROVIDER_NAMES",
    "Money",
    "OffersResult",
    "ProviderFailure",
    "QueuePlan",
    "QueueReceipt",
    "QueueRequest",
    "QueuedJob",
    "Receipt",
    "ResumePlan",
    "RunContext",
    "RunsListing",
    "SamplePlan",
    "SampleRequest",
    "Stray",
    "Target",
    "TrainPlan",
    "TrainRequest",
    "View",
    "WorkloadSource",
    "attach",
    "build_workload",
    "cancel",
    "check_providers",
    "destroy",
    "down_targets",
    "find_strays",
    "forget_stray_keys",
    "jobs_from_datasets",
    "load_queue",
    "mask_secret",
    "min_cuda_for",
    "offers",
    "plan",
    "plan_queue",
    "plan_resume",
    "plan_sample",
    "provider_key_env",
    "providers_overview",
    "report",
    "resume",
    "run_record",
    "runner_stderr",
    "runs",
    "sample",
    "save_api_key",
    "train",
    "train_queue",
    "usable_providers",
]

#: sees a run's context before it starts (the CLI wires Ctrl-C to its stop requests)
OnStart = Callable[[RunContext], None]


async def plan(request: TrainRequest) -> TrainPlan:
    """Check the dataset, ask the providers and rank their offers under the budget, with this machine's measured
    speeds (the journal's calibration): what `gpurun train --dry-run` shows. Rents nothing."""
    return await plan_train(request, calibration=measured_calibration())


async def plan_sample(request: SampleRequest) -> SamplePlan:
    """Plan `gpurun sample`: check the LoRA files and the base, price the grids on every offer, pick one."""
    return await sampling.plan_sample(request)


async def sample(the_plan: SamplePlan, *, view: View | None = None, on_start: OnStart | None = None) -> Receipt:
    """Render the planned grids: rent, set up, upload the files, sample, fetch the grids, destroy; the run folder
    gets the grids, a report.html showing them, and the receipt."""
    view = view or SilentView()
    with Journal.open() as journal:
        try:
            return await run.run(the_plan, view, journal, JobOptions.from_env(), on_start)
        finally:
            view.close()


async def train(
    the_plan: TrainPlan, *, view: View | None = None, detach: bool = False, on_start: OnStart | None = None
) -> Receipt:
    """Execute a plan: rent the chosen offer (failing over), train, pull checkpoints, fetch and verify the LoRA,
    destroy, and return the receipt. On failure everything is torn down first, then the error is raised."""
    view = view or SilentView()
    with Journal.open() as journal:
        try:
            return await run.run(the_plan, view, journal, JobOptions.from_env(detach=detach), on_start)
        finally:
            view.close()


async def plan_queue(request: QueueRequest) -> QueuePlan:
    """Check every job and price the queue on one machine, on --parallel machines and as separate rentals:
    what `gpurun train A/ B/ --dry-run` shows. Rents nothing."""
    return await plan_queue_jobs(request, calibration=measured_calibration())


async def train_queue(the_plan: QueuePlan, *, view: View | None = None) -> QueueReceipt:
    """Run a planned queue: rent its machines, run every job (a failed job does not stop the others), fetch each
    LoRA, destroy every machine; returns the queue's receipt (also `<output>/<queue>/receipt.json`)."""
    view = view or SilentView()
    with Journal.open() as journal:
        try:
            return await fleet.run_queue(the_plan, view, journal, JobOptions.from_env())
        finally:
            view.close()


async def attach(run_id: str, *, view: View | None = None, on_start: OnStart | None = None) -> Receipt:
    """Follow a detached run again from where the journal stopped, fetch what is missing, destroy, receipt."""
    view = view or SilentView()
    with Journal.open() as journal:
        try:
            ctx = await control.reopen(run_id, view, journal, JobOptions.from_env())
            if on_start is not None:
                on_start(ctx)
            return await control.attach(ctx)
        finally:
            view.close()


async def cancel(run_id: str, *, view: View | None = None) -> Receipt:
    """Stop a run (the runner saves a checkpoint first), fetch what exists, destroy its machine."""
    view = view or SilentView()
    with Journal.open() as journal:
        try:
            ctx = await control.reopen(run_id, view, journal, JobOptions.from_env())
            return await control.cancel(ctx)
        finally:
            view.close()


async def runner_stderr(run_id: str, lines: int = 200) -> list[str]:
    """The last lines the run's runner wrote to stderr, read on its machine."""
    with Journal.open() as journal:
        ctx = await control.reopen(run_id, SilentView(), journal, JobOptions.from_env())
        return await control.runner_stderr(ctx, lines)


async def plan_resume(run_id: str, *, budget: float | None = None) -> ResumePlan:
    """Everything `gpurun resume` checks and decides before renting: the run can be continued (not done, a state
    pulled, its machine gone), the budget left (raised to `budget` when given) buys the rest, the offers for it."""
    with Journal.open() as journal:
        return await resuming.plan_resume(run_id, journal, budget=budget)


async def resume(ready: ResumePlan, *, view: View | None = None, on_start: OnStart | None = None) -> Receipt:
    """Continue the run on a new machine from its last pulled state, to the end; the receipt covers every machine."""
    view = view or SilentView()
    with Journal.open() as journal:
        try:
            return await resuming.resume(ready, view, journal, JobOptions.from_env(), on_start)
        finally:
            view.close()


@dataclass(frozen=True)
class RunsListing:
    """The journal's runs, newest first, and the rows it could not read (one line each, naming the run); for each
    run whether `gpurun resume` can continue it, and why not."""

    runs: list[RunRecord]
    problems: list[str]
    resumable: dict[str, tuple[bool, str | None]]


def runs(limit: int | None = 20) -> RunsListing:
    """Runs from the journal: phase, machine, price, cost, outputs, resumable."""
    with Journal.open() as journal:
        records = journal.runs(limit=limit)
        return RunsListing(records, list(journal.problems), {r.run_id: resuming.resumable(r) for r in records})


def run_record(run_id: str) -> RunRecord:
    """One run from the journal, by id or unique prefix."""
    with Journal.open() as journal:
        return journal.get(run_id)


def report(run: str | Path) -> Path:
    """Write (or refresh, during a run) the run's report.html and return its path. `run` is a run id (or unique
    prefix) from the journal, or a run folder."""
    folder = Path(run).expanduser()
    if not folder.is_dir():
        output_dir = run_record(str(run)).output_dir
        if not output_dir:
            raise JournalError("the run has no output folder yet", where=str(run))
        folder = Path(output_dir)
    if not folder.is_dir():
        raise JournalError("the run's output folder is gone", where=str(folder),
                           hint="was it moved? pass the folder itself: gpurun report PATH")  # fmt: skip
    queue = read_queue_receipt(folder)
    if queue is not None:  # a queue's folder: refresh each job's report and the index
        for job in queue.get("jobs") or []:
            if (folder / str(job.get("name"))).is_dir() and component_problem(str(job.get("name"))) is None:
                write_report(folder / str(job["name"]))
        return write_index_page(folder, queue)
    return write_report(folder)


async def find_strays() -> tuple[list[Stray], dict[str, str]]:
    """gpurun-labelled instances on the provider accounts that the journal does not know or believes destroyed,
    and the providers that could not be asked."""
    with Journal.open() as journal:
        return await teardown.find_strays(journal)


async def down_targets(run_id: str | None, *, strays: bool = False, every_alive: bool = False) -> list[Target]:
    """What `gpurun down` would destroy: a run's machines, every machine the journal believes alive, strays."""
    targets: list[Target] = []
    with Journal.open() as journal:
        if run_id:
            record = journal.get(run_id)
            for instance in journal.instances(record.run_id):
                if instance.instance_id and instance.status not in ("destroyed", "not_created"):
                    targets.append(
                        Target(instance.provider, instance.instance_id, record.run_id, f"run {record.run_id}")
                    )
        if every_alive:
            for instance in journal.alive_instances():
                if instance.instance_id:
                    why = f"run {instance.run_id}, {instance.status}"
                    targets.append(Target(instance.provider, instance.instance_id, instance.run_id, why))
        if strays:
            found, _ = await teardown.find_strays(journal)
            targets += [Target(s.provider, s.instance_id, None, s.why) for s in found]
    unique = {(t.provider, t.instance_id): t for t in targets}
    return list(unique.values())


async def destroy(targets: list[Target]) -> tuple[list[str], list[str]]:
    """Destroy each target, confirmed by polling, and journal it: (destroyed, unconfirmed)."""
    with Journal.open() as journal:
        return await teardown.destroy_targets(journal, targets)


async def forget_stray_keys(warn: Callable[[str], None] = lambda text: None) -> list[str]:
    """Take the SSH keys of runs that are over off the provider accounts; `provider:run id` of each removed."""
    with Journal.open() as journal:
        return await teardown.forget_stray_keys(journal, warn)


# ---- the providers ------------------------------------------------------------------------------------------------

providers_overview = status.overview
provider_key_env = status.key_env
save_api_key = status.save_api_key
check_providers = status.check
usable_providers = status.usable_names
