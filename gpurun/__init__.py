"""gpurun: train Stable Diffusion LoRAs on rented GPUs for a known total price, with nothing left billing.

The library API lives here; the `gpurun` command line is a thin layer over it. Importing gpurun is cheap:
the training stack (torch, diffusers) is only imported by `gpurun.runner`, on the GPU machine.
"""

from __future__ import annotations

__version__ = "0.1.0"

from gpurun.errors import (
    AuthError,
    BudgetError,
    CapacityError,
    ConfigError,
    DatasetError,
    GpurunError,
    ProviderError,
    RemoteError,
    RunnerError,
    UserError,
)
from gpurun.models import CostEstimate, GpuRequest, GpuSpec, Instance, InstanceState, Offer, Workload
from gpurun.trainconfig import TrainConfig

__all__ = [
    "AuthError",
    "BudgetError",
    "CapacityError",
    "ConfigError",
    "CostEstimate",
    "DatasetError",
    "GpuRequest",
    "GpuSpec",
    "GpurunError",
    "Instance",
    "InstanceState",
    "Offer",
    "ProviderError",
    "RemoteError",
    "RunnerError",
    "TrainConfig",
    "UserError",
    "Workload",
    "__version__",
]
