"""The RunPod adapter against the fake RunPod: GraphQL prices and stock, REST v2 pods, spot via GraphQL, errors."""

from __future__ import annotations

import logging
import shlex
import socket

import httpx
import pytest

from gpurun.errors import AuthError, CapacityError, ConfigError, NotFoundError, PriceError, ProviderError
from gpurun.models import GpuRequest, InstanceState, LaunchSpec
from gpurun.provision.runpod import RunpodProvider
from gpurun.provision.runpod_parse import parse_offer_id
from tests.support.fakes.fixtures import FAST_RETRY
from tests.support.fakes.runpod_catalog import runpod_gpu_type
from tests.support.fakes.runpod_server import FakeRunpod

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0k0Jz2hQ0h3m5xg5Gm5vJ0n4A2Lq3w3Yz9gRkJt7uD run@gpurun"


def spec(label: str = "gpurun-r1", **overrides) -> LaunchSpec:
    values = {
        "image": "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
        "disk_gb": 25.5,
        "label": label,
        "ssh_public_key": KEY,
        "env": {"HF_HOME": "/workspace/hf"},
    }
    values.update(overrides)
    return LaunchSpec(**values)


async def running(provider: RunpodProvider, pod_id: str, polls: int = 10):
    for _ in range(polls):
        instance = await provider.get(pod_id)
        if instance.state is InstanceState.RUNNING:
            return instance
    raise AssertionError(f"{pod_id} never ran")


async def test_offers_come_from_graphql_per_cloud(fake_runpod: FakeRunpod, runpod_provider: RunpodProvider):
    offers = await runpod_provider.list_offers(GpuRequest(gpu_names=("RTX 4090",), num_gpus=2, min_disk_gb=30))
    calls = fake_runpod.calls("POST", "/graphql")
    assert [c.graphql_field for c in calls] == ["gpuTypes", "gpuTypes"]
    asked = sorted((c.body["variables"]["lowest"] for c in calls), key=lambda lowest: lowest["secureCloud"])
    assert asked == [{"gpuCount": 2, "secureCloud": False}, {"gpuCount": 2, "secureCloud": True}]
    by_cloud = {o.raw["cloud"]: o for o in offers}
    assert set(by_cloud) == {"COMMUNITY", "SECURE"}
    community = by_cloud["COMMUNITY"]
    # $/GPU/h × GPUs, plus container disk at $0.10/GB-month (RunPod bills it apart from the GPU price)
    assert community.price_per_hour == pytest.approx(0.34 * 2 + 0.10 * 30 / 720)
    assert community.gpu.count == 2 and community.gpu.vram_gb == 24 and community.gpu.name == "RTX 4090"
    assert community.min_bid == pytest.approx(0.40) and community.location == "CA"
    assert community.download_per_gb == 0 and community.storage_per_gb_month == 0.10
    assert parse_offer_id(community.offer_id) == ("COMMUNITY", 2, "NVIDIA GeForce RTX 4090", False)
    assert by_cloud["SECURE"].price_per_hour == pytest.approx(0.69 * 2 + 0.10 * 30 / 720)


async def test_offer_filters_and_stock(fake_runpod: FakeRunpod, runpod_provider: RunpodProvider):
    names = {o.raw["gpuTypeId"] for o in await runpod_provider.list_offers(GpuRequest(min_vram_gb=48))}
    assert names == {"NVIDIA RTX A6000", "NVIDIA L40S", "NVIDIA A100 80GB PCIe", "NVIDIA H100 80GB HBM3"}
    everything = {o.raw["gpuTypeId"] for o in await runpod_provider.list_offers(GpuRequest())}
    assert "NVIDIA GeForce RTX 5090" not in everything  # listed, but no stock in either cloud
    cheap = await runpod_provider.list_offers(GpuRequest(max_price_per_hour=0.4))
    assert cheap and all(o.price_per_hour <= 0.4 for o in cheap)
    a100 = await runpod_provider.list_offers(GpuRequest(gpu_names=("A100",)))
    assert {o.raw["gpuTypeId"] for o in a100} == {"NVIDIA A100 80GB PCIe"}


async def test_spot_offers_quote_the_bid_for_the_whole_pod(runpod_provider: RunpodProvider):
    offers = await runpod_provider.list_offers(GpuRequest(gpu_names=("RTX 4090",), num_gpus=2, spot=True))
    community = next(o for o in offers if o.raw["cloud"] == "COMMUNITY")
    assert community.spot and community.offer_id.startswith("community-spot:2:")
    assert community.price_per_hour == pytest.approx(0.20 * 2 + 0.10 * 20 / 720)


