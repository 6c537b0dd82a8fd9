"""Renting for one run: the exact offer (failing over on capacity errors and hosts that never come up), the billed
price checked against the quote. Every wait has a deadline; every step is journalled before it happens, so a
crash can never lose an instance; an instance given up is destroyed (`gpurun.job.teardown`) before the next try.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from gpurun.errors import (
    CapacityError,
    DeadlineError,
    GpurunError,
    PriceError,
    TransientProviderError,
)
from gpurun.job.record import MachineUse, RunRecord
from gpurun.job.teardown import destroy_confirmed
from gpurun.journal import Journal
from gpurun.models import CostEstimate, Instance, InstanceState, LaunchSpec
from gpurun.provision.base import Provider

#: a billed price above the quote by more than this fraction aborts the run (rounding and storage slack)
PRICE_TOLERANCE = 0.02


@dataclass(frozen=True)
class Rented:
    """An instance that is running, reachable, and billed at an accepted price."""

    instance: Instance
    choice: CostEstimate
    provider: Provider
    attempt: int
    created_at: float
    #: the $/h the provider bills (read back after create), or the quote where it does not say
    price_per_hour: float

    def apply_to(self, record: RunRecord) -> None:
        """What the run's record learns from the rental."""
        record.estimate = self.choice
        record.instance_id = self.instance.instance_id
        record.price_per_hour = self.price_per_hour
        record.created_at = self.created_at
        record.workdir = self.instance.workdir
        record.boot_armed = self.provider.runs_boot_script
        offer = self.choice.offer
        record.machines.append(
            MachineUse(provider=offer.provider, offer=offer.key, instance_id=self.instance.instance_id,
                       gpu=offer.gpu.name, price_per_hour=self.price_per_hour, created_at=self.created_at)
        )  # fmt: skip


@dataclass(frozen=True)
class RentPolicy:
    max_attempts: int = 3
    #: how long a created instance may take to become reachable, before it is destroyed and the next one tried
    ready_timeout_s: float = 900.0
    poll_s: float = 5.0
    price_tolerance: float = PRICE_TOLERANCE


Notify = Callable[[str], None]


def _ready(instance: Instance, needs_ssh: bool) -> bool:
    return instance.state is InstanceState.RUNNING and (instance.ssh is not None or not needs_ssh)


async def wait_until_ready(
    provider: Provider, instance_id: str, *, timeout_s: float, poll_s: float, needs_ssh: bool = True
) -> Instance:
    """Poll `get` until the instance runs and (where needed) has an SSH endpoint. DeadlineError after timeout_s.

    Transient API errors while polling are tolerated until the deadline; an instance that exits or is terminated
    by the provider while we wait is an error at once.
    """
    deadline = time.monotonic() + timeout_s
    last_state = "unknown"
    while True:
        try:
            instance = await provider.get(instance_id)
        except TransientProviderError:
            instance = None
        if instance is not None:
            if _ready(instance, needs_ssh):
                return instance
            last_state = instance.state.value
            # "unknown"/"offline" (Vast: the host dropped off the network) will not come back within a boot: give
            # up at once, destroy it and try the next offer, rather than pay for the whole ready timeout
            if instance.state in (
                InstanceState.EXITED, InstanceState.TERMINATED, InstanceState.STOPPED, InstanceState.UNKNOWN
            ):  # fmt: skip
                raise CapacityError(
                    f"instance {instance_id} went to {last_state} before it was ready", provider=provider.name
                )
        if time.monotonic() >= deadline:
            raise DeadlineError(
                f"instance {instance_id} was not ready after {timeout_s:.0f} s (last state: {last_state})",
                where=provider.name,
                hint="the host may be slow to pull the image; gpurun destroyed it and tries the next offer",
            )
        await asyncio.sleep(poll_s)


async def rent(
    candidates: Sequence[CostEstimate],
    providers: Mapping[str, Provider],
    spec_for: Callable[[CostEstimate], LaunchSpec],
    journal: Journal,
    run_id: str,
    *,
    policy: RentPolicy = RentPolicy(),
    notify: Notify = lambda text: None,
) -> Rented:
    """Rent the first candidate that comes up, in order; the journal's intent for candidates[0] must exist.

    Capacity errors, hosts that never become ready and over-quote billing move on to the next candidate (each
    failed instance destroyed first); anything else propagates. Raises the last error when all attempts fail.
    """
    last_error: GpurunError | None = None
    for index, choice in enumerate(candidates[: policy.max_attempts]):
        offer = choice.offer
        provider = providers[offer.provider]
        if index == 0:
            attempt = 1
        else:
            attempt = journal.record_failover(
                run_id,
                provider=offer.provider,
                offer_id=offer.offer_id,
                gpu=offer.gpu.name,
                quoted_price=offer.price_per_hour,
            )
            notify(f"trying the next offer: {offer.key} ({offer.gpu.name}, ${offer.price_per_hour:.3f}/h)")
        journal.phase(run_id, "boot", f"creating {offer.key}")
        try:
            instance = await provider.create(offer, spec_for(choice))
        except CapacityError as error:
            journal.mark_not_created(run_id, error.one_line())
            notify(f"{offer.key} is no longer available: {error.message}")
            last_error = error
            continue
        created_at = time.time()
        journal.set_instance(run_id, instance.instance_id, billed_price=instance.price_per_hour, ssh=instance.ssh)
        journal.phase(run_id, "boot", f"waiting for {instance.instance_id}")
        try:
            ready = await wait_until_ready(
                provider,
                instance.instance_id,
                timeout_s=policy.ready_timeout_s,
                poll_s=policy.poll_s,
                needs_ssh=provider.over_ssh,
            )
            # a billed price of $0 or less from a marketplace is bad data: the quote stands
            billed = ready.price_per_hour if ready.price_per_hour and ready.price_per_hour > 0 else offer.price_per_hour
            if billed > offer.price_per_hour * (1 + policy.price_tolerance) + 1e-9:
                raise PriceError(
                    f"{offer.key} bills ${billed:.4f}/h, above the quoted ${offer.price_per_hour:.4f}/h",
                    where=offer.provider,
                    hint="gpurun destroyed it; the next offer is tried",
                )
        except (DeadlineError, CapacityError, PriceError) as error:
            notify(error.one_line())
            confirmed = await destroy_confirmed(provider, instance.instance_id, poll_s=policy.poll_s)
            journal.mark_terminated(run_id, confirmed, instance_id=instance.instance_id)
            last_error = error
            continue
        except BaseException:
            # cancelled or an unexpected failure while waiting: never leave the instance behind
            confirmed = await asyncio.shield(destroy_confirmed(provider, instance.instance_id, poll_s=policy.poll_s))
            journal.mark_terminated(run_id, confirmed, instance_id=instance.instance_id)
            raise
        # merge what create said (e.g. the instance-scoped key) with what get says now
        if ready.self_destroy_token is None and instance.self_destroy_token is not None:
            ready = replace(ready, self_destroy_token=instance.self_destroy_token)
        journal.set_instance(run_id, ready.instance_id, billed_price=billed, ssh=ready.ssh)
        return Rented(ready, choice, provider, attempt, created_at, billed)
    assert last_error is not None, "rent() needs at least one candidate"
    raise last_error
