"""Planning several LoRAs at once (`gpurun train A/ B/ C/`, `--queue jobs.toml`, `--parallel N`) before any money
is spent: every job checked locally, one question to the providers, and three ways to run the queue priced on
every offer that can run every job:

    one machine     all jobs in turn on one rental: boot, environment and each base model paid once
    N machines      (--parallel N) the jobs dealt to N machines of the same offer, each with its own watchdog
    separate        one rental per job, each on its own cheapest offer

The cheapest expected total under the budget wins (separate rentals only win when the jobs want different
machines). The budget is split across the machines in proportion to what each is expected to cost, and each
machine's watchdog enforces its share.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from gpurun.errors import BudgetError, ConfigError
from gpurun.job.offers import disk_needed_gb, offers
from gpurun.job.payload import TrainingPayload
from gpurun.job.plan import OfferChoice, PreparedJob, TrainRequest, prepare_job, usable_with_image, validate_request
from gpurun.job.queuefile import QueuedJob
from gpurun.models import CostEstimate, GpuRequest, Workload
from gpurun.pricing import Calibration, rank
from gpurun.pricing.queue import combine, split
from gpurun.pricing.serial import estimate_to_dict
from gpurun.provision.registry import min_cuda_for

Mode = Literal["one machine", "machines", "separate"]
#: more machines at once than this is refused (a typo would otherwise rent a fleet)
MAX_PARALLEL = 16


@dataclass(frozen=True)
class QueueRequest:
    """The jobs, the options they share (`common`: budget, providers, GPUs, output ...; its config, base, epochs,
    repeats and trigger are every job's defaults), and how many machines may work at once."""

    jobs: tuple[QueuedJob, ...]
    common: TrainRequest = field(default_factory=TrainRequest)
    parallel: int = 1


@dataclass(frozen=True)
class MachineSlot(OfferChoice):
    """One machine of the plan: the offers to rent it from (its share of the jobs priced on each, best first) and
    its share of the budget. Which jobs it really runs is decided as machines free up."""

    request: TrainRequest
    candidates: tuple[CostEstimate, ...]
    #: the jobs (indexes) the plan expects it to run; in "separate" mode exactly these
    jobs: tuple[int, ...]
    #: the biggest workload among its jobs (the disk asked for)
    workload: Workload


@dataclass(frozen=True)
class QueuePlan:
    request: QueueRequest
    jobs: tuple[PreparedJob, ...]
    names: tuple[str, ...]
    mode: Mode
    slots: tuple[MachineSlot, ...]
    #: offer key → each job's own estimate on that offer (a job's receipt is measured against it)
    job_estimates: dict[str, tuple[CostEstimate, ...]]
    #: the three ways, priced: {"one machine" | "N machines" | "separate": {"dollars", "expected_dollars", ...}}
    alternatives: dict[str, dict[str, Any]]
    notes: tuple[str, ...] = ()
    offers_considered: int = 0
    provider_errors: dict[str, str] = field(default_factory=dict)

    @property
    def budget(self) -> float | None:
        return self.request.common.budget

    @property
    def expected_dollars(self) -> float:
        return sum(slot.chosen.expected_dollars for slot in self.slots)

    def payload(self, index: int) -> TrainingPayload:
        job = self.jobs[index]
        upload = job.upload()
        return TrainingPayload(job.config, job.report, job.dataset, job.request.repeats, job.request.trigger,
                               upload.files, upload.bytes)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "queue": True,
            "mode": self.mode,
            "budget": self.budget,
            "expected_dollars": self.expected_dollars,
            "jobs": [
                {
                    "name": name,
                    "dataset": str(job.dataset),
                    "base": job.base.ref,
                    "workload": dataclasses.asdict(job.workload),
                }
                for name, job in zip(self.names, self.jobs, strict=True)
            ],
            "machines": [
                {"jobs": [self.names[i] for i in slot.jobs], "budget": slot.request.budget, **slot.offer_dict()}
                for slot in self.slots
            ],
            "alternatives": self.alternatives,
            "notes": list(self.notes),
            "offers_considered": self.offers_considered,
            "provider_errors": self.provider_errors,
        }


