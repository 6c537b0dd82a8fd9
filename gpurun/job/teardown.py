"""Ending machines, the one answer to "where is terminate?": destroy an instance and confirm it (rent's cleanup,
a run's teardown and `gpurun down` all come here), keep a failed one for debugging, take the run's key off the
account, and find what was left behind (strays, old run keys). The watchdog on the machine is the other
destroyer, for when this process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from gpurun.errors import GpurunError, NotFoundError, ProviderError
from gpurun.job import machine, watchdog
from gpurun.job.context import RunContext
from gpurun.journal import Journal, is_run_id
from gpurun.phases import TEARDOWN
from gpurun.provision.base import Provider
from gpurun.provision.registry import available_providers, make_provider, renting_providers
from gpurun.remote.keys import ensure_run_keys


async def destroy_confirmed(
    provider: Provider, instance_id: str, *, timeout_s: float = 300.0, poll_s: float = 5.0
) -> bool:
    """Terminate and poll until the provider no longer lists the instance as alive. Unknown counts as alive.

    Returns True when confirmed, False when the deadline passed with the instance still (possibly) alive.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await provider.terminate(instance_id)
            instance = await provider.get(instance_id)
        except NotFoundError:
            return True
        except ProviderError:
            instance = None  # unknown: keep trying until the deadline
        if instance is not None and not instance.state.is_alive:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)


async def teardown(ctx: RunContext) -> bool:
    """Destroy the run's machine and confirm it; on machines gpurun did not rent, stop the runner and watchdog."""
    assert ctx.instance is not None and ctx.provider is not None
    async with ctx.phase(TEARDOWN, ctx.instance.instance_id):
        rented = ctx.provider.rents_machines and ctx.record.ssh is not None
        if not rented and ctx.transport is not None and ctx.layout is not None:
            with contextlib.suppress(GpurunError):
                if await ctx.transport.is_running(ctx.layout.pid):
                    await ctx.transport.kill(ctx.layout.pid, grace_s=30.0)
                await watchdog.stop_watchdog(ctx.transport, ctx.layout)
        confirmed = await destroy_confirmed(ctx.provider, ctx.instance.instance_id, poll_s=ctx.options.poll_s)
        if confirmed and rented and ctx.transport is not None and ctx.layout is not None:
            # The watchdog normally dies with the box. Where the host outlives the provider's instance (a reused
            # host, our loopback tests), a watchdog left behind would later fire its fallback on a machine that is
            # no longer ours: disarm it, best effort, without waiting on a box that is already gone.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watchdog.stop_watchdog(ctx.transport, ctx.layout), 5.0)
        ctx.journal.mark_terminated(ctx.run_id, confirmed, instance_id=ctx.instance.instance_id)
        await forget_run_key(ctx)
    if not confirmed:
        ctx.view.message(
            f"WARNING: {ctx.provider.name} has not confirmed that instance "
            f"{ctx.instance.instance_id} is gone; `gpurun down {ctx.run_id}` retries"
        )
    return confirmed


async def forget_run_key(ctx: RunContext) -> None:
    """Take the run's SSH key off the provider account (Vast keeps account keys for every later machine)."""
    assert ctx.provider is not None
    try:
        await ctx.provider.forget_ssh_key(ensure_run_keys(ctx.run_id).public_key_text())
    except GpurunError as exc:
        ctx.view.message(f"could not remove the run's SSH key from the {ctx.provider.name} account: "
                         f"{exc.one_line()} (`gpurun down --strays` retries)")  # fmt: skip


