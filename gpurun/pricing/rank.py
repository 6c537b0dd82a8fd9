"""Filter offers by requirements and feasibility, order them by expected total cost (or time, or $/h), mark budget.

Ties break stably and deterministically: expected $, then time, then $/h, then provider, then offer id (the
primary key moves to the front for the other sort orders). Offers filtered out are kept with their reasons, so
`gpurun offers --explain/--json` can say why an offer is missing.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from gpurun.models import CostEstimate, GpuRequest, Offer, Workload
from gpurun.pricing.assumptions import DEFAULT, Assumptions
from gpurun.pricing.estimate import CostModel, Numbers
from gpurun.pricing.gpus import gpu_matches
from gpurun.pricing.throughput import Calibration

SortMode = Literal["cost", "time", "price"]
SORT_MODES: tuple[SortMode, ...] = ("cost", "time", "price")


@dataclass(frozen=True, slots=True)
class Rejected:
    """An offer left out of the ranking, and every reason why."""

    offer: Offer
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Ranking:
    """The ranked estimates (best first, at most `limit`), plus what was left out and why."""

    estimates: tuple[CostEstimate, ...]
    #: `Offer.key` of the estimates whose expected total is above the budget
    over_budget: frozenset[str]
    rejected: tuple[Rejected, ...]
    budget: float | None
    sort: SortMode
    #: offers looked at / offers that passed every filter (before `limit`)
    considered: int
    eligible: int
    #: the lowest expected total among eligible offers, whatever the sort order and limit
    cheapest: CostEstimate | None

    def is_over_budget(self, estimate: CostEstimate) -> bool:
        return estimate.offer.key in self.over_budget

    @property
    def within_budget(self) -> tuple[CostEstimate, ...]:
        return tuple(e for e in self.estimates if e.offer.key not in self.over_budget)


def requirement_reasons(offer: Offer, req: GpuRequest) -> list[str]:
    """Why `offer` does not meet `req` (empty when it does). Unknown offer figures never disqualify."""
    gpu = offer.gpu
    # one pass of cheap comparisons for the common case (the offer passes); the reasons only on failure
    passes = (
        (not req.gpu_names or any(gpu_matches(name, gpu.name, gpu.vram_gb) for name in req.gpu_names))
        and gpu.count >= req.num_gpus
        and not (req.min_vram_gb and gpu.vram_gb and gpu.vram_gb < req.min_vram_gb)
        and (req.max_price_per_hour is None or offer.price_per_hour <= req.max_price_per_hour)
        and req.spot == offer.spot
        and not (req.min_reliability and offer.reliability < req.min_reliability)
        and not (req.min_disk_gb and offer.disk_gb is not None and offer.disk_gb < req.min_disk_gb)
        and not (
            req.min_inet_down_mbps
            and offer.inet_down_mbps is not None
            and offer.inet_down_mbps < req.min_inet_down_mbps
        )
        and not (req.min_cuda is not None and offer.cuda_version is not None and offer.cuda_version < req.min_cuda)
        and (offer.verified or not req.verified_only)
    )
    if passes:
        return []
    reasons: list[str] = []
    if req.gpu_names and not any(gpu_matches(name, gpu.name, gpu.vram_gb) for name in req.gpu_names):
        reasons.append(f"{gpu.name} is not one of the requested GPUs ({', '.join(req.gpu_names)})")
    if gpu.count < req.num_gpus:
        reasons.append(f"{gpu.count} GPU(s), {req.num_gpus} requested")
    if req.min_vram_gb and gpu.vram_gb and gpu.vram_gb < req.min_vram_gb:
        reasons.append(f"{gpu.vram_gb:.0f} GB VRAM, at least {req.min_vram_gb:g} requested")
    if req.max_price_per_hour is not None and offer.price_per_hour > req.max_price_per_hour:
        reasons.append(f"${offer.price_per_hour:.3f}/h is above the ${req.max_price_per_hour:g}/h maximum")
    if req.spot != offer.spot:
        reasons.append("interruptible (spot) offer" if offer.spot else "on-demand offer (spot requested)")
    if req.min_reliability and offer.reliability < req.min_reliability:
        reasons.append(f"reliability {offer.reliability:.1%} is below {req.min_reliability:.1%}")
    if req.min_disk_gb and offer.disk_gb is not None and offer.disk_gb < req.min_disk_gb:
        reasons.append(f"{offer.disk_gb:.0f} GB disk, at least {req.min_disk_gb:g} requested")
    if req.min_inet_down_mbps and offer.inet_down_mbps is not None and offer.inet_down_mbps < req.min_inet_down_mbps:
        reasons.append(f"download {offer.inet_down_mbps:.0f} Mbit/s, at least {req.min_inet_down_mbps:g} requested")
    if req.min_cuda is not None and offer.cuda_version is not None and offer.cuda_version < req.min_cuda:
        reasons.append(f"CUDA {offer.cuda_version:g} is older than {req.min_cuda:g}")
    if req.verified_only and not offer.verified:
        reasons.append("unverified host")
    return reasons


def _cost_key(item: tuple[Offer, Numbers]) -> tuple[float, float, float, str, str]:
    offer, numbers = item
    return numbers[5], numbers[3], offer.price_per_hour, offer.provider, offer.offer_id


def rank(
    workload: Workload,
    offers: Iterable[Offer],
    *,
    budget: float | None = None,
    sort: SortMode = "cost",
    requirements: GpuRequest | None = None,
    limit: int | None = None,
    assumptions: Assumptions = DEFAULT,
    calibration: Calibration | None = None,
) -> Ranking:
    """Rank `offers` for `workload`. Infeasible offers and those failing `requirements` go to `rejected`;
    the rest are ordered by `sort`; those whose expected total exceeds `budget` are marked, not dropped."""
    if sort not in SORT_MODES:
        raise ValueError(f"sort must be one of {', '.join(SORT_MODES)}, got {sort!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    plan = CostModel(workload, assumptions, calibration)
    numbers_of = plan.numbers
    rejected: list[Rejected] = []
    # rows are (primary, secondary, tertiary, provider, offer id, index): tuples that sort without a key
    # function, the index breaking any remaining tie and pointing into `kept`
    rows: list[tuple[float, float, float, str, str, int]] = []
    kept: list[tuple[Offer, Numbers]] = []
    considered = 0
    for offer in offers:
        considered += 1
        if requirements is not None:
            failed = requirement_reasons(offer, requirements)
            if failed:
                rejected.append(Rejected(offer, tuple(failed)))
                continue
        numbers = numbers_of(offer)
        if numbers[6]:
            rejected.append(Rejected(offer, numbers[6]))
            continue
        expected, seconds, price = numbers[5], numbers[3], offer.price_per_hour
        if sort == "cost":
            rows.append((expected, seconds, price, offer.provider, offer.offer_id, len(kept)))
        elif sort == "time":
            rows.append((seconds, expected, price, offer.provider, offer.offer_id, len(kept)))
        else:
            rows.append((price, expected, seconds, offer.provider, offer.offer_id, len(kept)))
        kept.append((offer, numbers))
    chosen = heapq.nsmallest(limit, rows) if limit is not None and limit < len(rows) else sorted(rows)
    estimates = tuple(plan.materialize(*kept[row[5]]) for row in chosen)
    cheapest = None
    if kept:
        best = min(range(len(kept)), key=lambda i: _cost_key(kept[i]))
        cheapest = next((e for e in estimates if e.offer is kept[best][0]), None) or plan.materialize(*kept[best])
    over = frozenset(e.offer.key for e in estimates if budget is not None and e.expected_dollars > budget)
    return Ranking(
        estimates=estimates,
        over_budget=over,
        rejected=tuple(rejected),
        budget=budget,
        sort=sort,
        considered=considered,
        eligible=len(kept),
        cheapest=cheapest,
    )
