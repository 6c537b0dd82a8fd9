"""Vast.ai adapter: offer search in the bundles query language, rent-exactly-this-offer, poll, destroy (never stop).

Plain httpx against `GPURUN_VAST_URL` (default https://console.vast.ai); field names, units and quirks follow
../shared/providers.md §1. Vast bills storage for as long as an instance exists in any state, so gpurun only
ever destroys; creates always pass `cancel_unavail` so a host that cannot start now fails instead of leaving
a stopped, storage-billing instance behind.
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

import httpx

from gpurun.errors import CapacityError, NotFoundError, PriceError, ProviderError, TransientProviderError
from gpurun.models import GpuRequest, GpuSpec, Instance, InstanceState, LaunchSpec, Offer, SshEndpoint
from gpurun.pricing.assumptions import BootProfile
from gpurun.provision.base import LABEL_PREFIX, account_key, endpoint, no_key_reason
from gpurun.provision.http import ApiKey, ProviderHttp, RetryPolicy, TransientNotProcessed
from gpurun.provision.plausible import checked_offer
from gpurun.settings import Settings

DEFAULT_URL = "https://console.vast.ai"
KEY_ENV = "VAST_API_KEY"
#: disk priced into `dph_total` when the request names none; Vast's own minimum for a create is 8 GB
DEFAULT_DISK_GB = 20.0
MIN_DISK_GB = 8.0
#: hours in Vast's storage month: storage_total_cost = storage_cost × GB / 720
HOURS_PER_MONTH = 720.0
#: Vast's limit on the onstart script
MAX_ONSTART_CHARS = 4048
#: The SDK's token form for "direct SSH, proxy as fallback". The docs also name `ssh_direct`; the SDK's form
#: is what Vast's own client sends and keeps the proxy endpoint as a fallback (providers.md §1.4).
RUNTYPE_DIRECT_SSH = "ssh_direc ssh_proxy"
#: The official PyTorch image: Vast's own docs and quickstart use it, so hosts commonly have it cached (a cached
#: image starts in seconds instead of a multi-GB pull). CUDA 12.8 so RTX 50xx cards work; torch 2.8; its conda
#: python (/opt/conda/bin) carries torch. In the SSH launch mode Vast injects its own sshd into any image.
DEFAULT_IMAGE = "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime"
#: what Vast puts into every container: its id and the instance-scoped key (providers.md §5)
INSTANCE_ID_ENV = "CONTAINER_ID"
INSTANCE_KEY_ENV = "CONTAINER_API_KEY"

#: actual_status → state; "running" only counts once an SSH endpoint exists (see `_state`)
_STATUS: dict[str | None, InstanceState] = {
    None: InstanceState.PENDING,
    "": InstanceState.PENDING,
    "created": InstanceState.PENDING,
    "loading": InstanceState.PENDING,
    "scheduling": InstanceState.PENDING,
    "rebooting": InstanceState.PENDING,
    "running": InstanceState.RUNNING,
    "stopped": InstanceState.STOPPED,
    "frozen": InstanceState.STOPPED,
    "exited": InstanceState.EXITED,
    "unknown": InstanceState.UNKNOWN,
    "offline": InstanceState.UNKNOWN,
}

#: Appended before the caller's onstart: puts the run's public key in root's authorized_keys even when the
#: account key has not propagated (field notes: skypilot #6514). The key comes in through the env dict.
_KEY_ONSTART = (
    'mkdir -p ~/.ssh && chmod 700 ~/.ssh && { grep -qxF "$GPURUN_SSH_PUBLIC_KEY" ~/.ssh/authorized_keys '
    '2>/dev/null || echo "$GPURUN_SSH_PUBLIC_KEY" >> ~/.ssh/authorized_keys; } && chmod 600 ~/.ssh/authorized_keys'
)


def _num(value: Any) -> float | None:
    """A vendor number, leniently; NaN and infinities are bad data (None), never a price or a speed."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _key_body(public_key: str) -> str:
    """`type base64` of an OpenSSH public key, without the comment, for comparing keys."""
    return " ".join(public_key.split()[:2])


