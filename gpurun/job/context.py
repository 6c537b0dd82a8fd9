"""What every step of a run shares: its record, the journal, the view, the options, the machine once it is up,
the user's stop requests, and `phase()`, the one way a phase is entered (journalled, shown, timed, bounded)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gpurun.errors import DeadlineError
from gpurun.events import Step
from gpurun.job.machine import BoxLayout
from gpurun.job.options import JobOptions
from gpurun.job.projection import projected_dollars
from gpurun.job.receipt import Receipt
from gpurun.job.record import RunRecord
from gpurun.job.view import Money, View
from gpurun.journal import Journal
from gpurun.models import Instance
from gpurun.phases import RunPhase
from gpurun.provision.base import Provider
from gpurun.remote.transport import Transport


@dataclass
class RunContext:
    """One run in progress, in this process. The CLI's Ctrl-C handler sets `stop_request` (detach) and
    `cancel_request` (cancel); `launched` says whether there is a runner to detach from."""

    record: RunRecord
    view: View
    journal: Journal
    options: JobOptions
    provider: Provider | None = None
    instance: Instance | None = None
    transport: Transport | None = None
    layout: BoxLayout | None = None
    launched: bool = False
    #: why the runner was stopped: "cancel" | "budget" | None
    stopped_for: str | None = None
    receipt: Receipt | None = None
    stop_request: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_request: asyncio.Event = field(default_factory=asyncio.Event)
    lease_task: asyncio.Task[None] | None = None
    fetches: list[asyncio.Task[None]] = field(default_factory=list)
    #: one state pull at a time (statepull.py); a checkpoint was announced whose state is not pulled yet
    state_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    state_due: bool = False
    #: the phase being run and since when (monotonic), and the runner's latest step: the projection's inputs
    current_phase: RunPhase | None = None
    phase_started: float = 0.0
    last_step: Step | None = None
    #: set when this run is one job of a queue: the run that rented the machine (it arms, renews and destroys;
    #: this one only uses it)
    machine: RunContext | None = None

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def out_dir(self) -> Path:
        return self.record.output_dir

    def save(self) -> None:
        self.record.save()

    def note(self, phase: str, detail: str = "") -> None:
        """A step inside a phase: journalled and shown, not timed separately."""
        self.journal.phase(self.run_id, phase, detail)
        self.view.phase(phase, detail)

    def money(self) -> Money:
        """Spent so far, and the projected total at the pace measured now (`gpurun.job.projection`)."""
        record = self.record
        # billed from create; before that, the quoted price is what the projection will be billed at
        price = record.price_per_hour or record.estimate.offer.price_per_hour
        spent = record.earlier_usd()  # the machines a continued run used before this one
        if record.created_at is not None:
            spent += (time.time() - record.created_at) / 3600.0 * record.price_per_hour
        done = {name for name in record.timings if self.current_phase is None or name != self.current_phase.name}
        projected = projected_dollars(
            record.estimate, spent=spent, price_per_hour=price, done=done, current=self.current_phase,
            current_elapsed_s=time.monotonic() - self.phase_started if self.current_phase else 0.0,
            last_step=self.last_step,
        )  # fmt: skip
        return Money(spent=spent, projected=projected, budget=record.budget)

    @asynccontextmanager
    async def phase(self, phase: RunPhase, detail: str = "") -> AsyncIterator[None]:
        """Enter `phase`: journal it, show it, add its time to the record (the receipt's line), and end it with a
        DeadlineError when it outlasts its `JobOptions` bound."""
        self.note(phase.name, detail)
        limit = getattr(self.options, phase.deadline) if phase.deadline else None
        started = time.monotonic()
        task = asyncio.current_task()
        fired = False

        def expire() -> None:
            nonlocal fired
            fired = True
            if task is not None:
                task.cancel()

        timer = asyncio.get_running_loop().call_later(limit, expire) if limit else None
        self.current_phase, self.phase_started = phase, started
        try:
            yield
        except asyncio.CancelledError:
            if fired:
                if task is not None and hasattr(task, "uncancel"):
                    task.uncancel()  # (3.11+) the cancel was ours, and it is answered by the DeadlineError
                raise DeadlineError(
                    f"the {phase.name} phase ran past its deadline of {limit:g} s",
                    where=self.run_id,
                    hint=f"GPURUN_{(phase.deadline or '').upper()} raises it",
                ) from None
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self.record.add_time(phase.name, time.monotonic() - started)
            self.current_phase = None