async def test_create_get_terminate_through_rest_v2(fake_runpod: FakeRunpod, runpod_provider: RunpodProvider):
    fake_runpod.set_ssh_endpoint("127.0.0.1", 41022)
    offer = next(o for o in await runpod_provider.list_offers(GpuRequest(gpu_names=("RTX 4090",))))
    instance = await runpod_provider.create(offer, spec())
    create = fake_runpod.calls("POST", "/v2/pods")[0]
    assert create.body == {
        "name": "gpurun-r1",
        "image": "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
        "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1},
        "cloud": "COMMUNITY",
        "disk": 26,
        "ports": ["22/tcp"],
        "env": {"HF_HOME": "/workspace/hf", "PUBLIC_KEY": KEY},
    }
    assert instance.state is InstanceState.PENDING and instance.label == "gpurun-r1"
    assert (await runpod_provider.get(instance.instance_id)).state is InstanceState.PENDING
    second = await runpod_provider.get(instance.instance_id)
    assert second.raw["status"] == "RUNNING" and second.raw["runtime"] is None  # running before it is usable
    assert second.state is InstanceState.PENDING
    ready = await running(runpod_provider, instance.instance_id)
    assert (ready.ssh.host, ready.ssh.port, ready.ssh.user) == ("127.0.0.1", 41022, "root")
    assert ready.price_per_hour == pytest.approx(0.34)  # the billed `cost` read back
    await runpod_provider.terminate(instance.instance_id)
    await runpod_provider.terminate(instance.instance_id)
    assert fake_runpod.destroyed_ids == [instance.instance_id]
    with pytest.raises(NotFoundError):
        await runpod_provider.get(instance.instance_id)
    assert all(r.path.startswith(("/v2/", "/graphql")) for r in fake_runpod.requests)  # REST v1 is retired


async def test_ssh_from_runtime_ports_when_there_is_no_ssh_block(
    fake_runpod: FakeRunpod, runpod_provider: RunpodProvider
):
    fake_runpod.ssh_block = False
    fake_runpod.set_ssh_endpoint("127.0.0.1", 41023)
    offer = (await runpod_provider.list_offers(GpuRequest(gpu_names=("RTX 3090",))))[0]
    ready = await running(runpod_provider, (await runpod_provider.create(offer, spec())).instance_id)
    assert "ssh" not in ready.raw and (ready.ssh.host, ready.ssh.port) == ("127.0.0.1", 41023)


@pytest.mark.parametrize(
    ("image", "env", "args", "sshd"),
    [
        ("runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404", {"PUBLIC_KEY": KEY}, None, True),
        ("runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404", {}, None, False),  # no key: start.sh skips sshd
        ("pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime", {"PUBLIC_KEY": KEY}, None, False),  # no start.sh at all
        ("runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404", {"PUBLIC_KEY": KEY}, "sleep infinity", False),
        (
            "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404",
            {"PUBLIC_KEY": KEY},
            "bash -c 'true; exec /start.sh'",
            True,
        ),
    ],
)
async def test_only_a_runpod_image_whose_start_script_runs_with_a_key_accepts_ssh(
    fake_runpod: FakeRunpod, image: str, env: dict[str, str], args: str | None, sshd: bool
):
    """As on RunPod: 22/tcp is always mapped, but only runpod/* images' /start.sh starts sshd (from PUBLIC_KEY);
    another image, no key, or a start command that replaces /start.sh leaves nothing listening there."""
    fake_runpod.set_ssh_endpoint("127.0.0.1", 41023)
    headers = {"Authorization": f"Bearer {fake_runpod.api_key}"}
    body = {"name": "gpurun-ssh", "image": image, "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1},
            "ports": ["22/tcp"], "env": env, **({"args": args} if args else {})}  # fmt: skip
    async with httpx.AsyncClient(base_url=fake_runpod.base_url, headers=headers) as client:
        pod = (await client.post("/pods", json=body)).json()
        for _ in range(5):
            view = (await client.get(f"/pods/{pod['id']}")).json()
    (mapping,) = view["runtime"]["ports"]
    assert mapping["private"] == 22 and view["ssh"]["direct"]["port"] == mapping["public"]
    assert mapping["public"] == (41023 if sshd else fake_runpod.closed_port)
    if not sshd:
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", mapping["public"]), 2):
            pass


