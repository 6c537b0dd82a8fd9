"""Which providers exist, which are usable with the user's settings, and building an adapter by name.

Base URLs: `GPURUN_VAST_URL`, `GPURUN_RUNPOD_URL` (REST v2) and `GPURUN_RUNPOD_GRAPHQL_URL` win over the
settings file's `url`/`graphql_url`, which win over the vendors' defaults. API keys: `Settings.api_key`
(VAST_API_KEY / RUNPOD_API_KEY first, then the 0600 settings file).
"""

from __future__ import annotations

import os

import httpx

from gpurun.errors import AuthError, ConfigError
from gpurun.images import image_cuda
from gpurun.provision import runpod, vast
from gpurun.provision.base import Provider
from gpurun.provision.http import ApiKey, RetryPolicy
from gpurun.provision.local import LocalProvider
from gpurun.provision.ssh_hosts import SshHostsProvider
from gpurun.settings import Settings, load_settings, settings_path

PROVIDER_NAMES: tuple[str, ...] = ("vast", "runpod", "ssh", "local")
#: providers that need an API key (and the env var the official tools read it from)
KEY_ENV = {"vast": vast.KEY_ENV, "runpod": runpod.KEY_ENV}
URL_ENV = {"vast": "GPURUN_VAST_URL", "runpod": "GPURUN_RUNPOD_URL", "runpod_graphql": "GPURUN_RUNPOD_GRAPHQL_URL"}


#: the adapter class of each provider, for what is known without an account (images, boot hooks)
PROVIDER_CLASSES: dict[str, type[Provider]] = {
    "vast": vast.VastProvider,
    "runpod": runpod.RunpodProvider,
    "ssh": SshHostsProvider,
    "local": LocalProvider,
}


def image_for(name: str, image: str | None) -> str | None:
    """The image a run on `name` uses: the user's, else the provider's default; None where images do not apply."""
    cls = PROVIDER_CLASSES[name]
    return (image or cls.default_image) if cls.default_image is not None else None


def min_cuda_for(image: str | None) -> float | None:
    """The CUDA version a host's driver must support: the user's image's, else the highest any default image
    needs (so offers ranked are offers gpurun can rent as they stand). None when the image's tag does not say."""
    if image:
        return image_cuda(image)
    needs = [image_cuda(cls.default_image) for cls in PROVIDER_CLASSES.values() if cls.default_image]
    return max((n for n in needs if n is not None), default=None)


def no_key_reason(name: str) -> str:
    return f"no API key: set {KEY_ENV[name]} or run `gpurun providers set-key {name}`"


def _url(env: str, configured: str | None, default: str) -> str:
    return (os.environ.get(env) or configured or default).rstrip("/")


def base_urls(name: str, settings: Settings) -> dict[str, str]:
    """The API base URL(s) an adapter will use: {"api": ...} for Vast, {"rest": ..., "graphql": ...} for RunPod."""
    if name == "vast":
        return {"api": _url(URL_ENV["vast"], settings.vast.url, vast.DEFAULT_URL)}
    if name == "runpod":
        return {
            "rest": _url(URL_ENV["runpod"], settings.runpod.url, runpod.DEFAULT_REST_URL),
            "graphql": _url(URL_ENV["runpod_graphql"], settings.runpod.graphql_url, runpod.DEFAULT_GRAPHQL_URL),
        }
    return {}


def available_providers(settings: Settings | None = None) -> dict[str, str | None]:
    """name → None when usable, else why not (no key, no declared host). Makes no network call."""
    settings = settings if settings is not None else load_settings()
    status: dict[str, str | None] = {}
    for name in PROVIDER_NAMES:
        if name in KEY_ENV:
            status[name] = None if settings.api_key(name) else no_key_reason(name)
        elif name == "ssh":
            status[name] = None if settings.ssh_hosts else f"no ssh_hosts declared in {settings_path()}"
        else:
            status[name] = None
    return status


def make_provider(
    name: str,
    settings: Settings | None = None,
    *,
    client: httpx.AsyncClient | None = None,
    retry: RetryPolicy | None = None,
) -> Provider:
    """The adapter for `name`. AuthError when it needs a key the user has not given; ConfigError for an
    unknown name or a provider with nothing declared. `client` is shared, not closed by the adapter."""
    if name not in PROVIDER_NAMES:
        raise ConfigError(f"unknown provider {name!r}", hint=f"one of: {', '.join(PROVIDER_NAMES)}")
    settings = settings if settings is not None else load_settings()
    if name in KEY_ENV:
        key = settings.api_key(name)
        if not key:
            raise AuthError(no_key_reason(name), provider=name)
        urls = base_urls(name, settings)
        try:
            api_key = ApiKey(key)
        except ValueError as exc:
            source = settings.api_key_source(name)
            raise ConfigError(
                str(exc),
                where=str(settings_path()) if source == "file" else (source or name),
                hint=f"set {KEY_ENV[name]} again, or run `gpurun providers set-key {name}`",
            ) from None
        if name == "vast":
            return vast.VastProvider(api_key, base_url=urls["api"], client=client, retry=retry)
        return runpod.RunpodProvider(
            api_key, base_url=urls["rest"], graphql_url=urls["graphql"], client=client, retry=retry
        )
    if name == "ssh":
        if not settings.ssh_hosts:
            raise ConfigError(
                f"no ssh_hosts declared in {settings_path()}",
                hint="add a [[ssh_hosts]] table with name, host, gpu and price_per_hour",
            )
        return SshHostsProvider(settings.ssh_hosts)
    return LocalProvider()
