"""The run's receipt: estimated against actual time and dollars, phase by phase, written as receipt.json.

The estimate's fine phases (boot, install, model, upload, caching, training, samples, fetch) are grouped into
the phases the orchestrator can time on the wire (boot, setup, upload, training, fetch, teardown). Actual
dollars are the billed $/h times the measured seconds; the total is billed from create to confirmed destroy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: actual phase → the estimate phases it covers
GROUPS: dict[str, tuple[str, ...]] = {
    "boot": ("boot",),
    "setup": ("install", "model"),
    "upload": ("upload",),
    "training": ("caching", "training", "samples"),
    "fetch": ("fetch",),
    "teardown": (),
}


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
    estimate: dict[str, Any],
    billed_per_hour: float,
    actual_seconds: dict[str, float],
    billed_seconds: float,
    budget: float | None,
    outcome: str,
    destroyed: bool,
    artifacts: list[dict[str, Any]] | None = None,
) -> Receipt:
    """Compare the estimate (`api.estimate_dict` form, as the journal keeps it) with what happened.

    `actual_seconds` maps GROUPS keys to measured seconds."""
    by_name = {phase["name"]: phase for phase in estimate.get("phases", [])}
    per_second = billed_per_hour / 3600.0
    lines = []
    for group, names in GROUPS.items():
        est_s = sum(float(by_name[n]["seconds"]) for n in names if n in by_name)
        est_usd = sum(float(by_name[n]["dollars"]) for n in names if n in by_name)
        actual = actual_seconds.get(group)
        lines.append(ReceiptLine(group, est_s, actual, est_usd, None if actual is None else actual * per_second))
    extra = {name: float(by_name[name]["dollars"]) for name in ("storage", "bandwidth") if name in by_name}
    gpu = estimate.get("gpu") or {}
    return Receipt(
        run_id=run_id,
        provider=str(estimate.get("provider", "")),
        offer=str(estimate.get("key", "")),
        gpu=f"{gpu.get('name', '?')} x{gpu.get('count', 1)}",
        quoted_per_hour=float(estimate.get("price_per_hour", 0.0)),
        billed_per_hour=billed_per_hour,
        lines=lines,
        estimated_total_usd=float(estimate.get("dollars", 0.0)),
        estimated_expected_usd=float(estimate.get("expected_dollars", 0.0)),
        actual_total_usd=billed_seconds * per_second,
        billed_seconds=billed_seconds,
        budget=budget,
        outcome=outcome,
        destroyed=destroyed,
        artifacts=list(artifacts or []),
        extra_usd=extra,
    )


def render_receipt(receipt: Receipt) -> Any:
    """A rich table of the receipt."""
    from rich.table import Table

    from gpurun.render import human_seconds

    table = Table(
        title=f"receipt {receipt.run_id} — {receipt.offer} ({receipt.gpu}) at ${receipt.billed_per_hour:.3f}/h",
        title_justify="left",
    )
    for column in ("phase", "est. time", "actual", "est. $", "actual $"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for line in receipt.lines:
        table.add_row(
            line.phase,
            human_seconds(line.estimated_s),
            "—" if line.actual_s is None else human_seconds(line.actual_s),
            f"{line.estimated_usd:.4f}",
            "—" if line.actual_usd is None else f"{line.actual_usd:.4f}",
        )
    budget = f" of ${receipt.budget:.2f} budget" if receipt.budget is not None else ""
    table.caption = (
        f"billed {human_seconds(receipt.billed_seconds)}: ${receipt.actual_total_usd:.4f}{budget} "
        f"(estimated ${receipt.estimated_total_usd:.4f}, expected ${receipt.estimated_expected_usd:.4f}); "
        f"instance {'destroyed' if receipt.destroyed else 'NOT confirmed destroyed — run `gpurun runs --all`'}"
    )
    return table
