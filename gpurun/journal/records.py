"""What the run journal returns: plain frozen records, the phase and status vocabularies, and run ids."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from gpurun.models import SshEndpoint
from gpurun.phases import RUN_PHASES

#: every phase a run records: its intent, the run phases (gpurun.phases), and how it ended. Journals written before
#: the run phases were unified hold older names (creating, waiting, watchdog, bootstrap, sync, fetching,
#: terminating); they are read back as they are.
PHASES = ("intent", *(phase.name for phase in RUN_PHASES), "destroyed", "failed", "detached", "cancelled", "done")
#: phases that end a run; recording one sets the run's state to it
FINAL_STATES = ("done", "failed", "cancelled")
#: instance attempt statuses; the first three are alive (may be billing)
ALIVE_STATUSES = ("intent", "created", "destroy_unconfirmed")
DEAD_STATUSES = ("not_created", "destroyed")
#: Calibration key: (gpu name as the provider spells it, model family, resolution px, batch size)
CalibrationKey = tuple[str, str, int, int]

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def _base32(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return "".join(reversed(chars))


def new_run_id(now: float | None = None) -> str:
    """`r` + 9 base32 chars of milliseconds (sorts by time until year 3084) + 6 random ones: r01kf3m9x2c7qzab.

    30 random bits keep ids made in the same millisecond apart; record_intent refuses a duplicate anyway.
    """
    millis = int((time.time() if now is None else now) * 1000)
    return "r" + _base32(millis, 9) + _base32(secrets.randbits(30), 6)


def is_run_id(text: str) -> bool:
    """Whether `text` has the shape of an id `new_run_id` makes (tells a run's SSH key from a user's own)."""
    return len(text) == 16 and text[0] == "r" and all(c in _CROCKFORD for c in text[1:])


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One create attempt of a run: what was asked for, what the provider gave, whether it is gone."""

    run_id: str
    attempt: int
    provider: str
    offer_id: str | None
    gpu: str | None
    quoted_price: float | None
    instance_id: str | None
    billed_price: float | None
    ssh: SshEndpoint | None
    status: str
    created_at: float
    updated_at: float
    terminated_at: float | None

    @property
    def alive(self) -> bool:
        """True unless the provider confirmed it destroyed or never created. Unknown counts as alive."""
        return self.status not in DEAD_STATUSES


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    created_at: float
    updated_at: float
    #: active | done | failed | cancelled
    state: str
    #: the latest phase recorded (see PHASES)
    phase: str
    label: str | None
    budget: float | None
    output_dir: str | None
    workload: dict[str, Any]
    estimate: dict[str, Any]
    config_toml: str | None
    error: str | None
    finished_at: float | None
    #: byte offset in the runner's event stream up to which the client has followed (for attach)
    event_offset: int
    #: dollars recorded with record_cost so far
    spent: float
    #: the latest create attempt; earlier ones are in Journal.instances(run_id)
    instance: InstanceRecord | None = None
    #: whether any attempt of this run may still be billing
    alive: bool = False

    @property
    def provider(self) -> str | None:
        return self.instance.provider if self.instance else None

    @property
    def instance_id(self) -> str | None:
        return self.instance.instance_id if self.instance else None


@dataclass(frozen=True, slots=True)
class PhaseRecord:
    run_id: str
    name: str
    detail: str
    t: float


@dataclass(frozen=True, slots=True)
class CostRecord:
    run_id: str
    phase: str
    seconds: float
    dollars: float
    t: float


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    run_id: str
    path: str
    sha256: str
    bytes: int
    t: float
