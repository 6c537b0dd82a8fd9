"""Renting with failover, the billed-price check and confirmed destroy, against the fake Vast."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from gpurun.errors import DeadlineError, PriceError
from gpurun.job.rent import RentPolicy, rent
from gpurun.job.teardown import destroy_confirmed
from gpurun.journal import Journal
from gpurun.models import CostEstimate, GpuRequest, LaunchSpec, Offer
from gpurun.provision.vast import VastProvider

FAST = RentPolicy(max_attempts=3, ready_timeout_s=1.5, poll_s=0.05)
SPEC = LaunchSpec(image="pytorch/pytorch", disk_gb=20, label="gpurun-test", ssh_public_key="ssh-ed25519 AAAA test")


def _estimate(offer: Offer) -> CostEstimate:
    return CostEstimate(
        offer=offer, phases=(), batch_size=2, feasible=True, seconds=600, dollars=0.1, expected_dollars=0.1
    )


async def _candidates(provider: VastProvider, n: int = 3) -> list[CostEstimate]:
    offers = await provider.list_offers(GpuRequest(gpu_names=("RTX 4090",), min_reliability=0.0))
    offers.sort(key=lambda o: o.price_per_hour)
    assert len(offers) >= n
    return [_estimate(o) for o in offers[:n]]


def _journal(run_id: str, first: CostEstimate) -> Journal:
    journal = Journal.open()
    offer = first.offer
    journal.record_intent(
        run_id,
        provider=offer.provider,
        offer_id=offer.offer_id,
        gpu=offer.gpu.name,
        quoted_price=offer.price_per_hour,
        budget=5.0,
        workload={},
        estimate={},
        output_dir=None,
        config_toml=None,
        label="gpurun-" + run_id,
    )
    return journal


async def test_capacity_error_fails_over_to_the_next_offer(fake_vast, vast_provider) -> None:
    candidates = await _candidates(vast_provider)
    fake_vast.inject_capacity_gone(candidates[0].offer.offer_id)
    journal = _journal("r1", candidates[0])
    rented = await rent(candidates, {"vast": vast_provider}, lambda c: SPEC, journal, "r1", policy=FAST)
    assert rented.choice is candidates[1] and rented.attempt == 2
    assert rented.instance.ssh is not None and rented.price_per_hour > 0
    assert rented.instance.self_destroy_token  # Vast's instance key, kept from the create response
    attempts = journal.instances("r1")
    assert [a.status for a in attempts] == ["not_created", "created"]
    assert fake_vast.live_instances() == [rented.instance.instance_id]


async def test_never_ready_host_is_destroyed_and_the_next_one_used(fake_vast, vast_provider) -> None:
    candidates = await _candidates(vast_provider)
    fake_vast.never_ready(candidates[0].offer.offer_id)
    journal = _journal("r2", candidates[0])
    rented = await rent(candidates, {"vast": vast_provider}, lambda c: SPEC, journal, "r2", policy=FAST)
    assert rented.choice is candidates[1]
    first = journal.instances("r2")[0]
    assert first.status == "destroyed" and first.instance_id in fake_vast.destroyed_ids
    assert fake_vast.live_instances() == [rented.instance.instance_id]


async def test_all_attempts_failing_raises_the_last_error_and_leaves_nothing(fake_vast, vast_provider) -> None:
    candidates = await _candidates(vast_provider, 2)
    fake_vast.never_ready()
    journal = _journal("r3", candidates[0])
    with pytest.raises(DeadlineError, match="not ready"):
        await rent(
            candidates, {"vast": vast_provider}, lambda c: SPEC, journal, "r3", policy=replace(FAST, max_attempts=2)
        )
    assert fake_vast.live_instances() == []
    assert journal.alive_instances() == []


async def test_billed_price_above_quote_destroys(fake_vast, vast_provider) -> None:
    candidates = await _candidates(vast_provider, 1)

    class Overbilling:
        name = "vast"
        over_ssh = True

        async def create(self, offer, spec):
            return await vast_provider.create(offer, spec)

        async def get(self, instance_id):
            instance = await vast_provider.get(instance_id)
            return replace(instance, price_per_hour=(instance.price_per_hour or 0) * 2 + 1)

        async def terminate(self, instance_id):
            await vast_provider.terminate(instance_id)

    journal = _journal("r4", candidates[0])
    with pytest.raises(PriceError, match="above the quoted"):
        await rent(candidates, {"vast": Overbilling()}, lambda c: SPEC, journal, "r4", policy=FAST)
    assert fake_vast.live_instances() == []


async def test_a_host_gone_offline_is_given_up_at_once_not_waited_on(fake_vast, vast_provider) -> None:
    """Vast's docs: `unknown` and `offline` are terminal. The next offer is tried without paying the ready timeout."""
    candidates = await _candidates(vast_provider)
    fake_vast.report_status(candidates[0].offer.offer_id, "offline")
    journal = _journal("r6", candidates[0])
    slow = replace(FAST, ready_timeout_s=60)
    started = asyncio.get_running_loop().time()
    rented = await rent(candidates, {"vast": vast_provider}, lambda c: SPEC, journal, "r6", policy=slow)
    assert rented.choice is candidates[1] and asyncio.get_running_loop().time() - started < 10
    assert journal.instances("r6")[0].status == "destroyed"


