"""The provider contract every adapter implements, and the label gpurun puts on what it rents."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

from gpurun.models import GpuRequest, Instance, LaunchSpec, Offer

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
    #: whether `LaunchSpec.boot_script` runs when the container starts, before any SSH (Vast's onstart, RunPod's
    #: start command); where it does not (SSH hosts, this machine), the client arms the watchdog over SSH
    runs_boot_script: ClassVar[bool]
    #: the container image rented when the user names none; None where there are no images
    default_image: ClassVar[str | None]

    @staticmethod
    def check_image(image: str) -> None:
        """ConfigError when `image` cannot work on this provider (e.g. it would never start sshd)."""
        ...

    def self_destroy(self, instance: Instance | None) -> dict[str, Any]:
        """How the watchdog on the box ends this instance (its `destroy` config): the provider's DELETE with an
        INSTANCE-SCOPED token, or {"kind": "kill"} where nothing bills. With `instance` None (a boot config,
        written before the id is known) the id and the token come from the container's own environment."""
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
