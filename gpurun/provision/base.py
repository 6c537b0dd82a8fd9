"""The provider contract every adapter implements, and the label gpurun puts on what it rents."""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

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
