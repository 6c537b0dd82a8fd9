"""The orchestrator: one training run as an explicit state machine with a deadline per phase.

    plan (trainplan.py) → journal intent → create the exact offer (failover) → wait ready → connect
    → arm watchdog → bootstrap → sync → launch runner (detached) → follow events + pull checkpoints
    → fetch final + grid (sha256) → terminate in `finally`, confirmed by polling → receipt

A failed phase leads to terminate, never to a hang. Detaching (Ctrl-C once, or --detach) leaves the machine to
the watchdog, which keeps it for `gpurun attach` at most --artifact-grace minutes after training ends.
`Job.attach()` and `Job.cancel()` reconnect to a detached run from the journal and finish it the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpurun import onbox
from gpurun.errors import DeadlineError, GpurunError, RemoteError, RunnerError
from gpurun.events import Checkpoint, Done, ErrorEvent, Event, Sample, Start, Step
from gpurun.journal import Journal
from gpurun.lifecycle import RentPolicy, destroy_confirmed, rent
from gpurun.live import Money, View
from gpurun.models import Instance, LaunchSpec
from gpurun.provision.base import Provider, run_label
from gpurun.receipt import Receipt, build_receipt
from gpurun.remote.transport import Transport
from gpurun.trainplan import TrainPlan

#: the stock PyTorch CUDA image the bootstrap builds on (torch comes from the image, never reinstalled)
DEFAULT_IMAGE = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"


@dataclass(frozen=True)
class JobOptions:
    """Knobs of the orchestration itself (timings are shortened by the tests through GPURUN_* env vars)."""

    detach: bool = False
    image: str = DEFAULT_IMAGE
    lease_interval_s: float = 60.0
    lease_ttl_s: float = 300.0
    watchdog_poll_s: float = 15.0
    ready_timeout_s: float = 900.0
    poll_s: float = 5.0
    connect_timeout_s: float = 300.0
    bootstrap_timeout_s: float = 3600.0
    sync_timeout_s: float = 3600.0
    fetch_timeout_s: float = 1800.0
    #: stop the runner this long before the watchdog's hard deadline, so the last checkpoint reaches us
    client_deadline_margin_s: float = 90.0

    @classmethod
    def from_env(cls, **overrides: Any) -> JobOptions:
        import os

        values: dict[str, Any] = {}
        for name in (
            "lease_interval_s",
            "lease_ttl_s",
            "watchdog_poll_s",
            "ready_timeout_s",
            "poll_s",
            "client_deadline_margin_s",
        ):
            env = os.environ.get(f"GPURUN_{name.upper()}")
            if env:
                values[name] = float(env)
        values.update(overrides)
        return cls(**values)


class Detached(Exception):
    """The user detached: the run goes on under the watchdog."""


@dataclass
class RunState:
    """What the run has learned so far; persisted in the run's state folder for attach/cancel."""

    run_id: str
    provider: str
    instance_id: str | None = None
    price_per_hour: float = 0.0
    created_at: float | None = None
    layout: dict[str, str] | None = None
    ssh: dict[str, Any] | None = None
    identity_file: str | None = None
    output_dir: str = ""
    budget: float | None = None
    deadline: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    fetched: dict[str, str] = field(default_factory=dict)
    final: str | None = None
    samples_per_s: float | None = None

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> RunState:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


