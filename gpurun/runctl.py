"""Controlling a run whose runner is (or was) on a machine: follow its events, pull checkpoints, stop it, fetch
what exists, tear the machine down, write the receipt.

`Job` (job.py) extends this with renting and setting the machine up. `gpurun attach` and `gpurun cancel`
reopen a run from the journal and its `run.json` with `RunControl.reopen()` and finish it the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpurun import onbox, untrusted
from gpurun.errors import BudgetError, GpurunError, JournalError, RunnerError
from gpurun.events import Checkpoint, Done, ErrorEvent, Event, Sample, Start, Step
from gpurun.journal import Journal
from gpurun.lifecycle import destroy_confirmed
from gpurun.live import Money, View
from gpurun.models import Instance, SshEndpoint
from gpurun.provision.base import Provider
from gpurun.receipt import Receipt, build_receipt
from gpurun.remote.transport import Transport

#: the runner's exit status after SIGTERM ("save a checkpoint and exit"): 128 + 15
RUNNER_STOPPED_RC = 143


@dataclass(frozen=True)
class JobOptions:
    """Knobs of the orchestration itself; the timings can be shortened through GPURUN_<NAME> env vars."""

    detach: bool = False
    lease_interval_s: float = 60.0
    lease_ttl_s: float = 300.0
    watchdog_poll_s: float = 15.0
    ready_timeout_s: float = 900.0
    poll_s: float = 5.0
    connect_timeout_s: float = 300.0
    bootstrap_timeout_s: float = 3600.0
    sync_timeout_s: float = 3600.0
    fetch_timeout_s: float = 1800.0
    #: stop the runner this long before the watchdog's hard deadline, so its last checkpoint reaches us
    client_deadline_margin_s: float = 90.0
    #: SIGTERM → SIGKILL grace for the runner (it saves a checkpoint in between)
    runner_stop_grace_s: float = 60.0
    #: how long a watchdog armed at container start waits for this client's first lease before it destroys the
    #: machine: covering the wait for SSH (connect_timeout_s) and the adoption, nothing more
    boot_lease_s: float = 600.0
    #: when the provider refuses every destroy, the watchdog shuts the machine down (`shutdown -h now`). Only for
    #: machines that are rented whole; GPURUN_WATCHDOG_FALLBACK=0 turns it off (the tests' "instances" are users
    #: on the test machine)
    watchdog_fallback: bool = True

    @classmethod
    def from_env(cls, **overrides: Any) -> JobOptions:
        values: dict[str, Any] = {}
        for name, spec in cls.__dataclass_fields__.items():
            env = os.environ.get(f"GPURUN_{name.upper()}")
            if not env:
                continue
            if spec.type in ("float", float):
                values[name] = float(env)
            elif spec.type in ("bool", bool) and name != "detach":
                values[name] = env.strip().lower() not in ("0", "false", "no", "off")
        values.update(overrides)
        return cls(**values)


class Detached(Exception):
    """The user detached: the run goes on under the watchdog."""


@dataclass
class RunState:
    """What a run has learned; saved as `<state>/runs/<run_id>/run.json` for attach and cancel."""

    run_id: str
    provider: str
    output_dir: str
    instance_id: str | None = None
    price_per_hour: float = 0.0
    created_at: float | None = None
    layout: dict[str, str] | None = None
    ssh: dict[str, Any] | None = None
    workdir: str | None = None
    identity_file: str | None = None
    budget: float | None = None
    deadline: float | None = None
    artifact_grace_s: float = 1800.0
    keep_on_failure_min: float = 0.0
    estimate: dict[str, Any] = field(default_factory=dict)
    gpu: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    fetched: dict[str, str] = field(default_factory=dict)
    final: str | None = None
    samples_per_s: float | None = None
    training: dict[str, Any] = field(default_factory=dict)
    #: the provider started the watchdog with the container (the client adopts it on connect)
    boot_armed: bool = False

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> RunState:
        """The saved state; JournalError (never a traceback) when the file is damaged."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            known = set(cls.__dataclass_fields__)
            state = cls(**{k: v for k, v in data.items() if k in known})
            if not isinstance(state.run_id, str) or not isinstance(state.output_dir, str):
                raise ValueError("run_id and output_dir must be text")
            return state
        except (OSError, ValueError, TypeError) as exc:
            raise JournalError(
                f"the run's saved state is damaged: {exc}",
                where=str(path),
                hint="`gpurun down RUN` destroys its machine from the journal alone",
            ) from None


