"""Machines the user declares in the settings file (`[[ssh_hosts]]`): any box reachable over SSH.

A GPUFlow or Lambda instance, a friend's workstation: nothing is rented, so `create` hands out the declared
endpoint at once and `terminate` only ends gpurun's lease (the orchestrator stops the runner itself). The
GPU facts are checked with `nvidia-smi` over SSH when the host answers; otherwise the declared ones are used
and the offer says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import asyncssh
import httpx

from gpurun.errors import ConfigError, NotFoundError, ProviderError
from gpurun.models import GpuRequest, GpuSpec, Instance, InstanceState, LaunchSpec, Offer, SshEndpoint
from gpurun.pricing.assumptions import BootProfile
from gpurun.provision.gpu_probe import NVIDIA_SMI_QUERY, GpuFacts, parse_nvidia_smi
from gpurun.provision.http import RetryPolicy
from gpurun.provision.leases import LeaseBook
from gpurun.settings import Settings, SshHostSettings, settings_path

#: a probe slower than this falls back to the declared facts (offers must come back quickly)
PROBE_TIMEOUT_S = 8.0


def _key_path(host: SshHostSettings) -> str | None:
    return str(Path(host.key).expanduser()) if host.key else None


def endpoint(host: SshHostSettings) -> SshEndpoint:
    return SshEndpoint(host=host.host, port=host.port, user=host.user, identity_file=_key_path(host))


@dataclass(frozen=True, slots=True)
class Probe:
    """What asking a host's nvidia-smi over SSH found."""

    facts: GpuFacts | None
    note: str
    #: whether SSH login worked at all (nvidia-smi may still be missing)
    reachable: bool


async def probe_gpus(host: SshHostSettings, timeout: float = PROBE_TIMEOUT_S) -> Probe:
    """Log in to `host` and ask nvidia-smi for its GPUs; never raises, the note says what went wrong."""
    key = _key_path(host)

    async def ask() -> Probe:
        # A read-only probe with our key; the host key is not pinned here (the orchestrator's session pins it
        # on first contact), so an unknown host key does not hide a declared host from `gpurun offers`.
        # Without a declared key, asyncssh's defaults apply (the agent, ~/.ssh/id_*).
        keys: dict[str, Any] = {"client_keys": [key]} if key else {}
        async with asyncssh.connect(
            host.host, port=host.port, username=host.user, known_hosts=None, connect_timeout=timeout, **keys
        ) as conn:
            result = await conn.run(NVIDIA_SMI_QUERY, check=False)
        if result.exit_status != 0:
            return Probe(None, f"nvidia-smi failed on the host (exit {result.exit_status})", True)
        facts = parse_nvidia_smi(str(result.stdout or ""))
        return Probe(facts, "checked with nvidia-smi" if facts else "nvidia-smi listed no GPU", True)

    try:
        return await asyncio.wait_for(ask(), timeout)
    except asyncio.TimeoutError:
        return Probe(None, f"no answer within {timeout:.0f} s", False)
    except (OSError, asyncssh.Error) as exc:
        return Probe(None, f"not reachable ({type(exc).__name__}: {exc})", False)


