"""What the cost model assumes about the world outside the offer: boot times, image and wheel sizes, the user's
own connection, hub speeds. Every figure is overridable (`dataclasses.replace(DEFAULT, ...)`).

Units: bytes, seconds, Mbit/s (megabits per second: what providers advertise and speed tests report).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BootProfile:
    """How a provider's machines come up."""

    #: seconds from create to SSH-ready, not counting the image pull
    seconds: float
    #: the machine starts a container from gpurun's image, which must be pulled first
    pulls_image: bool = True
    #: gpurun installs the training stack on the machine (bootstrap)
    installs_env: bool = True
    #: advertised-equivalent Mbit/s assumed for this provider's offers that state none (None: the global figure)
    bandwidth_mbps: float | None = None


@dataclass(frozen=True, slots=True)
class Assumptions:
    """Inputs of the cost model that no offer states."""

    #: per provider (each states its own: `Provider.boot_profile`; `gpurun.provision.registry.boot_profiles()`).
    #: The tutorial's 5–15 min / 2–5 min setups are mostly the image pull and the install, which are priced
    #: separately from the offer's own bandwidth.
    boot: Mapping[str, BootProfile] = field(default_factory=dict)
    #: providers not in `boot`
    default_boot: BootProfile = BootProfile(90.0)

    #: the stock PyTorch CUDA runtime image (pytorch/pytorch:*-cuda12.x-cudnn9-runtime) is ≈ 3.5 GB compressed
    image_bytes: float = 3.5e9
    #: layer extraction after the download (≈ 8 GB unpacked)
    image_unpack_seconds: float = 45.0
    image_disk_gb: float = 8.0
    #: the training stack on top of torch (diffusers, transformers, peft, accelerate, bitsandbytes, safetensors,
    #: tokenizers, hub client): ≈ 150 MB of wheels, ≈ 0.4 GB installed
    env_bytes: float = 150e6
    #: resolver, unpacking, bootstrap and watchdog start
    env_seconds: float = 60.0
    env_disk_gb: float = 1.0

    #: what one client pulls from Docker Hub, the Hugging Face hub and PyPI at best, Mbit/s
    registry_mbps: float = 1000.0
    hub_mbps: float = 1000.0
    pypi_mbps: float = 1000.0
    #: fraction of an offer's advertised (speed-test) bandwidth a real transfer reaches
    bandwidth_efficiency: float = 0.7
    #: offers that state no bandwidth (own hosts, this machine)
    unknown_bandwidth_mbps: float = 100.0
    #: the user's own connection, Mbit/s: home upload is usually the slowest link for the dataset
    user_uplink_mbps: float = 20.0
    user_downlink_mbps: float = 100.0
    #: SSH connect + rsync start, per transfer
    transfer_setup_seconds: float = 5.0

    #: runner start: imports, reading the base model from disk, moving it to the GPU (plus bytes / disk_read_mbs)
    model_load_seconds: float = 30.0
    disk_read_mbs: float = 1000.0
    #: the final sample grid (5 LoRA weights × 2 seeds × 1 prompt) at this many sampler steps
    sample_images: int = 10
    sample_steps: int = 20
    #: checkpoints pulled back during training (bandwidth only: they overlap training)
    checkpoint_every_epochs: int = 2
    #: verify the fetched files, destroy, confirm
    teardown_seconds: float = 15.0
    #: interruptible (spot) offers: mean hours until an interruption; each one costs a new machine's setup and
    #: half a checkpoint interval of training (the run resumes from the last pulled state)
    spot_mean_hours_to_interruption: float = 8.0
    #: fraction of VRAM a configuration may plan to use (fragmentation, bucket sizes, the sampler)
    vram_headroom: float = 0.85
    #: extra disk beyond what the job writes
    disk_slack_gb: float = 5.0
    #: the built-in tiny demo model on a CPU: samples/s measured with the runner on a 2-core machine (64 px)
    tiny_cpu_samples_per_s: float = 4.0
    tiny_cpu_setup_seconds: float = 20.0
    #: peak TFLOP/s assumed for a GPU that is neither in the table nor advertises a figure
    default_tflops: float = 20.0
    #: per-GPU achieved fraction of peak, overriding the built-in curve (settings.pricing.efficiency)
    efficiency: Mapping[str, float] = field(default_factory=dict)

    def boot_for(self, provider: str) -> BootProfile:
        return self.boot.get(provider, self.default_boot)


DEFAULT = Assumptions()