def job_request(common: TrainRequest, job: QueuedJob) -> TrainRequest:
    """What `gpurun train` would get for this job alone: the shared options, the job's own values first."""
    return dataclasses.replace(
        common, dataset=job.dataset, config=job.config or common.config, base=job.base or common.base,
        epochs=job.epochs or common.epochs, repeats=job.repeats or common.repeats,
        trigger=job.trigger or common.trigger,
    )  # fmt: skip


async def plan_queue(request: QueueRequest, *, calibration: Calibration | None = None) -> QueuePlan:
    """Check every job, price the ways of running the queue on every offer, pick the cheapest under the budget."""
    common = request.common
    validate_request(common)
    if not 1 <= request.parallel <= MAX_PARALLEL:
        raise ConfigError(f"must be from 1 to {MAX_PARALLEL}, got {request.parallel}", where="--parallel")
    if not request.jobs:
        raise ConfigError("the queue has no job", where="--queue")
    names = tuple(job.name for job in request.jobs)
    jobs: list[PreparedJob] = []
    for name, queued in zip(names, request.jobs, strict=True):
        try:
            jobs.append(await prepare_job(job_request(common, queued)))
        except ConfigError as exc:
            raise type(exc)(f"job {name}: {exc.message}", where=exc.where, hint=exc.hint) from None
    notes = _job_notes(names, jobs)
    min_cuda = min_cuda_for(common.image)
    requirements = GpuRequest(gpu_names=common.gpus, spot=common.spot, min_cuda=min_cuda)
    biggest = max(jobs, key=lambda job: disk_needed_gb(job.workload))
    result = await offers(
        biggest.workload, providers=common.providers or None, requirements=requirements, budget=None, limit=None,
        calibration=calibration,
    )  # fmt: skip
    per_job: list[dict[str, CostEstimate]] = []
    for job in jobs:
        ranking = rank(job.workload, result.offers, requirements=result.requirements, assumptions=result.assumptions,
                       calibration=calibration)  # fmt: skip
        pool, refused = usable_with_image(list(ranking.estimates), common.image)
        notes += [f"{name} offers left out: {error.message}" for name, error in refused.items()]
        per_job.append({e.offer.key: e for e in pool})
    common_keys = [key for key in per_job[0] if all(key in own for own in per_job[1:])]
    if common.offer:
        wanted = result.find(common.offer).key
        common_keys = [key for key in common_keys if key == wanted]
        if not common_keys:
            raise ConfigError(f"offer {wanted} cannot run every job of the queue", where="--offer")
    job_estimates = {key: tuple(own[key] for own in per_job) for key in common_keys}
    bases = [job.base.ref for job in jobs]
    machines = min(request.parallel, len(jobs))
    ways: list[tuple[Mode, Way]] = []
    one = _shared_ways(job_estimates, bases, 1)
    if one:
        ways.append(("one machine", one))
    if machines > 1 and (fleet := _shared_ways(job_estimates, bases, machines)):
        ways.append(("machines", fleet))
    separate = _separate_way(per_job)
    if separate and len(jobs) > 1:
        ways.append(("separate", separate))
    if not ways:
        raise BudgetError(
            "no offer can run these jobs", where="offers",
            hint="relax --gpu/--provider filters, or see `gpurun offers` for why offers were rejected",
        )  # fmt: skip
    alternatives = {_way_name(mode, len(way)): _way_dict(way, request.parallel) for mode, way in ways}
    affordable = [(mode, way) for mode, way in ways if _affordable(way, common.budget)]
    if not affordable:
        raise _budget_error(ways, common.budget)
    mode, way = _choose(affordable)
    total = sum(c[0].expected_dollars for _, c in way)
    slots = []
    for share, candidates in way:
        budget = None
        if common.budget is not None:
            # each machine's watchdog enforces its share; the shares add up to the budget
            budget = common.budget * (candidates[0].expected_dollars / total) if total > 0 else common.budget / len(way)
        within = [c for c in candidates if _fits(c, budget)]
        slots.append(
            MachineSlot(
                request=dataclasses.replace(common, budget=budget), candidates=tuple(within[: common.max_attempts]),
                jobs=share, workload=max((jobs[i].workload for i in share), key=disk_needed_gb),
            )
        )  # fmt: skip
    return QueuePlan(
        request=request, jobs=tuple(jobs), names=names, mode=mode, slots=tuple(slots), job_estimates=job_estimates,
        alternatives=alternatives, notes=tuple(dict.fromkeys(notes)), offers_considered=result.ranking.considered,
        provider_errors={name: failure.message for name, failure in result.errors.items()},
    )  # fmt: skip


