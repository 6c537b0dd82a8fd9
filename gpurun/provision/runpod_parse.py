"""RunPod payloads → gpurun models: offers from the GraphQL GPU catalogue, instances from REST v2 pods.

Lenient by design: RunPod's spec revisions and transports spell the same things differently (v2 `ssh.direct`
or `runtime.ports[{private, public}]`, GraphQL `privatePort`/`publicPort`/`isIpPublic`).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from gpurun.errors import ProviderError
from gpurun.models import GpuRequest, GpuSpec, Instance, InstanceState, Offer, SshEndpoint
from gpurun.provision.plausible import checked_offer

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


_STATUS = {
    "CREATED": InstanceState.PENDING,
    "PROVISIONING": InstanceState.PENDING,
    "STARTING": InstanceState.PENDING,
    "RUNNING": InstanceState.RUNNING,
    "EXITED": InstanceState.EXITED,
    "ERROR": InstanceState.EXITED,
    "TERMINATED": InstanceState.TERMINATED,
}


def as_float(value: Any) -> float | None:
    """A vendor number, leniently; NaN and infinities are bad data (None), never a price or a size."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _words(name: str) -> list[str]:
    return "".join(ch.lower() if ch.isalnum() else " " for ch in name).split()


def name_matches(wanted: tuple[str, ...], gpu_type: dict[str, Any]) -> bool:
    """Whole-word GPU-name match: "RTX 4090" and "4090" match "NVIDIA GeForce RTX 4090"; "L4" does not match
    "NVIDIA L40S". The core re-filters, so this only trims the list."""
    if not wanted:
        return True
    names = [_words(str(gpu_type.get(key) or "")) for key in ("id", "displayName")]
    for want in map(_words, wanted):
        for words in names:
            if want and any(words[i : i + len(want)] == want for i in range(len(words) - len(want) + 1)):
                return True
    return False


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
        found = item.get("lowestPrice")
        lowest: dict[str, Any] = found if isinstance(found, dict) else {}
        if lowest.get("stockStatus") in (None, "None", "NONE", ""):
            continue  # null/None stock means no capacity at all
        counts = lowest.get("availableGpuCounts")
        if isinstance(counts, list) and counts and count not in counts:
            continue
        vram = as_float(item.get("memoryInGb")) or 0.0
        if vram < req.min_vram_gb or not name_matches(req.gpu_names, item):
            continue
        prefix = "community" if cloud == "COMMUNITY" else "secure"
        bid_per_gpu = as_float(lowest.get("minimumBidPrice")) or as_float(item.get(f"{prefix}SpotPrice"))
        if req.spot:
            # RunPod bids are per GPU; gpurun quotes and bids for the whole offer (dstack #1890: 8x overbids)
            per_gpu = bid_per_gpu
        else:
            per_gpu = as_float(lowest.get("uninterruptablePrice")) or as_float(item.get(f"{prefix}Price"))
        if not per_gpu or per_gpu <= 0:
            continue
        price = per_gpu * count + storage_per_hour
        if req.max_price_per_hour is not None and price > req.max_price_per_hour:
            continue
        offer = checked_offer(
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
        if offer is not None:
            offers.append(offer)
    return offers


def ssh_endpoint(pod: dict[str, Any]) -> SshEndpoint | None:
    """`ssh.direct` when the API gives it, else the runtime port entry mapping private 22 on a public IP.

    The v2 spec revisions disagree: providers.md's has a `ssh {direct, proxy}` block, a later one only
    `runtime.ports[{private, public, type, ip}]`; GraphQL spells them privatePort/publicPort/isIpPublic.
    The proxy (`ssh.proxy`) gives an interactive shell only (no SFTP/rsync) and is never used.
    """
    ssh = pod.get("ssh")
    direct = ssh.get("direct") if isinstance(ssh, dict) else None
    if isinstance(direct, dict) and direct.get("host") and as_float(direct.get("port")):
        user = str(direct.get("username") or "root")
        return SshEndpoint(host=str(direct["host"]), port=int(as_float(direct["port"]) or 22), user=user)
    runtime = pod.get("runtime")
    ports = runtime.get("ports") if isinstance(runtime, dict) else None
    for entry in ports if isinstance(ports, list) else []:
        if not isinstance(entry, dict):
            continue
        private = as_float(entry.get("private", entry.get("privatePort")))
        public = as_float(entry.get("public", entry.get("publicPort")))
        if private != 22 or not public or not entry.get("ip") or entry.get("isIpPublic") is False:
            continue
        if str(entry.get("type") or "tcp").lower() != "tcp":
            continue
        return SshEndpoint(host=str(entry["ip"]), port=int(public), user="root")
    return None


def parse_pod(pod: dict[str, Any]) -> Instance:
    status = str(pod.get("status") or pod.get("desiredStatus") or "").upper()
    # no status yet is a pod being set up; a status we do not know is not one we can wait for
    # an undocumented status is waited on (bounded by the ready timeout), never taken for a dead pod
    state = _STATUS.get(status, InstanceState.PENDING)
    ssh = ssh_endpoint(pod)
    if state is InstanceState.RUNNING and ssh is None:
        # RUNNING is reported straight after create, before the container and its ports exist
        state = InstanceState.PENDING
    gpu = pod.get("gpu") if isinstance(pod.get("gpu"), dict) else {}
    cost = as_float(pod.get("cost"))
    return Instance(
        provider="runpod",
        instance_id=str(pod.get("id")),
        state=state,
        price_per_hour=cost if cost is not None else as_float(pod.get("costPerHr")),
        ssh=ssh if state is InstanceState.RUNNING else None,
        label=str(pod["name"]) if pod.get("name") else None,
        gpu=GpuSpec(name=str(gpu.get("id") or "unknown"), count=int(as_float(gpu.get("count")) or 1)) if gpu else None,
        created_at=_timestamp(pod.get("createdAt")),
        raw=pod,
    )
