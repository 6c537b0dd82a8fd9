"""Which providers exist, which are usable with the user's settings, and building an adapter by name.

Adding a provider is one adapter module (the `Provider` contract in base.py, its facts as class attributes,
`from_settings`), one line in `PROVIDERS` below, and one loopback fake in the tests. Base URLs:
`GPURUN_<PROVIDER>_URL` wins over the settings file's `url`, which wins over the vendor's default; API keys come
from `<PROVIDER>_API_KEY` first, then the 0600 settings file.
"""

from __future__ import annotations

import httpx

from gpurun.errors import ConfigError
from gpurun.pricing.assumptions import BootProfile
from gpurun.provision.base import Provider
from gpurun.provision.http import RetryPolicy
from gpurun.provision.images import image_cuda
from gpurun.provision.local import LocalProvider
from gpurun.provision.runpod import RunpodProvider
from gpurun.provision.ssh_hosts import SshHostsProvider
from gpurun.provision.vast import VastProvider
from gpurun.settings import Settings, load_settings, settings_path

#: every provider, in the order offers are asked for and listed
PROVIDERS: dict[str, type[Provider]] = {
    VastProvider.name: VastProvider,
    RunpodProvider.name: RunpodProvider,
    SshHostsProvider.name: SshHostsProvider,
    LocalProvider.name: LocalProvider,
}
PROVIDER_NAMES: tuple[str, ...] = tuple(PROVIDERS)
#: providers that need an API key, and the env var it is read from
KEY_ENV: dict[str, str] = {name: cls.key_env for name, cls in PROVIDERS.items() if cls.key_env}


def provider_class(name: str) -> type[Provider]:
    """The adapter class of `name` (what is known without an account: images, boot profile, facts)."""
    try:
        return PROVIDERS[name]
    except KeyError:
        raise ConfigError(f"unknown provider {name!r}", hint=f"one of: {', '.join(PROVIDER_NAMES)}") from None


def renting_providers() -> tuple[str, ...]:
    """Providers whose machines gpurun rents (and where strays and left-over keys are looked for)."""
    return tuple(name for name, cls in PROVIDERS.items() if cls.rents_machines)


def boot_profiles() -> dict[str, BootProfile]:
    """How each provider's machines come up, for the cost model."""
    return {name: cls.boot_profile for name, cls in PROVIDERS.items()}


def image_for(name: str, image: str | None) -> str | None:
    """The image a run on `name` uses: the user's, else the provider's default; None where images do not apply."""
    cls = provider_class(name)
    return (image or cls.default_image) if cls.default_image is not None else None


def min_cuda_for(image: str | None) -> float | None:
    """The CUDA version a host's driver must support: the user's image's, else the highest any default image
    needs (so offers ranked are offers gpurun can rent as they stand). None when the image's tag does not say."""
    if image:
        return image_cuda(image)
    needs = [image_cuda(cls.default_image) for cls in PROVIDERS.values() if cls.default_image]
    return max((n for n in needs if n is not None), default=None)


def base_urls(name: str, settings: Settings) -> dict[str, str]:
    """Where `name` is reached with these settings (its API base URLs, or its machines)."""
    return provider_class(name).endpoints(settings)


def check_settings(settings: Settings) -> None:
    """The settings file names only providers that exist (a typo like `[vsat]` would silently be ignored)."""
    for name in settings.providers:
        if name not in PROVIDERS:
            raise ConfigError(
                f"no provider is called {name!r}",
                where=f"{settings_path()}: [{name}]",
                hint=f"provider tables: {', '.join(f'[{n}]' for n in KEY_ENV)}",
            )


def available_providers(settings: Settings | None = None) -> dict[str, str | None]:
    """name → None when usable, else why not (no key, no declared host). Makes no network call."""
    settings = settings if settings is not None else load_settings()
    check_settings(settings)
    return {name: cls.unusable_reason(settings) for name, cls in PROVIDERS.items()}


def make_provider(
    name: str,
    settings: Settings | None = None,
    *,
    client: httpx.AsyncClient | None = None,
    retry: RetryPolicy | None = None,
) -> Provider:
    """The adapter for `name`. AuthError when it needs a key the user has not given; ConfigError for an
    unknown name or a provider with nothing declared. `client` is shared, not closed by the adapter."""
    cls = provider_class(name)
    settings = settings if settings is not None else load_settings()
    check_settings(settings)
    return cls.from_settings(settings, client=client, retry=retry)
