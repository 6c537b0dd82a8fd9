"""The provider contract every adapter implements, the facts each states about itself, and the label gpurun puts on
what it rents. Everything that differs between providers is answered here, by the provider: the core never
names one."""

from __future__ import annotations

import os
from typing import Any, ClassVar, Protocol, runtime_checkable

import httpx

from gpurun.errors import AuthError, ConfigError
from gpurun.models import GpuRequest, Instance, LaunchSpec, Offer
from gpurun.pricing.assumptions import BootProfile
from gpurun.provision.http import ApiKey, RetryPolicy
from gpurun.settings import Settings, settings_path

#: every instance gpurun creates carries a label starting with this, so leaks can be found by listing
LABEL_PREFIX = "gpurun-"


def run_label(run_id: str) -> str:
    """The provider-side label of a run's instance."""
    return f"{LABEL_PREFIX}{run_id}"


@runtime_checkable
class Provider(Protocol):
    """What the orchestrator needs from a GPU provider.

    Adapters never sleep or poll (the orchestrator does, with deadlines). Each takes an injectable
    `httpx.AsyncClient` and a base URL, and maps vendor errors into `gpurun.errors` at the boundary.
    """

    name: ClassVar[str]
    #: how its machines come up, for the cost model (start time, image pull, stack install, assumed bandwidth)
    boot_profile: ClassVar[BootProfile]
    #: gpurun rents machines here, bills run until they are destroyed, and a leaked one is a stray to look for;
    #: False for machines the user owns (declared SSH hosts, this machine), which are never destroyed
    rents_machines: ClassVar[bool]
    #: the machine is reached over SSH (False: it is this machine)
    over_ssh: ClassVar[bool]
    #: the environment variable holding the account's API key (None: no account)
    key_env: ClassVar[str | None]
    #: whether `LaunchSpec.boot_script` runs when the container starts, before any SSH (Vast's onstart, RunPod's
    #: start command); where it does not (SSH hosts, this machine), the client arms the watchdog over SSH
    runs_boot_script: ClassVar[bool]
    #: the container image rented when the user names none; None where there are no images
    default_image: ClassVar[str | None]

    @classmethod
    def from_settings(
        cls, settings: Settings, *, client: httpx.AsyncClient | None = None, retry: RetryPolicy | None = None
    ) -> Provider:
        """The adapter, configured from the settings file and environment. AuthError without a needed key,
        ConfigError when there is nothing to use (no declared host)."""
        ...

    @classmethod
    def endpoints(cls, settings: Settings) -> dict[str, str]:
        """Where it is reached, for `gpurun providers`: its API base URL(s), or its machines."""
        ...

    @classmethod
    def unusable_reason(cls, settings: Settings) -> str | None:
        """Why this provider cannot be used with these settings (no key, no declared host), or None. No I/O."""
        ...

    @staticmethod
    def check_image(image: str) -> None:
        """ConfigError when `image` cannot work on this provider (e.g. it would never start sshd)."""
        ...

    def self_destroy(self, instance: Instance | None) -> dict[str, Any]:
        """How the watchdog on the box ends this instance (its `destroy` config, which knows no provider): a recipe
        of the provider's own HTTP requests, {"kind": "http", "instance_id", "token", "check", "attempts"}, sent
        with an INSTANCE-SCOPED token (schema: the docstring of gpurun/templates/watchdog.py), or {"kind": "kill"}
        where nothing bills. With `instance` None (a boot config, written before the id is known) the id and the
        token come from the container's own environment ("instance_id_env", "token_env")."""
        ...

    async def forget_ssh_key(self, public_key: str) -> None:
        """Remove a run's SSH key from the account, where the adapter had to put it there (Vast)."""
        ...

    async def run_ssh_keys(self) -> list[str]:
        """The run keys gpurun left on the account (comment `gpurun-<run id>`), for `gpurun down --strays`."""
        ...

    async def check(self) -> str:
        """One cheap call that proves the credentials work; a line for `gpurun providers check`."""
        ...

    async def list_offers(self, req: GpuRequest) -> list[Offer]:
        """Offers that may satisfy `req`; may over-return (the core re-filters)."""
        ...

    async def create(self, offer: Offer, spec: LaunchSpec) -> Instance:
        """Rent exactly this offer. Returns at once; SSH may not be ready. CapacityError if it is gone."""
        ...

    async def get(self, instance_id: str) -> Instance:
        """The instance's state now. Never waits. NotFoundError if the provider does not know it."""
        ...

    async def terminate(self, instance_id: str) -> None:
        """Destroy (never stop) the instance. Idempotent: an unknown instance counts as success."""
        ...

    async def list_instances(self) -> list[Instance]:
        """Every gpurun-labelled instance on the account, for leak checks."""
        ...

    async def aclose(self) -> None:
        """Release the HTTP client if the adapter created it."""
        ...


def endpoint(provider: str, configured: str | None, default: str, *, kind: str = "URL") -> str:
    """An API base URL: `GPURUN_<PROVIDER>_<KIND>` wins over the settings file's value, which wins over the
    vendor's default (tests point the adapters at loopback fakes this way)."""
    return (os.environ.get(f"GPURUN_{provider.upper()}_{kind}") or configured or default).rstrip("/")


def no_key_reason(provider: str, key_env: str) -> str:
    return f"no API key: set {key_env} or run `gpurun providers set-key {provider}`"


def account_key(provider: str, key_env: str, settings: Settings) -> ApiKey:
    """The account's API key from the environment or the settings file. AuthError when there is none, ConfigError
    (naming where it came from) when it cannot be one."""
    key = settings.api_key(provider)
    if not key:
        raise AuthError(no_key_reason(provider, key_env), provider=provider)
    try:
        return ApiKey(key)
    except ValueError as exc:
        source = settings.api_key_source(provider)
        raise ConfigError(
            str(exc),
            where=str(settings_path()) if source == "file" else (source or provider),
            hint=f"set {key_env} again, or run `gpurun providers set-key {provider}`",
        ) from None
