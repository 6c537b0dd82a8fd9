"""RunPod adapter: GPU types, prices and stock from GraphQL; pods through REST v2; interruptible pods via GraphQL.

REST v1 retired on 2026-11-15 and is not used. GraphQL is deprecated too (retiring early 2027) but is the only
API with per-GPU prices, stock and interruptible pods, so it is used for exactly those (providers.md §2.0).
SSH: the pod gets our key as env `PUBLIC_KEY` and exposes `22/tcp`; RunPod's images then start sshd on a
public IP and a mapped port. Pods have no onstart hook short of replacing the image's start script (which is
what starts sshd), so `LaunchSpec.onstart` is not used here; the orchestrator arms its watchdog over SSH.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Any, ClassVar

import httpx

from gpurun.errors import (
    AuthError,
    CapacityError,
    NotFoundError,
    PriceError,
    ProviderError,
    TransientProviderError,
)
from gpurun.models import GpuRequest, GpuSpec, Instance, InstanceState, LaunchSpec, Offer, SshEndpoint
from gpurun.provision.base import LABEL_PREFIX
from gpurun.provision.http import ApiKey, ProviderHttp, RetryPolicy, TransientNotProcessed, is_capacity_message

DEFAULT_REST_URL = "https://api.runpod.io/v2"
DEFAULT_GRAPHQL_URL = "https://api.runpod.io/graphql"
KEY_ENV = "RUNPOD_API_KEY"
DEFAULT_DISK_GB = 20.0
#: container disk while running, $/GB-month (RunPod pricing page); not part of the GPU price or `cost`
STORAGE_PER_GB_MONTH = 0.10
HOURS_PER_MONTH = 720.0
CLOUDS = ("COMMUNITY", "SECURE")

GPU_TYPES_QUERY = """
query GpuTypes($lowest: GpuLowestPriceInput) {
  gpuTypes {
    id displayName manufacturer memoryInGb secureCloud communityCloud
    securePrice communityPrice secureSpotPrice communitySpotPrice maxGpuCount
    lowestPrice(input: $lowest) {
      minimumBidPrice uninterruptablePrice stockStatus availableGpuCounts countryCode minVcpu minMemory
    }
  }
}
"""

RENT_INTERRUPTIBLE = """
mutation Rent($input: PodRentInterruptableInput!) {
  podRentInterruptable(input: $input) { id desiredStatus costPerHr }
}
"""

_STATUS = {
    "CREATED": InstanceState.PENDING,
    "PROVISIONING": InstanceState.PENDING,
    "STARTING": InstanceState.PENDING,
    "RUNNING": InstanceState.RUNNING,
    "EXITED": InstanceState.EXITED,
    "ERROR": InstanceState.EXITED,
    "TERMINATED": InstanceState.TERMINATED,
}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _squash(name: str) -> str:
    lowered = name.lower().replace("nvidia", "").replace("geforce", "")
    return "".join(ch for ch in lowered if ch.isalnum())


def name_matches(wanted: tuple[str, ...], gpu_type: dict[str, Any]) -> bool:
    """Loose GPU-name match ("RTX 4090" ~ "NVIDIA GeForce RTX 4090"); over-returning is fine, the core re-filters."""
    if not wanted:
        return True
    names = [_squash(str(gpu_type.get(key) or "")) for key in ("id", "displayName")]
    return any(_squash(w) and any(_squash(w) in n for n in names if n) for w in wanted)


def offer_id(cloud: str, count: int, gpu_type_id: str, *, spot: bool) -> str:
    return f"{cloud.lower()}{'-spot' if spot else ''}:{count}:{gpu_type_id}"


def parse_offer_id(value: str) -> tuple[str, int, str, bool]:
    """(cloud, gpu count, gpu type id, spot) from an offer id made by `offer_id`."""
    try:
        cloud, count, gpu_type_id = value.split(":", 2)
        spot = cloud.endswith("-spot")
        cloud = cloud.removesuffix("-spot").upper()
        if cloud not in CLOUDS or not gpu_type_id:
            raise ValueError(value)
        return cloud, int(count), gpu_type_id, spot
    except ValueError:
        raise ProviderError(f"not a RunPod offer id: {value!r}", provider="runpod") from None


def offers_from_gpu_types(items: list[Any], req: GpuRequest, cloud: str, disk_gb: float) -> list[Offer]:
    """Offers in one cloud from a gpuTypes answer whose lowestPrice was asked for `req.num_gpus` in that cloud."""
    offers = []
    count = req.num_gpus
    storage_per_hour = STORAGE_PER_GB_MONTH * disk_gb / HOURS_PER_MONTH
    for item in items:
        if not isinstance(item, dict) or not item.get("id"):
            continue
        if item.get("communityCloud" if cloud == "COMMUNITY" else "secureCloud") is False:
            continue
        lowest = item.get("lowestPrice") if isinstance(item.get("lowestPrice"), dict) else {}
        if lowest.get("stockStatus") in (None, "None", "NONE", ""):
            continue  # null/None stock means no capacity at all
        counts = lowest.get("availableGpuCounts")
        if isinstance(counts, list) and counts and count not in counts:
            continue
        vram = _num(item.get("memoryInGb")) or 0.0
        if vram < req.min_vram_gb or not name_matches(req.gpu_names, item):
            continue
        prefix = "community" if cloud == "COMMUNITY" else "secure"
        bid_per_gpu = _num(lowest.get("minimumBidPrice")) or _num(item.get(f"{prefix}SpotPrice"))
        if req.spot:
            # RunPod bids are per GPU; gpurun quotes and bids for the whole offer (dstack #1890: 8x overbids)
            per_gpu = bid_per_gpu
        else:
            per_gpu = _num(lowest.get("uninterruptablePrice")) or _num(item.get(f"{prefix}Price"))
        if not per_gpu or per_gpu <= 0:
            continue
        price = per_gpu * count + storage_per_hour
        if req.max_price_per_hour is not None and price > req.max_price_per_hour:
            continue
        offers.append(
            Offer(
                provider="runpod",
                offer_id=offer_id(cloud, count, str(item["id"]), spot=req.spot),
                gpu=GpuSpec(name=str(item.get("displayName") or item["id"]), count=count, vram_gb=vram),
                price_per_hour=price,
                spot=req.spot,
                min_bid=bid_per_gpu * count if bid_per_gpu else None,
                # RunPod publishes no per-host reliability figure
                reliability=1.0,
                location=str(lowest.get("countryCode") or ""),
                disk_gb=disk_gb,
                storage_per_gb_month=STORAGE_PER_GB_MONTH,
                # RunPod charges no ingress or egress fees
                download_per_gb=0.0,
                upload_per_gb=0.0,
                verified=True,
                direct_ssh=True,
                raw={"gpuType": item, "cloud": cloud, "gpuTypeId": item["id"], "gpuCount": count},
            )
        )
    return offers


def ssh_endpoint(pod: dict[str, Any]) -> SshEndpoint | None:
    """`ssh.direct` when the API gives it, else the runtime port entry mapping private 22 on a public IP.

    The v2 spec revisions disagree: providers.md's has a `ssh {direct, proxy}` block, a later one only
    `runtime.ports[{private, public, type, ip}]`; GraphQL spells them privatePort/publicPort/isIpPublic.
    The proxy (`ssh.proxy`) gives an interactive shell only (no SFTP/rsync) and is never used.
    """
    ssh = pod.get("ssh")
    direct = ssh.get("direct") if isinstance(ssh, dict) else None
    if isinstance(direct, dict) and direct.get("host") and _num(direct.get("port")):
        user = str(direct.get("username") or "root")
        return SshEndpoint(host=str(direct["host"]), port=int(_num(direct["port"]) or 22), user=user)
    runtime = pod.get("runtime")
    ports = runtime.get("ports") if isinstance(runtime, dict) else None
    for entry in ports if isinstance(ports, list) else []:
        if not isinstance(entry, dict):
            continue
        private = _num(entry.get("private", entry.get("privatePort")))
        public = _num(entry.get("public", entry.get("publicPort")))
        if private != 22 or not public or not entry.get("ip") or entry.get("isIpPublic") is False:
            continue
        if str(entry.get("type") or "tcp").lower() != "tcp":
            continue
        return SshEndpoint(host=str(entry["ip"]), port=int(public), user="root")
    return None


def parse_pod(pod: dict[str, Any]) -> Instance:
    status = str(pod.get("status") or pod.get("desiredStatus") or "").upper()
    state = _STATUS.get(status, InstanceState.UNKNOWN)
    ssh = ssh_endpoint(pod)
    if state is InstanceState.RUNNING and ssh is None:
        # RUNNING is reported straight after create, before the container and its ports exist
        state = InstanceState.PENDING
    gpu = pod.get("gpu") if isinstance(pod.get("gpu"), dict) else {}
    cost = _num(pod.get("cost"))
    return Instance(
        provider="runpod",
        instance_id=str(pod.get("id")),
        state=state,
        price_per_hour=cost if cost is not None else _num(pod.get("costPerHr")),
        ssh=ssh if state is InstanceState.RUNNING else None,
        label=str(pod["name"]) if pod.get("name") else None,
        gpu=GpuSpec(name=str(gpu.get("id") or "unknown"), count=int(_num(gpu.get("count")) or 1)) if gpu else None,
        created_at=_timestamp(pod.get("createdAt")),
        raw=pod,
    )


class RunpodProvider:
    """RunPod through REST v2 (pods) and GraphQL (prices, stock, interruptible pods)."""

    name: ClassVar[str] = "runpod"

    def __init__(
        self,
        api_key: str | ApiKey,
        *,
        base_url: str = DEFAULT_REST_URL,
        graphql_url: str = DEFAULT_GRAPHQL_URL,
        client: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
    ) -> None:
        key = api_key if isinstance(api_key, ApiKey) else ApiKey(api_key)
        shared = client or httpx.AsyncClient(timeout=timeout)
        self._owns_client = client is None
        common = {"key_env": KEY_ENV, "client": shared, "retry": retry, "timeout": timeout}
        self._rest = ProviderHttp("runpod", base_url, key, **common)
        self._gql = ProviderHttp("runpod", graphql_url, key, **common)
        self._client = shared

    def __repr__(self) -> str:
        return f"RunpodProvider(base_url={self._rest.base_url!r}, graphql_url={self._gql.base_url!r})"

    @property
    def base_url(self) -> str:
        return self._rest.base_url

    @property
    def graphql_url(self) -> str:
        return self._gql.base_url

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def graphql(self, query: str, variables: dict[str, Any], field: str, *, retry: bool = True) -> Any:
        """data[field] of a GraphQL call. Errors arrive with HTTP 200 in `errors`, so they are checked here."""

        async def once() -> Any:
            body = self._gql.decode(
                await self._gql.request("POST", "", json_body={"query": query, "variables": variables})
            )
            body = body if isinstance(body, dict) else {}
            errors = body.get("errors")
            if errors:
                first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
                message = self._gql.redact(str(first.get("message") or errors))
                if is_capacity_message(message):
                    raise CapacityError(f"no capacity: {message}", provider="runpod")
                lowered = message.lower()
                if "unauthorized" in lowered or "api key" in lowered or "forbidden" in lowered:
                    raise AuthError(
                        f"runpod rejected the API key ({message})",
                        provider="runpod",
                        hint=f"check {KEY_ENV}, or run `gpurun providers set-key runpod`",
                    )
                raise ProviderError(f"{field}: {message}", provider="runpod")
            data = body.get("data")
            return data.get(field) if isinstance(data, dict) else None

        return await (self._gql.call(once) if retry else once())

    async def check(self) -> str:
        data = await self._rest.json("GET", "/pods")
        pods = data.get("pods") if isinstance(data, dict) else data
        return f"key valid ({len(pods) if isinstance(pods, list) else 0} pods on the account)"

    async def list_offers(self, req: GpuRequest) -> list[Offer]:
        """One GraphQL gpuTypes query per cloud, each asking the lowest price for `req.num_gpus` GPUs there."""
        disk_gb = req.min_disk_gb if req.min_disk_gb > 0 else DEFAULT_DISK_GB
        offers: list[Offer] = []
        for cloud in CLOUDS:
            lowest = {"gpuCount": req.num_gpus, "secureCloud": cloud == "SECURE"}
            items = await self.graphql(GPU_TYPES_QUERY, {"lowest": lowest}, "gpuTypes")
            offers += offers_from_gpu_types(items if isinstance(items, list) else [], req, cloud, disk_gb)
        return offers

    async def create(self, offer: Offer, spec: LaunchSpec) -> Instance:
        """Rent a pod of `offer`'s GPU type, count and cloud. CapacityError when RunPod has none left."""
        if offer.provider != self.name:
            raise ProviderError(f"offer {offer.key} is not a RunPod offer", provider="runpod")
        cloud, count, gpu_type_id, spot = parse_offer_id(offer.offer_id)
        public_key = spec.ssh_public_key.strip()
        env = dict(spec.env)
        # RunPod's images append $PUBLIC_KEY (newline-separated keys) to authorized_keys and start sshd
        env["PUBLIC_KEY"] = f"{env['PUBLIC_KEY']}\n{public_key}" if env.get("PUBLIC_KEY") else public_key
        disk = max(1, math.ceil(spec.disk_gb))
        if spot:
            instance = await self._rent_interruptible(offer, spec, cloud, count, gpu_type_id, env, disk)
        else:
            instance = await self._create_on_demand(spec, cloud, count, gpu_type_id, env, disk)
        return Instance(
            provider=self.name,
            instance_id=instance.instance_id,
            state=InstanceState.PENDING if instance.state is not InstanceState.RUNNING else instance.state,
            offer_id=offer.offer_id,
            price_per_hour=instance.price_per_hour,
            ssh=instance.ssh,
            label=spec.label,
            gpu=offer.gpu,
            created_at=instance.created_at or time.time(),
            raw=instance.raw,
        )

    async def _create_on_demand(
        self, spec: LaunchSpec, cloud: str, count: int, gpu_type_id: str, env: dict[str, str], disk: int
    ) -> Instance:
        # Only fields every v2 spec revision accepts (CreatePodRequest rejects unknown properties). v2 has no
        # provider-side termination time (GraphQL's terminateAfter) and no interruptible option.
        body = {
            "name": spec.label,
            "image": spec.image,
            # always send gpu.count: omitting it makes every create fail with "no instances available"
            "gpu": {"id": gpu_type_id, "count": count},
            "cloud": cloud,
            "disk": disk,
            "ports": ["22/tcp"],
            "env": env,
        }

        async def attempt() -> Any:
            try:
                return await self._rest.json("POST", "/pods", json_body=body, retry=False)
            except TransientNotProcessed:
                raise
            except TransientProviderError:
                # the pod may exist although the answer was lost: never create it twice
                existing = await self._find_by_label(spec.label)
                if existing is not None:
                    return existing.raw
                raise

        pod = await self._rest.call(attempt)
        if not isinstance(pod, dict) or not pod.get("id"):
            raise ProviderError(f"create gave no pod id: {pod!r}", provider="runpod")
        return parse_pod(pod)

    async def _rent_interruptible(
        self,
        offer: Offer,
        spec: LaunchSpec,
        cloud: str,
        count: int,
        gpu_type_id: str,
        env: dict[str, str],
        disk: int,
    ) -> Instance:
        bid = spec.bid_price if spec.bid_price is not None else offer.min_bid
        if bid is None:
            raise ProviderError(f"offer {offer.offer_id} is interruptible but has no bid price", provider="runpod")
        if spec.price_cap is not None and bid > spec.price_cap:
            raise PriceError(f"bid ${bid:.3f}/h is above the price cap ${spec.price_cap:.3f}/h", where="runpod")
        rent_input = {
            # RunPod bids per GPU; LaunchSpec bids for the whole offer
            "bidPerGpu": round(bid / count, 6),
            "cloudType": cloud,
            "gpuCount": count,
            "gpuTypeId": gpu_type_id,
            "name": spec.label,
            "imageName": spec.image,
            "containerDiskInGb": disk,
            "volumeInGb": 0,
            "ports": "22/tcp",
            "env": [{"key": k, "value": v} for k, v in env.items()],
            "supportPublicIp": True,
        }

        async def attempt() -> Any:
            try:
                return await self.graphql(
                    RENT_INTERRUPTIBLE, {"input": rent_input}, "podRentInterruptable", retry=False
                )
            except TransientNotProcessed:
                raise
            except TransientProviderError:
                # not retried blindly either: a lost answer may still have rented the pod
                existing = await self._find_by_label(spec.label)
                if existing is not None:
                    return existing.raw
                raise

        pod = await self._gql.call(attempt)
        if not isinstance(pod, dict) or not pod.get("id"):
            raise ProviderError(f"podRentInterruptable gave no pod id: {pod!r}", provider="runpod")
        return Instance(
            provider=self.name,
            instance_id=str(pod["id"]),
            state=InstanceState.PENDING,
            price_per_hour=_num(pod.get("costPerHr")),
            raw=pod,
        )

    async def get(self, instance_id: str) -> Instance:
        """The pod now; `price_per_hour` is RunPod's billed `cost` for the whole pod. NotFoundError once gone."""
        pod = await self._rest.json("GET", f"/pods/{instance_id}")
        if not isinstance(pod, dict) or not pod.get("id"):
            raise ProviderError(f"unexpected pod payload for {instance_id}", provider="runpod")
        return parse_pod(pod)

    async def terminate(self, instance_id: str) -> None:
        """DELETE the pod (terminate: all charges end). An unknown pod counts as success."""
        try:
            await self._rest.json("DELETE", f"/pods/{instance_id}")
        except NotFoundError:
            return

    async def list_instances(self) -> list[Instance]:
        data = await self._rest.json("GET", "/pods")
        pods = data.get("pods") if isinstance(data, dict) else data
        return [
            parse_pod(pod)
            for pod in (pods if isinstance(pods, list) else [])
            if isinstance(pod, dict) and str(pod.get("name") or "").startswith(LABEL_PREFIX)
        ]

    async def _find_by_label(self, label: str) -> Instance | None:
        try:
            instances = await self.list_instances()
        except ProviderError:
            return None
        return next((inst for inst in instances if inst.label == label), None)
