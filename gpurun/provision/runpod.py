"""RunPod adapter: GPU types, prices and stock from GraphQL; pods through REST v2; interruptible pods via GraphQL.

REST v1 retired on 2026-11-15 and is not used. GraphQL is deprecated too (retiring early 2027) but is the only
API with per-GPU prices, stock and interruptible pods, so it is used for exactly those (providers.md §2.0).
SSH: the pod gets our key as env `PUBLIC_KEY` and exposes `22/tcp`. Only RunPod's own images (`runpod/*`) act on
that: their start script, /start.sh, appends $PUBLIC_KEY to authorized_keys and starts sshd. Any other image
gets a 22/tcp mapping with nothing listening, so gpurun refuses it before renting (`check_image`).
The start command (v2 `args`, which replaces the image's CMD, /start.sh) runs the boot script first, which arms
the watchdog, and then execs /start.sh, so sshd still starts exactly as the image intends.
"""

from __future__ import annotations

import asyncio
import math
import shlex
import time
from typing import Any, ClassVar

import httpx

from gpurun.errors import (
    AuthError,
    CapacityError,
    ConfigError,
    NotFoundError,
    PriceError,
    ProviderError,
    TransientProviderError,
)
from gpurun.models import GpuRequest, Instance, InstanceState, LaunchSpec, Offer
from gpurun.pricing.assumptions import BootProfile
from gpurun.provision.base import LABEL_PREFIX, account_key, endpoint, no_key_reason
from gpurun.provision.http import ApiKey, ProviderHttp, RetryPolicy, TransientNotProcessed, is_capacity_message
from gpurun.provision.images import cuda_text
from gpurun.provision.runpod_parse import (
    CLOUDS,
    GPU_TYPES_QUERY,
    as_float,
    offers_from_gpu_types,
    parse_offer_id,
    parse_pod,
)
from gpurun.settings import Settings

DEFAULT_REST_URL = "https://api.runpod.io/v2"
DEFAULT_GRAPHQL_URL = "https://api.runpod.io/graphql"
KEY_ENV = "RUNPOD_API_KEY"
DEFAULT_DISK_GB = 20.0
#: RunPod's PyTorch image (the example of its own v2 API spec): torch 2.8, CUDA 12.8.1 so RTX 50xx cards work,
#: Ubuntu 24.04 with python 3.12; its /start.sh starts sshd from $PUBLIC_KEY
DEFAULT_IMAGE = "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404"
#: only these images start sshd from PUBLIC_KEY (providers.md §2.5, runpod/containers start.sh)
SSH_IMAGE_PREFIX = "runpod/"
#: the image's own start script, which the boot start command hands over to
IMAGE_START = "/start.sh"
#: what RunPod puts into every pod: its id and a pod-scoped key
INSTANCE_ID_ENV = "RUNPOD_POD_ID"
INSTANCE_KEY_ENV = "RUNPOD_API_KEY"
#: the pod's self-destroy over GraphQL; the watchdog puts the pod id in, JSON-quoted (a GraphQL string literal)
POD_TERMINATE = "mutation { podTerminate(input: {podId: {instance_id_json}}) }"

RENT_INTERRUPTIBLE = """
mutation Rent($input: PodRentInterruptableInput!) {
  podRentInterruptable(input: $input) { id desiredStatus costPerHr }
}
"""