def state_path(run_id: str) -> Path:
    from gpurun.remote.keys import run_dir

    return run_dir(run_id) / "run.json"


class RunControl:
    """Follow, fetch, stop and tear down one run's machine."""

    def __init__(self, state: RunState, view: View, journal: Journal, options: JobOptions) -> None:
        self.state = state
        self.run_id = state.run_id
        self.view = view
        self.journal = journal
        self.options = options
        self.out_dir = Path(state.output_dir)
        self.transport: Transport | None = None
        self.layout: onbox.BoxLayout | None = None
        self.instance: Instance | None = None
        self.provider: Provider | None = None
        self.stop_request = asyncio.Event()
        self.cancel_request = asyncio.Event()
        self.launched = False
        self.stopped_for: str | None = None
        self.receipt: Receipt | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._fetches: list[asyncio.Task[None]] = []

    # ---- bookkeeping ----------------------------------------------------------------------------------------

    def save_state(self) -> None:
        self.state.save(state_path(self.run_id))

    def phase(self, name: str, detail: str = "") -> None:
        self.journal.phase(self.run_id, name, detail)
        self.view.phase(name, detail)

    def timed(self, group: str, started: float) -> None:
        self.state.timings[group] = self.state.timings.get(group, 0.0) + (time.monotonic() - started)

    def money(self) -> Money:
        spent = 0.0
        if self.state.created_at is not None:
            spent = (time.time() - self.state.created_at) / 3600.0 * self.state.price_per_hour
        projected = max(spent, float(self.state.estimate.get("dollars", 0.0)))
        return Money(spent=spent, projected=projected, budget=self.state.budget)

    # ---- reopening a run (attach, cancel) -------------------------------------------------------------------

    @classmethod
    async def reopen(cls, run_id: str, view: View, journal: Journal, options: JobOptions) -> RunControl:
        """The run's machine, reconnected from the journal and run.json; JournalError if there is none."""
        from gpurun.provision.registry import make_provider

        record = journal.get(run_id)
        path = state_path(record.run_id)
        if not path.exists():
            raise JournalError(
                f"run {record.run_id} has no saved state",
                where=str(path),
                hint="it never reached a machine; `gpurun runs` shows its phase",
            )
        control = cls(RunState.load(path), view, journal, options)
        if control.state.instance_id is None or control.state.layout is None:
            raise JournalError(f"run {record.run_id} never reached its machine", hint="nothing to attach to")
        if not record.alive:
            raise JournalError(
                f"run {record.run_id}'s machine is already destroyed ({record.phase})",
                hint=f"its outputs are in {control.out_dir}",
            )
        control.provider = make_provider(control.state.provider)
        control.instance = await control.provider.get(control.state.instance_id)
        control.layout = onbox.BoxLayout(**control.state.layout)
        control.transport = await control.connect_saved()
        control.launched = True
        return control

    async def connect_saved(self) -> Transport:
        """The transport to the run's machine from what run.json recorded."""
        if self.state.ssh is None:
            from gpurun.remote.local import LocalTransport

            return LocalTransport(Path(self.state.workdir) if self.state.workdir else Path.home())
        from gpurun.remote.keys import ensure_run_keys
        from gpurun.remote.session import connect

        keys = ensure_run_keys(self.run_id)
        endpoint = SshEndpoint(**{k: v for k, v in self.state.ssh.items() if k in ("host", "port", "user")})
        identity = Path(self.state.identity_file or keys.private_key)
        return await connect(
            endpoint, identity, keys.known_hosts, deadline=time.monotonic() + self.options.connect_timeout_s
        )

    async def attach(self) -> Receipt:
        """Resume following where the journal stopped, fetch what is missing, destroy, receipt."""
        record = self.journal.get(self.run_id)
        outcome, error = "failed", None
        try:
            self.start_leases()
            self.phase("training", "attached")
            started = time.monotonic()
            await self.follow(offset=record.event_offset)
            self.timed("training", started)
            outcome = "cancelled" if self.stopped_for == "cancel" else "done"
        except Detached:
            outcome = "detached"
        except GpurunError as exc:
            error = exc
            raise
        finally:
            await asyncio.shield(self.finish(outcome, error))
        assert self.receipt is not None
        return self.receipt

    async def cancel(self) -> Receipt:
        """Stop the runner (it saves a checkpoint), fetch what exists, destroy."""
        outcome, error = "cancelled", None
        try:
            assert self.transport is not None and self.layout is not None
            if await self.transport.is_running(self.layout.pid):
                await self.stop_runner("cancel")
            await self.fetch_everything()
        except GpurunError as exc:
            outcome, error = "failed", exc
            raise
        finally:
            await asyncio.shield(self.finish(outcome, error))
        assert self.receipt is not None
        return self.receipt

    # ---- the lease ------------------------------------------------------------------------------------------

    def start_leases(self) -> None:
        self._lease_task = asyncio.create_task(self._renew_leases())

    async def _renew_leases(self) -> None:
        seq = int(time.time())
        while True:
            await asyncio.sleep(self.options.lease_interval_s)
            seq += 1
            try:
                assert self.transport is not None and self.layout is not None
                await onbox.renew_lease(self.transport, self.layout, self.run_id, seq)
            except GpurunError:
                continue  # the follower reconnects; the next renewal goes over the new connection

    # ---- following ------------------------------------------------------------------------------------------

    async def reconnect(self) -> Transport:
        assert self.transport is not None
        self.transport = await self.transport.reconnect(  # type: ignore[attr-defined]
            deadline=time.monotonic() + self.options.connect_timeout_s
        )
        return self.transport

    async def follow(self, offset: int) -> None:
        """Stream events into the view and events.jsonl, pull checkpoints as they appear, honour stop requests
        and the budget; then fetch everything the runner wrote. Raises RunnerError if the runner failed."""
        from gpurun.remote.follow import follow_events

        assert self.transport is not None and self.layout is not None
        follower = follow_events(
            self.transport,
            self.layout.events,
            self.layout.pid,
            offset=offset,
            reconnect=self.reconnect,
            python="python3",
        )
        terminal: Event | None = None
        budget_task = asyncio.create_task(self._budget_guard())
        stop_wait = asyncio.create_task(self.stop_request.wait())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / "events.jsonl").open("a", encoding="utf-8") as log:
            try:
                iterator = follower.__aiter__()
                while True:
                    item_task = asyncio.ensure_future(anext(iterator))
                    done, _ = await asyncio.wait({item_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                    if item_task not in done:
                        item_task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, GpurunError):
                            await item_task
                        if not self.cancel_request.is_set():
                            raise Detached()
                        await self.stop_runner("cancel")
                        stop_wait = asyncio.create_task(asyncio.Event().wait())  # drain to the runner's end
                        iterator = follow_events(
                            self.transport,
                            self.layout.events,
                            self.layout.pid,
                            offset=follower.offset,
                            reconnect=self.reconnect,
                            python="python3",
                        ).__aiter__()
                        continue
                    try:
                        item = item_task.result()
                    except StopAsyncIteration:
                        break
                    log.write(item.line + "\n")
                    log.flush()
                    self.journal.record_event_offset(self.run_id, item.offset)
                    self.on_event(item.event)
                    if isinstance(item.event, (Done, ErrorEvent)):
                        terminal = item.event
            finally:
                budget_task.cancel()
                stop_wait.cancel()
        await self.drain_fetches()
        await self.fetch_everything()
        if self.stopped_for == "budget":
            raise BudgetError(
                "the budget ran out before training finished; the last checkpoint was fetched",
                where=str(self.out_dir),
                hint="raise --budget, or train fewer epochs",
            )
        if self.stopped_for == "cancel":
            return
        if isinstance(terminal, ErrorEvent):
            raise RunnerError(
                terminal.message,
                hint=terminal.hint or None,
                where="runner",
                last_lines=await onbox.stderr_tail(self.transport, self.layout),
            )
        if terminal is None:
            lines = await onbox.stderr_tail(self.transport, self.layout)
            raise RunnerError(
                f"the runner stopped without finishing (exit {follower.runner_exit})", where="runner",
                last_lines=lines, hint=("its last lines: " + " | ".join(lines[-3:])) if lines else None,
            )  # fmt: skip

    def on_event(self, event: Event) -> None:
        self.view.event(event)
        if isinstance(event, Step):
            self.view.money(self.money())
        elif isinstance(event, Start):
            self.state.training.update(
                device=event.device,
                dtype=event.dtype,
                family=event.family,
                batch_size=event.batch_size,
                total_steps=event.total_steps,
            )
            self.journal.phase(self.run_id, "training", f"{event.device} {event.dtype}, {event.total_steps} steps")
        elif isinstance(event, (Checkpoint, Sample)) and event.path:
            self._fetches.append(asyncio.create_task(self.fetch(event.path, event.sha256, event.bytes)))
            if isinstance(event, Checkpoint) and event.final:
                self.state.final = event.path
        elif isinstance(event, Done):
            self.state.samples_per_s = event.samples_per_s
            if event.final:
                self.state.final = event.final

    # ---- files ----------------------------------------------------------------------------------------------

    async def fetch(self, rel_path: str, sha256: str, size: int) -> None:
        """Fetch one output file the machine reported. Its name, size and hash come from an untrusted host: they
        are checked first, and the file is written only inside this run's folder."""
        from gpurun.remote.sync import fetch_verified

        assert self.transport is not None and self.layout is not None
        where = self.transport.where
        name = untrusted.artifact_name(rel_path, where=where)
        digest = untrusted.sha256_hex(sha256, where=where)
        size = untrusted.artifact_size(size, where=where)
        if self.state.fetched.get(name) == digest:
            return
        local = untrusted.inside(self.out_dir, name)
        result = await fetch_verified(
            self.transport, self.layout.path("out", name), local, digest, size=size or None,
            max_bytes=untrusted.MAX_ARTIFACT_BYTES,
        )  # fmt: skip
        self.state.fetched[name] = digest
        self.journal.record_artifact(self.run_id, result.path, result.sha256, result.bytes)
        self.save_state()

    async def drain_fetches(self) -> None:
        pending, self._fetches = self._fetches, []
        results = await asyncio.gather(*pending, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures[1:]:
            self.view.message(f"fetch failed: {failure}")
        if failures:
            raise failures[0]

    async def fetch_everything(self) -> None:
        """Every LoRA and grid the runner wrote, verified against a checksum taken on the machine."""
        assert self.transport is not None and self.layout is not None
        started = time.monotonic()
        self.phase("fetching", "LoRA files and sample grids")
        outputs = await onbox.remote_outputs(self.transport, self.layout)
        for rel_path, (size, sha256) in sorted(outputs.items()):
            self._fetches.append(asyncio.create_task(self.fetch(rel_path, sha256, size)))
        await asyncio.wait_for(self.drain_fetches(), self.options.fetch_timeout_s)
        self.timed("fetch", started)

    # ---- stopping -------------------------------------------------------------------------------------------

    async def _budget_guard(self) -> None:
        """Stop the runner shortly before the watchdog's hard deadline, so its last checkpoint reaches us."""
        if self.state.deadline is None:
            return
        await asyncio.sleep(max(0.0, self.state.deadline - self.options.client_deadline_margin_s - time.time()))
        self.view.message("the budget is nearly spent: stopping the runner (it saves a checkpoint first)")
        await self.stop_runner("budget")

    async def stop_runner(self, why: str) -> None:
        """SIGTERM = "save a checkpoint and exit"; SIGKILL after the grace."""
        assert self.transport is not None and self.layout is not None
        self.stopped_for = why
        self.journal.phase(self.run_id, "training", f"stopping the runner: {why}")
        await self.transport.kill(self.layout.pid, grace_s=self.options.runner_stop_grace_s)

    # ---- the end --------------------------------------------------------------------------------------------

    async def finish(self, outcome: str, error: GpurunError | None) -> None:
        """Terminate (unless detached), record everything, write the receipt."""
        if self._lease_task is not None:
            self._lease_task.cancel()
        for task in self._fetches:
            task.cancel()
        destroyed = False
        started = time.monotonic()
        if outcome == "detached":
            self.journal.phase(self.run_id, "detached", "the watchdog keeps the machine honest")
            self.view.message(
                f"detached: training goes on. `gpurun attach {self.run_id}` follows it and fetches "
                f"the result; `gpurun cancel {self.run_id}` stops it and destroys the machine"
            )
        elif self.instance is not None and self.provider is not None:
            keep = self.state.keep_on_failure_min
            if outcome == "failed" and keep > 0 and self.transport is not None and self.layout is not None:
                await self.keep_for_debugging(keep)
            else:
                destroyed = await self.teardown()
            self.timed("teardown", started)
        billed = 0.0 if self.state.created_at is None or outcome == "detached" else time.time() - self.state.created_at
        if self.state.samples_per_s and outcome == "done":
            self.journal.record_throughput(
                self.run_id, gpu=str(self.state.gpu.get("name", "?")), family=str(self.state.training.get("family")),
                resolution=int(self.state.training.get("resolution", 0) or 0),
                batch_size=int(self.state.training.get("batch_size", 1) or 1), samples_per_s=self.state.samples_per_s,
            )  # fmt: skip
        self.receipt = build_receipt(
            run_id=self.run_id, estimate=self.state.estimate, billed_per_hour=self.state.price_per_hour,
            actual_seconds=dict(self.state.timings), billed_seconds=billed, budget=self.state.budget,
            outcome=outcome, destroyed=destroyed,
            artifacts=[{"path": p, "sha256": s} for p, s in sorted(self.state.fetched.items())],
        )  # fmt: skip
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.receipt.write(self.out_dir / "receipt.json")
        if outcome != "detached":
            self.journal.record_cost(self.run_id, "total", billed, self.receipt.actual_total_usd)
        self.save_state()
        if outcome == "done":
            self.journal.mark_finished(self.run_id, "done")
        elif outcome in ("failed", "cancelled"):
            self.journal.mark_finished(self.run_id, outcome, None if error is None else error.one_line())
        if self.transport is not None:
            with contextlib.suppress(Exception):
                await self.transport.close()
        if self.provider is not None:
            with contextlib.suppress(Exception):
                await self.provider.aclose()

    async def teardown(self) -> bool:
        """Destroy the machine and confirm it; on machines gpurun did not rent, stop the runner and watchdog."""
        assert self.instance is not None and self.provider is not None
        self.phase("terminating", self.instance.instance_id)
        nothing_rented = self.state.ssh is None or self.provider.name == "ssh"
        if nothing_rented and self.transport is not None and self.layout is not None:
            with contextlib.suppress(GpurunError):
                if await self.transport.is_running(self.layout.pid):
                    await self.transport.kill(self.layout.pid, grace_s=30.0)
                await onbox.stop_watchdog(self.transport, self.layout)
        confirmed = await destroy_confirmed(self.provider, self.instance.instance_id, poll_s=self.options.poll_s)
        if confirmed and not nothing_rented and self.transport is not None and self.layout is not None:
            # The watchdog normally dies with the box. Where the host outlives the provider's instance (a reused
            # host, our loopback tests), a watchdog left behind would later fire its fallback on a machine that is
            # no longer ours: disarm it, best effort, without waiting on a box that is already gone.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(onbox.stop_watchdog(self.transport, self.layout), 5.0)
        self.journal.mark_terminated(self.run_id, confirmed, instance_id=self.instance.instance_id)
        await self.forget_run_key()
        if not confirmed:
            self.view.message(
                f"WARNING: {self.provider.name} has not confirmed that instance "
                f"{self.instance.instance_id} is gone; `gpurun down {self.run_id}` retries"
            )
        return confirmed

    async def forget_run_key(self) -> None:
        """Take the run's SSH key off the provider account (Vast keeps account keys for every later machine)."""
        from gpurun.remote.keys import ensure_run_keys

        assert self.provider is not None
        try:
            await self.provider.forget_ssh_key(ensure_run_keys(self.run_id).public_key_text())
        except GpurunError as exc:
            self.view.message(f"could not remove the run's SSH key from the {self.provider.name} account: "
                              f"{exc.one_line()} (`gpurun down --strays` retries)")  # fmt: skip

    def destroy_action(self) -> dict[str, Any]:
        """The watchdog's destroy recipe for this machine, from its provider."""
        assert self.instance is not None and self.provider is not None
        return self.provider.self_destroy(self.instance)

    async def keep_for_debugging(self, minutes: float) -> None:
        """--keep-on-failure: the watchdog takes a config whose deadline is N minutes out."""
        assert self.transport is not None and self.layout is not None
        deadline = await onbox.remote_clock(self.transport) + minutes * 60
        if self.state.deadline is not None:
            deadline = min(deadline, self.state.deadline)  # debugging never outlives the budget
        await onbox.arm_watchdog(self.transport, self.layout, self.run_id, self.destroy_action(), deadline=deadline,
                                 lease_ttl_s=minutes * 60 + 3600, artifact_grace_s=0,
                                 poll_s=self.options.watchdog_poll_s,
                                 fallback=self.options.watchdog_fallback)  # fmt: skip
        ssh = self.state.ssh or {}
        self.view.message(
            f"kept for {minutes:g} min for debugging: ssh -i {self.state.identity_file} -p {ssh.get('port')} "
            f"{ssh.get('user')}@{ssh.get('host')} (run folder {self.layout.root}); then the watchdog destroys it. "
            f"`gpurun down {self.run_id}` destroys it now"
        )
