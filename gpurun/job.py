"""The orchestrator: one training run as an explicit state machine with a deadline per phase.

    plan (trainplan.py) → journal intent → create the exact offer (failover; the watchdog starts with the
    container where the provider can run a boot script) → wait ready → connect → adopt (or arm) the watchdog
    → ship the gpurun bundle → bootstrap (locked environment, smoke check, base model) → sync the dataset
    → launch runner (detached) → follow events + pull checkpoints → fetch final + grid (sha256)
    → terminate in `finally`, confirmed by polling → receipt

A failed phase leads to terminate, never to a hang: every wait has a deadline (lifecycle.py for the provider,
JobOptions for the machine). Detaching (Ctrl-C once, or --detach) leaves the machine to the watchdog, which
keeps it at most --artifact-grace minutes after training ends for `gpurun attach`. Following, fetching and
teardown live in runctl.py, shared with `gpurun attach` and `gpurun cancel`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from gpurun import onbox, watchdog_boot
from gpurun.errors import GpurunError, RemoteError
from gpurun.images import image_cuda
from gpurun.journal import Journal
from gpurun.lifecycle import RentPolicy, rent
from gpurun.live import View
from gpurun.models import CostEstimate, LaunchSpec
from gpurun.provision.base import Provider, run_label
from gpurun.receipt import Receipt
from gpurun.remote.transport import Transport
from gpurun.runctl import Detached, JobOptions, RunControl, RunState
from gpurun.trainplan import TrainPlan, deadline_seconds

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
            base_spec = LaunchSpec(
                image="",
                disk_gb=_disk_gb(plan),
                label=run_label(self.run_id),
                ssh_public_key=keys.public_key_text(),
                env={"GPURUN_RUN_ID": self.run_id},
            )
            started = time.monotonic()
            self.phase("creating", chosen.key)
            rented = await rent(
                plan.candidates, providers,
                lambda choice: self.launch_spec(base_spec, choice, providers[choice.offer.provider]),
                self.journal, self.run_id,
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
            self.state.boot_armed = rented.provider.runs_boot_script
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
        self.phase("bootstrap", "the gpurun bundle, the locked environment, a smoke check, the base model")
        await asyncio.wait_for(onbox.ship_bundle(self.transport, self.layout), self.options.sync_timeout_s)
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
            onbox.ship_dataset(self.transport, self.plan.dataset, target), self.options.sync_timeout_s
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

    def launch_spec(self, spec: LaunchSpec, choice: CostEstimate, provider: Provider) -> LaunchSpec:
        """The launch spec for one candidate: its image (and the CUDA that needs), its price cap or bid, and where
        the provider can run a boot script, the watchdog armed at container start with this offer's deadline."""
        offer = choice.offer
        image = (self.plan.request.image or provider.default_image or "") if provider.default_image else ""
        spec = dataclasses.replace(
            spec, image=image, min_cuda=image_cuda(image) if image else None, price_cap=offer.price_per_hour,
            bid_price=offer.min_bid if offer.spot else None,
        )  # fmt: skip
        if not provider.runs_boot_script:
            return spec
        options: dict[str, Any] = {
            "artifact_grace_s": self.state.artifact_grace_s,
            "poll_s": self.options.watchdog_poll_s,
        }
        if not self.options.watchdog_fallback:
            options["fallback_command"] = None
        config = watchdog_boot.boot_config(
            self.run_id, provider.self_destroy(None), boot_lease_s=self.options.boot_lease_s,
            deadline_in_s=deadline_seconds(self.state.budget, offer.price_per_hour), **options,
        )  # fmt: skip
        return dataclasses.replace(
            spec, env={**spec.env, **watchdog_boot.boot_env(config)}, boot_script=watchdog_boot.boot_script(self.run_id)
        )

    async def _arm(self) -> None:
        """Adopt the dead-man switch the container started with (or arm it now, where nothing ran at boot)."""
        assert self.transport is not None and self.layout is not None and self.provider is not None
        from gpurun.deadline import deadline_from_budget

        deadline = None
        if self.state.budget is not None and self.state.price_per_hour > 0:
            now = await onbox.remote_clock(self.transport)
            deadline = deadline_from_budget(
                self.state.budget, self.money().spent, self.state.price_per_hour, now, safety_margin=120.0
            )
        self.state.deadline = deadline
        self.save_state()
        armed = await onbox.arm_watchdog(
            self.transport, self.layout, self.run_id, self.destroy_action(), deadline=deadline,
            lease_ttl_s=self.options.lease_ttl_s, artifact_grace_s=self.state.artifact_grace_s,
            poll_s=self.options.watchdog_poll_s, fallback=self.options.watchdog_fallback,
        )  # fmt: skip
        when = "no deadline (free machine)" if deadline is None else f"hard deadline in {deadline - time.time():.0f} s"
        if armed.adopted:
            self.view.message(f"watchdog adopted (armed when the container started; {when})")
        elif self.state.boot_armed:
            self.view.message(f"the watchdog armed at container start was not running; armed it now ({when})")
        else:
            self.view.message(f"watchdog armed ({when}): it ends the machine if this client goes away")
        credential = armed.credential.get("status")
        if credential not in (None, "ok", "n/a"):
            self.view.message(
                f"WARNING: the provider did not accept the instance's own key ({credential}): if this client "
                "goes away the watchdog may not be able to destroy the machine; keep gpurun running until it ends"
            )

    def _bootstrap_progress(self, line: Any) -> None:
        """One bootstrap.sh progress line, as a person reads it."""
        fields = line.fields
        if line.phase == "model" and line.status == "progress":
            done, total = int(fields.get("bytes") or 0), fields.get("total") or ""
            size = f"{done / 1e9:.2f} of {int(total) / 1e9:.2f} GB" if total.isdigit() else f"{done / 1e9:.2f} GB"
            self.view.phase("bootstrap", f"base model: {size}")
        elif line.phase == "env":
            self.view.phase("bootstrap", f"environment {line.status}: {fields.get('stack', '')}".strip())
        elif line.phase == "smoke" and line.status == "ok":
            self.view.phase("bootstrap", f"smoke check passed in {fields.get('seconds', '?')} s")
        else:
            self.view.phase("bootstrap", f"{line.phase}: {line.status}")

    async def _bootstrap(self) -> str:
        from gpurun.remote.bootstrap import run_bootstrap

        assert self.transport is not None and self.layout is not None
        base = self.plan.base
        env = onbox.local_python_env() if self.state.ssh is None else onbox.bootstrap_env()
        if base.gated and os.environ.get("HF_TOKEN"):
            env["HF_TOKEN"] = os.environ["HF_TOKEN"]  # a gated model downloads only with the user's token
        model = None if base.kind == "local" else onbox.model_spec(base)
        result = await asyncio.wait_for(
            run_bootstrap(self.transport, home=self.layout.home, bundle=onbox.bundle_dir(self.layout), model=model,
                          model_files=base.files, env=env, on_line=self._bootstrap_progress),
            self.options.bootstrap_timeout_s,
        )  # fmt: skip
        self.layout = dataclasses.replace(self.layout, python=result.python or "python3", pythonpath=result.pythonpath)
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