async def test_an_undocumented_status_is_waited_on_not_taken_for_dead(fake_vast, vast_provider) -> None:
    candidates = await _candidates(vast_provider, 1)
    fake_vast.report_status(candidates[0].offer.offer_id, "pulling_layers")
    journal = _journal("r7", candidates[0])
    started = asyncio.get_running_loop().time()
    with pytest.raises(DeadlineError, match="not ready"):
        await rent(candidates, {"vast": vast_provider}, lambda c: SPEC, journal, "r7", policy=FAST)
    assert asyncio.get_running_loop().time() - started >= FAST.ready_timeout_s
    assert fake_vast.live_instances() == []


async def test_a_billed_price_of_zero_is_bad_data_and_the_quote_stands(fake_vast, vast_provider) -> None:
    candidates = await _candidates(vast_provider, 1)

    class FreeLunch:
        name = "vast"
        over_ssh = True

        async def create(self, offer, spec):
            return await vast_provider.create(offer, spec)

        async def get(self, instance_id):
            return replace(await vast_provider.get(instance_id), price_per_hour=0.0)

        async def terminate(self, instance_id):
            await vast_provider.terminate(instance_id)

    journal = _journal("r8", candidates[0])
    rented = await rent(candidates, {"vast": FreeLunch()}, lambda c: SPEC, journal, "r8", policy=FAST)
    assert rented.price_per_hour == pytest.approx(candidates[0].offer.price_per_hour)
    await vast_provider.terminate(rented.instance.instance_id)


async def test_cancellation_while_waiting_still_destroys(fake_vast, vast_provider) -> None:
    candidates = await _candidates(vast_provider, 1)
    fake_vast.never_ready()
    journal = _journal("r5", candidates[0])
    task = asyncio.create_task(
        rent(
            candidates, {"vast": vast_provider}, lambda c: SPEC, journal, "r5", policy=replace(FAST, ready_timeout_s=60)
        )
    )
    while not fake_vast.instances:
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake_vast.live_instances() == []
    assert journal.alive_instances() == []


async def test_destroy_confirmed_is_idempotent(fake_vast, vast_provider) -> None:
    candidates = await _candidates(vast_provider, 1)
    instance = await vast_provider.create(candidates[0].offer, SPEC)
    assert await destroy_confirmed(vast_provider, instance.instance_id, poll_s=0.01)
    assert await destroy_confirmed(vast_provider, instance.instance_id, poll_s=0.01)
    assert fake_vast.live_instances() == []
