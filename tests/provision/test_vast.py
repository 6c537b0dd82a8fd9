"""The Vast.ai adapter against the fake Vast server: search, units, create/get/destroy, SSH, errors, key hygiene."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from gpurun.errors import AuthError, CapacityError, NotFoundError, PriceError
from gpurun.models import GpuRequest, InstanceState, LaunchSpec, Offer
from gpurun.provision.http import RetryPolicy
from gpurun.provision.vast import VastProvider, parse_offer
from tests.support.fakes.fixtures import FAST_RETRY
from tests.support.fakes.vast_catalog import vast_offer
from tests.support.fakes.vast_server import FakeVast

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0k0Jz2hQ0h3m5xg5Gm5vJ0n4A2Lq3w3Yz9gRkJt7uD run@gpurun"


def spec(label: str = "gpurun-r1", **overrides) -> LaunchSpec:
    values = {
        "image": "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime",
        "disk_gb": 30,
        "label": label,
        "ssh_public_key": KEY,
        "env": {"HF_HOME": "/workspace/hf"},
        "onstart": "echo started > /root/onstart.txt",
    }
    values.update(overrides)
    return LaunchSpec(**values)


async def running(provider: VastProvider, instance_id: str, polls: int = 10):
    for _ in range(polls):
        instance = await provider.get(instance_id)
        if instance.state is InstanceState.RUNNING:
            return instance
    raise AssertionError(f"{instance_id} never ran")


async def test_search_sends_the_filter_language_in_vast_units(fake_vast: FakeVast, vast_provider: VastProvider):
    req = GpuRequest(
        gpu_names=("RTX_4090",),
        min_vram_gb=24,
        min_reliability=0.95,
        min_cuda=12.8,
        min_inet_down_mbps=200,
        min_disk_gb=30,
        max_price_per_hour=0.5,
        limit=50,
    )
    offers = await vast_provider.list_offers(req)
    body = fake_vast.calls("POST", "/api/v0/bundles/")[-1].body
    assert body["gpu_name"] == {"in": ["RTX 4090"]}  # the API compares the spaced form
    assert body["gpu_ram"] == {"gte": 24000}  # GB sent as MB ×1000
    assert body["reliability"] == {"gte": 0.95}
    assert body["cuda_max_good"] == {"gte": 12.8}
    assert body["inet_down"] == {"gte": 200}
    assert body["direct_port_count"] == {"gte": 1}
    assert body["dph_total"] == {"lte": 0.5}
    assert body["verified"] == {"eq": True} and body["rentable"] == {"eq": True}
    assert body["external"] == {"eq": False} and body["rented"] == {"eq": False}
    assert body["type"] == "on-demand" and body["allocated_storage"] == 30 and body["limit"] == 50
    assert body["order"] == [["dph_total", "asc"]]
    # the seeded 4090s: the flaky Vietnamese host (0.90 reliability, 95 Mb/s) and the cheap Lisbon host whose driver
    # is too old for CUDA 12.8 are filtered out server-side
    assert [o.location for o in offers] == ["Ontario, CA", "Texas, US"]
    assert [o.price_per_hour for o in offers] == sorted(o.price_per_hour for o in offers)


async def test_offer_fields_and_units(vast_provider: VastProvider):
    offers = await vast_provider.list_offers(GpuRequest(gpu_names=("RTX 4090",), min_disk_gb=30))
    ontario = next(o for o in offers if o.location == "Ontario, CA")
    # dph_base 0.30 + storage 0.15 $/GB-month × 30 GB / 720 h
    assert ontario.price_per_hour == pytest.approx(0.30 + 0.15 * 30 / 720)
    assert ontario.disk_gb == 30 and ontario.storage_per_gb_month == 0.15
    assert ontario.download_per_gb == ontario.upload_per_gb == pytest.approx(0.00390625)  # $4/TB
    assert ontario.gpu.vram_gb == pytest.approx(24.564) and ontario.gpu.compute_capability == pytest.approx(8.9)
    assert ontario.gpu.tflops == pytest.approx(82.6) and ontario.reliability == pytest.approx(0.9934)
    assert ontario.inet_down_mbps == pytest.approx(905.1) and ontario.direct_ssh and ontario.verified
    assert ontario.cpu_cores == 16 and ontario.ram_gb == pytest.approx(64.301) and ontario.cuda_version == 12.8
    assert ontario.raw["id"] == int(ontario.offer_id) and not ontario.spot


async def test_multi_gpu_offer_reports_per_gpu_flops(vast_provider: VastProvider):
    (offer,) = await vast_provider.list_offers(GpuRequest(gpu_names=("RTX 4090",), num_gpus=2))
    assert offer.gpu.count == 2 and offer.gpu.tflops == pytest.approx(82.6)


async def test_interruptible_search_prices_on_the_bid(fake_vast: FakeVast, vast_provider: VastProvider):
    offers = await vast_provider.list_offers(GpuRequest(gpu_names=("RTX 4090",), spot=True, min_disk_gb=20))
    assert fake_vast.calls("POST", "/bundles/")[-1].body["type"] == "bid"
    ontario = next(o for o in offers if o.location == "Ontario, CA")
    assert ontario.spot and ontario.min_bid == pytest.approx(0.18)
    assert ontario.price_per_hour == pytest.approx(0.18 + 0.15 * 20 / 720)


async def test_create_rents_exactly_the_offer_with_safe_options(fake_vast: FakeVast, vast_provider: VastProvider):
    offer = (await vast_provider.list_offers(GpuRequest(gpu_names=("RTX 4090",))))[0]
    instance = await vast_provider.create(offer, spec())
    order = [(r.method, r.path) for r in fake_vast.requests[1:]]
    assert order[:3] == [("GET", "/api/v0/ssh/"), ("POST", "/api/v0/ssh/"), ("PUT", f"/api/v0/asks/{offer.offer_id}/")]
    assert fake_vast.ssh_keys[0]["public_key"] == KEY  # registered on the account before renting
    body = fake_vast.calls("PUT", "/asks/")[0].body
    assert body["cancel_unavail"] is True and "direc" in body["runtype"] and body["price"] is None
    assert body["label"] == "gpurun-r1" and body["disk"] == 30 and body["image"].startswith("pytorch/")
    assert body["env"] == {"HF_HOME": "/workspace/hf", "GPURUN_SSH_PUBLIC_KEY": KEY}
    assert "authorized_keys" in body["onstart"] and body["onstart"].endswith("echo started > /root/onstart.txt")
    assert instance.state is InstanceState.PENDING and instance.offer_id == offer.offer_id
    assert instance.self_destroy_token == fake_vast.instance_key(instance.instance_id)
    assert fake_vast.instance_key(instance.instance_id) not in repr(instance)
    # a second create with the same key does not register it again
    again = VastProvider(fake_vast.api_key, base_url=fake_vast.base_url, retry=FAST_RETRY)
    await again.create((await again.list_offers(GpuRequest(gpu_names=("RTX 3090",))))[0], spec("gpurun-r2"))
    await again.aclose()
    assert len(fake_vast.calls("POST", "/api/v0/ssh/")) == 1


async def test_a_runs_key_is_taken_off_the_account_and_the_users_own_keys_stay(fake_vast, vast_provider) -> None:
    """Vast installs every account key on every later instance: a run's key must not outlive the run."""
    users_own = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwnKeyOfTheUserXXXXXXXXXXXXXXXXXXXXXXXXXXXX me@laptop"
    fake_vast.ssh_keys.append({"id": 7, "public_key": users_own})
    run_key = KEY.rsplit(" ", 1)[0] + " gpurun-r01kf3m9x2c7qzab"
    await vast_provider.register_ssh_key(run_key)
    assert await vast_provider.run_ssh_keys() == [run_key]
    await vast_provider.forget_ssh_key(run_key)
    assert [k["public_key"] for k in fake_vast.ssh_keys] == [users_own]
    assert await vast_provider.run_ssh_keys() == []
    await vast_provider.register_ssh_key(run_key)  # forgotten means forgotten: a later run registers it again
    assert len(fake_vast.calls("POST", "/api/v0/ssh/")) == 2