Way = list[tuple[tuple[int, ...], list[CostEstimate]]]


def _shared_ways(job_estimates: dict[str, tuple[CostEstimate, ...]], bases: list[str], machines: int) -> Way:
    """Machines of one offer sharing the queue: per machine, its share and its estimate on every common offer
    (offers ordered by the total expected over the machines)."""
    if not job_estimates:
        return []
    priced = []
    for estimates in job_estimates.values():
        shares = split([e.seconds for e in estimates], machines)
        per_machine = [combine([estimates[i] for i in share], [bases[i] for i in share]) for share in shares]
        priced.append((sum(m.expected_dollars for m in per_machine), shares, per_machine))
    priced.sort(key=lambda item: (item[0], item[2][0].offer.key))
    shares = priced[0][1]  # the split of the best offer (the same on every offer but for rounding)
    way: Way = []
    for k, share in enumerate(shares):
        candidates = [per_machine[k] for _, s, per_machine in priced if len(per_machine) > k and s == shares]
        way.append((tuple(share), candidates))
    return way


def _choose(affordable: list[tuple[Mode, Way]]) -> tuple[Mode, Way]:
    """`--parallel N` asked for speed: N machines when the budget allows them; otherwise the cheapest way (separate
    rentals only win when the jobs want different machines)."""
    for mode, way in affordable:
        if mode == "machines":
            return mode, way
    return min(affordable, key=lambda item: sum(c[0].expected_dollars for _, c in item[1]))


def _separate_way(per_job: list[dict[str, CostEstimate]]) -> Way:
    """One rental per job, each on its own offers, best first."""
    way: Way = []
    for index, own in enumerate(per_job):
        if not own:
            return []
        candidates = sorted(own.values(), key=lambda e: (e.expected_dollars, e.offer.key))
        way.append(((index,), candidates))
    return way


def _way_name(mode: Mode, machines: int) -> str:
    return "separate rentals" if mode == "separate" else "one machine" if machines == 1 else f"{machines} machines"


def _way_dict(way: Way, parallel: int) -> dict[str, Any]:
    best = [candidates[0] for _, candidates in way]
    # wall clock: at most `parallel` machines work at once, each taking the next rental as one ends
    lanes = split([e.seconds for e in best], parallel)
    return {
        "machines": len(way),
        "dollars": sum(e.dollars for e in best),
        "expected_dollars": sum(e.expected_dollars for e in best),
        "seconds": max(sum(best[i].seconds for i in lane) for lane in lanes),
        "machine_seconds": sum(e.seconds for e in best),
        "offers": [estimate_to_dict(e) for e in best],
    }


def _job_notes(names: tuple[str, ...], jobs: list[PreparedJob]) -> list[str]:
    """Each job's planning notes, said once for the jobs they apply to."""
    by_note: dict[str, list[str]] = {}
    for name, job in zip(names, jobs, strict=True):
        for note in job.notes:
            by_note.setdefault(note, []).append(name)
    return [note if len(who) == len(names) else f"{', '.join(who)}: {note}" for note, who in by_note.items()]


def _fits(estimate: CostEstimate, budget: float | None) -> bool:
    if budget is None:
        return estimate.offer.price_per_hour <= 0
    return estimate.expected_dollars <= budget + 1e-9


def _affordable(way: Way, budget: float | None) -> bool:
    best = [candidates[0] for _, candidates in way]
    if budget is None:
        return all(e.offer.price_per_hour <= 0 for e in best)  # renting anything that bills needs a budget
    return sum(e.expected_dollars for e in best) <= budget + 1e-9


def _budget_error(ways: list[tuple[Mode, Way]], budget: float | None) -> BudgetError:
    cheapest = min(sum(c[0].expected_dollars for _, c in way) for _, way in ways)
    if budget is None:
        return BudgetError(
            f"renting GPUs needs a budget: the queue is expected to cost ${cheapest:.2f}", where="--budget",
            hint=f"pass --budget {math.ceil(cheapest * 1.2 * 100) / 100:.2f} or more",
        )  # fmt: skip
    return BudgetError(
        f"the queue does not fit the budget of ${budget:.2f}: the cheapest way is expected to cost ${cheapest:.2f}",
        where="--budget", hint="raise --budget, or queue fewer jobs",
    )  # fmt: skip