def _comment(public_key: str) -> str:
    return " ".join(public_key.split()[2:])


def vast_gpu_name(name: str) -> str:
    """Vast compares `gpu_name` against the spaced form ("RTX 4090"); the CLI spelling uses underscores."""
    return " ".join(name.replace("_", " ").split())


def search_body(req: GpuRequest, disk_gb: float) -> dict[str, Any]:
    """The POST /bundles/ filter for `req`, in the units the API expects (VRAM in MB ×1000, disk in GB)."""
    body: dict[str, Any] = {
        "external": {"eq": False},
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "num_gpus": {"eq": req.num_gpus},
        # direct SSH needs an open router port; the proxy cannot carry rsync reliably
        "direct_port_count": {"gte": 1},
    }
    if req.verified_only:
        body["verified"] = {"eq": True}
    if req.gpu_names:
        body["gpu_name"] = {"in": [vast_gpu_name(name) for name in req.gpu_names]}
    if req.min_vram_gb > 0:
        body["gpu_ram"] = {"gte": round(req.min_vram_gb * 1000)}
    if req.min_reliability > 0:
        body["reliability"] = {"gte": req.min_reliability}
    if req.min_cuda is not None:
        body["cuda_max_good"] = {"gte": req.min_cuda}
    if req.min_inet_down_mbps > 0:
        body["inet_down"] = {"gte": req.min_inet_down_mbps}
    if req.max_price_per_hour is not None:
        body["dph_total"] = {"lte": req.max_price_per_hour}
    body["disk_space"] = {"gte": disk_gb}
    body["order"] = [["dph_total", "asc"]]
    # "bid" prices offers on the interruptible basis. The OpenAPI enum spells on-demand "ondemand"; the SDK,
    # the CLI and the hello-world send "on-demand" (providers.md §3.1), and so do we.
    body["type"] = "bid" if req.spot else "on-demand"
    body["limit"] = req.limit
    # sent explicitly: the defaults disagree (5 GB in the SDK, 8 GB in the OpenAPI) and it changes dph_total
    body["allocated_storage"] = disk_gb
    return body


def parse_offer(raw: dict[str, Any], *, spot: bool, disk_gb: float) -> Offer | None:
    """An Offer from one /bundles/ entry, leniently; None when the entry lacks an id or a price."""
    offer_id = raw.get("id", raw.get("ask_contract_id"))
    count = int(_num(raw.get("num_gpus")) or 1)
    storage_cost = max(_num(raw.get("storage_cost")) or 0.0, 0.0)
    dph_total = _num(raw.get("dph_total"))
    min_bid = _num(raw.get("min_bid"))
    # Interruptible: what we would pay is the bid (the minimum bid at least) plus storage. Vast says a "bid"
    # search prices on the minimum bid, but the recomputation is not documented, so compute it ourselves.
    price = min_bid + storage_cost * disk_gb / HOURS_PER_MONTH if spot and min_bid is not None else dph_total
    if offer_id is None or price is None or price <= 0:
        return None  # a marketplace GPU at $0 or less is bad data, not a free machine
    total_flops = _num(raw.get("total_flops"))
    compute_cap = _num(raw.get("compute_cap"))
    verified = raw.get("verified")
    if not isinstance(verified, bool):
        verified = raw.get("verification") == "verified"
    reliability = _num(raw.get("reliability2"))
    if reliability is None:
        reliability = _num(raw.get("reliability"))
    ports = _num(raw.get("direct_port_count")) or 0
    cpu_ram = _num(raw.get("cpu_ram"))
    if count < 1:
        return None  # (and no division by it below); checked_offer refuses too many
    return checked_offer(Offer(
        provider="vast",
        offer_id=str(offer_id),
        gpu=GpuSpec(
            name=str(raw.get("gpu_name") or "unknown"),
            count=count,
            # MB → GB by 1000, the same factor the query language uses, so a "24 GB" filter keeps a 24564 MB card
            vram_gb=(_num(raw.get("gpu_ram")) or 0.0) / 1000,
            tflops=total_flops / count if total_flops else None,
            compute_capability=compute_cap / 100 if compute_cap else None,
        ),
        price_per_hour=price,
        spot=spot,
        min_bid=min_bid,
        reliability=min(max(reliability if reliability is not None else 1.0, 0.0), 1.0),
        location=str(raw.get("geolocation") or ""),
        # Mb/s per the CLI help; the OpenAPI says "MB/s" (providers.md §3.7). Treated as megabits.
        inet_down_mbps=_num(raw.get("inet_down")),
        inet_up_mbps=_num(raw.get("inet_up")),
        disk_gb=disk_gb,
        storage_per_gb_month=storage_cost,
        download_per_gb=max(_num(raw.get("inet_down_cost")) or 0.0, 0.0),
        upload_per_gb=max(_num(raw.get("inet_up_cost")) or 0.0, 0.0),
        cpu_cores=_num(raw.get("cpu_cores_effective")) or _num(raw.get("cpu_cores")),
        ram_gb=cpu_ram / 1000 if cpu_ram else None,
        cuda_version=_num(raw.get("cuda_max_good")),
        verified=bool(verified),
        direct_ssh=ports >= 1,
        raw=raw,
    ))  # fmt: skip


