"""This machine as a provider: its GPU from nvidia-smi (else the CPU, with RAM as "VRAM"), free of charge.

No SSH: the instance has `ssh=None` and a work folder under the state dir, and the orchestrator runs the
runner here directly. `terminate` ends the lease; there is nothing to destroy.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

import httpx

from gpurun.errors import ProviderError
from gpurun.models import GpuRequest, GpuSpec, Instance, InstanceState, LaunchSpec, Offer
from gpurun.pricing.assumptions import BootProfile
from gpurun.provision.gpu_probe import local_gpus, memory_gb
from gpurun.provision.http import RetryPolicy
from gpurun.provision.leases import LeaseBook
from gpurun.settings import Settings, state_dir

OFFER_ID = "local"


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label) or "run"


class LocalProvider:
    """The machine gpurun runs on."""

    name: ClassVar[str] = "local"
    #: nothing to start, pull or install: the environment is the one running gpurun
    boot_profile: ClassVar[BootProfile] = BootProfile(0.0, pulls_image=False, installs_env=False)
    rents_machines: ClassVar[bool] = False
    over_ssh: ClassVar[bool] = False
    key_env: ClassVar[str | None] = None
    #: nothing is rented: no container start to hook, no image; the client arms the watchdog on this machine
    runs_boot_script: ClassVar[bool] = False
    default_image: ClassVar[str | None] = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, client: httpx.AsyncClient | None = None, retry: RetryPolicy | None = None
    ) -> LocalProvider:
        return cls()

    @classmethod
    def endpoints(cls, settings: Settings) -> dict[str, str]:
        return {"machine": "this machine"}

    @classmethod
    def unusable_reason(cls, settings: Settings) -> str | None:
        return None

    def __init__(self, *, state_root: Path | None = None) -> None:
        self._root = state_root
        self._leases = LeaseBook(self.name, state_root)

    def __repr__(self) -> str:
        return "LocalProvider()"

    @property
    def root(self) -> Path:
        return self._root or state_dir()

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
        gpu = await self._gpu()
        return f"this machine: {gpu.count}x {gpu.name}, {gpu.vram_gb:.0f} GB"

    async def _gpu(self) -> GpuSpec:
        facts = await local_gpus()
        if facts is not None:
            return GpuSpec(name=facts.name, count=facts.count, vram_gb=facts.vram_gb)
        # no GPU: the runner trains on the CPU, and its memory is what bounds the batch
        return GpuSpec(name="cpu", count=1, vram_gb=round(memory_gb(), 1))

    async def list_offers(self, req: GpuRequest) -> list[Offer]:
        gpu = await self._gpu()
        folder = self.root
        probe = folder if folder.exists() else Path.home()
        try:
            free_gb = shutil.disk_usage(probe).free / 1e9
        except OSError:
            free_gb = None
        return [
            Offer(
                provider=self.name,
                offer_id=OFFER_ID,
                gpu=gpu,
                price_per_hour=0.0,
                location="this machine",
                disk_gb=free_gb,
                cpu_cores=float(os.cpu_count() or 1),
                ram_gb=round(memory_gb(), 1),
                verified=True,
                direct_ssh=True,
                raw={"gpu_source": "cpu" if gpu.name == "cpu" else "nvidia-smi"},
            )
        ]

    def workdir(self, label: str) -> Path:
        return self.root / "local" / _safe(label)

    async def create(self, offer: Offer, spec: LaunchSpec) -> Instance:
        if offer.provider != self.name:
            raise ProviderError(f"offer {offer.key} is not a local offer", provider=self.name)
        instance_id = f"local:{spec.label}"
        self.workdir(spec.label).mkdir(parents=True, exist_ok=True)
        self._leases.add(instance_id, {"label": spec.label})
        return self._instance(instance_id, spec.label, InstanceState.RUNNING, offer.gpu)

    def _instance(self, instance_id: str, label: str, state: InstanceState, gpu: GpuSpec | None) -> Instance:
        lease = self._leases.get(instance_id) or {}
        return Instance(
            provider=self.name,
            instance_id=instance_id,
            state=state,
            offer_id=OFFER_ID,
            price_per_hour=0.0,
            ssh=None,
            label=label,
            gpu=gpu,
            created_at=lease.get("created_at", time.time()),
            workdir=str(self.workdir(label)),
        )

    async def get(self, instance_id: str) -> Instance:
        prefix, _, label = instance_id.partition(":")
        if prefix != "local" or not label:
            raise ProviderError(f"not a local instance id: {instance_id!r}", provider=self.name)
        state = InstanceState.RUNNING if self._leases.get(instance_id) is not None else InstanceState.TERMINATED
        return self._instance(instance_id, label, state, None)

    async def terminate(self, instance_id: str) -> None:
        self._leases.remove(instance_id)

    async def list_instances(self) -> list[Instance]:
        return [await self.get(instance_id) for instance_id in self._leases.ids()]
