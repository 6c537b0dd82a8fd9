"""The fake servers themselves behave as providers.md says the real APIs do (they are a test dependency)."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.support.fakes.graphql_lite import parse_operation
from tests.support.fakes.runpod_server import FakeRunpod
from tests.support.fakes.vast_catalog import vast_offer
from tests.support.fakes.vast_server import FakeVast


def _offers() -> list[dict]:
    return [
        vast_offer("RTX 4090", id=1, dph_base=0.30, reliability=0.99, geolocation="Ontario, CA"),
        vast_offer("RTX 4090", id=2, dph_base=0.25, reliability=0.90, geolocation="Hanoi, VN", verified=False),
        vast_offer("RTX 3090", id=3, dph_base=0.16, reliability=0.97, geolocation="Texas, US", direct_port_count=0),
        vast_offer("A100 SXM4", id=4, dph_base=0.85, reliability=0.999, geolocation="Oregon, US", hosting_type=1),
    ]


@pytest.fixture
def vast() -> FakeVast:
    with FakeVast(_offers()) as server:
        yield server


def search(server: FakeVast, query: dict, path: str = "/api/v0/bundles/") -> list[int]:
    answer = httpx.post(server.base_url + path, json=query, headers={"Authorization": f"Bearer {server.api_key}"})
    assert answer.status_code == 200, answer.text
    return [offer["id"] for offer in answer.json()["offers"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"gpu_name": {"eq": "RTX 4090"}}, {1, 2}),
        ({"gpu_name": {"neq": "RTX 4090"}}, {3, 4}),
        ({"reliability": {"gt": 0.97}}, {1, 4}),
        ({"reliability": {"gte": 0.97}}, {1, 3, 4}),
        ({"reliability2": {"lt": 0.97}}, {2}),
        ({"dph_base": {"lte": 0.25}}, {2, 3}),
        ({"gpu_name": {"in": ["RTX 3090", "A100 SXM4"]}}, {3, 4}),
        ({"gpu_name": {"notin": ["RTX 3090", "A100 SXM4"]}}, {1, 2}),
        ({"gpu_ram": {"gte": 24000, "lte": 25000}}, {1, 2, 3}),
        ({"verified": {"eq": True}}, {1, 3, 4}),
        ({"datacenter": {"eq": True}}, {4}),
        ({"geolocation": {"in": ["US"]}}, {3, 4}),
        ({"geolocation": {"notin": ["VN", "CA"]}}, {3, 4}),
        ({"direct_port_count": {"gte": 1}}, {1, 2, 4}),
        ({"dph_total": {"lt": 0.2}, "allocated_storage": 10}, {3}),
    ],
)
def test_vast_query_operators(vast: FakeVast, query: dict, expected: set[int]) -> None:
    assert set(search(vast, query)) == expected


def test_vast_order_limit_type_spellings_and_trailing_slash(vast: FakeVast) -> None:
    assert search(vast, {"order": [["dph_total", "asc"]]}) == [3, 2, 1, 4]
    assert search(vast, {"order": [["dph_total", "desc"]], "limit": 2}) == [4, 1]
    for spelling in ("on-demand", "ondemand"):
        assert search(vast, {"type": spelling, "order": [["id", "asc"]]}, "/api/v0/bundles") == [1, 2, 3, 4]


def test_vast_prices_storage_for_the_allocated_disk_and_bids(vast: FakeVast) -> None:
    headers = {"Authorization": f"Bearer {vast.api_key}"}
    query = {"id": {"eq": 1}, "allocated_storage": 20}
    (offer,) = httpx.post(vast.base_url + "/api/v0/bundles/", json=query, headers=headers).json()["offers"]
    assert offer["storage_total_cost"] == pytest.approx(0.15 * 20 / 720)
    assert offer["dph_total"] == pytest.approx(0.30 + 0.15 * 20 / 720)
    (bid,) = httpx.post(vast.base_url + "/api/v0/bundles/", json={**query, "type": "bid"}, headers=headers).json()[
        "offers"
    ]
    assert bid["dph_base"] == bid["min_bid"] and bid["is_bid"] is True
    assert search(vast, {"allocated_storage": 600}) == []  # allocated storage also filters disk_space


def test_vast_refuses_bad_queries_and_bad_keys(vast: FakeVast) -> None:
    headers = {"Authorization": f"Bearer {vast.api_key}"}
    assert (
        httpx.post(vast.base_url + "/api/v0/bundles/", json={"gpu_nme": {"eq": "x"}}, headers=headers).status_code
        == 400
    )
    assert httpx.post(vast.base_url + "/api/v0/bundles/", json={"type": "cheap"}, headers=headers).status_code == 400
    bad = httpx.post(vast.base_url + "/api/v0/bundles/", json={}, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["msg"] == "Invalid user key"
    legacy = httpx.post(vast.base_url + "/api/v0/bundles/", params={"api_key": vast.api_key}, json={})
    assert legacy.status_code == 200 and vast.requests[-1].auth == "query-param"  # recorded, so tests can forbid it


def test_vast_state_machine_and_money(vast: FakeVast) -> None:
    vast.pending_polls = 2
    headers = {"Authorization": f"Bearer {vast.api_key}"}
    with httpx.Client(base_url=vast.base_url, headers=headers) as client:
        created = client.put("/api/v0/asks/1/", json={"image": "x", "disk": 10, "runtype": "ssh_direct"}).json()
        instance = str(created["new_contract"])
        statuses = [client.get(f"/api/v0/instances/{instance}/").json()["instances"]["actual_status"] for _ in range(3)]
        assert statuses == [None, "loading", "running"]
        assert client.put("/api/v0/asks/1/", json={"image": "x", "disk": 10}).status_code == 404  # single-use
        assert client.put("/api/v0/asks/2/", json={"image": "x", "disk": 10, "env": "-e A=1"}).status_code == 400
        client.put(f"/api/v0/instances/{instance}/", json={"state": "stopped"})
        stopped = client.get(f"/api/v0/instances/{instance}/").json()["instances"]
        assert stopped["actual_status"] == "stopped" and stopped["ports"] is None
        assert vast.charges(instance) > 0  # storage keeps billing while stopped
        assert client.request("DELETE", f"/api/v0/instances/{instance}/", json={}).json() == {"success": True}
        assert client.get(f"/api/v0/instances/{instance}/").json() == {"instances": None}
        billed = vast.charges(instance)
        assert vast.charges(instance) == billed  # nothing accrues once destroyed


def test_vast_without_cancel_unavail_leaves_a_stopped_instance(vast: FakeVast) -> None:
    vast.inject_capacity_gone(3)
    headers = {"Authorization": f"Bearer {vast.api_key}"}
    with httpx.Client(base_url=vast.base_url, headers=headers) as client:
        answer = client.put("/api/v0/asks/3/", json={"image": "x", "disk": 10, "cancel_unavail": False})
        view = client.get(f"/api/v0/instances/{answer.json()['new_contract']}/").json()["instances"]
    assert view["actual_status"] == "stopped" and view["intended_status"] == "stopped"


def test_fake_is_reachable_from_a_child_process(vast: FakeVast) -> None:
    code = (
        "import httpx, sys; r = httpx.get(sys.argv[1] + '/api/v0/users/current/', "
        "headers={'Authorization': 'Bearer ' + sys.argv[2]}); print(r.status_code)"
    )
    result = subprocess.run([sys.executable, "-c", code, vast.base_url, vast.api_key], capture_output=True, text=True)
    assert result.stdout.strip() == "200"


@pytest.fixture
def runpod() -> FakeRunpod:
    with FakeRunpod() as server:
        yield server


def gql(server: FakeRunpod, query: str, variables: dict | None = None, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key or server.api_key}"}
    return httpx.post(server.graphql_url, json={"query": query, "variables": variables or {}}, headers=headers)


def test_graphql_inline_arguments_and_variables_agree(runpod: FakeRunpod) -> None:
    inline = gql(runpod, 'query { gpuTypes(input: {id: "NVIDIA GeForce RTX 4090"}) { id lowestPrice(input: '
                 "{gpuCount: 2, secureCloud: false}) { uninterruptablePrice stockStatus } } }")  # fmt: skip
    variables = gql(
        runpod,
        "query G($f: GpuTypeFilter, $lp: GpuLowestPriceInput) { gpuTypes(input: $f) { id lowestPrice(input: $lp) "
        "{ uninterruptablePrice stockStatus } } }",
        {"f": {"id": "NVIDIA GeForce RTX 4090"}, "lp": {"gpuCount": 2, "secureCloud": False}},
    )
    assert inline.json() == variables.json()
    (row,) = inline.json()["data"]["gpuTypes"]
    assert row["lowestPrice"]["uninterruptablePrice"] == 0.34 and row["lowestPrice"]["stockStatus"] == "High"


def test_graphql_errors_come_with_http_200_and_auth_with_401(runpod: FakeRunpod) -> None:
    answer = gql(runpod, 'query { pod(input: {podId: "nope"}) { id } } ')
    assert answer.status_code == 200 and answer.json() == {"data": {"pod": None}}
    stop = gql(runpod, 'mutation { podStop(input: {podId: "nope"}) { id } }')
    assert stop.status_code == 200 and stop.json()["errors"][0]["path"] == ["podStop"]
    assert stop.json()["data"] == {"podStop": None}
    assert gql(runpod, "query { myself { id } }", key="wrong").status_code == 401
    assert httpx.post(
        runpod.graphql_url, params={"api_key": runpod.api_key}, json={"query": "{ myself { id } }"}
    ).is_success


def test_graphql_on_demand_pod_and_account_keys(runpod: FakeRunpod) -> None:
    runpod.pending_polls = 0
    gql(runpod, 'mutation { updateUserSettings(input: {pubKey: "ssh-ed25519 AAAA me"}) { id pubKey } }')
    created = gql(
        runpod,
        'mutation { podFindAndDeployOnDemand(input: { cloudType: ALL, gpuTypeId: "NVIDIA GeForce RTX 4090", '
        'gpuCount: 1, name: "gpurun-x", imageName: "runpod/pytorch", ports: "22/tcp,8888/http", '
        'env: [{ key: "K", value: "V" }], startSsh: true }) { id env costPerHr } }',
    ).json()["data"]["podFindAndDeployOnDemand"]
    assert created["env"] == ["K=V"] and created["costPerHr"] == 0.34
    pod = gql(runpod, f'query {{ pod(input: {{podId: "{created["id"]}"}}) {{ id runtime {{ ports {{ ip }} }} }} }}')
    ports = pod.json()["data"]["pod"]["runtime"]["ports"]
    ssh = next(p for p in ports if p["privatePort"] == 22)
    assert ssh["isIpPublic"] is True and next(p for p in ports if p["privatePort"] == 8888)["isIpPublic"] is False
    unknown = gql(runpod, 'mutation { podRentInterruptable(input: {gpuTypeId: "x", wrongField: 1}) { id } }')
    assert "wrongField" in unknown.json()["errors"][0]["message"]


def test_rest_v2_validation_and_v1_retirement(runpod: FakeRunpod) -> None:
    headers = {"Authorization": f"Bearer {runpod.api_key}"}
    with httpx.Client(base_url=runpod.root_url, headers=headers) as client:
        body = {"name": "p", "image": "x", "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1}}
        assert client.post("/v2/pods", json={**body, "terminateAfter": 3600}).status_code == 422
        no_count = client.post("/v2/pods", json={**body, "gpu": {"id": "NVIDIA GeForce RTX 4090"}})
        assert no_count.status_code == 400 and "no longer any instances" in no_count.json()["detail"]
        assert no_count.headers["content-type"] == "application/problem+json"
        pod = client.post("/v2/pods", json=body).json()
        assert client.post(f"/v2/pods/{pod['id']}/action", json={"action": "start"}).status_code == 409
        assert client.post(f"/v2/pods/{pod['id']}/action", json={"action": "stop"}).json()["status"] == "EXITED"
        assert client.post(f"/v2/pods/{pod['id']}/action", json={"action": "terminate"}).status_code == 204
        assert client.get(f"/v2/pods/{pod['id']}").status_code == 404
        assert client.get("/v1/pods").status_code == 410
        assert client.get("/v2/pods", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_graphql_parser_handles_escapes_aliases_and_comments() -> None:
    op = parse_operation(
        '# comment\nmutation Deploy { made: podFindAndDeployOnDemand(input: {name: "a\\"b", n: -1.5e1, '
        "list: [1, 2], flag: false, none: null}) { id } }"
    )
    assert op.kind == "mutation" and op.field == "podFindAndDeployOnDemand"
    assert op.args["input"] == {"name": 'a"b', "n": -15.0, "list": [1, 2], "flag": False, "none": None}


def test_vast_outbid_stops_an_interruptible_instance_as_vast_reports_it(vast: FakeVast) -> None:
    vast.pending_polls = 0
    headers = {"Authorization": f"Bearer {vast.api_key}"}
    with httpx.Client(base_url=vast.base_url, headers=headers) as client:
        created = client.put("/api/v0/asks/1/", json={"image": "x", "disk": 10, "price": 0.5}).json()
        instance = str(created["new_contract"])
        assert client.get(f"/api/v0/instances/{instance}/").json()["instances"]["actual_status"] == "running"
        vast.preempt(instance)
        view = client.get(f"/api/v0/instances/{instance}/").json()["instances"]
    # the renter's intent stays "running" (Vast restarts it if the bid wins again); no SSH endpoint while stopped
    assert (view["actual_status"], view["intended_status"], view["cur_state"]) == ("stopped", "running", "stopped")
    assert view["ssh_host"] is None and view["ports"] is None
    assert vast.preempted == [instance] and vast.live_instances() == [instance]  # kept (its disk bills) until destroyed
    billed = vast.charges(instance)
    assert vast.charges(instance) - billed < 1e-6  # compute stopped; only storage accrues


def test_runpod_interrupts_a_spot_pod_to_exited(runpod: FakeRunpod) -> None:
    runpod.pending_polls = 0
    created = gql(
        runpod,
        "mutation { podRentInterruptable(input: { bidPerGpu: 0.6, cloudType: SECURE, gpuCount: 1, "
        'gpuTypeId: "NVIDIA GeForce RTX 4090", name: "gpurun-x", imageName: "runpod/pytorch", '
        'ports: "22/tcp", env: [{ key: "PUBLIC_KEY", value: "ssh-ed25519 AAAA me" }] }) { id } }',
    ).json()["data"]["podRentInterruptable"]
    fields = "id desiredStatus podType costPerHr runtime { uptimeInSeconds }"
    query = f'query {{ pod(input: {{podId: "{created["id"]}"}}) {{ {fields} }} }}'
    assert gql(runpod, query).json()["data"]["pod"]["desiredStatus"] == "RUNNING"
    runpod.interrupt(created["id"])
    pod = gql(runpod, query).json()["data"]["pod"]
    assert (pod["desiredStatus"], pod["podType"], pod["costPerHr"]) == ("EXITED", "INTERRUPTABLE", 0.0)
    assert pod["runtime"] is None and runpod.interrupted == [created["id"]]
