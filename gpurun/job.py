"""The orchestrator: one training run as an explicit state machine with a deadline per phase.

    plan (trainplan.py) → journal intent → create the exact offer (failover) → wait ready → connect
    → arm watchdog → bootstrap → sync → launch runner (detached) → follow events + pull checkpoints
    → fetch final + grid (sha256) → terminate in `finally`, confirmed by polling → receipt

A failed phase leads to terminate, never to a hang: every wait has a deadline (lifecycle.py for the provider,
JobOptions for the machine). Detaching (Ctrl-C once, or --detach) leaves the machine to the watchdog, which
keeps it at most --artifact-grace minutes after training ends for `gpurun attach`. Following, fetching and
teardown live in runctl.py, shared with `gpurun attach` and `gpurun cancel`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

from gpurun import onbox
from gpurun.errors import GpurunError, RemoteError
from gpurun.journal import Journal
from gpurun.lifecycle import RentPolicy, rent
from gpurun.live import View
from gpurun.models import LaunchSpec
from gpurun.provision.base import run_label
from gpurun.receipt import Receipt
from gpurun.remote.transport import Transport
from gpurun.runctl import Detached, JobOptions, RunControl, RunState
from gpurun.trainplan import TrainPlan

__all__ = ["Detached", "Job", "JobOptions"]


class Job(RunControl):
    """One fresh run, from journal intent to receipt."""

    def __init__(self, plan: TrainPlan, view: View, journal: Journal, options: JobOptions | None = None) -> None:
        run_id = journal.new_run_id()
        from gpurun.api import estimate_dict

        state = RunState(
            run_id=run_id, provider=plan.chosen.offer.provider,
            output_dir=str((plan.request.output / run_id).resolve()), budget=plan.request.budget,
            artifact_grace_s=plan.request.artifact_grace_min * 60, keep_on_failure_min=plan.request.keep_on_failure_min,
            estimate=estimate_dict(plan.chosen), training={"resolution": plan.workload.resolution},
        )  # fmt: skip
        super().__init__(state, view, journal, options or JobOptions())
        self.plan = plan

    async def run(self) -> Receipt:
        """Execute the plan. Returns the receipt; raises the run's error after tearing everything down."""
        from gpurun.provision.registry import make_provider
        from gpurun.remote.keys import ensure_run_keys

        plan = self.plan
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.toml").write_text(plan.config.to_toml(), encoding="utf-8")
        keys = ensure_run_keys(self.run_id)
        self.state.identity_file = str(keys.private_key)
        chosen = plan.chosen.offer
        described = plan.to_dict()
        self.journal.record_intent(
            self.run_id, provider=chosen.provider, offer_id=chosen.offer_id, gpu=chosen.gpu.name,
            quoted_price=chosen.price_per_hour, budget=plan.request.budget, workload=described["workload"],
            estimate=described["chosen"], output_dir=self.out_dir, config_toml=plan.config.to_toml(),
            label=run_label(self.run_id),
        )  # fmt: skip
        self.save_state()
        self.view.message(f"run {self.run_id}: outputs in {self.out_dir}")
        providers = {e.offer.provider: make_provider(e.offer.provider) for e in plan.candidates}
        outcome, error = "failed", None
        try:
            spec = LaunchSpec(image=self.options.image, disk_gb=_disk_gb(plan), label=run_label(self.run_id),
                              ssh_public_key=keys.public_key_text(), env={"GPURUN_RUN_ID": self.run_id},
                              terminate_after_s=plan.hard_deadline_s)  # fmt: skip
            started = time.monotonic()
            self.phase("creating", chosen.key)
            rented = await rent(
                plan.candidates, providers, lambda choice: _priced(spec, choice), self.journal, self.run_id,
                policy=RentPolicy(max_attempts=plan.request.max_attempts, ready_timeout_s=self.options.ready_timeout_s,
                                  poll_s=self.options.poll_s),
                notify=self.view.message,
            )  # fmt: skip
            self.timed("boot", started)
            self.instance, self.provider = rented.instance, rented.provider
            self.state.provider = rented.provider.name
            self.state.instance_id = rented.instance.instance_id
            self.state.price_per_hour = rented.price_per_hour
            self.state.created_at = rented.created_at
            self.state.workdir = rented.instance.workdir
            self.state.estimate = _estimate_dict(rented.choice)
            self.state.gpu = {"name": rented.choice.offer.gpu.name, "count": rented.choice.offer.gpu.count}
            self.save_state()
            await self._on_machine(keys)
            outcome = "cancelled" if self.stopped_for == "cancel" else "done"
        except Detached:
            outcome = "detached"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except GpurunError as exc:
            error = exc
            raise
        except Exception as exc:  # a bug must not leave a machine billing either
            error = RemoteError(f"unexpected {type(exc).__name__}: {exc}")
            raise
        finally:
            await asyncio.shield(self.finish(outcome, error))
            for provider in providers.values():
                if provider is not self.provider:
                    await provider.aclose()
        assert self.receipt is not None
        return self.receipt

    async def _on_machine(self, keys: Any) -> None:
        """Everything between "the machine is up" and "the outputs are here"."""
        assert self.instance is not None
        started = time.monotonic()
        self.phase("watchdog", "connecting")
        self.transport = await self._connect(keys)
        self.layout = await onbox.make_layout(self.transport, self.run_id, self.instance.workdir)
        self.state.layout = self.layout.to_dict()
        self.save_state()
        await self._arm()
        self.start_leases()
        self.phase("bootstrap", "environment and base model")
        model_path = await self._bootstrap()
        self.timed("setup", started)

        started = time.monotonic()
        upload = self.plan.upload
        self.phase("sync", f"{upload.files} files, {upload.bytes / 1e6:.1f} MB")
        request = self.plan.request
        target = onbox.dataset_target(
            self.layout, self.plan.dataset, self.plan.dataset_report, request.repeats, request.trigger
        )
        await asyncio.wait_for(
            onbox.ship(self.transport, self.layout, self.plan.dataset, target), self.options.sync_timeout_s
        )
        self.timed("upload", started)

        started = time.monotonic()
        self.phase("training", "runner launched")
        await onbox.launch_runner(self.transport, self.layout, onbox.job_config(self.plan.config, model_path))
        self.launched = True
        self.view.message(
            f"Ctrl-C once detaches (training goes on; `gpurun attach {self.run_id}` resumes); "
            "Ctrl-C twice cancels, fetches what exists and destroys the machine"
        )
        if self.options.detach:
            raise Detached()
        await self.follow(offset=0)
        self.timed("training", started)

    async def _connect(self, keys: Any) -> Transport:
        assert self.instance is not None
        if self.instance.ssh is None:
            from gpurun.remote.local import LocalTransport

            self.state.ssh = None
            return LocalTransport(Path(self.instance.workdir) if self.instance.workdir else Path.home())
        from gpurun.remote.session import connect

        endpoint = self.instance.ssh
        identity = endpoint.identity_file or str(keys.private_key)
        self.state.ssh = {"host": endpoint.host, "port": endpoint.port, "user": endpoint.user}
        self.state.identity_file = identity
        try:
            return await connect(
                endpoint, Path(identity), keys.known_hosts, deadline=time.monotonic() + self.options.connect_timeout_s
            )
        except GpurunError as exc:
            raise type(exc)(
                f"cannot reach the machine over SSH: {exc.message}", where=str(endpoint), hint=exc.hint
            ) from None

    async def _arm(self) -> None:
        """The dead-man switch starts before anything slow happens."""
        assert self.transport is not None and self.layout is not None
        from gpurun.deadline import deadline_from_budget

        deadline = None
        if self.state.budget is not None and self.state.price_per_hour > 0:
            now = await onbox.remote_clock(self.transport)
            deadline = deadline_from_budget(
                self.state.budget, self.money().spent, self.state.price_per_hour, now, safety_margin=120.0
            )
        self.state.deadline = deadline
        self.save_state()
        await onbox.arm_watchdog(
            self.transport, self.layout, self.run_id, self.destroy_action(), deadline=deadline,
            lease_ttl_s=self.options.lease_ttl_s, artifact_grace_s=self.state.artifact_grace_s,
            poll_s=self.options.watchdog_poll_s,
        )  # fmt: skip
        when = "no deadline (free machine)" if deadline is None else f"hard deadline in {deadline - time.time():.0f} s"
        self.view.message(f"watchdog armed ({when}): it ends the machine if this client goes away")

    async def _bootstrap(self) -> str:
        from gpurun.remote.bootstrap import run_bootstrap

        assert self.transport is not None and self.layout is not None
        base = self.plan.base
        env = onbox.local_python_env() if self.state.ssh is None else onbox.bootstrap_env()
        model = None if base.kind == "local" else onbox.model_spec(base)
        result = await asyncio.wait_for(
            run_bootstrap(self.transport, home=self.layout.home, model=model, env=env,
                          on_line=lambda line: self.view.phase("bootstrap", f"{line.phase}: {line.status}")),
            self.options.bootstrap_timeout_s,
        )  # fmt: skip
        self.layout = dataclasses.replace(self.layout, python=result.python or "python3")
        self.state.layout = self.layout.to_dict()
        self.save_state()
        if base.kind == "local":
            return await onbox.upload_base_model(self.transport, self.layout, base)
        if base.kind == "builtin":
            return base.ref
        return result.model_path or base.ref


def _disk_gb(plan: TrainPlan) -> float:
    from gpurun.api import disk_needed_gb

    return disk_needed_gb(plan.workload)


def _estimate_dict(choice: Any) -> dict[str, Any]:
    from gpurun.api import estimate_dict

    return estimate_dict(choice)


def _priced(spec: LaunchSpec, choice: Any) -> LaunchSpec:
    """The launch spec for one candidate: its price is the cap; a spot offer bids its minimum."""
    offer = choice.offer
    return dataclasses.replace(spec, price_cap=offer.price_per_hour, bid_price=offer.min_bid if offer.spot else None)
