"""Pricing several LoRAs on one machine: the boot and the environment are paid once, each base model is downloaded
once, and every job adds its own upload, training, grids and fetch. Pure arithmetic over per-job estimates.

    combine(estimates, bases)    several jobs' estimates on ONE offer → one estimate for the machine
    split(jobs, machines)        jobs dealt to N machines, longest first (what `--parallel N` expects)

The expected dollars of the machine apply the jobs' own expected/actual ratio (1 / the host's reliability, and
for interruptible offers what their interruptions cost) to the machine's dollars: exact for on-demand offers,
where the ratio does not depend on the length of the job.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpurun.models import CostEstimate, PhaseEstimate

#: phases every machine pays once, whatever it runs
ONCE_PER_MACHINE = ("boot", "install")
#: paid once per distinct base model on the machine
ONCE_PER_BASE = ("model",)


def combine(estimates: Sequence[CostEstimate], bases: Sequence[str]) -> CostEstimate:
    """One machine running the jobs of `estimates` in turn (all on the same offer); `bases[i]` names job i's base
    model (jobs that share a base download it once)."""
    if not estimates:
        raise ValueError("a queue needs at least one job")
    if len(bases) != len(estimates):
        raise ValueError("one base per job")
    offer = estimates[0].offer
    if any(e.offer.key != offer.key for e in estimates):
        raise ValueError("every job's estimate must be on the same offer")
    seconds: dict[str, float] = {}
    notes: dict[str, str] = {}
    dollars_extra = {"storage": 0.0, "bandwidth": 0.0}
    seen_bases: set[str] = set()
    for estimate, base in zip(estimates, bases, strict=True):
        first_on_machine = estimate is estimates[0]
        new_base = base not in seen_bases
        seen_bases.add(base)
        for phase in estimate.phases:
            if phase.name in dollars_extra:
                # storage: the machine's disk for as long as it runs (the jobs' shares add up); bandwidth: each
                # job's own traffic (the image and the environment counted with every job: an upper bound)
                dollars_extra[phase.name] += phase.dollars
                notes.setdefault(phase.name, phase.note)
                continue
            if phase.name in ONCE_PER_MACHINE and not first_on_machine:
                continue
            if phase.name in ONCE_PER_BASE and not new_base:
                continue
            seconds[phase.name] = seconds.get(phase.name, 0.0) + phase.seconds
            notes.setdefault(phase.name, phase.note)
    per_second = offer.price_per_hour / 3600.0
    phases = tuple(PhaseEstimate(name, s, s * per_second, notes[name]) for name, s in seconds.items())
    phases += tuple(PhaseEstimate(name, 0.0, usd, notes.get(name, "")) for name, usd in dollars_extra.items())
    total_s = sum(seconds.values())
    dollars = total_s * per_second + sum(dollars_extra.values())
    own = sum(e.dollars for e in estimates)
    ratio = sum(e.expected_dollars for e in estimates) / own if own > 0 else 1.0
    reasons = tuple(dict.fromkeys(r for e in estimates for r in e.reasons))
    return CostEstimate(
        offer=offer, phases=phases, batch_size=estimates[0].batch_size, feasible=not reasons, seconds=total_s,
        dollars=dollars, expected_dollars=dollars * ratio, reasons=reasons,
    )  # fmt: skip


def split(seconds: Sequence[float], machines: int) -> list[list[int]]:
    """Deal jobs (by index, with their estimated seconds) to `machines` machines, longest job first to the least
    loaded machine: the order a shared queue drains in when every machine takes the next job as it frees up.
    Machines that would get no job are left out."""
    if machines < 1:
        raise ValueError("at least one machine")
    loads = [0.0] * min(machines, len(seconds))
    dealt: list[list[int]] = [[] for _ in loads]
    for index in sorted(range(len(seconds)), key=lambda i: (-seconds[i], i)):
        target = min(range(len(loads)), key=lambda m: (loads[m], m))
        dealt[target].append(index)
        loads[target] += seconds[index]
    return [sorted(jobs) for jobs in dealt if jobs]