async def test_spot_pods_go_through_graphql_with_a_per_gpu_bid(
    fake_runpod: FakeRunpod, runpod_provider: RunpodProvider
):
    offers = await runpod_provider.list_offers(GpuRequest(gpu_names=("RTX 4090",), num_gpus=2, spot=True))
    offer = next(o for o in offers if o.raw["cloud"] == "COMMUNITY")
    with pytest.raises(PriceError):
        await runpod_provider.create(offer, spec(bid_price=0.6, price_cap=0.5))
    instance = await runpod_provider.create(offer, spec(bid_price=0.5))
    rent = fake_runpod.calls("POST", "/graphql")[-1]
    assert rent.graphql_field == "podRentInterruptable"
    sent = rent.body["variables"]["input"]
    assert sent["bidPerGpu"] == 0.25 and sent["gpuCount"] == 2 and sent["cloudType"] == "COMMUNITY"
    assert sent["ports"] == "22/tcp" and {"key": "PUBLIC_KEY", "value": KEY} in sent["env"]
    ready = await running(runpod_provider, instance.instance_id)
    assert ready.price_per_hour == pytest.approx(0.5) and ready.ssh is not None


async def test_capacity_errors(fake_runpod: FakeRunpod, runpod_provider: RunpodProvider):
    offers = await runpod_provider.list_offers(GpuRequest(gpu_names=("RTX 4090",)))
    fake_runpod.inject_no_capacity("NVIDIA GeForce RTX 4090", times=1)
    with pytest.raises(CapacityError, match="no longer any instances available"):
        await runpod_provider.create(offers[0], spec())
    assert len(fake_runpod.calls("POST", "/v2/pods")) == 1  # not retried: the orchestrator fails over
    await runpod_provider.create(offers[0], spec())
    spot = await runpod_provider.list_offers(GpuRequest(gpu_names=("RTX 4090",), spot=True))
    fake_runpod.inject_no_capacity()
    with pytest.raises(CapacityError):  # a GraphQL error, delivered with HTTP 200
        await runpod_provider.create(spot[0], spec("gpurun-r2"))


async def test_list_instances_keeps_gpurun_names(fake_runpod: FakeRunpod, runpod_provider: RunpodProvider):
    offer = (await runpod_provider.list_offers(GpuRequest(gpu_names=("RTX 3090",))))[0]
    mine = await runpod_provider.create(offer, spec("gpurun-mine"))
    headers = {"Authorization": f"Bearer {fake_runpod.api_key}"}
    async with httpx.AsyncClient(base_url=fake_runpod.base_url, headers=headers) as client:
        body = {"name": "jupyter", "image": "x", "gpu": {"id": "NVIDIA GeForce RTX 3090", "count": 1}}
        assert (await client.post("/pods", json=body)).status_code == 201
    assert [i.instance_id for i in await runpod_provider.list_instances()] == [mine.instance_id]


async def test_bad_key_is_reported_and_not_retried(fake_runpod: FakeRunpod):
    provider = RunpodProvider(
        "rpa_WRONG" + "0" * 30, base_url=fake_runpod.base_url, graphql_url=fake_runpod.graphql_url, retry=FAST_RETRY
    )
    for call in (provider.list_offers(GpuRequest()), provider.get("abc"), provider.check()):
        with pytest.raises(AuthError) as caught:
            await call
        assert "runpod" in caught.value.one_line() and "RUNPOD_API_KEY" in caught.value.one_line()
    await provider.aclose()
    assert len(fake_runpod.requests) == 2 + 1 + 1  # offers ask both clouds at once; nothing is retried


async def test_rate_limits_and_server_errors_are_retried(fake_runpod: FakeRunpod, runpod_provider: RunpodProvider):
    fake_runpod.inject_rate_limit(1, retry_after="1", path="/v2/pods", body={"title": "Too Many Requests"})
    fake_runpod.inject_server_error(1, status=502, path="/graphql")
    assert await runpod_provider.list_instances() == []
    assert await runpod_provider.list_offers(GpuRequest(gpu_names=("RTX 4090",)))
    limited, ok = fake_runpod.calls("GET", "/v2/pods")
    assert limited.status == 429 and ok.status == 200 and ok.at - limited.at >= 0.95
    assert [c.status for c in fake_runpod.calls("POST", "/graphql")][:2] == [502, 200]


async def test_graphql_errors_are_checked_although_http_says_200(fake_runpod: FakeRunpod, runpod_provider):
    query = "query { gpuTypes { id lowestPrice(input: {}) { stockStatus } } }"  # gpuCount is required in practice
    with pytest.raises(ProviderError, match="gpuTypes: gpuCount is required"):
        await runpod_provider.graphql(query, {}, "gpuTypes")
    assert fake_runpod.calls("POST", "/graphql")[-1].status == 200


async def test_a_seeded_gpu_type_becomes_an_offer(fake_runpod: FakeRunpod, runpod_provider: RunpodProvider):
    fake_runpod.gpu_types.append(runpod_gpu_type("NVIDIA L4", memory_gb=24, community_price=None, secure_price=0.44))
    offers = await runpod_provider.list_offers(GpuRequest(gpu_names=("L4",)))
    assert [(o.raw["cloud"], o.price_per_hour) for o in offers] == [("SECURE", pytest.approx(0.44 + 0.1 * 20 / 720))]