def ssh_endpoint(raw: dict[str, Any]) -> SshEndpoint | None:
    """Direct first (public_ipaddr + the host port mapped to 22/tcp), then Vast's SSH proxy (ssh_host:ssh_port).

    The two official clients disagree: the CLI prefers direct, the SDK the proxy. Direct is faster and is what
    rsync wants; the proxy works on every machine (providers.md §1.6). The CLI's +1 on the proxy port applies
    only to jupyter runtypes, which gpurun never uses.
    """
    ports = raw.get("ports")
    ip = str(raw.get("public_ipaddr") or "").strip()
    if isinstance(ports, dict) and ip:
        mapped = ports.get("22/tcp")
        if isinstance(mapped, list) and mapped and isinstance(mapped[0], dict):
            port = _num(mapped[0].get("HostPort"))
            if port:
                return SshEndpoint(host=ip, port=int(port), user="root")
    host = str(raw.get("ssh_host") or "").strip()
    port = _num(raw.get("ssh_port"))
    if host and port:
        return SshEndpoint(host=host, port=int(port), user="root")
    return None


def parse_instance(raw: dict[str, Any]) -> Instance:
    ssh = ssh_endpoint(raw)
    status = raw.get("actual_status")
    # "unknown"/"offline" are terminal (the docs say so); a status the docs do not list is waited on, bounded by the
    # ready timeout, rather than treated as dead: a new intermediate state must not destroy a booting machine
    state = _STATUS.get(status if isinstance(status, str) or status is None else str(status), InstanceState.PENDING)
    if state is InstanceState.RUNNING and ssh is None:
        # Vast reports "running" a little before the endpoints are filled in; not usable yet
        state = InstanceState.PENDING
    if raw.get("cur_state") == "unloaded" and state is not InstanceState.RUNNING:
        state = InstanceState.TERMINATING
    count = int(_num(raw.get("num_gpus")) or 1)
    return Instance(
        provider="vast",
        instance_id=str(raw.get("id")),
        state=state,
        price_per_hour=_num(raw.get("dph_total")),
        ssh=ssh if state is InstanceState.RUNNING else None,
        label=raw.get("label") if isinstance(raw.get("label"), str) else None,
        gpu=GpuSpec(
            name=str(raw.get("gpu_name") or "unknown"), count=count, vram_gb=(_num(raw.get("gpu_ram")) or 0) / 1000
        ),
        created_at=_num(raw.get("start_date")),
        raw=raw,
    )