async def test_lifecycle_direct_ssh_and_billed_price(fake_vast: FakeVast, vast_provider: VastProvider):
    fake_vast.set_ssh_endpoint("127.0.0.1", 40022)
    fake_vast.set_proxy_endpoint("127.0.0.2", 17234)
    offer = (await vast_provider.list_offers(GpuRequest(gpu_names=("RTX 4090",), min_disk_gb=30)))[0]
    instance = await vast_provider.create(offer, spec())
    states = [(await vast_provider.get(instance.instance_id)).state for _ in range(2)]
    assert states == [InstanceState.PENDING, InstanceState.PENDING]
    ready = await running(vast_provider, instance.instance_id)
    assert (ready.ssh.host, ready.ssh.port, ready.ssh.user) == ("127.0.0.1", 40022, "root")  # direct before proxy
    assert ready.price_per_hour == pytest.approx(offer.price_per_hour)  # the billed dph_total, read back
    assert ready.label == "gpurun-r1" and ready.gpu.name == "RTX 4090"


async def test_proxy_endpoint_when_the_host_has_no_direct_port(fake_vast: FakeVast, vast_provider: VastProvider):
    fake_vast.set_proxy_endpoint("127.0.0.2", 17234)
    raw = fake_vast.add_offer(vast_offer("RTX 3090", direct_port_count=0))
    offer = parse_offer({**raw, "dph_total": raw["dph_base"]}, spot=False, disk_gb=20)
    assert offer is not None and not offer.direct_ssh
    instance = await vast_provider.create(offer, spec())
    ready = await running(vast_provider, instance.instance_id)
    assert (ready.ssh.host, ready.ssh.port) == ("127.0.0.2", 17234)