async def test_pod_key_may_only_terminate_its_own_pod(fake_runpod: FakeRunpod, runpod_provider: RunpodProvider):
    offer = (await runpod_provider.list_offers(GpuRequest(gpu_names=("RTX 4090",))))[0]
    mine = await runpod_provider.create(offer, spec("gpurun-a"))
    other = await runpod_provider.create(offer, spec("gpurun-b"))
    headers = {"Authorization": f"Bearer {fake_runpod.pod_key(mine.instance_id)}"}
    async with httpx.AsyncClient(base_url=fake_runpod.base_url, headers=headers) as client:
        assert (await client.delete(f"/pods/{other.instance_id}")).status_code == 403
        assert (await client.get("/pods")).status_code == 403
        assert (await client.delete(f"/pods/{mine.instance_id}")).status_code == 204
    assert [(d.pod_id, d.by) for d in fake_runpod.destroyed] == [(mine.instance_id, "pod")]


async def test_the_key_never_leaks(fake_runpod: FakeRunpod, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    provider = RunpodProvider(
        fake_runpod.api_key, base_url=fake_runpod.base_url, graphql_url=fake_runpod.graphql_url, retry=FAST_RETRY
    )
    offer = (await provider.list_offers(GpuRequest()))[0]
    instance = await provider.create(offer, spec())
    await provider.get(instance.instance_id)
    fake_runpod.inject_no_capacity()
    with pytest.raises(CapacityError) as caught:
        await provider.create(offer, spec("gpurun-r2"))
    await provider.aclose()
    texts = [caplog.text, repr(provider), str(caught.value), repr(instance), repr(offer)]
    assert [t for t in texts if fake_runpod.api_key in t] == []
    assert all("api_key" not in r.query for r in fake_runpod.requests)


async def test_on_demand_quote_above_the_cap_is_refused_before_renting(fake_runpod: FakeRunpod, runpod_provider):
    offer = (await runpod_provider.list_offers(GpuRequest(gpu_names=("H100 SXM",))))[0]
    with pytest.raises(PriceError, match="above the cap"):
        await runpod_provider.create(offer, spec(price_cap=1.0))
    assert not fake_runpod.calls("POST", "/v2/pods") and fake_runpod.live_pods() == []


async def test_an_image_that_never_starts_sshd_is_refused_before_anything_is_rented(
    fake_runpod: FakeRunpod, runpod_provider: RunpodProvider
):
    offer = (await runpod_provider.list_offers(GpuRequest(gpu_names=("RTX 4090",))))[0]
    with pytest.raises(ConfigError, match="RunPod starts sshd only in its own images") as caught:
        await runpod_provider.create(offer, spec(image="pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime"))
    assert caught.value.where == "--image" and "runpod/pytorch" in (caught.value.hint or "")
    assert fake_runpod.calls("POST", "/v2/pods") == []


async def test_the_boot_script_runs_before_the_images_start_script_and_the_cuda_floor_is_sent(
    fake_runpod: FakeRunpod, runpod_provider: RunpodProvider
):
    offer = (await runpod_provider.list_offers(GpuRequest(gpu_names=("RTX 4090",))))[0]
    await runpod_provider.create(offer, spec(boot_script="echo armed > /tmp/x\n", min_cuda=12.8))
    sent = fake_runpod.calls("POST", "/v2/pods")[-1].body
    assert sent["gpu"]["minCudaVersion"] == "12.8"
    assert shlex.split(sent["args"]) == ["bash", "-c", "echo armed > /tmp/x\nexec /start.sh"]
    fake_runpod.gpu_types[:] = [dict(t, _cuda="12.4") for t in fake_runpod.gpu_types]  # older drivers only
    with pytest.raises(CapacityError):
        await runpod_provider.create(offer, spec("gpurun-r9", min_cuda=12.8))


def test_the_pod_destroys_itself_with_its_own_key_never_the_account_key(runpod_provider: RunpodProvider):
    at_boot = runpod_provider.self_destroy(None)
    pod = f"{runpod_provider.base_url}/pods/{{instance_id}}"
    terminate = {"query": "mutation { podTerminate(input: {podId: {instance_id_json}}) }"}
    assert at_boot == {"kind": "http", "instance_id_env": "RUNPOD_POD_ID", "token_env": "RUNPOD_API_KEY",
                       "check": {"method": "GET", "url": pod},
                       "attempts": [{"method": "DELETE", "url": pod},
                                    {"method": "POST", "url": runpod_provider.graphql_url, "body": terminate,
                                     "when": "refused"}]}  # fmt: skip
    assert runpod_provider.default_image.startswith("runpod/") and runpod_provider.runs_boot_script
