"""The providers with nothing to rent: the user's own SSH hosts and this machine."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from gpurun.errors import NotFoundError, ProviderError
from gpurun.models import GpuRequest, InstanceState, LaunchSpec
from gpurun.provision.gpu_probe import NVIDIA_SMI_QUERY, parse_nvidia_smi
from gpurun.provision.local import LocalProvider
from gpurun.provision.ssh_hosts import SshHostsProvider
from gpurun.settings import SshHostSettings, state_dir

SPEC = LaunchSpec(image="unused", disk_gb=10, label="gpurun-r1", ssh_public_key="ssh-ed25519 AAAA run")
TWO_4090 = "NVIDIA GeForce RTX 4090, 24564 MiB\nNVIDIA GeForce RTX 4090, 24564 MiB\n"


class Box:
    """An in-process SSH server standing in for a GPU box: answers nvidia-smi with canned output."""

    def __init__(self, port: int, key_file: Path) -> None:
        self.port = port
        self.key_file = key_file
        self.commands: list[str] = []
        self.nvidia_smi = TWO_4090

    def host(self, **overrides) -> SshHostSettings:
        values = {"name": "box", "host": "127.0.0.1", "port": self.port, "user": "me", "key": str(self.key_file)}
        values.update(overrides)
        return SshHostSettings(**values)


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Box]:
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "id_ed25519"
    client_key.write_private_key(str(key_file))
    state = Box(0, key_file)

    def process(proc: asyncssh.SSHServerProcess) -> None:
        state.commands.append(proc.command or "")
        if proc.command == NVIDIA_SMI_QUERY and state.nvidia_smi is not None:
            proc.stdout.write(state.nvidia_smi)
            proc.exit(0)
        else:
            proc.stderr.write("bash: nvidia-smi: command not found\n")
            proc.exit(127)

    server = await asyncssh.create_server(
        asyncssh.SSHServer,
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        authorized_client_keys=asyncssh.import_authorized_keys(client_key.export_public_key().decode()),
        process_factory=process,
    )
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()
    await server.wait_closed()


def test_nvidia_smi_parsing() -> None:
    facts = parse_nvidia_smi("NVIDIA A100-SXM4-80GB, 81920 MiB\nNVIDIA A100-SXM4-80GB, 81920 MiB\n\n")
    assert facts is not None and (facts.name, facts.count, facts.vram_gb) == ("NVIDIA A100-SXM4-80GB", 2, 81.92)
    assert parse_nvidia_smi("") is None and parse_nvidia_smi("No devices were found") is None


async def test_gpu_facts_are_checked_over_ssh(box: Box) -> None:
    provider = SshHostsProvider(
        [box.host(gpu="RTX 3090", gpu_count=1, vram_gb=24, price_per_hour=0.2, location="home")]
    )
    (offer,) = await provider.list_offers(GpuRequest())
    assert box.commands == [NVIDIA_SMI_QUERY]
    assert (offer.gpu.name, offer.gpu.count, offer.gpu.vram_gb) == ("NVIDIA GeForce RTX 4090", 2, 24.564)
    assert offer.raw["gpu_verified"] is True and "declared 1x RTX 3090, found 2x" in offer.raw["note"]
    assert (offer.provider, offer.offer_id, offer.price_per_hour, offer.location) == ("ssh", "box", 0.2, "home")


async def test_declared_facts_when_nvidia_smi_is_missing(box: Box) -> None:
    box.nvidia_smi = None
    provider = SshHostsProvider([box.host(gpu="RTX 3090", gpu_count=1, vram_gb=24)])
    (offer,) = await provider.list_offers(GpuRequest())
    assert (offer.gpu.name, offer.gpu.count, offer.gpu.vram_gb) == ("RTX 3090", 1, 24)
    assert offer.raw["gpu_verified"] is False and "exit 127" in offer.raw["note"]


async def test_declared_facts_when_the_host_is_unreachable(unused_tcp_port: int) -> None:
    host = SshHostSettings(name="gone", host="127.0.0.1", port=unused_tcp_port, gpu="RTX A6000", vram_gb=48)
    start = time.monotonic()
    (offer,) = await SshHostsProvider([host], probe_timeout=3).list_offers(GpuRequest())
    assert time.monotonic() - start < 3
    assert offer.gpu.name == "RTX A6000" and "not reachable" in offer.raw["note"]


async def test_ssh_host_lifecycle_is_a_lease(box: Box) -> None:
    provider = SshHostsProvider([box.host(price_per_hour=0.5, workdir="/scratch/gpurun")])
    (offer,) = await provider.list_offers(GpuRequest())
    instance = await provider.create(offer, SPEC)
    assert instance.state is InstanceState.RUNNING and instance.instance_id == "box:gpurun-r1"
    assert (instance.ssh.host, instance.ssh.port, instance.ssh.user) == ("127.0.0.1", box.port, "me")
    assert instance.ssh.identity_file == str(box.key_file) and instance.workdir == "/scratch/gpurun"
    assert instance.price_per_hour == 0.5 and instance.label == "gpurun-r1"
    # another process (a new adapter) sees the same lease
    later = SshHostsProvider([box.host()])
    assert [i.instance_id for i in await later.list_instances()] == ["box:gpurun-r1"]
    assert (await later.get("box:gpurun-r1")).state is InstanceState.RUNNING
    await later.terminate("box:gpurun-r1")
    await later.terminate("box:gpurun-r1")
    assert (await provider.get("box:gpurun-r1")).state is InstanceState.TERMINATED
    assert await provider.list_instances() == []
    with pytest.raises(NotFoundError, match="no ssh host named 'elsewhere'"):
        await provider.get("elsewhere:gpurun-r1")


async def test_local_without_a_gpu_offers_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    (offer,) = await LocalProvider().list_offers(GpuRequest())
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    assert offer.gpu.name == "cpu" and offer.gpu.vram_gb == pytest.approx(ram, abs=0.1)
    assert offer.price_per_hour == 0 and offer.provider == "local" and offer.raw["gpu_source"] == "cpu"


async def test_local_gpu_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "nvidia-smi"
    script.write_text('#!/bin/sh\n[ "$1" = "--query-gpu=name,memory.total" ] && echo "NVIDIA RTX A4000, 16376 MiB"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    (offer,) = await LocalProvider().list_offers(GpuRequest())
    assert (offer.gpu.name, offer.gpu.count, offer.gpu.vram_gb) == ("NVIDIA RTX A4000", 1, 16.376)


async def test_local_lifecycle() -> None:
    provider = LocalProvider()
    (offer,) = await provider.list_offers(GpuRequest())
    instance = await provider.create(offer, SPEC)
    assert instance.state is InstanceState.RUNNING and instance.ssh is None and instance.price_per_hour == 0
    workdir = Path(instance.workdir)
    assert workdir.is_dir() and workdir.is_relative_to(state_dir())
    assert [i.instance_id for i in await provider.list_instances()] == [instance.instance_id]
    await provider.terminate(instance.instance_id)
    assert (await provider.get(instance.instance_id)).state is InstanceState.TERMINATED
    assert await provider.list_instances() == []


async def test_check_names_unreachable_hosts(box: Box, unused_tcp_port: int) -> None:
    box.nvidia_smi = None
    assert "box: nvidia-smi failed" in await SshHostsProvider([box.host()]).check()  # reachable: fine
    gone = SshHostSettings(name="gone", host="127.0.0.1", port=unused_tcp_port)
    with pytest.raises(ProviderError, match="gone: not reachable"):
        await SshHostsProvider([box.host(), gone], probe_timeout=3).check()