class RunpodProvider:
    """RunPod through REST v2 (pods) and GraphQL (prices, stock, interruptible pods)."""

    name: ClassVar[str] = "runpod"
    #: RunPod publishes no per-offer bandwidth; its pods run in datacenters, assumed at 500 Mbit/s
    boot_profile: ClassVar[BootProfile] = BootProfile(45.0, bandwidth_mbps=500.0)
    rents_machines: ClassVar[bool] = True
    over_ssh: ClassVar[bool] = True
    key_env: ClassVar[str | None] = KEY_ENV
    #: the start command runs the boot script before handing over to the image's /start.sh
    runs_boot_script: ClassVar[bool] = True
    default_image: ClassVar[str | None] = DEFAULT_IMAGE

    @classmethod
    def from_settings(
        cls, settings: Settings, *, client: httpx.AsyncClient | None = None, retry: RetryPolicy | None = None
    ) -> RunpodProvider:
        key = account_key(cls.name, KEY_ENV, settings)
        urls = cls.endpoints(settings)
        return cls(key, base_url=urls["rest"], graphql_url=urls["graphql"], client=client, retry=retry)

    @classmethod
    def endpoints(cls, settings: Settings) -> dict[str, str]:
        table = settings.provider(cls.name)
        return {
            "rest": endpoint(cls.name, table.url, DEFAULT_REST_URL),
            "graphql": endpoint(cls.name, table.graphql_url, DEFAULT_GRAPHQL_URL, kind="GRAPHQL_URL"),
        }

    @classmethod
    def unusable_reason(cls, settings: Settings) -> str | None:
        return None if settings.api_key(cls.name) else no_key_reason(cls.name, KEY_ENV)

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
        # REST and GraphQL share one connection pool, one retry policy and one key mask
        self._rest, self._gql = (
            ProviderHttp("runpod", url, key, key_env=KEY_ENV, client=shared, retry=retry, timeout=timeout)
            for url in (base_url, graphql_url)
        )
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

    @staticmethod
    def check_image(image: str) -> None:
        if not image.startswith(SSH_IMAGE_PREFIX):
            raise ConfigError(
                f"RunPod starts sshd only in its own images: {image} would never accept SSH",
                where="--image",
                hint=f"use a runpod/* image, e.g. {DEFAULT_IMAGE} (the default), or rent it on Vast",
            )

    def self_destroy(self, instance: Instance | None) -> dict[str, Any]:
        """DELETE /pods/{id} (REST), GraphQL podTerminate if that is refused, with the pod-scoped RUNPOD_API_KEY
        RunPod gives every pod; the user's key never goes to the pod. The credential check reads the pod."""
        pod = f"{self.base_url}/pods/{{instance_id}}"
        recipe: dict[str, Any] = {
            "kind": "http",
            "check": {"method": "GET", "url": pod},
            "attempts": [
                {"method": "DELETE", "url": pod},
                # a pod key the REST API refuses may still be allowed podTerminate on its own pod over GraphQL
                {"method": "POST", "url": self.graphql_url, "body": {"query": POD_TERMINATE}, "when": "refused"},
            ],
        }
        if instance is None:
            recipe.update(instance_id_env=INSTANCE_ID_ENV, token_env=INSTANCE_KEY_ENV)
            return recipe
        recipe["instance_id"] = instance.instance_id
        if instance.self_destroy_token:
            recipe["token"] = instance.self_destroy_token
        else:
            recipe["token_env"] = INSTANCE_KEY_ENV
        return recipe

    async def forget_ssh_key(self, public_key: str) -> None:
        """Nothing to forget: no key of a run is kept on an account here."""

    async def run_ssh_keys(self) -> list[str]:
        return []

    async def check(self) -> str:
        data = await self._rest.json("GET", "/pods")
        pods = data.get("pods") if isinstance(data, dict) else data
        return f"key valid ({len(pods) if isinstance(pods, list) else 0} pods on the account)"

    async def list_offers(self, req: GpuRequest) -> list[Offer]:
        """One GraphQL gpuTypes query per cloud, each asking the lowest price for `req.num_gpus` GPUs there."""
        disk_gb = req.min_disk_gb if req.min_disk_gb > 0 else DEFAULT_DISK_GB
        answers = await asyncio.gather(
            *(
                self.graphql(
                    GPU_TYPES_QUERY,
                    {"lowest": {"gpuCount": req.num_gpus, "secureCloud": cloud == "SECURE"}},
                    "gpuTypes",
                )
                for cloud in CLOUDS
            )
        )
        offers: list[Offer] = []
        for cloud, items in zip(CLOUDS, answers, strict=True):
            offers += offers_from_gpu_types(items if isinstance(items, list) else [], req, cloud, disk_gb)
        return offers

    async def create(self, offer: Offer, spec: LaunchSpec) -> Instance:
        """Rent a pod of `offer`'s GPU type, count and cloud. CapacityError when RunPod has none left."""
        if offer.provider != self.name:
            raise ProviderError(f"offer {offer.key} is not a RunPod offer", provider="runpod")
        cloud, count, gpu_type_id, spot = parse_offer_id(offer.offer_id)
        if not spot and spec.price_cap is not None and offer.price_per_hour > spec.price_cap:
            raise PriceError(
                f"offer {offer.offer_id} costs ${offer.price_per_hour:.3f}/h, above the cap ${spec.price_cap:.3f}/h",
                where="runpod",
            )
        RunpodProvider.check_image(spec.image)
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
        gpu: dict[str, Any] = {"id": gpu_type_id, "count": count}
        if spec.min_cuda is not None:
            gpu["minCudaVersion"] = cuda_text(spec.min_cuda)  # a host with an older driver cannot run the image
        body: dict[str, Any] = {
            "name": spec.label,
            "image": spec.image,
            # always send gpu.count: omitting it makes every create fail with "no instances available"
            "gpu": gpu,
            "cloud": cloud,
            "disk": disk,
            "ports": ["22/tcp"],
            "env": env,
        }
        if spec.boot_script:
            body["args"] = start_command(spec.boot_script)

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
            raise ProviderError(f"create gave no pod id: {self._rest.redact(repr(pod))[:300]}", provider="runpod")
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
        if spec.min_cuda is not None:
            rent_input["minCudaVersion"] = cuda_text(spec.min_cuda)
        if spec.boot_script:
            rent_input["dockerArgs"] = start_command(spec.boot_script)

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
            answer = self._gql.redact(repr(pod))[:300]
            raise ProviderError(f"podRentInterruptable gave no pod id: {answer}", provider="runpod")
        return Instance(
            provider=self.name,
            instance_id=str(pod["id"]),
            state=InstanceState.PENDING,
            price_per_hour=as_float(pod.get("costPerHr")),
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


def start_command(boot_script: str) -> str:
    """The pod's start command: the boot script, then the image's own start script (which starts sshd)."""
    return "bash -c " + shlex.quote(f"{boot_script.rstrip()}\nexec {IMAGE_START}")