async def test_an_instance_that_never_becomes_ready_stays_pending(fake_vast: FakeVast, vast_provider: VastProvider):
    fake_vast.never_ready()
    offer = (await vast_provider.list_offers(GpuRequest()))[0]
    instance = await vast_provider.create(offer, spec())
    for _ in range(6):
        current = await vast_provider.get(instance.instance_id)
        assert current.state is InstanceState.PENDING and current.ssh is None


async def test_terminate_destroys_once_and_is_idempotent(fake_vast: FakeVast, vast_provider: VastProvider):
    offer = (await vast_provider.list_offers(GpuRequest()))[0]
    instance = await vast_provider.create(offer, spec())
    await vast_provider.terminate(instance.instance_id)
    await vast_provider.terminate(instance.instance_id)  # 404 now: still success
    await vast_provider.terminate("999999")  # never existed: success
    assert fake_vast.destroyed_ids == [instance.instance_id] and fake_vast.destroyed[0].by == "account"
    assert all(r.body == {} for r in fake_vast.calls("DELETE"))  # DELETE carries a JSON body, never a stop
    assert not fake_vast.calls("PUT", "/api/v0/instances/")
    with pytest.raises(NotFoundError):
        await vast_provider.get(instance.instance_id)
    assert await vast_provider.list_instances() == []


async def test_list_instances_pages_and_keeps_only_gpurun_labels(fake_vast: FakeVast, vast_provider: VastProvider):
    for _ in range(27):
        fake_vast.add_offer(vast_offer("RTX 3090"))
    ids = list(fake_vast.offers)
    headers = {"Authorization": f"Bearer {fake_vast.api_key}"}
    async with httpx.AsyncClient(base_url=fake_vast.base_url, headers=headers) as client:
        for index, offer_id in enumerate(ids[:28]):
            label = "someone-else" if index == 0 else f"gpurun-run{index}"
            body = {"image": "x", "disk": 10, "label": label, "runtype": "ssh_direc ssh_proxy"}
            assert (await client.put(f"/api/v0/asks/{offer_id}/", json=body)).status_code == 200
    listed = await vast_provider.list_instances()
    assert sorted(i.label for i in listed) == sorted(f"gpurun-run{i}" for i in range(1, 28))
    assert len(fake_vast.calls("GET", "/api/v1/instances/")) == 2  # 25 per page


