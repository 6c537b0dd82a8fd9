"""A fake RunPod API on 127.0.0.1: GraphQL at /graphql, REST v2 at /v2 (REST v1 answers 410: retired).

Behaviour per providers.md §2 and §2.8: Bearer auth (GraphQL also takes ?api_key=), 401 for a bad key,
GraphQL errors as HTTP 200, v2 errors as problem+json, CreatePodRequest refusing unknown properties, the
v2 quirk that a create without `gpu.count` fails as "no instances available", pod-scoped keys that may only
terminate their own pod, capacity errors on demand, spot pods interrupted on demand (`interrupt`,
`interrupt_at_step`), and a record of every request and every destroy.
`base_url` is the REST v2 base (GPURUN_RUNPOD_URL); `graphql_url` is GPURUN_RUNPOD_GRAPHQL_URL.
"""

from __future__ import annotations

import re
import secrets
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.boxes import Box
from tests.support.fakes.http_base import FakeServer, RecordedRequest, Response
from tests.support.fakes.preemption import preempt_when_step
from tests.support.fakes.runpod_catalog import default_runpod_gpu_types
from tests.support.fakes.runpod_graphql import GraphQLResolvers
from tests.support.fakes.runpod_pods import FakePod, PodViews, new_pod_id

CAPACITY_MESSAGE = (
    "There are no longer any instances available with the requested specifications. Please refresh and try again."
)
#: CreatePodRequest (v2) = ContainerConfig + these; `startSsh` exists in the revision providers.md cites
V2_CREATE_FIELDS = {
    "name", "image", "args", "disk", "ports", "env", "registry", "mounts", "gpu", "cpu", "cloud",
    "dataCenterIds", "globalNetworking", "startSsh",
}  # fmt: skip


def problem(status: int, detail: str, **extra: Any) -> Response:
    titles = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
              410: "Gone", 422: "Unprocessable Entity"}  # fmt: skip
    body = {"title": titles.get(status, "Error"), "status": status, "detail": detail, **extra}
    return Response(status, body, content_type="application/problem+json")


@dataclass
class PodDestroyRecord:
    pod_id: str
    #: "account" (the user's key) or "pod" (the pod-scoped key, e.g. the watchdog)
    by: str
    via: str  # "rest" or "graphql"
    at: float = field(default_factory=time.time)


