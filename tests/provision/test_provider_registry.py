"""The registry: which providers are usable and why not, keys from env or file, base-URL overrides."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from gpurun.errors import AuthError, ConfigError
from gpurun.provision.base import Provider
from gpurun.provision.local import LocalProvider
from gpurun.provision.registry import PROVIDER_NAMES, available_providers, base_urls, make_provider
from gpurun.provision.runpod import RunpodProvider
from gpurun.provision.ssh_hosts import SshHostsProvider
from gpurun.provision.vast import VastProvider
from gpurun.settings import ProviderSettings, Settings, SshHostSettings, settings_path


def test_nothing_configured() -> None:
    status = available_providers(Settings())
    assert list(status) == list(PROVIDER_NAMES) == ["vast", "runpod", "ssh", "local"]
    assert status["vast"] == "no API key: set VAST_API_KEY or run `gpurun providers set-key vast`"
    assert status["runpod"] == "no API key: set RUNPOD_API_KEY or run `gpurun providers set-key runpod`"
    assert status["ssh"] == f"no ssh_hosts declared in {settings_path()}"
    assert status["local"] is None


def test_keys_from_env_or_file(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(providers={"runpod": ProviderSettings(api_key=SecretStr("from-file"))})
    monkeypatch.setenv("VAST_API_KEY", "from-env")
    status = available_providers(settings)
    assert status["vast"] is None and status["runpod"] is None
    assert settings.api_key_source("vast") == "VAST_API_KEY" and settings.api_key_source("runpod") == "file"
    monkeypatch.setenv("RUNPOD_API_KEY", "env-wins")
    assert settings.api_key("runpod") == "env-wins" and settings.api_key_source("runpod") == "RUNPOD_API_KEY"


async def test_make_provider_builds_each_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        vast=ProviderSettings(api_key=SecretStr("v" * 20), url="https://vast.example/"),
        runpod=ProviderSettings(api_key=SecretStr("r" * 20), graphql_url="https://gql.example/graphql"),
        ssh_hosts=[SshHostSettings(name="box", host="10.0.0.2")],
    )
    vast = make_provider("vast", settings)
    assert isinstance(vast, VastProvider) and vast.base_url == "https://vast.example"
    runpod = make_provider("runpod", settings)
    assert isinstance(runpod, RunpodProvider)
    assert (runpod.base_url, runpod.graphql_url) == ("https://api.runpod.io/v2", "https://gql.example/graphql")
    assert isinstance(make_provider("ssh", settings), SshHostsProvider)
    assert isinstance(make_provider("local", settings), LocalProvider)
    for provider in (vast, runpod):
        assert isinstance(provider, Provider)
        assert "v" * 20 not in repr(provider) and "r" * 20 not in repr(provider)
        await provider.aclose()
    monkeypatch.setenv("GPURUN_VAST_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("GPURUN_RUNPOD_URL", "http://127.0.0.1:9/v2")
    monkeypatch.setenv("GPURUN_RUNPOD_GRAPHQL_URL", "http://127.0.0.1:9/graphql")
    assert base_urls("vast", settings) == {"api": "http://127.0.0.1:9"}
    assert base_urls("runpod", settings) == {"rest": "http://127.0.0.1:9/v2", "graphql": "http://127.0.0.1:9/graphql"}


def test_unusable_providers_say_why() -> None:
    with pytest.raises(AuthError, match="set VAST_API_KEY or run `gpurun providers set-key vast`"):
        make_provider("vast", Settings())
    with pytest.raises(ConfigError, match="no ssh_hosts declared"):
        make_provider("ssh", Settings())
    with pytest.raises(ConfigError, match="unknown provider 'aws'"):
        make_provider("aws", Settings())


def test_settings_file_round_trip_keeps_everything(tmp_path) -> None:
    from gpurun.settings import load_settings, save_settings

    path = tmp_path / "config.toml"
    original = Settings(
        vast=ProviderSettings(api_key=SecretStr('we"ird\\key')),
        runpod=ProviderSettings(url="http://127.0.0.1:1/v2"),
        ssh_hosts=[SshHostSettings(name="a", host="h", port=2222, gpu="RTX 3090", vram_gb=24, price_per_hour=0.2)],
    )
    save_settings(original, path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_settings(path) == original