class Job:
    """One run, from intent to receipt."""

    def __init__(self, plan: TrainPlan, view: View, journal: Journal, options: JobOptions | None = None) -> None:
        self.plan = plan
        self.view = view
        self.journal = journal
        self.options = options or JobOptions()
        self.run_id = journal.new_run_id()
        self.out_dir = (plan.request.output / self.run_id).resolve()
        self.state = RunState(
            self.run_id, plan.chosen.offer.provider, output_dir=str(self.out_dir), budget=plan.request.budget
        )
        self.transport: Transport | None = None
        self.layout: onbox.BoxLayout | None = None
        self.instance: Instance | None = None
        self.provider: Provider | None = None
        self.stop_request: asyncio.Event = asyncio.Event()
        self.cancel_request: asyncio.Event = asyncio.Event()
        self.launched = False
        self._phase_started: dict[str, float] = {}
        self._lease_task: asyncio.Task[None] | None = None
        self._fetches: list[asyncio.Task[None]] = []
        self._events_file: Any = None

    # ---- bookkeeping ------------------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        from gpurun.remote.keys import run_dir

        return run_dir(self.run_id) / "run.json"

    def _phase(self, name: str, detail: str = "") -> None:
        now = time.monotonic()
        self._phase_started[name] = now
        self.journal.phase(self.run_id, name, detail)
        self.view.phase(name, detail)

    def _timed(self, group: str, started: float) -> None:
        self.state.timings[group] = self.state.timings.get(group, 0.0) + (time.monotonic() - started)

    def _money(self) -> Money:
        spent = 0.0
        if self.state.created_at is not None:
            spent = (time.time() - self.state.created_at) / 3600.0 * self.state.price_per_hour
        projected = max(spent, self.plan.chosen.dollars)
        return Money(spent=spent, projected=projected, budget=self.state.budget)

    # ---- the run ----------------------------------------------------------------------------------------------

    async def run(self) -> Receipt:
        """Execute the plan. Returns the receipt; raises the run's error after cleaning up."""
        from gpurun.provision.registry import make_provider
        from gpurun.remote.keys import ensure_run_keys

        plan = self.plan
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.toml").write_text(plan.config.to_toml(), encoding="utf-8")
        keys = ensure_run_keys(self.run_id)
        chosen = plan.chosen.offer
        self.journal.record_intent(
            self.run_id, provider=chosen.provider, offer_id=chosen.offer_id, gpu=chosen.gpu.name,
            quoted_price=chosen.price_per_hour, budget=plan.request.budget, workload=plan.to_dict()["workload"],
            estimate=plan.to_dict()["chosen"], output_dir=self.out_dir, config_toml=plan.config.to_toml(),
            label=run_label(self.run_id),
        )  # fmt: skip
        self.view.message(f"run {self.run_id}: outputs in {self.out_dir}")
        providers = {e.offer.provider: make_provider(e.offer.provider) for e in plan.candidates}
        outcome, error = "failed", None
        try:
            spec = LaunchSpec(
                image=self.options.image,
                disk_gb=_disk_gb(plan),
                label=run_label(self.run_id),
                ssh_public_key=keys.public_key_text(),
                env={"GPURUN_RUN_ID": self.run_id},
                terminate_after_s=plan.hard_deadline_s,
            )
            started = time.monotonic()
            rented = await rent(
                plan.candidates, providers, lambda choice: _priced(spec, choice), self.journal, self.run_id,
                policy=RentPolicy(max_attempts=plan.request.max_attempts, ready_timeout_s=self.options.ready_timeout_s,
                                  poll_s=self.options.poll_s),
                notify=self.view.message,
            )  # fmt: skip
            self._timed("boot", started)
            self.instance, self.provider = rented.instance, rented.provider
            self.state.provider = rented.provider.name
            self.state.instance_id = rented.instance.instance_id
            self.state.price_per_hour = rented.price_per_hour
            self.state.created_at = time.time() - (time.monotonic() - started)
            self.state.identity_file = str(keys.private_key)
            self.state.save(self.state_path)
            await self._on_machine(rented.choice.offer.provider, keys)
            outcome = "done"
        except Detached:
            outcome = "detached"
        except asyncio.CancelledError:
            outcome, error = "cancelled", None
            raise
        except GpurunError as exc:
            outcome, error = "failed", exc
            raise
        except BaseException as exc:  # a bug must not leave a machine billing either
            outcome, error = "failed", RemoteError(f"unexpected {type(exc).__name__}: {exc}")
            raise
        finally:
            self._finished_outcome = outcome
            await asyncio.shield(self._finish(outcome, error))
            for provider in providers.values():
                with contextlib.suppress(Exception):
                    await provider.aclose()
        return self.receipt

    async def _on_machine(self, provider_name: str, keys: Any) -> None:
        """Everything between "the machine is up" and "the outputs are here"."""
        assert self.instance is not None
        started = time.monotonic()
        self._phase("watchdog", "connecting")
        self.transport = await self._connect(keys)
        layout = await onbox.make_layout(self.transport, self.run_id, self.instance.workdir)
        self.layout = layout
        self.state.layout = layout.to_dict()
        self.state.save(self.state_path)
        await self._arm(provider_name)
        self._lease_task = asyncio.create_task(self._renew_leases())
        self._phase("bootstrap", "environment and base model")
        model_path = await self._bootstrap()
        self._timed("setup", started)
        started = time.monotonic()
        self._phase("sync", f"{self.plan.upload.files} files, {self.plan.upload.bytes / 1e6:.1f} MB")
        target = onbox.dataset_target(
            layout, self.plan.dataset, self.plan.dataset_report, self.plan.request.repeats, self.plan.request.trigger
        )
        await asyncio.wait_for(
            onbox.ship(self.transport, layout, self.plan.dataset, target), self.options.sync_timeout_s
        )
        self._timed("upload", started)
        started = time.monotonic()
        self._phase("training", "runner launched")
        job_config = onbox.job_config(self.plan.config, model_path)
        await onbox.launch_runner(self.transport, self.layout, job_config)
        self.launched = True
        self.view.message(
            "Ctrl-C once detaches (training goes on; `gpurun attach " + self.run_id + "` resumes); "
            "Ctrl-C twice cancels, fetches what exists and destroys the machine"
        )
        if self.options.detach:
            raise Detached()
        await self._follow(offset=0)
        self._timed("training", started)

    async def _connect(self, keys: Any) -> Transport:
        assert self.instance is not None
        if self.instance.ssh is None:
            from gpurun.remote.local import LocalTransport

            root = Path(self.instance.workdir) if self.instance.workdir else Path.home()
            self.state.ssh = None
            return LocalTransport(root)
        from gpurun.remote.session import connect

        endpoint = self.instance.ssh
        identity = getattr(endpoint, "identity_file", None) or str(keys.private_key)
        self.state.ssh = {"host": endpoint.host, "port": endpoint.port, "user": endpoint.user}
        self.state.identity_file = identity
        deadline = time.monotonic() + self.options.connect_timeout_s
        try:
            return await connect(endpoint, Path(identity), keys.known_hosts, deadline=deadline)
        except GpurunError as exc:
            raise type(exc)(
                f"cannot reach the machine over SSH: {exc.message}", where=str(endpoint), hint=exc.hint
            ) from None

    async def _arm(self, provider_name: str) -> None:
        """The dead-man switch starts before anything slow happens."""
        assert self.transport is not None and self.layout is not None and self.instance is not None
        from gpurun.deadline import deadline_from_budget

        destroy = self._destroy_action(provider_name)
        deadline = None
        if self.state.budget is not None and self.state.price_per_hour > 0:
            now = await onbox.remote_clock(self.transport)
            spent = self._money().spent
            deadline = deadline_from_budget(
                self.state.budget, spent, self.state.price_per_hour, now, safety_margin=120.0
            )
        self.state.deadline = deadline
        self.state.save(self.state_path)
        await onbox.arm_watchdog(
            self.transport, self.layout, self.run_id, destroy, deadline=deadline,
            lease_ttl_s=self.options.lease_ttl_s, artifact_grace_s=self.plan.request.artifact_grace_min * 60,
            poll_s=self.options.watchdog_poll_s,
        )  # fmt: skip
        when = "no deadline (free machine)" if deadline is None else f"hard deadline in {deadline - time.time():.0f} s"
        self.view.message(f"watchdog armed: {when}; it destroys the machine if this client goes away")

    def _destroy_action(self, provider_name: str) -> dict[str, Any]:
        from gpurun.provision.registry import base_urls
        from gpurun.settings import load_settings

        assert self.instance is not None
        return onbox.destroy_action(provider_name, self.instance, base_urls(provider_name, load_settings()))

    async def _renew_leases(self) -> None:
        seq = 1
        while True:
            await asyncio.sleep(self.options.lease_interval_s)
            try:
                assert self.transport is not None and self.layout is not None
                await onbox.renew_lease(self.transport, self.layout, self.run_id, seq)
                seq += 1
            except GpurunError:
                continue  # the follower reconnects; the next renewal uses the new connection

    async def _bootstrap(self) -> str:
        from gpurun.remote.bootstrap import run_bootstrap

        assert self.transport is not None and self.layout is not None
        base = self.plan.base
        local = self.instance is not None and self.instance.ssh is None
        env = onbox.local_python_env() if local else onbox.bootstrap_env()
        model = None if base.kind == "local" else onbox.model_spec(base)
        result = await asyncio.wait_for(
            run_bootstrap(self.transport, home=self.layout.home, model=model, env=env,
                          on_line=lambda line: self.view.phase("bootstrap", f"{line.phase}: {line.status}")),
            self.options.bootstrap_timeout_s,
        )  # fmt: skip
        self.layout = onbox.BoxLayout(self.layout.root, self.layout.home, python=result.python or "python3")
        self.state.layout = self.layout.to_dict()
        self.state.save(self.state_path)
        if base.kind == "local":
            return await onbox.upload_base_model(self.transport, self.layout, base)
        if base.kind == "builtin":
            return base.ref
        return result.model_path or base.ref

    # ---- following ----------------------------------------------------------------------------------------------

    async def _reconnect(self) -> Transport:
        assert self.transport is not None
        reconnect = getattr(self.transport, "reconnect", None)
        if reconnect is None:
            return self.transport
        self.transport = await reconnect(deadline=time.monotonic() + self.options.connect_timeout_s)
        return self.transport

    async def _follow(self, offset: int) -> None:
        """Stream events into the view, pull checkpoints as they appear, stop the runner at the budget deadline."""
        from gpurun.remote.follow import follow_events

        assert self.transport is not None and self.layout is not None
        self._events_file = (self.out_dir / "events.jsonl").open("a", encoding="utf-8")
        follower = follow_events(
            self.transport,
            self.layout.events,
            self.layout.pid,
            offset=offset,
            reconnect=self._reconnect,
            python="python3",
        )
        terminal: Event | None = None
        budget_task = asyncio.create_task(self._budget_guard())
        stop_task = asyncio.create_task(self.stop_request.wait())
        try:
            iterator = follower.__aiter__()
            while True:
                next_item = asyncio.ensure_future(anext(iterator))
                done, _ = await asyncio.wait({next_item, stop_task}, return_when=asyncio.FIRST_COMPLETED)
                if next_item not in done:
                    next_item.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, GpurunError):
                        await next_item
                    if self.cancel_request.is_set():
                        await self._stop_runner("cancelled by the user")
                        stop_task = asyncio.create_task(asyncio.Event().wait())  # keep draining to the end
                        continue
                    raise Detached()
                try:
                    item = next_item.result()
                except StopAsyncIteration:
                    break
                self._events_file.write(item.line + "\n")
                self._events_file.flush()
                self.journal.record_event_offset(self.run_id, item.offset)
                self._on_event(item.event)
                if isinstance(item.event, (Done, ErrorEvent)):
                    terminal = item.event
        finally:
            budget_task.cancel()
            stop_task.cancel()
            self._events_file.close()
        await self._drain_fetches()
        if isinstance(terminal, ErrorEvent):
            raise RunnerError(
                terminal.message,
                hint=terminal.hint or None,
                where="runner",
                last_lines=await onbox.stderr_tail(self.transport, self.layout),
            )
        if terminal is None:
            if self.cancel_request.is_set():
                return
            lines = await onbox.stderr_tail(self.transport, self.layout)
            raise RunnerError(
                f"the runner stopped without finishing (exit {follower.runner_exit})",
                where="runner",
                last_lines=lines,
                hint="its last lines: " + " | ".join(lines[-3:]) if lines else None,
            )
        await self._fetch_final()

    def _on_event(self, event: Event) -> None:
        self.view.event(event)
        if isinstance(event, Step):
            self.view.money(self._money())
        elif isinstance(event, Start):
            self.journal.phase(self.run_id, "training", f"{event.device} {event.dtype}, {event.total_steps} steps")
        elif isinstance(event, (Checkpoint, Sample)) and event.path:
            self._fetches.append(asyncio.create_task(self._fetch(event.path, event.sha256, event.bytes)))
            if isinstance(event, Checkpoint) and event.final:
                self.state.final = event.path
        elif isinstance(event, Done):
            self.state.samples_per_s = event.samples_per_s
            if event.final:
                self.state.final = event.final

    async def _fetch(self, rel_path: str, sha256: str, size: int) -> None:
        from gpurun.remote.sync import fetch_verified

        assert self.transport is not None and self.layout is not None
        if self.state.fetched.get(rel_path) == sha256:
            return
        result = await fetch_verified(
            self.transport, self.layout.path("out", rel_path), self.out_dir / rel_path, sha256, size=size or None
        )
        self.state.fetched[rel_path] = sha256
        self.journal.record_artifact(self.run_id, result.path, result.sha256, result.bytes)
        self.state.save(self.state_path)

    async def _drain_fetches(self) -> None:
        pending, self._fetches = self._fetches, []
        results = await asyncio.gather(*pending, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            for failure in failures[1:]:
                self.view.message(f"fetch failed: {failure}")
            raise failures[0]

    async def _fetch_final(self) -> None:
        """After training: everything the runner wrote (final LoRA, grid) is here and verified."""
        assert self.transport is not None and self.layout is not None
        started = time.monotonic()
        self._phase("fetching", "final LoRA and sample grid")
        outputs = await onbox.remote_outputs(self.transport, self.layout)
        for rel_path, (size, sha256) in sorted(outputs.items()):
            self._fetches.append(asyncio.create_task(self._fetch(rel_path, sha256, size)))
        await asyncio.wait_for(self._drain_fetches(), self.options.fetch_timeout_s)
        self._timed("fetch", started)

    async def _budget_guard(self) -> None:
        """Stop the runner shortly before the watchdog's hard deadline, so its last checkpoint reaches us."""
        if self.state.deadline is None:
            return
        wait = self.state.deadline - self.options.client_deadline_margin_s - time.time()
        await asyncio.sleep(max(0.0, wait))
        self.view.message("the budget is nearly spent: stopping the runner (it saves a checkpoint first)")
        self._budget_stopped = True
        await self._stop_runner("budget")

    async def _stop_runner(self, why: str) -> None:
        assert self.transport is not None and self.layout is not None
        self.journal.phase(self.run_id, "training", f"stopping the runner: {why}")
        # SIGTERM = "save a checkpoint and exit"; the follower then drains its last events
        await self.transport.kill(self.layout.pid, grace_s=60.0)

    # ---- the end --------------------------------------------------------------------------------------------------

    async def _finish(self, outcome: str, error: GpurunError | None) -> None:
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
                f"detached: training goes on. `gpurun attach {self.run_id}` follows it and fetches the "
                f"result; `gpurun cancel {self.run_id}` stops it and destroys the machine"
            )
        elif self.instance is not None and self.provider is not None:
            keep = self.plan.request.keep_on_failure_min
            if outcome == "failed" and keep > 0 and self.transport is not None and self.layout is not None:
                await self._keep_for_debugging(keep)
            else:
                destroyed = await self._teardown()
        self._timed("teardown", started)
        billed = 0.0
        if self.state.created_at is not None:
            billed = time.time() - self.state.created_at
        if self.state.samples_per_s and self.instance is not None:
            offer = self.plan.chosen.offer
            self.journal.record_throughput(
                self.run_id,
                gpu=offer.gpu.name,
                family=self.plan.workload.family,
                resolution=self.plan.workload.resolution,
                batch_size=self.plan.config.batch_size,
                samples_per_s=self.state.samples_per_s,
            )
        self.receipt = build_receipt(
            run_id=self.run_id, estimate=self.plan.chosen, billed_per_hour=self.state.price_per_hour,
            actual_seconds=dict(self.state.timings), billed_seconds=billed if outcome != "detached" else 0.0,
            budget=self.state.budget, outcome=outcome, destroyed=destroyed,
            artifacts=[{"path": p, "sha256": s} for p, s in sorted(self.state.fetched.items())],
        )  # fmt: skip
        self.receipt.write(self.out_dir / "receipt.json")
        self.journal.record_cost(self.run_id, "total", billed, self.receipt.actual_total_usd)
        self.state.save(self.state_path)
        if outcome == "done":
            self.journal.mark_finished(self.run_id, "done")
        elif outcome in ("failed", "cancelled"):
            self.journal.mark_finished(self.run_id, outcome, None if error is None else error.one_line())
        if self.transport is not None:
            with contextlib.suppress(Exception):
                await self.transport.close()

    async def _teardown(self) -> bool:
        assert self.instance is not None and self.provider is not None
        self._phase("terminating", self.instance.instance_id)
        nothing_rented = self.instance.ssh is None or self.provider.name == "ssh"
        if nothing_rented and self.transport is not None and self.layout is not None:
            # nothing is rented: stop whatever still runs there and disarm the watchdog
            with contextlib.suppress(GpurunError):
                if await self.transport.is_running(self.layout.pid):
                    await self.transport.kill(self.layout.pid, grace_s=30.0)
                await onbox.stop_watchdog(self.transport, self.layout)
        confirmed = await destroy_confirmed(self.provider, self.instance.instance_id, poll_s=self.options.poll_s)
        self.journal.mark_terminated(self.run_id, confirmed, instance_id=self.instance.instance_id)
        if not confirmed:
            self.view.message(
                f"WARNING: {self.provider.name} has not confirmed that instance "
                f"{self.instance.instance_id} is gone; `gpurun down {self.run_id}` retries"
            )
        return confirmed

    async def _keep_for_debugging(self, minutes: float) -> None:
        """--keep-on-failure: a fresh watchdog with a deadline N minutes out replaces the old one."""
        assert self.transport is not None and self.layout is not None and self.instance is not None
        await onbox.stop_watchdog(self.transport, self.layout)
        await asyncio.sleep(1.0)
        destroy = self._destroy_action(self.state.provider)
        deadline = await onbox.remote_clock(self.transport) + minutes * 60
        await onbox.arm_watchdog(
            self.transport,
            self.layout,
            self.run_id,
            destroy,
            deadline=deadline,
            lease_ttl_s=minutes * 60 + 3600,
            artifact_grace_s=0,
            poll_s=self.options.watchdog_poll_s,
        )
        ssh = self.state.ssh or {}
        self.view.message(
            f"kept for {minutes:g} min for debugging: ssh -i {self.state.identity_file} -p {ssh.get('port')} "
            f"{ssh.get('user')}@{ssh.get('host')} (run folder {self.layout.root}); then the watchdog destroys it. "
            f"`gpurun down {self.run_id}` destroys it now"
        )
        self.journal.phase(self.run_id, "failed", f"kept {minutes:g} min for debugging")


def _disk_gb(plan: TrainPlan) -> float:
    from gpurun.api import disk_needed_gb

    return disk_needed_gb(plan.workload)


def _priced(spec: LaunchSpec, choice: Any) -> LaunchSpec:
    """The launch spec for one candidate: its price is the cap; a spot offer bids its minimum."""
    from dataclasses import replace

    offer = choice.offer
    return replace(spec, price_cap=offer.price_per_hour, bid_price=offer.min_bid if offer.spot else None)


async def run_with_deadline(coro: Any, seconds: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(coro, seconds)
    except asyncio.TimeoutError:
        raise DeadlineError(f"{what} took longer than {seconds:.0f} s") from None