class FakeRunpod(PodViews, GraphQLResolvers, FakeServer):
    def __init__(
        self,
        gpu_types: list[dict[str, Any]] | None = None,
        *,
        api_key: str | None = None,
        pending_polls: int = 2,
        ssh_endpoint: tuple[str, int] = ("127.0.0.1", 22),
        ssh_user: str = "root",
    ) -> None:
        FakeServer.__init__(self, api_key or f"rpa_TEST{secrets.token_hex(18).upper()}")
        self.gpu_types = list(default_runpod_gpu_types() if gpu_types is None else gpu_types)
        self.pods: dict[str, FakePod] = {}
        self.destroyed: list[PodDestroyRecord] = []
        self.account_keys: list[str] = []
        self.pending_polls = pending_polls
        #: include v2's `ssh {direct, proxy}` block (False = the spec revision with runtime.ports only)
        self.ssh_block = True
        self._ssh = (ssh_endpoint[0], int(ssh_endpoint[1]), ssh_user)
        self._no_capacity: dict[str | None, int | None] = {}
        self._never_ready: set[str | None] = set()
        #: the box pods run on (None: an SSH endpoint only)
        self.box: Box | None = None
        self.closed_port = _closed_port()
        self.boot_after_polls: int | None = None
        #: spot pods interrupted, in order
        self.interrupted: list[str] = []

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v2"

    @property
    def graphql_url(self) -> str:
        return f"{self.root_url}/graphql"

    # -- seeding and injection -----------------------------------------------------------------------------
    def set_ssh_endpoint(self, host: str, port: int, user: str = "root") -> None:
        with self.lock:
            self._ssh = (host, int(port), user)

    def stop(self) -> None:
        FakeServer.stop(self)
        with self.lock:
            for pod in self.pods.values():
                if pod.gate is not None:
                    pod.gate.close()

    def attach_box(self, box: Box, host: str, port: int) -> None:
        """Pods run on `box`, reached over its sshd at host:port as RunPod's images log in (root)."""
        with self.lock:
            self.box = box
            self._ssh = (host, int(port), "root")

    def inject_no_capacity(self, gpu_type_id: str | None = None, times: int | None = None) -> None:
        """Creates (of this GPU type, of any when None) fail with RunPod's capacity message; `times` or forever."""
        with self.lock:
            self._no_capacity[gpu_type_id] = times

    def never_ready(self, gpu_type_id: str | None = None) -> None:
        with self.lock:
            self._never_ready.add(gpu_type_id)

    def interrupt(self, pod_id: str, *, warning_s: float = 5.0) -> None:
        """A spot pod taken (providers.md §2.7, Spot): SIGTERM to the container, SIGKILL after the 5-second warning;
        the pod goes to EXITED (no runtime, nothing billed but its volume), its volume disk kept."""
        with self.lock:
            pod = self.pods[pod_id]
            pod.exited = True
            box = self.box if pod.booted_at is not None else None
            self.interrupted.append(pod.id)
        if box is not None:
            box.signal(signal.SIGTERM)
            deadline = time.monotonic() + warning_s
            while box.processes() and time.monotonic() < deadline:
                time.sleep(0.05)
            box.stop()

    def interrupt_at_step(self, step: int, *, warning_s: float = 5.0, ready: Callable[[], bool] | None = None) -> None:
        """Interrupt the spot pod running on the box once its runner logs training step `step` (and `ready()`
        holds)."""

        def target() -> tuple[Path, str] | None:
            with self.lock:
                spot = [p.id for p in self.pods.values()
                        if p.interruptible and p.booted_at and not p.exited and p.terminated_at is None]  # fmt: skip
                return (self.box.runs, spot[0]) if self.box is not None and spot else None

        preempt_when_step(target, step, lambda pod_id: self.interrupt(pod_id, warning_s=warning_s), ready)

    def pod_key(self, pod_id: str) -> str:
        """The pod-scoped key RunPod would inject into the pod as RUNPOD_API_KEY."""
        return self.pods[pod_id].pod_key

    def live_pods(self) -> list[str]:
        with self.lock:
            return [p.id for p in self.pods.values() if p.terminated_at is None]

    @property
    def destroyed_ids(self) -> list[str]:
        with self.lock:
            return [record.pod_id for record in self.destroyed]

    # -- shared helpers (REST and GraphQL) -----------------------------------------------------------------
    def _gpu_type(self, gpu_type_id: str) -> dict[str, Any] | None:
        return next((t for t in self.gpu_types if t["id"] == gpu_type_id), None)

    def lowest_price(self, gpu_type: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
        count = int(wanted["gpuCount"])
        secure = wanted.get("secureCloud")
        clouds = ["SECURE"] if secure is True else ["COMMUNITY"] if secure is False else ["COMMUNITY", "SECURE"]
        candidates = []
        for cloud in clouds:
            prefix = cloud.lower()
            price = gpu_type.get(f"{prefix}Price")
            if price is None:
                continue
            stock = gpu_type["_stock"].get(cloud) if count <= gpu_type["maxGpuCount"] else None
            # in stock first, then the cheaper cloud
            candidates.append(
                (not stock, price, {"price": price, "spot": gpu_type.get(f"{prefix}SpotPrice"), "stockStatus": stock})
            )
        best = (
            min(candidates, key=lambda c: (c[0], c[1]))[2]
            if candidates
            else {"price": None, "spot": None, "stockStatus": None}
        )
        return {
            "minimumBidPrice": best["spot"],
            "uninterruptablePrice": best["price"],
            "stockStatus": best["stockStatus"],
            "availableGpuCounts": [c for c in (1, 2, 4, 8) if c <= gpu_type["maxGpuCount"]],
            "countryCode": gpu_type.get("_country"),
            "minVcpu": 2 * count,
            "minMemory": 8 * count,
            "maxUnreservedGpuCount": gpu_type["maxGpuCount"],
        }

    def create_pod(
        self,
        *,
        name: str,
        image: str,
        gpu_type_id: str,
        gpu_count: Any,
        cloud: str,
        disk: int,
        ports: list[str],
        env: dict[str, str],
        start_ssh: bool,
        bid_per_gpu: float | None,
        request: dict[str, Any],
    ) -> FakePod | str:
        """A new pod, or the error message RunPod would give."""
        with self.lock:
            gpu_type = self._gpu_type(gpu_type_id)
            if gpu_type is None:
                return f"GPU type {gpu_type_id!r} not found"
            if not image:
                return "imageName is required"
            if not isinstance(gpu_count, int) or gpu_count < 1:
                return CAPACITY_MESSAGE  # recorded live: a missing count fails as "no instances available"
            if cloud == "ALL":
                cloud = (
                    "COMMUNITY" if gpu_type["_stock"].get("COMMUNITY") and gpu_type.get("communityPrice") else "SECURE"
                )
            price = gpu_type.get(f"{cloud.lower()}Price")
            if price is None or not gpu_type["_stock"].get(cloud) or gpu_count > gpu_type["maxGpuCount"]:
                return CAPACITY_MESSAGE
            for key in (gpu_type_id, None):
                if key in self._no_capacity:
                    left = self._no_capacity[key]
                    if left is None or left > 0:
                        if left is not None:
                            self._no_capacity[key] = left - 1
                        return CAPACITY_MESSAGE
            if bid_per_gpu is not None:
                minimum = gpu_type.get(f"{cloud.lower()}SpotPrice")
                if minimum is None:
                    return CAPACITY_MESSAGE
                if bid_per_gpu < minimum:
                    return f"Your bid of ${bid_per_gpu}/GPU/hr is below the minimum bid of ${minimum}/GPU/hr."
            pod = FakePod(
                id=new_pod_id(),
                name=name,
                image=image,
                gpu_type=gpu_type,
                gpu_count=gpu_count,
                cloud=cloud,
                disk=disk,
                ports=ports,
                env=env,
                cost_per_hr=round((bid_per_gpu if bid_per_gpu is not None else price) * gpu_count, 6),
                interruptible=bid_per_gpu is not None,
                bid_per_gpu=bid_per_gpu,
                start_ssh=start_ssh,
                never_ready=gpu_type_id in self._never_ready or None in self._never_ready,
                request=request,
            )
            self.pods[pod.id] = pod
        if self.box is None and pod.starts_sshd():  # a runpod image's /start.sh installs PUBLIC_KEY
            self.deliver_key(self.keys_for(pod))
        return pod

    def terminate_pod(self, pod_id: str, *, by: str, via: str) -> bool:
        with self.lock:
            pod = self.pods.get(pod_id)
            if pod is None or pod.terminated_at is not None:
                return False
            pod.terminated_at = time.time()
            if self.box is not None and pod.booted_at is not None:
                self.box.destroy()  # the pod goes with everything running in it
            if pod.gate is not None:
                pod.gate.close()
            self.destroyed.append(PodDestroyRecord(pod_id, by, via))  # last: tests wait on it, then look at the box
            return True

    # -- HTTP ----------------------------------------------------------------------------------------------
    def authorise(self, request: RecordedRequest, *, allow_query: bool) -> str | None:
        token = self.bearer(request)
        via = "account"
        if token is None and allow_query and "api_key" in request.query:
            token, via = request.query["api_key"], "query-param"
        if token and token == self.api_key:
            return via
        with self.lock:
            for pod in self.pods.values():
                if token and token == pod.pod_key and pod.terminated_at is None:
                    return f"pod:{pod.id}"
        return None

    def route(self, request: RecordedRequest) -> Response:
        path = request.path.rstrip("/") or "/"
        if path.startswith("/v1/") or path == "/v1":
            return Response(410, {"message": "REST v1 was retired on 2026-11-15; use https://api.runpod.io/v2"})
        if path == "/graphql":
            request.auth = self.authorise(request, allow_query=True)
            if request.auth is None:
                return Response(401, {"errors": [{"message": "Unauthorized request, please check your API key."}]})
            if request.method != "POST":
                return Response(405, {"errors": [{"message": "use POST"}]})
            return self.graphql(request, request.auth)
        if not path.startswith("/v2"):
            return problem(404, f"no route for {request.method} {request.path}")
        request.auth = self.authorise(request, allow_query=False)
        if request.auth is None:
            return problem(401, "invalid bearer token")
        return self.rest_v2(request, path.removeprefix("/v2") or "/")

    def rest_v2(self, request: RecordedRequest, path: str) -> Response:
        method, auth = request.method, request.auth or ""
        body = request.body if isinstance(request.body, dict) else {}
        match = re.fullmatch(r"/pods/([a-z0-9]+)(/action)?", path)
        if auth.startswith("pod:"):
            own = auth[4:]
            # a pod-scoped key may read and terminate its own pod, nothing else
            allowed = (
                match
                and match.group(1) == own
                and (
                    (method in ("DELETE", "GET") and not match.group(2))
                    or (match.group(2) and body.get("action") == "terminate")
                )
            )
            if not allowed:
                return problem(403, "access denied: this pod-scoped key may only read and terminate its own pod")
        if path == "/pods" and method == "POST":
            return self._v2_create(body)
        if path == "/pods" and method == "GET":
            with self.lock:
                return Response(200, {"pods": [self.v2_view(p) for p in self.pods.values() if p.terminated_at is None]})
        if match and not match.group(2):
            pod_id = match.group(1)
            if method == "GET":
                with self.lock:
                    pod = self.pods.get(pod_id)
                    if pod is None or pod.terminated_at is not None:
                        return problem(404, "resource not found")
                    if not auth.startswith("pod:"):  # the pod reading itself is not the client's polling
                        pod.polls += 1
                    return Response(200, self.v2_view(pod))
            if method == "DELETE":
                by = "pod" if auth.startswith("pod:") else "account"
                return (
                    Response(204)
                    if self.terminate_pod(pod_id, by=by, via="rest")
                    else problem(404, "resource not found")
                )
        if match and match.group(2) and method == "POST":
            return self._v2_action(match.group(1), body, auth)
        if path == "/account/ssh-keys":
            if method == "GET":
                return Response(200, {"keys": list(self.account_keys)})
            if method == "PUT":
                keys = body.get("keys")
                if not isinstance(keys, list):
                    return problem(422, "Request validation failed.", errors=["$.keys: must be an array"])
                with self.lock:
                    self.account_keys[:] = [str(k) for k in keys]
                return Response(200, {"keys": list(self.account_keys)})
        if path == "/catalog/gpus" and method == "GET":
            return Response(200, [self._catalog_entry(t) for t in self.gpu_types])
        return problem(404, f"no route for {method} {request.path}")

    def _v2_create(self, body: dict[str, Any]) -> Response:
        unknown = sorted(set(body) - V2_CREATE_FIELDS)
        if unknown:
            return problem(422, "Request validation failed.", errors=[f"$.{k}: unevaluated property" for k in unknown])
        if not body.get("name") or not body.get("image"):
            return problem(422, "Request validation failed.", errors=["$: name and image are required"])
        gpu = body.get("gpu")
        if not isinstance(gpu, dict) or not gpu.get("id") or body.get("cpu"):
            return problem(400, "exactly one of gpu or cpu must be set")
        if set(gpu) - {"id", "count", "allowedCudaVersions", "minCudaVersion"}:
            return problem(422, "Request validation failed.", errors=["$.gpu: unevaluated property"])
        if gpu.get("allowedCudaVersions") and gpu.get("minCudaVersion"):
            return problem(400, "allowedCudaVersions and minCudaVersion are mutually exclusive")
        cuda = str(gpu.get("minCudaVersion") or "0.0")
        if not re.fullmatch(r"\d+\.\d+", cuda):
            return problem(422, "Request validation failed.", errors=["$.gpu.minCudaVersion: must match ^\\d+\\.\\d+$"])
        if _version(cuda) > _version(str((self._gpu_type(str(gpu["id"])) or {}).get("_cuda", "99.9"))):
            return problem(400, CAPACITY_MESSAGE)  # no host of this type has a driver that new
        cloud = body.get("cloud", "SECURE")
        if cloud not in ("SECURE", "COMMUNITY"):
            return problem(
                422, "Request validation failed.", errors=["$.cloud: value must be one of SECURE, COMMUNITY"]
            )
        env = body.get("env") or {}
        ports = body.get("ports") or []
        if not isinstance(env, dict) or not isinstance(ports, list):
            return problem(422, "Request validation failed.", errors=["$.env must be an object, $.ports an array"])
        pod = self.create_pod(
            name=str(body["name"]),
            image=str(body["image"]),
            gpu_type_id=str(gpu["id"]),
            gpu_count=gpu.get("count"),
            cloud=cloud,
            disk=int(body.get("disk") or 50),
            ports=[str(p) for p in ports],
            env={str(k): str(v) for k, v in env.items()},
            start_ssh=bool(body.get("startSsh")),
            bid_per_gpu=None,
            request=body,
        )
        if isinstance(pod, str):
            return problem(400, pod)
        with self.lock:
            return Response(201, self.v2_view(pod))

    def _v2_action(self, pod_id: str, body: dict[str, Any], auth: str) -> Response:
        action = body.get("action")
        with self.lock:
            pod = self.pods.get(pod_id)
            if pod is None or pod.terminated_at is not None:
                return problem(404, "resource not found")
            if action not in ("start", "stop", "restart", "terminate"):
                return problem(
                    422,
                    "Request validation failed.",
                    errors=["$.action: value must be one of start, stop, restart, terminate"],
                )
            if action == "terminate":
                self.terminate_pod(pod_id, by="pod" if auth.startswith("pod:") else "account", via="rest")
                return Response(204)
            if (action == "start") != pod.exited:
                return problem(409, f"cannot {action} a pod that is {'EXITED' if pod.exited else 'RUNNING'}")
            pod.exited = action == "stop"
            if action in ("start", "restart"):
                pod.polls, pod.started_at = 0, None
            return Response(200, self.v2_view(pod))

    @staticmethod
    def _catalog_entry(gpu_type: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": gpu_type["id"],
            "name": gpu_type["displayName"],
            "manufacturer": gpu_type["manufacturer"],
            "memory": gpu_type["memoryInGb"],
            "secure": gpu_type["secureCloud"],
            "community": gpu_type["communityCloud"],
            "price": {"secure": gpu_type["securePrice"], "community": gpu_type["communityPrice"]},
            "maxCount": gpu_type["maxGpuCount"],
        }


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
