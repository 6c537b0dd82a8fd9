"""One typed record of a run: what it was planned as, what it rented, where it lives on the machine, what came back.

It is written as `<state dir>/runs/<run id>/run.json` after every change, so `gpurun attach`, `cancel` and `logs
--stderr` can pick the run up from another process, and read back into the same types. This module is the only
place that knows the file's shape (the estimate's JSON form is `gpurun.pricing.serial`'s).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpurun.errors import JournalError
from gpurun.job.machine import BoxLayout
from gpurun.models import CostEstimate, SshEndpoint
from gpurun.pricing.serial import estimate_from_dict, estimate_to_dict
from gpurun.remote.keys import run_dir


@dataclass
class TrainingFacts:
    """What the runner reported when it started (and the resolution planned)."""

    resolution: int = 0
    device: str = ""
    dtype: str = ""
    family: str = ""
    batch_size: int = 0
    total_steps: int = 0


@dataclass
class MachineUse:
    """One machine a run used. A run that loses its machine (preempted, the host gone) continues on another, so a
    record lists them all, in order; the last is the current one while the run lives."""

    provider: str
    offer: str
    instance_id: str
    gpu: str
    price_per_hour: float
    created_at: float
    #: when gpurun stopped paying for it (destroy confirmed, or the provider took it)
    ended_at: float | None = None
    #: how it ended: "" while in use, else done | failed | cancelled | detached | preempted | lost
    ended: str = ""
    #: the training step of the last state pulled from it (what the next machine resumes from)
    state_step: int | None = None
    #: for an interruption: seconds of work lost (since its last pulled state, and the next machine's setup until
    #: training resumed), and what they cost
    lost_s: float = 0.0
    lost_usd: float = 0.0

    def billed_usd(self, now: float) -> float:
        return max(0.0, (self.ended_at or now) - self.created_at) * self.price_per_hour / 3600.0

    @classmethod
    def from_json(cls, data: Any) -> MachineUse:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class RunRecord:
    """Everything one run has learned, from its plan to its last fetched file."""

    run_id: str
    output_dir: Path
    #: the estimate of the offer it runs on (the chosen one, then the one actually rented)
    estimate: CostEstimate
    budget: float | None = None
    artifact_grace_s: float = 1800.0
    keep_on_failure_min: float = 0.0
    # -- the machine, once rented --
    instance_id: str | None = None
    #: the $/h the provider bills (read back after create)
    price_per_hour: float = 0.0
    created_at: float | None = None
    workdir: str | None = None
    #: the provider started the watchdog with the container (the client adopts it on connect)
    boot_armed: bool = False
    #: None: the machine is this one (no SSH)
    ssh: SshEndpoint | None = None
    identity_file: str | None = None
    layout: BoxLayout | None = None
    #: the watchdog's hard deadline, on the machine's clock
    deadline: float | None = None
    # -- what happened --
    timings: dict[str, float] = field(default_factory=dict)
    #: output file → sha256 of the verified local copy
    fetched: dict[str, str] = field(default_factory=dict)
    final: str | None = None
    samples_per_s: float | None = None
    training: TrainingFacts = field(default_factory=TrainingFacts)
    # -- continuing on a new machine (version 3) --
    #: the machines used, in order (the current one last); a run recorded before version 3 lists none
    machines: list[MachineUse] = field(default_factory=list)
    #: the last resumable state pulled into `<output_dir>/state/`: its training step and sha256 of each file
    state_step: int | None = None
    state_files: dict[str, str] = field(default_factory=dict)
    #: when the last state was pulled (unix time)
    state_at: float | None = None
    #: what the user asked for (`TrainRequest.to_dict`): a training run's, so `gpurun resume` can plan again
    request: dict[str, Any] = field(default_factory=dict)

    @property
    def provider(self) -> str:
        return self.estimate.offer.provider

    def add_time(self, phase: str, seconds: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + seconds

    def earlier_usd(self) -> float:
        """What the machines before the current one cost (they have all ended)."""
        return sum(m.billed_usd(time.time()) for m in self.machines if m.instance_id != self.instance_id)

    # ---- the file ----------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 3,
            "run_id": self.run_id,
            "provider": self.provider,
            "output_dir": str(self.output_dir),
            "estimate": estimate_to_dict(self.estimate),
            "budget": self.budget,
            "artifact_grace_s": self.artifact_grace_s,
            "keep_on_failure_min": self.keep_on_failure_min,
            "instance_id": self.instance_id,
            "price_per_hour": self.price_per_hour,
            "created_at": self.created_at,
            "workdir": self.workdir,
            "boot_armed": self.boot_armed,
            "ssh": None if self.ssh is None else {"host": self.ssh.host, "port": self.ssh.port, "user": self.ssh.user},
            "identity_file": self.identity_file,
            "layout": None if self.layout is None else self.layout.to_dict(),
            "deadline": self.deadline,
            "timings": dict(self.timings),
            "fetched": dict(self.fetched),
            "final": self.final,
            "samples_per_s": self.samples_per_s,
            "training": dataclasses.asdict(self.training),
            "machines": [dataclasses.asdict(m) for m in self.machines],
            "state_step": self.state_step,
            "state_files": dict(self.state_files),
            "state_at": self.state_at,
            "request": dict(self.request),
        }

    @classmethod
    def from_json(cls, data: Any) -> RunRecord:
        """The record `to_json` wrote (and the version-1 and -2 files of earlier gpurun releases, which list no
        machines and no state). ValueError/TypeError when it is not one."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if not isinstance(data.get("run_id"), str) or not isinstance(data.get("output_dir"), str):
            raise ValueError("run_id and output_dir must be text")
        ssh = data.get("ssh")
        layout = data.get("layout")
        known = {f.name for f in dataclasses.fields(TrainingFacts)}
        training = {k: v for k, v in (data.get("training") or {}).items() if k in known}
        return cls(
            run_id=data["run_id"],
            output_dir=Path(data["output_dir"]),
            estimate=estimate_from_dict({"provider": data.get("provider"), **(data.get("estimate") or {})}),
            budget=data.get("budget"),
            artifact_grace_s=float(data.get("artifact_grace_s", 1800.0)),
            keep_on_failure_min=float(data.get("keep_on_failure_min", 0.0)),
            instance_id=data.get("instance_id"),
            price_per_hour=float(data.get("price_per_hour") or 0.0),
            created_at=data.get("created_at"),
            workdir=data.get("workdir"),
            boot_armed=bool(data.get("boot_armed", False)),
            ssh=None if not ssh else SshEndpoint(host=str(ssh["host"]), port=int(ssh["port"]), user=str(ssh["user"])),
            identity_file=data.get("identity_file"),
            layout=None if not layout else BoxLayout(**layout),
            deadline=data.get("deadline"),
            timings={str(k): float(v) for k, v in (data.get("timings") or {}).items()},
            fetched={str(k): str(v) for k, v in (data.get("fetched") or {}).items()},
            final=data.get("final"),
            samples_per_s=data.get("samples_per_s"),
            training=TrainingFacts(**training),
            machines=[MachineUse.from_json(m) for m in data.get("machines") or []],
            state_step=None if data.get("state_step") is None else int(data["state_step"]),
            state_files={str(k): str(v) for k, v in (data.get("state_files") or {}).items()},
            state_at=data.get("state_at"),
            request=dict(data.get("request") or {}),
        )

    def save(self) -> None:
        """Write run.json atomically."""
        path = record_path(self.run_id)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, run_id: str) -> RunRecord:
        """The saved record; JournalError (never a traceback) when it is missing or damaged."""
        path = record_path(run_id)
        if not path.exists():
            raise JournalError(
                f"run {run_id} has no saved state",
                where=str(path),
                hint="it never reached a machine; `gpurun runs` shows its phase",
            )
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise JournalError(
                f"the run's saved state is damaged: {exc}",
                where=str(path),
                hint="`gpurun down RUN` destroys its machine from the journal alone",
            ) from None


def record_path(run_id: str) -> Path:
    return run_dir(run_id) / "run.json"