async def keep_for_debugging(ctx: RunContext, minutes: float) -> None:
    """--keep-on-failure: the watchdog takes a config whose deadline is N minutes out (never past the budget's)."""
    assert ctx.transport is not None and ctx.layout is not None and ctx.provider is not None
    assert ctx.instance is not None
    deadline = await machine.remote_clock(ctx.transport) + minutes * 60
    if ctx.record.deadline is not None:
        deadline = min(deadline, ctx.record.deadline)  # debugging never outlives the budget
    await watchdog.arm_watchdog(
        ctx.transport, ctx.layout, ctx.run_id, ctx.provider.self_destroy(ctx.instance), deadline=deadline,
        lease_ttl_s=minutes * 60 + 3600, artifact_grace_s=0, poll_s=ctx.options.watchdog_poll_s,
        fallback=ctx.options.watchdog_fallback,
    )  # fmt: skip
    ssh = ctx.record.ssh
    where = f"-p {ssh.port} {ssh.user}@{ssh.host}" if ssh else "this machine"
    ctx.view.message(
        f"kept for {minutes:g} min for debugging: ssh -i {ctx.record.identity_file} {where} (run folder "
        f"{ctx.layout.root}); then the watchdog destroys it. `gpurun down {ctx.run_id}` destroys it now"
    )


# ---- what is left on the accounts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stray:
    """A gpurun-labelled instance the journal does not know, or believes destroyed."""

    provider: str
    instance_id: str
    label: str | None
    state: str
    price_per_hour: float | None
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider, "instance_id": self.instance_id, "label": self.label, "state": self.state,
            "price_per_hour": self.price_per_hour, "why": self.why,
        }  # fmt: skip


async def find_strays(journal: Journal) -> tuple[list[Stray], dict[str, str]]:
    """Every alive gpurun-labelled instance on the usable providers' accounts that the journal does not know or
    believes destroyed; and the providers that could not be asked, with why."""
    strays: list[Stray] = []
    errors: dict[str, str] = {}
    status = available_providers()
    for name in renting_providers():
        if status.get(name) is not None:
            continue
        provider = make_provider(name)
        try:
            listed = await provider.list_instances()
        except GpurunError as exc:
            errors[name] = exc.one_line()
            continue
        finally:
            await provider.aclose()
        for instance in listed:
            if not instance.state.is_alive:
                continue
            known = journal.find_instance(name, instance.instance_id)
            if known is None:
                why = "the journal does not know it"
            elif known.status == "destroyed":
                why = "the journal believes it destroyed"
            else:
                continue
            strays.append(
                Stray(name, instance.instance_id, instance.label, instance.state.value, instance.price_per_hour, why)
            )
    return strays, errors


async def forget_stray_keys(journal: Journal, warn: Any = lambda text: None) -> list[str]:
    """Run keys (comment `gpurun-<run id>`) left on provider accounts by runs that are over: removed, since an
    account key goes onto every later machine. Returns `provider:run id` of each key removed."""
    removed: list[str] = []
    alive = {record.run_id for record in journal.runs() if record.alive}
    status = available_providers()
    for name in renting_providers():
        if status.get(name) is not None:
            continue
        provider = make_provider(name)
        try:
            for key in await provider.run_ssh_keys():
                run_id = key.split()[-1].removeprefix("gpurun-")
                # only keys whose comment is exactly gpurun-<a run id>: a user's own "gpurun-laptop" key stays
                if is_run_id(run_id) and run_id not in alive:
                    await provider.forget_ssh_key(key)
                    removed.append(f"{name}:{run_id}")
        except GpurunError as exc:
            warn(f"could not clean {name}'s SSH keys: {exc.one_line()}")
        finally:
            await provider.aclose()
    return removed


@dataclass(frozen=True)
class Target:
    """A machine `gpurun down` is asked to destroy, and why."""

    provider: str
    instance_id: str
    run_id: str | None
    why: str


async def destroy_targets(journal: Journal, targets: list[Target]) -> tuple[list[str], list[str]]:
    """Destroy each (confirmed by polling) and journal it: (destroyed, unconfirmed) as `provider:instance`."""
    destroyed: list[str] = []
    unconfirmed: list[str] = []
    for target in targets:
        provider = make_provider(target.provider)
        try:
            confirmed = await destroy_confirmed(provider, target.instance_id, timeout_s=300, poll_s=3)
        finally:
            await provider.aclose()
        name = f"{target.provider}:{target.instance_id}"
        (destroyed if confirmed else unconfirmed).append(name)
        if target.run_id:
            journal.mark_terminated(target.run_id, confirmed, instance_id=target.instance_id)
    return destroyed, unconfirmed