class SshHostsProvider:
    """The user's own SSH hosts, one offer each at the declared $/h."""

    name: ClassVar[str] = "ssh"
    #: already running: a connect, no image to pull
    boot_profile: ClassVar[BootProfile] = BootProfile(5.0, pulls_image=False)
    #: the user's own machines: gpurun stops its runner and watchdog there, never destroys them
    rents_machines: ClassVar[bool] = False
    over_ssh: ClassVar[bool] = True
    key_env: ClassVar[str | None] = None
    #: nothing is rented: no container start to hook, no image; the client arms the watchdog over SSH
    runs_boot_script: ClassVar[bool] = False
    default_image: ClassVar[str | None] = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, client: httpx.AsyncClient | None = None, retry: RetryPolicy | None = None
    ) -> SshHostsProvider:
        if not settings.ssh_hosts:
            raise ConfigError(
                f"no ssh_hosts declared in {settings_path()}",
                hint="add a [[ssh_hosts]] table with name, host, gpu and price_per_hour",
            )
        return cls(settings.ssh_hosts)

    @classmethod
    def endpoints(cls, settings: Settings) -> dict[str, str]:
        return {h.name: f"{h.name} ({h.user}@{h.host}:{h.port}, {h.gpu})" for h in settings.ssh_hosts}

    @classmethod
    def unusable_reason(cls, settings: Settings) -> str | None:
        return None if settings.ssh_hosts else f"no ssh_hosts declared in {settings_path()}"

    def __init__(
        self,
        hosts: Sequence[SshHostSettings],
        *,
        state_root: Path | None = None,
        probe_timeout: float = PROBE_TIMEOUT_S,
        verify: bool = True,
    ) -> None:
        self._hosts = {host.name: host for host in hosts}
        self._leases = LeaseBook(self.name, state_root)
        self._probe_timeout = probe_timeout
        self._verify = verify

    def __repr__(self) -> str:
        return f"SshHostsProvider(hosts={sorted(self._hosts)!r})"

    async def aclose(self) -> None:
        return None

    @staticmethod
    def check_image(image: str) -> None:
        """Images do not apply: the machine runs what it has."""

    def self_destroy(self, instance: Instance | None) -> dict[str, Any]:
        """Nothing bills here: the watchdog only stops the runner."""
        return {"kind": "kill"}

    async def forget_ssh_key(self, public_key: str) -> None:
        """Nothing to forget: no key of a run is kept on an account here."""

    async def run_ssh_keys(self) -> list[str]:
        return []

    async def check(self) -> str:
        """Log in to every declared host; ProviderError naming the ones that cannot be reached."""
        probes = await asyncio.gather(*(probe_gpus(h, self._probe_timeout) for h in self._hosts.values()))
        notes = [f"{name}: {probe.note}" for name, probe in zip(self._hosts, probes, strict=True)]
        if not all(probe.reachable for probe in probes):
            raise ProviderError("; ".join(notes), provider="ssh", hint="check host, port, user and key in the settings")
        return "; ".join(notes)

    def host(self, name: str) -> SshHostSettings:
        try:
            return self._hosts[name]
        except KeyError:
            known = ", ".join(sorted(self._hosts)) or "none"
            raise NotFoundError(f"no ssh host named {name!r} is declared (declared: {known})", provider="ssh") from None

    async def list_offers(self, req: GpuRequest) -> list[Offer]:
        hosts = list(self._hosts.values())
        if self._verify:
            probes = await asyncio.gather(*(probe_gpus(h, self._probe_timeout) for h in hosts))
        else:
            probes = [Probe(None, "not checked", False)] * len(hosts)
        return [self._offer(host, p.facts, p.note) for host, p in zip(hosts, probes, strict=True)]

    def _offer(self, host: SshHostSettings, facts: GpuFacts | None, note: str) -> Offer:
        declared = GpuSpec(name=host.gpu, count=host.gpu_count, vram_gb=host.vram_gb or 0.0)
        if facts is None:
            gpu = declared
            note = f"declared GPU facts used: {note}"
        else:
            gpu = GpuSpec(name=facts.name, count=facts.count, vram_gb=facts.vram_gb)
            if host.gpu != "unknown" and (facts.count != host.gpu_count or host.gpu.lower() not in facts.name.lower()):
                note = f"{note}; declared {host.gpu_count}x {host.gpu}, found {facts.count}x {facts.name}"
        return Offer(
            provider=self.name,
            offer_id=host.name,
            gpu=gpu,
            price_per_hour=host.price_per_hour,
            location=host.location,
            verified=True,
            direct_ssh=True,
            raw={
                "host": host.host,
                "port": host.port,
                "user": host.user,
                "gpu_verified": facts is not None,
                "note": note,
            },
        )

    async def create(self, offer: Offer, spec: LaunchSpec) -> Instance:
        """Nothing to rent: the declared endpoint, running at once. The run's public key is not installed here;
        the host must accept the declared `key` (or the run key the user authorised)."""
        host = self.host(offer.offer_id)
        instance_id = f"{host.name}:{spec.label}"
        self._leases.add(instance_id, {"host": host.name, "label": spec.label, "offer_id": offer.offer_id})
        return self._instance(host, instance_id, spec.label, InstanceState.RUNNING, offer.gpu)

    def _instance(
        self, host: SshHostSettings, instance_id: str, label: str | None, state: InstanceState, gpu: GpuSpec | None
    ) -> Instance:
        lease = self._leases.get(instance_id) or {}
        return Instance(
            provider=self.name,
            instance_id=instance_id,
            state=state,
            offer_id=host.name,
            price_per_hour=host.price_per_hour,
            ssh=endpoint(host) if state is InstanceState.RUNNING else None,
            label=label,
            gpu=gpu or GpuSpec(name=host.gpu, count=host.gpu_count, vram_gb=host.vram_gb or 0.0),
            created_at=lease.get("created_at", time.time()),
            workdir=host.workdir,
        )

    def _split(self, instance_id: str) -> tuple[SshHostSettings, str]:
        name, _, label = instance_id.partition(":")
        if not label:
            raise ProviderError(f"not an ssh-host instance id: {instance_id!r}", provider="ssh")
        return self.host(name), label

    async def get(self, instance_id: str) -> Instance:
        host, label = self._split(instance_id)
        state = InstanceState.RUNNING if self._leases.get(instance_id) is not None else InstanceState.TERMINATED
        return self._instance(host, instance_id, label, state, None)

    async def terminate(self, instance_id: str) -> None:
        """Ends the lease; nothing bills on a declared host (the orchestrator stops the runner over SSH)."""
        self._leases.remove(instance_id)

    async def list_instances(self) -> list[Instance]:
        found = []
        for instance_id in self._leases.ids():
            try:
                found.append(await self.get(instance_id))
            except ProviderError:
                continue  # a lease on a host the user has since removed from the settings
        return found

    def describe(self) -> dict[str, Any]:
        return {name: f"{h.user}@{h.host}:{h.port}" for name, h in self._hosts.items()}
