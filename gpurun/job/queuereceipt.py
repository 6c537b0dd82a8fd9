"""A queue's receipt: every job's outcome and cost, every machine's bill, the plan's estimate against what was
billed, written as `<queue>/receipt.json` next to `index.html` (links to each job's report)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpurun.report.index import write_index as write_index_page


@dataclass
class JobOutcome:
    """One job: done | failed | cancelled | not run, what it cost (its share of its machine's time)."""

    name: str
    outcome: str
    error: str | None = None
    run_id: str | None = None
    machine: str | None = None
    seconds: float = 0.0
    dollars: float = 0.0
    folder: str | None = None
    final: str | None = None


@dataclass
class MachineOutcome:
    """One machine: which slot of the plan it filled, what it ran, what it was billed, whether it is gone."""

    run_id: str
    slot: int
    offer: str
    instance_id: str | None
    jobs: list[str]
    outcome: str
    error: str | None
    seconds: float
    dollars: float
    destroyed: bool
    receipt: str


@dataclass
class QueueReceipt:
    queue_id: str
    mode: str
    budget: float | None
    estimated_expected_usd: float
    jobs: list[JobOutcome]
    machines: list[MachineOutcome]
    alternatives: dict[str, Any] = field(default_factory=dict)
    #: wall-clock seconds of the whole queue
    seconds: float = 0.0

    @property
    def actual_total_usd(self) -> float:
        """What the machines were billed, create to destroy (the jobs' costs are shares of it)."""
        return sum(m.dollars for m in self.machines)

    @property
    def ok(self) -> bool:
        return all(job.outcome == "done" for job in self.jobs)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(version=1, type="queue", actual_total_usd=self.actual_total_usd, ok=self.ok)
        return data

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)


def write_index(folder: Path, receipt: QueueReceipt) -> Path:
    return write_index_page(folder, receipt.to_dict())
