"""pytest fixtures for the fake providers (registered in tests/conftest.py through `pytest_plugins`).

`fake_vast` / `fake_runpod` start a server, point GPURUN_VAST_URL / GPURUN_RUNPOD_URL /
GPURUN_RUNPOD_GRAPHQL_URL and VAST_API_KEY / RUNPOD_API_KEY at it (child processes inherit them), and yield
the server as the handle: `base_url`, `api_key`, `offers`/`gpu_types`, `instances`/`pods`, `destroyed`,
`requests`/`calls()`, `inject_*`, `never_ready`, `set_ssh_endpoint`. For a run that really connects, point
the fake at the sshd fixture: `fake_vast.set_ssh_endpoint(sshd_server.host, sshd_server.port)`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from gpurun.provision.http import RetryPolicy
from gpurun.provision.runpod import RunpodProvider
from gpurun.provision.vast import VastProvider
from tests.support.fakes.hub_catalog import shortcut_repos
from tests.support.fakes.hub_server import FakeHub
from tests.support.fakes.runpod_server import FakeRunpod
from tests.support.fakes.vast_server import FakeVast


@pytest.fixture
def fake_vast(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVast]:
    """A fake Vast.ai seeded with `default_vast_offers()`; instances run after 2 polls."""
    with FakeVast() as server:
        monkeypatch.setenv("GPURUN_VAST_URL", server.base_url)
        monkeypatch.setenv("VAST_API_KEY", server.api_key)
        yield server


@pytest.fixture
def fake_runpod(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRunpod]:
    """A fake RunPod seeded with `default_runpod_gpu_types()`; pods run after 2 polls."""
    with FakeRunpod() as server:
        monkeypatch.setenv("GPURUN_RUNPOD_URL", server.base_url)
        monkeypatch.setenv("GPURUN_RUNPOD_GRAPHQL_URL", server.graphql_url)
        monkeypatch.setenv("RUNPOD_API_KEY", server.api_key)
        yield server


#: retries as the adapters do them, minus the waiting (Retry-After is still honoured)
FAST_RETRY = RetryPolicy(attempts=4, initial_wait=0.01, max_wait=0.05, max_seconds=30.0)


@pytest.fixture
async def vast_provider(fake_vast: FakeVast) -> AsyncIterator[VastProvider]:
    """The Vast adapter bound to `fake_vast`, with fast retries."""
    provider = VastProvider(fake_vast.api_key, base_url=fake_vast.base_url, retry=FAST_RETRY)
    yield provider
    await provider.aclose()


@pytest.fixture
async def runpod_provider(fake_runpod: FakeRunpod) -> AsyncIterator[RunpodProvider]:
    """The RunPod adapter bound to `fake_runpod`, with fast retries."""
    provider = RunpodProvider(
        fake_runpod.api_key, base_url=fake_runpod.base_url, graphql_url=fake_runpod.graphql_url, retry=FAST_RETRY
    )
    yield provider
    await provider.aclose()


@pytest.fixture(scope="session")
def fake_hub_server() -> Iterator[FakeHub]:
    """One fake Hugging Face hub for the session, holding the --base shortcuts' repos."""
    with FakeHub() as server:
        for repo, files in shortcut_repos().items():
            server.add_repo(repo, files)
        yield server


@pytest.fixture(autouse=True)
def fake_hub(fake_hub_server: FakeHub, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """Every test (and the gpurun it starts) asks the fake hub, never huggingface.co; repos a test adds are
    removed afterwards."""
    monkeypatch.setenv("HF_ENDPOINT", fake_hub_server.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    before = set(fake_hub_server.repos)
    yield fake_hub_server
    for repo in set(fake_hub_server.repos) - before:
        fake_hub_server.repos.pop(repo)
