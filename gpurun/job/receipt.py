"""The run's receipt: estimated against actual time and dollars, phase by phase, written as receipt.json.

One line per run phase (`gpurun.phases`: boot, setup, upload, training, fetch, teardown), each measured against
the estimate phases it covers. Actual dollars are the billed $/h times the measured seconds; the total is billed
from create to confirmed destroy, on every machine the run used: a run that lost its machine (an interruptible
offer taken, a host gone) and continued on another lists each one, with the minutes each interruption lost and
what they cost.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpurun.models import CostEstimate
from gpurun.phases import RUN_PHASES


@dataclass(frozen=True)
class ReceiptLine:
    phase: str
    estimated_s: float
    actual_s: float | None
    estimated_usd: float
    actual_usd: float | None


@dataclass
class Receipt:
    run_id: str
    provider: str
    offer: str
    gpu: str
    quoted_per_hour: float
    billed_per_hour: float
    lines: list[ReceiptLine]
    estimated_total_usd: float
    estimated_expected_usd: float
    actual_total_usd: float
    billed_seconds: float
    budget: float | None
    outcome: str
    destroyed: bool
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    extra_usd: dict[str, float] = field(default_factory=dict)
    #: every machine the run used, in order: provider, offer, instance, $/h, minutes billed, $, how it ended
    machines: list[dict[str, Any]] = field(default_factory=list)
    #: one per machine lost mid-run: which, minutes of work lost (since its last pulled state, plus the next
    #: machine's setup until training ran again) and their cost
    interruptions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = 1
        return data

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)


def build_receipt(
    *,
    run_id: str,
    estimate: CostEstimate,
    billed_per_hour: float,
    actual_seconds: dict[str, float],
    billed_seconds: float,
    budget: float | None,
    outcome: str,
    destroyed: bool,
    artifacts: list[dict[str, Any]] | None = None,
    earlier_usd: float = 0.0,
    machines: list[dict[str, Any]] | None = None,
) -> Receipt:
    """Compare the estimate with what happened. `actual_seconds` maps run phase names to measured seconds;
    `earlier_usd` is what the machines before the current one cost (`machines` lists them all)."""
    by_name = {phase.name: phase for phase in estimate.phases}
    per_second = billed_per_hour / 3600.0
    lines = []
    for phase in RUN_PHASES:
        est_s = sum(by_name[n].seconds for n in phase.covers if n in by_name)
        est_usd = sum(by_name[n].dollars for n in phase.covers if n in by_name)
        actual = actual_seconds.get(phase.name)
        lines.append(ReceiptLine(phase.name, est_s, actual, est_usd, None if actual is None else actual * per_second))
    extra: dict[str, float] = {name: by_name[name].dollars for name in ("storage", "bandwidth") if name in by_name}
    offer = estimate.offer
    return Receipt(
        run_id=run_id,
        provider=offer.provider,
        offer=offer.key,
        gpu=f"{offer.gpu.name} x{offer.gpu.count}",
        quoted_per_hour=offer.price_per_hour,
        billed_per_hour=billed_per_hour,
        lines=lines,
        estimated_total_usd=estimate.dollars,
        estimated_expected_usd=estimate.expected_dollars,
        actual_total_usd=billed_seconds * per_second + earlier_usd,
        billed_seconds=billed_seconds,
        budget=budget,
        outcome=outcome,
        destroyed=destroyed,
        artifacts=list(artifacts or []),
        extra_usd=extra,
        machines=list(machines or []),
        interruptions=_interruptions(machines or []),
    )


def _interruptions(machines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The machines the run lost mid-training, with the minutes each loss cost and their dollars."""
    return [
        {"instance_id": m["instance_id"], "offer": m["offer"], "ended": m["ended"],
         "minutes_lost": round(m["lost_s"] / 60.0, 3), "lost_usd": m["lost_usd"]}
        for m in machines
        if m.get("ended") in ("preempted", "lost")
    ]  # fmt: skip
