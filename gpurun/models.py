"""Plain data shared by every layer: offers, instances, SSH endpoints, workloads and cost estimates.

These are frozen slotted dataclasses, not pydantic models: ranking builds tens of thousands of them per call,
and vendor payloads are parsed leniently by the adapters before they get here. User input is validated by
pydantic in `trainconfig.py` (and `settings.py`) instead.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Literal

ModelFamily = Literal["sd15", "sd2", "sdxl"]
MODEL_FAMILIES: tuple[ModelFamily, ...] = ("sd15", "sd2", "sdxl")

#: Native training resolution of each family, in pixels.
NATIVE_RESOLUTION: dict[str, int] = {"sd15": 512, "sd2": 768, "sdxl": 1024}
#: The smallest image side worth training on for each family (the tutorial's advice).
MIN_IMAGE_SIDE: dict[str, int] = {"sd15": 512, "sd2": 512, "sdxl": 1024}


def to_dict(obj: Any) -> Any:
    """JSON-ready form of a models dataclass (enums become their values)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """What an offer's GPUs are: model name as the provider spells it, count, VRAM per GPU."""

    name: str
    count: int = 1
    vram_gb: float = 0.0
    #: dense fp16/bf16 TFLOP/s per GPU as the provider advertises it (Vast `total_flops`/num_gpus), if any
    tflops: float | None = None
    #: CUDA compute capability, e.g. 8.9, if known
    compute_capability: float | None = None


@dataclass(frozen=True, slots=True)
class GpuRequest:
    """What the job needs from an offer. Adapters may over-return; `pricing.rank` re-filters."""

    gpu_names: tuple[str, ...] = ()
    num_gpus: int = 1
    min_vram_gb: float = 0.0
    max_price_per_hour: float | None = None
    spot: bool = False
    min_reliability: float = 0.0
    min_disk_gb: float = 0.0
    min_inet_down_mbps: float = 0.0
    min_cuda: float | None = None
    verified_only: bool = True
    limit: int = 200


@dataclass(frozen=True, slots=True)
class Offer:
    """One rentable machine configuration at a price, as quoted by one provider."""

    provider: str
    offer_id: str
    gpu: GpuSpec
    #: $/h for the whole offer (all GPUs) on the requested pricing basis, storage for `disk_gb` included
    price_per_hour: float
    spot: bool = False
    #: for interruptible offers: the current minimum bid in $/h for the whole offer
    min_bid: float | None = None
    #: probability the host completes a job without failing (0..1); 1.0 when the provider does not say
    reliability: float = 1.0
    location: str = ""
    inet_down_mbps: float | None = None
    inet_up_mbps: float | None = None
    disk_gb: float | None = None
    #: $/GB-month for disk, when the provider bills it separately from `price_per_hour`
    storage_per_gb_month: float = 0.0
    #: $/GB transferred, when the provider charges for bandwidth
    download_per_gb: float = 0.0
    upload_per_gb: float = 0.0
    cpu_cores: float | None = None
    ram_gb: float | None = None
    cuda_version: float | None = None
    verified: bool = True
    #: whether SSH reaches the machine directly (not through a proxy that cannot carry rsync)
    direct_ssh: bool = True
    #: the provider's own vendor payload, for --explain and debugging; never used for decisions in the core
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> str:
        """Globally unique id: `provider:offer_id`."""
        return f"{self.provider}:{self.offer_id}"


class InstanceState(str, enum.Enum):
    """Lifecycle of a rented instance, normalised across providers."""

    PENDING = "pending"  # created, not yet running (scheduling, pulling the image)
    RUNNING = "running"
    STOPPED = "stopped"  # stopped but still billing storage; gpurun never stops, only destroys
    EXITED = "exited"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    UNKNOWN = "unknown"

    @property
    def is_alive(self) -> bool:
        """True unless the provider confirmed the instance is gone. Unknown counts as alive."""
        return self is not InstanceState.TERMINATED


@dataclass(frozen=True, slots=True)
class SshEndpoint:
    host: str
    port: int = 22
    user: str = "root"
    #: private key to log in with when it is not the run's own key (a user-declared SSH host's `key`)
    identity_file: str | None = None

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Instance:
    """A rented (or declared) machine as the provider reports it right now."""

    provider: str
    instance_id: str
    state: InstanceState
    offer_id: str | None = None
    #: what the provider says it bills, $/h; None when it has not said yet
    price_per_hour: float | None = None
    ssh: SshEndpoint | None = None
    label: str | None = None
    gpu: GpuSpec | None = None
    created_at: float | None = None
    #: where gpurun may write on this machine (e.g. /workspace); None = the SSH user's home
    workdir: str | None = None
    #: instance-scoped credential for the watchdog (Vast instance key, RunPod pod key); never the master key
    self_destroy_token: str | None = field(default=None, repr=False)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """How to start an instance from an offer."""

    image: str
    disk_gb: float
    label: str
    ssh_public_key: str
    env: dict[str, str] = field(default_factory=dict)
    onstart: str | None = None
    #: refuse to rent above this $/h (for the whole offer); providers enforce it where they can
    price_cap: float | None = None
    #: for interruptible offers: the bid in $/h for the whole offer
    bid_price: float | None = None
    #: shell lines the provider runs when the container starts, before any SSH (arms the watchdog); providers
    #: without such a hook ignore it (`Provider.runs_boot_script`)
    boot_script: str | None = None
    #: the CUDA version the image needs (major.minor); hosts whose driver is older are not acceptable
    min_cuda: float | None = None


@dataclass(frozen=True, slots=True)
class Workload:
    """What the training job will do, enough to estimate its time and cost on any GPU."""

    family: ModelFamily = "sd15"
    resolution: int = 512
    images: int = 20
    repeats: int = 10
    epochs: int = 10
    batch_size: int | None = None  # None = pick per GPU
    gradient_checkpointing: bool = False
    train_text_encoder: bool = True
    network_dim: int = 32
    #: kohya's LoCon rank (conv_dim in network_args); 0 = plain LoRA
    conv_dim: int = 0
    dataset_bytes: int = 20 * 2**20
    #: size of the base model download in bytes (SD 1.5 pruned ≈ 4.3 GB, SDXL ≈ 6.9 GB)
    base_model_bytes: int = 4_265_000_000
    cache_latents: bool = True
    #: the built-in tiny demo model (`--base tiny-sd`): trains on a CPU in seconds, downloads nothing
    tiny: bool = False
    #: images the sample grids render, and the sampler's steps (None = the cost model's defaults)
    sample_images: int | None = None
    sample_steps: int | None = None

    @property
    def samples(self) -> int:
        """Image passes over the whole run: images × repeats × epochs."""
        return self.images * self.repeats * self.epochs


@dataclass(frozen=True, slots=True)
class PhaseEstimate:
    name: str
    seconds: float
    dollars: float
    note: str = ""


@dataclass(frozen=True, slots=True)
class CostEstimate:
    """The estimated time and money for one workload on one offer."""

    offer: Offer
    phases: tuple[PhaseEstimate, ...]
    batch_size: int
    feasible: bool
    #: wall-clock seconds over all phases
    seconds: float
    #: $ if nothing goes wrong: compute + storage + bandwidth
    dollars: float
    #: $ expected once host failures are priced in (dollars / reliability)
    expected_dollars: float
    reasons: tuple[str, ...] = ()
