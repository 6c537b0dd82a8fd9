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
from gpurun.job.machine import BoxLayout
from gpurun.job.options import JobOptions
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
        spent = 0.0
        if self.record.created_at is not None:
            spent = (time.time() - self.record.created_at) / 3600.0 * self.record.price_per_hour
        return Money(spent=spent, projected=max(spent, self.record.estimate.dollars), budget=self.record.budget)

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
