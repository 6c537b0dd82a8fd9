"""Running a planned queue (queueplan.py): machines rented under one budget take the jobs in turn.

Each machine is a run of its own (journalled, watched, destroyed through teardown.py, its receipt in
`<queue>/machines/<run>/`): rented from its slot's offers, set up once (environment, smoke check, the first base
model), then it takes the next job of the queue until none is left. Every job is a run too (its own id, folder
`<queue>/<job name>/`, events, checkpoints pulled as written, LoRA, grid, receipt and report.html) in its own
folder on the machine (`jobs/<name>/`); the machine's watchdog is pointed at the job's runner, so a client that
goes away leaves the job to finish before the machine is destroyed.

A job whose runner fails is reported and the machine goes on with the next. A machine that is lost mid-job
(SSH gone, a phase past its deadline) is destroyed and its job goes back to the queue for another machine (or a
new rental of the same slot), at most `MAX_JOB_ATTEMPTS` times. A machine whose budget share is spent takes no
more jobs.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from dataclasses import dataclass

from gpurun.errors import BudgetError, GpurunError, RemoteError, RunnerError, UntrustedReportError, UserError
from gpurun.job import setup
from gpurun.job.context import RunContext
from gpurun.job.finish import finish
from gpurun.job.follow import follow
from gpurun.job.machine import bundle_dir
from gpurun.job.options import JobOptions
from gpurun.job.queueplan import MachineSlot, QueuePlan
from gpurun.job.queuereceipt import JobOutcome, MachineOutcome, QueueReceipt, write_index
from gpurun.job.record import RunRecord
from gpurun.job.view import LabelledView, View
from gpurun.journal import Journal
from gpurun.models import to_dict
from gpurun.phases import SETUP, TRAINING, UPLOAD
from gpurun.pricing.serial import estimate_to_dict
from gpurun.provision.base import Provider, run_label
from gpurun.provision.registry import make_provider
from gpurun.remote.keys import ensure_run_keys

#: how many machines may try one job before it is reported failed
MAX_JOB_ATTEMPTS = 2
#: how many machines one slot may rent in turn (a lost machine is replaced once)
MAX_MACHINES_PER_SLOT = 2


@dataclass
class _Queue:
    """The jobs not yet taken: one queue shared by the machines, or one per machine for separate rentals."""

    pending: dict[int, collections.deque[int]]
    attempts: collections.Counter[int]

    def take(self, slot: int) -> int | None:
        jobs = self.pending[slot]
        return jobs.popleft() if jobs else None

    def peek(self, slot: int) -> int | None:
        jobs = self.pending[slot]
        return jobs[0] if jobs else None

    def give_back(self, slot: int, index: int) -> bool:
        """Put a job a lost machine had back at the front; False when it has had its tries."""
        self.attempts[index] += 1
        if self.attempts[index] >= MAX_JOB_ATTEMPTS:
            return False
        self.pending[slot].appendleft(index)
        return True


class Fleet:
    """One queue in progress: its folder, its jobs' outcomes, its machines."""

    def __init__(self, plan: QueuePlan, view: View, journal: Journal, options: JobOptions) -> None:
        self.plan, self.view, self.journal, self.options = plan, view, journal, options
        self.queue_id = journal.new_run_id()
        self.out = (plan.request.common.output / self.queue_id).resolve()
        if plan.mode == "separate":
            pending = {k: collections.deque(slot.jobs) for k, slot in enumerate(plan.slots)}
        else:
            shared: collections.deque[int] = collections.deque(range(len(plan.jobs)))
            pending = dict.fromkeys(range(len(plan.slots)), shared)
        self.queue = _Queue(pending, collections.Counter())
        self.jobs: dict[int, JobOutcome] = {}
        self.machines: list[MachineOutcome] = []
        self.started = time.time()

    async def run(self) -> QueueReceipt:
        """Every slot's machines at once (at most --parallel); returns the queue's receipt."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.view.message(f"queue {self.queue_id}: {len(self.plan.jobs)} jobs, outputs in {self.out}")
        gate = asyncio.Semaphore(self.plan.request.parallel)

        async def slot_worker(k: int) -> None:
            async with gate:
                await self._work(k)

        try:
            await asyncio.gather(*(slot_worker(k) for k in range(len(self.plan.slots))))
        finally:
            receipt = self.receipt()
            receipt.write(self.out / "receipt.json")
            write_index(self.out, receipt)
        return receipt

    def receipt(self) -> QueueReceipt:
        for index, name in enumerate(self.plan.names):
            if index not in self.jobs:
                self.jobs[index] = JobOutcome(name=name, outcome="not run", error="no machine took it")
        return QueueReceipt(
            queue_id=self.queue_id, mode=self.plan.mode, budget=self.plan.budget,
            estimated_expected_usd=self.plan.expected_dollars, jobs=[self.jobs[i] for i in sorted(self.jobs)],
            machines=list(self.machines), alternatives=self.plan.alternatives, seconds=time.time() - self.started,
        )  # fmt: skip

    # ---- a slot: its machines in turn ----------------------------------------------------------------------

    async def _work(self, k: int) -> None:
        for _ in range(MAX_MACHINES_PER_SLOT):
            if self.queue.peek(k) is None:
                return
            if not await self._machine(k):
                return  # the machine ended normally (queue empty, or its budget share spent)

    async def _machine(self, k: int) -> bool:
        """Rent one machine for slot `k` and run jobs on it until none is left. Returns True when the machine was
        lost (its job went back to the queue, and the slot may rent again)."""
        slot = self.plan.slots[k]
        mctx = self._machine_context(k, slot)
        keys = ensure_run_keys(mctx.run_id)
        mctx.record.identity_file = str(keys.private_key)
        providers: dict[str, Provider] = {e.offer.provider: make_provider(e.offer.provider) for e in slot.candidates}
        taken: int | None = None
        lost, outcome, error = False, "failed", None
        ran: list[str] = []
        try:
            await setup.boot_machine(mctx, slot, slot.workload, providers, keys)
            first = self.queue.peek(k)
            assert first is not None
            models = {
                self.plan.jobs[first].base.ref: await setup.prepare_machine(mctx, keys, self.plan.jobs[first].base)
            }
            while (taken := self.queue.take(k)) is not None:
                job = self.plan.jobs[taken]
                if job.base.ref not in models:
                    async with mctx.phase(SETUP, f"base model {job.base.ref} for {self.plan.names[taken]}"):
                        models[job.base.ref] = await setup.bootstrap(mctx, job.base)
                ran.append(self.plan.names[taken])
                result = await self._job(mctx, taken, models[job.base.ref])
                index, taken = taken, None
                if result == "lost":
                    lost = self._give_back(k, index)
                    break
                if result == "budget":
                    break
            outcome = "done"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except GpurunError as exc:
            error = exc
            mctx.view.message(f"machine failed: {exc.one_line()}")
            if taken is not None:
                lost = self._give_back(k, taken)
            elif not mctx.record.instance_id:
                lost = True  # nothing was rented (every offer gone): the slot may try again
        finally:
            await asyncio.shield(self._end_machine(k, mctx, outcome, error, providers, ran))
        return lost

    def _give_back(self, k: int, index: int) -> bool:
        name = self.plan.names[index]
        if self.queue.give_back(k, index):
            self.view.message(f"{name}: its machine was lost; the job goes back to the queue")
            return True
        self.jobs[index] = JobOutcome(name=name, outcome="failed", error="lost its machine twice")
        return False

    def _machine_context(self, k: int, slot: MachineSlot) -> RunContext:
        run_id = self.journal.new_run_id()
        request = slot.request
        spent = sum(m.dollars for m in self.machines if m.slot == k)
        budget = None if request.budget is None else max(0.0, request.budget - spent)
        record = RunRecord(
            run_id=run_id, output_dir=self.out / "machines" / run_id, estimate=slot.chosen, budget=budget,
            artifact_grace_s=request.artifact_grace_min * 60, keep_on_failure_min=request.keep_on_failure_min,
        )  # fmt: skip
        label = f"machine {k + 1}" if len(self.plan.slots) > 1 else "machine"
        ctx = RunContext(record, LabelledView(self.view, label), self.journal, self.options)
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        chosen = slot.chosen.offer
        self.journal.record_intent(
            run_id, provider=chosen.provider, offer_id=chosen.offer_id, gpu=chosen.gpu.name,
            quoted_price=chosen.price_per_hour, budget=budget, workload=to_dict(slot.workload),
            estimate=estimate_to_dict(slot.chosen), output_dir=ctx.out_dir, config_toml=None, label=run_label(run_id),
        )  # fmt: skip
        ctx.save()
        return ctx

    async def _end_machine(
        self,
        k: int,
        mctx: RunContext,
        outcome: str,
        error: GpurunError | None,
        providers: dict[str, Provider],
        ran: list[str],
    ) -> None:
        await finish(mctx, outcome, error, report=False)
        for provider in providers.values():
            if provider is not mctx.provider:
                await provider.aclose()
        receipt = mctx.receipt
        self.machines.append(
            MachineOutcome(
                run_id=mctx.run_id, slot=k, offer=mctx.record.estimate.offer.key,
                instance_id=mctx.record.instance_id, jobs=ran, outcome=outcome,
                error=None if error is None else error.one_line(),
                seconds=0.0 if receipt is None else receipt.billed_seconds,
                dollars=0.0 if receipt is None else receipt.actual_total_usd,
                destroyed=bool(receipt and receipt.destroyed), receipt=str(mctx.out_dir / "receipt.json"),
            )
        )  # fmt: skip

    # ---- one job on a machine ------------------------------------------------------------------------------

    async def _job(self, mctx: RunContext, index: int, model_path: str) -> str:
        """Run job `index` on the machine of `mctx`: "done", "failed" (the machine goes on), "budget" (the
        machine's share is spent) or "lost" (the machine is gone)."""
        assert mctx.layout is not None and mctx.transport is not None
        name = self.plan.names[index]
        jctx = self._job_context(mctx, index)
        payload = self.plan.payload(index)
        payload.prepare(jctx.out_dir)
        self.journal.record_intent(
            jctx.run_id, provider=mctx.record.provider, offer_id=mctx.record.estimate.offer.offer_id,
            gpu=mctx.record.estimate.offer.gpu.name, quoted_price=mctx.record.price_per_hour, budget=None,
            workload=to_dict(self.plan.jobs[index].workload), estimate=estimate_to_dict(jctx.record.estimate),
            output_dir=jctx.out_dir, config_toml=payload.config_text(), label=run_label(mctx.run_id),
        )  # fmt: skip
        # the job rents nothing: the machine is its machine run's (which destroys it), never the job's
        self.journal.mark_not_created(jctx.run_id)
        self.journal.phase(jctx.run_id, "setup", f"on the machine of run {mctx.run_id}")
        jctx.save()
        outcome, result = "failed", "failed"
        error: GpurunError | None = None
        try:
            assert jctx.layout is not None
            await mctx.transport.makedirs(jctx.layout.root)
            await setup.point_watchdog(mctx, f"jobs/{name}/runner.pid")
            async with jctx.phase(UPLOAD, payload.upload_detail()):
                await payload.ship(jctx)
            async with jctx.phase(TRAINING, "runner launched"):
                await payload.launch(jctx, model_path)
                jctx.launched = True
                await follow(jctx, offset=0)
            outcome, result = "done", "done"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except BudgetError as exc:
            error, result = exc, "budget"
        except (RunnerError, UserError) as exc:
            error = exc  # this job failed; the machine is fine and takes the next
        except UntrustedReportError as exc:
            error, result = exc, "budget"  # the machine lies about its files: it runs nothing more of ours
        except (RemoteError, GpurunError) as exc:
            error, result = exc, "lost"
        finally:
            await asyncio.shield(finish(jctx, outcome, error))
            receipt = jctx.receipt
            self.jobs[index] = JobOutcome(
                name=name, run_id=jctx.run_id, outcome=outcome, error=None if error is None else error.one_line(),
                machine=mctx.run_id, seconds=0.0 if receipt is None else receipt.billed_seconds,
                dollars=0.0 if receipt is None else receipt.actual_total_usd, folder=str(jctx.out_dir),
                final=jctx.record.final,
            )  # fmt: skip
        if error is not None:
            mctx.view.message(f"{name} {outcome}: {error.one_line()}")
        return result

    def _job_context(self, mctx: RunContext, index: int) -> RunContext:
        """A job's run on the machine of `mctx`: its own record and folders, the machine's connection."""
        assert mctx.layout is not None
        name = self.plan.names[index]
        key = mctx.record.estimate.offer.key
        own = self.plan.job_estimates.get(key)
        estimate = own[index] if own else mctx.record.estimate
        machine = mctx.record
        layout = dataclasses.replace(mctx.layout, root=mctx.layout.path("jobs", name), bundle=bundle_dir(mctx.layout))
        record = RunRecord(
            run_id=self.journal.new_run_id(), output_dir=self.out / name, estimate=estimate, budget=machine.budget,
            artifact_grace_s=machine.artifact_grace_s, instance_id=machine.instance_id,
            price_per_hour=machine.price_per_hour, created_at=time.time(), workdir=machine.workdir,
            boot_armed=machine.boot_armed, ssh=machine.ssh, identity_file=machine.identity_file,
            layout=layout, deadline=machine.deadline,
        )  # fmt: skip
        record.training.resolution = self.plan.jobs[index].workload.resolution
        ctx = RunContext(
            record, LabelledView(self.view, name), self.journal, self.options, provider=mctx.provider,
            instance=mctx.instance, transport=mctx.transport, layout=record.layout, machine=mctx,
        )  # fmt: skip
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        return ctx


async def run_queue(plan: QueuePlan, view: View, journal: Journal, options: JobOptions) -> QueueReceipt:
    """Run every job of the plan; returns the queue's receipt (also written as `<queue>/receipt.json`, with
    `index.html` linking each job's report)."""
    return await Fleet(plan, view, journal, options).run()
