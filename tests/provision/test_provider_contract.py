"""Every provider through the same lifecycle, built by the registry from settings as gpurun builds them.

list_offers → create → get until running → (the SSH endpoint really answers) → terminate → gone.
Vast and RunPod run against the fakes, whose instances are the real sshd fixture; `ssh` is the sshd fixture
declared in the settings file; `local` is this machine.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from gpurun.errors import NotFoundError
from gpurun.models import GpuRequest, InstanceState, LaunchSpec, Offer
from gpurun.provision.base import Provider, run_label
from gpurun.provision.registry import PROVIDER_NAMES, make_provider
from gpurun.settings import settings_path
from tests.support.fakes.fixtures import FAST_RETRY
from tests.support.sshd import SshServer

POLL_LIMIT = 20


@pytest.fixture
def providers_ready(request: pytest.FixtureRequest, sshd_server: SshServer) -> str:
    """Makes the named provider usable: fakes started and pointed at sshd, or the sshd host declared."""
    name = request.param
    if name == "vast":
        if sshd_server.user != "root":
            pytest.skip("Vast instances are always root@ (its API has no user field); the sshd fixture user is not")
        request.getfixturevalue("fake_vast").set_ssh_endpoint(sshd_server.host, sshd_server.port)
    elif name == "runpod":
        request.getfixturevalue("fake_runpod").set_ssh_endpoint(sshd_server.host, sshd_server.port, sshd_server.user)
    elif name == "ssh":
        settings_path().parent.mkdir(parents=True, exist_ok=True)
        settings_path().write_text(
            "[[ssh_hosts]]\n"
            f'name = "sshd"\nhost = "{sshd_server.host}"\nport = {sshd_server.port}\nuser = "{sshd_server.user}"\n'
            f'key = "{sshd_server.client_key}"\ngpu = "RTX 4090"\nvram_gb = 24\nprice_per_hour = 0.1\n'
        )
    return name


def ssh_answers(instance_ssh, sshd_server: SshServer) -> str:
    key = instance_ssh.identity_file or str(sshd_server.client_key)
    argv = ["ssh", "-p", str(instance_ssh.port), "-i", key, "-o", "StrictHostKeyChecking=no"]
    argv += ["-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
    argv += [f"{instance_ssh.user}@{instance_ssh.host}", "echo alive"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()


@pytest.mark.sshd
@pytest.mark.parametrize("providers_ready", PROVIDER_NAMES, indirect=True)
async def test_provider_lifecycle(providers_ready: str, sshd_server: SshServer) -> None:
    name = providers_ready
    provider = make_provider(name, retry=FAST_RETRY)
    assert isinstance(provider, Provider) and provider.name == name
    try:
        offers = await provider.list_offers(GpuRequest())
        assert offers and all(isinstance(o, Offer) and o.provider == name for o in offers)
        assert all(o.price_per_hour >= 0 and o.gpu.count >= 1 and 0 <= o.reliability <= 1 for o in offers)
        assert len({o.key for o in offers}) == len(offers)
        label = run_label(f"contract-{name}")
        image = provider.default_image or ""  # the image each provider rents with (RunPod: only runpod/* start sshd)
        spec = LaunchSpec(image=image, disk_gb=20, label=label, ssh_public_key="ssh-ed25519 AAAA x")
        created = await provider.create(offers[0], spec)
        assert created.provider == name and created.label == label and created.state.is_alive

        for _ in range(POLL_LIMIT):
            instance = await provider.get(created.instance_id)
            if instance.state is InstanceState.RUNNING:
                break
            assert instance.state is InstanceState.PENDING
        else:
            raise AssertionError(f"{name}: {created.instance_id} never ran")
        assert instance.price_per_hour is not None and instance.price_per_hour >= 0
        if name == "local":
            assert instance.ssh is None and instance.workdir
        else:
            assert ssh_answers(instance.ssh, sshd_server) == "alive"
        assert created.instance_id in {i.instance_id for i in await provider.list_instances()}

        await provider.terminate(created.instance_id)
        try:
            gone = await provider.get(created.instance_id)
            assert gone.state is InstanceState.TERMINATED
        except NotFoundError:
            pass
        assert created.instance_id not in {i.instance_id for i in await provider.list_instances()}
        await provider.terminate(created.instance_id)  # idempotent
    finally:
        await provider.aclose()


@pytest.mark.parametrize("providers_ready", ["vast", "runpod"], indirect=True)
async def test_marketplace_destroys_are_recorded(providers_ready: str, request: pytest.FixtureRequest) -> None:
    fake = request.getfixturevalue(f"fake_{providers_ready}")
    provider = make_provider(providers_ready, retry=FAST_RETRY)
    offer = (await provider.list_offers(GpuRequest()))[0]
    image = provider.default_image or ""
    spec = LaunchSpec(image=image, disk_gb=20, label=run_label("rec"), ssh_public_key="ssh-ed25519 AAAA x")
    instance = await provider.create(offer, spec)
    started = time.time()
    await provider.terminate(instance.instance_id)
    await provider.aclose()
    assert fake.destroyed_ids == [instance.instance_id] and fake.destroyed[0].at >= started