async def test_rate_limit_waits_for_retry_after(fake_vast: FakeVast, vast_provider: VastProvider):
    fake_vast.inject_rate_limit(1, retry_after="1", path="/bundles")
    offers = await vast_provider.list_offers(GpuRequest())
    assert offers
    first, second = fake_vast.calls("POST", "/bundles")
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 0.95  # Retry-After honoured, although the policy's own wait is 10 ms


async def test_server_errors_are_retried(fake_vast: FakeVast, vast_provider: VastProvider):
    fake_vast.inject_server_error(2, status=502, path="/api/v0/instances/")
    offer = (await vast_provider.list_offers(GpuRequest()))[0]
    instance = await vast_provider.create(offer, spec())
    assert (await vast_provider.get(instance.instance_id)).instance_id == instance.instance_id
    assert [r.status for r in fake_vast.calls("GET", f"/instances/{instance.instance_id}/")] == [502, 502, 200]


async def test_bad_key_is_not_retried_and_names_the_fix(fake_vast: FakeVast):
    provider = VastProvider("wrong-key-" + "x" * 30, base_url=fake_vast.base_url, retry=FAST_RETRY)
    with pytest.raises(AuthError) as caught:
        await provider.list_offers(GpuRequest())
    await provider.aclose()
    assert len(fake_vast.requests) == 1
    line = caught.value.one_line()
    assert "vast" in line and "VAST_API_KEY" in line and "401" in line


async def test_capacity_errors_on_create(fake_vast: FakeVast, vast_provider: VastProvider):
    offers = await vast_provider.list_offers(GpuRequest(gpu_names=("RTX 4090",)))
    fake_vast.inject_capacity_gone(offers[0].offer_id)
    with pytest.raises(CapacityError, match="no longer available"):
        await vast_provider.create(offers[0], spec())
    await vast_provider.create(offers[1], spec("gpurun-r2"))
    with pytest.raises(CapacityError):  # rented already: the offer id is single-use (404 no_such_ask)
        await vast_provider.create(offers[1], spec("gpurun-r3"))
    assert len(fake_vast.live_instances()) == 1
    assert len(fake_vast.calls("PUT", "/asks/")) == 3  # capacity errors are not retried


async def test_a_lost_create_answer_does_not_rent_twice(fake_vast: FakeVast):
    provider = VastProvider(fake_vast.api_key, base_url=fake_vast.base_url, retry=FAST_RETRY, timeout=0.5)
    offer = (await provider.list_offers(GpuRequest()))[0]
    fake_vast.inject_delay(1.5, path="/asks/", after_processing=True)
    instance = await provider.create(offer, spec("gpurun-lost"))
    await provider.aclose()
    assert len(fake_vast.calls("PUT", "/asks/")) == 1
    assert fake_vast.live_instances() == [instance.instance_id] and instance.label == "gpurun-lost"


async def test_interruptible_create_bids_and_respects_the_cap(fake_vast: FakeVast, vast_provider: VastProvider):
    offer = (await vast_provider.list_offers(GpuRequest(gpu_names=("RTX 4090",), spot=True)))[0]
    with pytest.raises(PriceError):
        await vast_provider.create(offer, spec(bid_price=0.30, price_cap=0.25))
    assert not fake_vast.calls("PUT", "/asks/")
    instance = await vast_provider.create(offer, spec(bid_price=0.22, price_cap=0.25))
    assert fake_vast.calls("PUT", "/asks/")[0].body["price"] == 0.22
    ready = await running(vast_provider, instance.instance_id)
    assert ready.price_per_hour == pytest.approx(0.22 + 0.15 * 30 / 720)


async def test_instance_key_can_destroy_its_own_instance_only(fake_vast: FakeVast, vast_provider: VastProvider):
    offers = await vast_provider.list_offers(GpuRequest())
    mine = await vast_provider.create(offers[0], spec("gpurun-a"))
    other = await vast_provider.create(offers[1], spec("gpurun-b"))
    token = mine.self_destroy_token
    async with httpx.AsyncClient(base_url=fake_vast.base_url, headers={"Authorization": f"Bearer {token}"}) as client:
        assert (await client.request("DELETE", f"/api/v0/instances/{other.instance_id}/", json={})).status_code == 403
        assert (await client.post("/api/v0/bundles/", json={})).status_code == 403
        assert (await client.request("DELETE", f"/api/v0/instances/{mine.instance_id}/", json={})).status_code == 200
    assert [(d.instance_id, d.by) for d in fake_vast.destroyed] == [(mine.instance_id, "instance")]