class VastProvider:
    """Vast.ai through its REST API. Adapters never sleep or poll: the orchestrator does, with deadlines."""

    name: ClassVar[str] = "vast"
    #: scheduling + container start; the image pull and the install are priced from the offer's own bandwidth
    boot_profile: ClassVar[BootProfile] = BootProfile(60.0)
    rents_machines: ClassVar[bool] = True
    over_ssh: ClassVar[bool] = True
    key_env: ClassVar[str | None] = KEY_ENV
    #: `onstart` runs when the container starts, in the SSH launch modes gpurun uses
    runs_boot_script: ClassVar[bool] = True
    default_image: ClassVar[str | None] = DEFAULT_IMAGE

    @classmethod
    def from_settings(
        cls, settings: Settings, *, client: httpx.AsyncClient | None = None, retry: RetryPolicy | None = None
    ) -> VastProvider:
        key = account_key(cls.name, KEY_ENV, settings)
        return cls(key, base_url=cls.endpoints(settings)["api"], client=client, retry=retry)

    @classmethod
    def endpoints(cls, settings: Settings) -> dict[str, str]:
        return {"api": endpoint(cls.name, settings.provider(cls.name).url, DEFAULT_URL)}

    @classmethod
    def unusable_reason(cls, settings: Settings) -> str | None:
        return None if settings.api_key(cls.name) else no_key_reason(cls.name, KEY_ENV)

    def __init__(
        self,
        api_key: str | ApiKey,
        *,
        base_url: str = DEFAULT_URL,
        client: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
    ) -> None:
        key = api_key if isinstance(api_key, ApiKey) else ApiKey(api_key)
        self._http = ProviderHttp("vast", base_url, key, key_env=KEY_ENV, client=client, retry=retry, timeout=timeout)
        self._registered_keys: set[str] = set()

    def __repr__(self) -> str:
        return f"VastProvider(base_url={self._http.base_url!r})"

    @property
    def base_url(self) -> str:
        return self._http.base_url

    async def aclose(self) -> None:
        await self._http.aclose()

    @staticmethod
    def check_image(image: str) -> None:
        """Any image: the SSH launch mode injects Vast's own sshd, and the watchdog needs only a python3."""

    def self_destroy(self, instance: Instance | None) -> dict[str, Any]:
        """DELETE /api/v0/instances/{id}/ with the instance-scoped key Vast gives the container; the user's
        master key never goes to the box. The credential check reads the same URL."""
        url = f"{self.base_url}/api/v0/instances/{{instance_id}}/"
        recipe: dict[str, Any] = {
            "kind": "http",
            "check": {"method": "GET", "url": url},
            # Vast wants a JSON body on the DELETE, even an empty object
            "attempts": [{"method": "DELETE", "url": url, "body": {}}],
        }
        if instance is None:
            recipe.update(instance_id_env=INSTANCE_ID_ENV, token_env=INSTANCE_KEY_ENV)
            return recipe
        recipe["instance_id"] = instance.instance_id
        if instance.self_destroy_token:
            recipe["token"] = instance.self_destroy_token
        else:  # a create recovered by label has no key in hand; the container has it
            recipe["token_env"] = INSTANCE_KEY_ENV
        return recipe

    async def check(self) -> str:
        """One cheap authenticated call; AuthError when the key is wrong."""
        user = await self._http.json("GET", "/api/v0/users/current/")
        user = user if isinstance(user, dict) else {}
        balance = _num(user.get("credit", user.get("balance")))
        who = user.get("email") or user.get("username") or user.get("id") or "account"
        return f"key valid ({who}" + (f", credit ${balance:.2f})" if balance is not None else ")")

    async def list_offers(self, req: GpuRequest) -> list[Offer]:
        disk_gb = max(req.min_disk_gb, MIN_DISK_GB) if req.min_disk_gb > 0 else DEFAULT_DISK_GB
        data = await self._http.json("POST", "/api/v0/bundles/", json_body=search_body(req, disk_gb))
        entries = data.get("offers") if isinstance(data, dict) else data
        offers = []
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and (offer := parse_offer(entry, spot=req.spot, disk_gb=disk_gb)):
                offers.append(offer)
        return offers

    async def register_ssh_key(self, public_key: str) -> None:
        """Make sure `public_key` is on the account before renting, so Vast installs it on the new instance."""
        wanted = _key_body(public_key)
        if not wanted or wanted in self._registered_keys:
            return
        known = {_key_body(text) for _, text in await self._account_keys()}
        if wanted not in known:
            await self._http.json("POST", "/api/v0/ssh/", json_body={"ssh_key": public_key.strip()})
        self._registered_keys.add(wanted)

    async def _account_keys(self) -> list[tuple[str, str]]:
        """(id, key text) of every SSH key on the account."""
        listed = await self._http.json("GET", "/api/v0/ssh/")
        # documented as a bare array, but Vast's own live test also accepts {"ssh_keys": [...]}
        items = listed.get("ssh_keys", []) if isinstance(listed, dict) else listed
        found = []
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and item.get("id") is not None:
                text = item.get("key") or item.get("public_key") or item.get("ssh_key") or ""
                found.append((str(item["id"]), str(text)))
        return found

    async def forget_ssh_key(self, public_key: str) -> None:
        """Remove a run's key from the account when the run ends: Vast installs account keys on every later
        instance, so a key left behind (and leaked) would open all future machines."""
        wanted = _key_body(public_key)
        for key_id, text in await self._account_keys():
            if _key_body(text) == wanted:
                await self._http.json("DELETE", f"/api/v0/ssh/{key_id}/")
        self._registered_keys.discard(wanted)

    async def run_ssh_keys(self) -> list[str]:
        """The keys gpurun put on the account (their comment is `gpurun-<run id>`), for `gpurun down --strays`."""
        return [text for _, text in await self._account_keys() if _comment(text).startswith(LABEL_PREFIX)]

    def create_body(self, offer: Offer, spec: LaunchSpec) -> dict[str, Any]:
        # the run's key first (SSH must work), then the dead-man switch, then whatever else was asked
        onstart = "\n".join(part for part in (_KEY_ONSTART, spec.boot_script, spec.onstart) if part)
        if len(onstart) > MAX_ONSTART_CHARS:
            raise ProviderError(
                f"the onstart script is {len(onstart)} characters; Vast accepts at most {MAX_ONSTART_CHARS}",
                provider="vast",
            )
        price: float | None = None
        if not offer.spot and spec.price_cap is not None and offer.price_per_hour > spec.price_cap:
            # Vast has no on-demand price cap; refuse before renting (the orchestrator re-reads the billed price)
            raise PriceError(
                f"offer {offer.offer_id} costs ${offer.price_per_hour:.3f}/h, above the cap ${spec.price_cap:.3f}/h",
                where="vast",
            )
        if offer.spot:
            price = spec.bid_price if spec.bid_price is not None else offer.min_bid
            if price is None:
                raise ProviderError(f"offer {offer.offer_id} is interruptible but has no bid price", provider="vast")
            if spec.price_cap is not None and price > spec.price_cap:
                raise PriceError(f"bid ${price:.3f}/h is above the price cap ${spec.price_cap:.3f}/h", where="vast")
        return {
            "client_id": "me",
            "image": spec.image,
            "disk": max(float(spec.disk_gb), MIN_DISK_GB),
            "runtype": RUNTYPE_DIRECT_SSH,
            "env": {**spec.env, "GPURUN_SSH_PUBLIC_KEY": spec.ssh_public_key.strip()},
            "onstart": onstart,
            "label": spec.label,
            # $/h bid per machine for interruptible rentals; null = on-demand
            "price": price,
            # fail with 410 instead of creating a stopped (storage-billing) instance when the host cannot start
            "cancel_unavail": True,
        }

    async def create(self, offer: Offer, spec: LaunchSpec) -> Instance:
        """Rent exactly `offer`. CapacityError when someone else took it (404/410 `no_such_ask`)."""
        if offer.provider != self.name:
            raise ProviderError(f"offer {offer.key} is not a Vast offer", provider="vast")
        body = self.create_body(offer, spec)
        await self._http.call(lambda: self.register_ssh_key(spec.ssh_public_key))

        async def attempt() -> Any:
            try:
                return await self._http.json("PUT", f"/api/v0/asks/{offer.offer_id}/", json_body=body, retry=False)
            except TransientNotProcessed:
                raise
            except TransientProviderError:
                # A timeout or 5xx may still have rented the offer: look for our label before trying again,
                # never rent twice (providers.md §1.10).
                existing = await self._find_by_label(spec.label)
                if existing is not None:
                    return {"new_contract": existing.instance_id, "_found_by_label": True}
                raise

        try:
            data = await self._http.call(attempt)
        except NotFoundError as exc:
            # 404 on PUT /asks/: the offer id no longer exists (already rented by someone else)
            raise CapacityError(f"offer {offer.offer_id} is gone: {exc.message}", provider="vast") from None
        data = data if isinstance(data, dict) else {}
        instance_id = data.get("new_contract")
        if data.get("success") is False or instance_id is None:
            answer = self._http.redact(repr(data))[:300]  # an echo of the key is masked before it is cut
            raise ProviderError(f"create of offer {offer.offer_id} gave no instance id: {answer}", provider="vast")
        token = data.get("instance_api_key")
        return Instance(
            provider=self.name,
            instance_id=str(instance_id),
            state=InstanceState.PENDING,
            offer_id=offer.offer_id,
            label=spec.label,
            gpu=offer.gpu,
            created_at=time.time(),
            # Vast injects the same key into the container as CONTAINER_API_KEY; it is the watchdog's credential
            self_destroy_token=str(token) if token else None,
        )

    async def get(self, instance_id: str) -> Instance:
        """The instance now; its `price_per_hour` is what Vast bills (dph_total). NotFoundError once destroyed."""
        data = await self._http.json("GET", f"/api/v0/instances/{instance_id}/", params={"owner": "me"})
        # one object under a plural key; null when the instance is gone or not ours
        raw = data.get("instances") if isinstance(data, dict) else None
        if isinstance(raw, list):
            raw = next((item for item in raw if str(item.get("id")) == str(instance_id)), None)
        if not isinstance(raw, dict):
            raise NotFoundError(f"instance {instance_id} does not exist (any more)", provider="vast")
        return parse_instance(raw)

    async def terminate(self, instance_id: str) -> None:
        """Destroy (DELETE, never stop: a stopped instance keeps billing storage). Unknown id = success."""
        try:
            await self._http.json("DELETE", f"/api/v0/instances/{instance_id}/", json_body={})
        except NotFoundError:
            return

    async def list_instances(self) -> list[Instance]:
        """Every gpurun-labelled instance on the account (v1 paginated listing)."""
        found: list[Instance] = []
        token: str | None = None
        for _ in range(400):  # 25 per page: 10,000 instances is more than any account holds
            params = {"limit": "25", "owner": "me"}
            if token:
                params["after_token"] = token
            data = await self._http.json("GET", "/api/v1/instances/", params=params)
            data = data if isinstance(data, dict) else {}
            for raw in data.get("instances") or []:
                if isinstance(raw, dict) and str(raw.get("label") or "").startswith(LABEL_PREFIX):
                    found.append(parse_instance(raw))
            token = data.get("next_token")
            if not token:
                break
        return found

    async def _find_by_label(self, label: str) -> Instance | None:
        try:
            instances = await self.list_instances()
        except ProviderError:
            return None
        return next((inst for inst in instances if inst.label == label), None)