async def test_the_key_never_leaks(fake_vast: FakeVast, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    provider = VastProvider(fake_vast.api_key, base_url=fake_vast.base_url, retry=FAST_RETRY)
    fake_vast.inject_rate_limit(1, retry_after="0", path="/bundles")
    offer = (await provider.list_offers(GpuRequest()))[0]
    instance = await provider.create(offer, spec())
    await provider.get(instance.instance_id)
    await provider.terminate(instance.instance_id)
    bad = VastProvider(fake_vast.api_key + "x", base_url=fake_vast.base_url, retry=RetryPolicy(attempts=1))
    with pytest.raises(AuthError) as caught:
        await bad.get("1")
    texts = [caplog.text, repr(provider), repr(bad), str(caught.value), caught.value.one_line(), repr(offer)]
    texts += [repr(instance), str(caught.value.to_dict())]
    assert all(fake_vast.api_key not in text for text in texts)
    assert all(r.auth == "account" for r in fake_vast.requests if r.status < 400)
    assert all("api_key" not in r.query and fake_vast.api_key not in r.path for r in fake_vast.requests)
    assert all(r.headers["authorization"].startswith("Bearer ") for r in fake_vast.requests)
    await provider.aclose()
    await bad.aclose()


async def test_retry_budget_is_bounded(fake_vast: FakeVast):
    provider = VastProvider(
        fake_vast.api_key, base_url=fake_vast.base_url, retry=RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.01)
    )
    fake_vast.inject_server_error(10, status=503)
    start = time.monotonic()
    with pytest.raises(Exception, match="503"):
        await provider.list_offers(GpuRequest())
    await provider.aclose()
    assert len(fake_vast.requests) == 3 and time.monotonic() - start < 5


def test_offer_parsing_is_lenient() -> None:
    assert parse_offer({"gpu_name": "RTX 4090"}, spot=False, disk_gb=10) is None  # no id, no price
    sparse = parse_offer({"id": 5, "dph_total": "0.4", "reliability": None, "num_gpus": None}, spot=False, disk_gb=10)
    assert isinstance(sparse, Offer) and sparse.price_per_hour == 0.4 and sparse.reliability == 1.0
    assert sparse.gpu.count == 1 and sparse.gpu.name == "unknown" and not sparse.direct_ssh


async def test_on_demand_quote_above_the_cap_is_refused_before_renting(fake_vast: FakeVast, vast_provider):
    offer = (await vast_provider.list_offers(GpuRequest(gpu_names=("A100 SXM4",))))[0]
    with pytest.raises(PriceError, match="above the cap"):
        await vast_provider.create(offer, spec(price_cap=offer.price_per_hour - 0.01))
    assert not fake_vast.calls("PUT", "/asks/") and offer.offer_id in fake_vast.offers


async def test_the_boot_script_runs_in_onstart_after_the_key_and_before_the_callers(
    fake_vast: FakeVast, vast_provider: VastProvider
):
    offer = (await vast_provider.list_offers(GpuRequest()))[0]
    await vast_provider.create(offer, spec(boot_script="echo armed"))
    onstart = fake_vast.calls("PUT", "/api/v0/asks/")[-1].body["onstart"]
    assert onstart.index("authorized_keys") < onstart.index("echo armed") < onstart.index("echo started")


def test_the_instance_destroys_itself_with_its_own_key_never_the_account_key(vast_provider: VastProvider):
    url = f"{vast_provider.base_url}/api/v0/instances/{{instance_id}}/"
    assert vast_provider.self_destroy(None) == {
        "kind": "http", "instance_id_env": "CONTAINER_ID", "token_env": "CONTAINER_API_KEY",
        "check": {"method": "GET", "url": url}, "attempts": [{"method": "DELETE", "url": url, "body": {}}],
    }  # fmt: skip
    assert vast_provider.runs_boot_script and "cuda12.8" in (vast_provider.default_image or "")
