"""The last check on a vendor's offer: numbers no real machine has are bad data, not a bargain or a supercomputer.

The adapters parse leniently (a missing field is not an error); this is where what they parsed is held against
reality. A price no GPU costs, a GPU count no host has, or VRAM no card holds drops the offer: ranking would pick
it, or never, for a reason that is not true. Telemetry that is merely absurd (a 10^30 Mbit/s link) becomes
unknown, so the estimate falls back to its defaults instead of believing the host.
"""

from __future__ import annotations

import math
from dataclasses import replace

from gpurun.models import GpuSpec, Offer

#: $/h per GPU above which an offer is bad data: an H200 on demand costs about $4/h, the priciest cloud list
#: prices stay under $15/h per GPU
MAX_PRICE_PER_GPU_HOUR = 50.0
#: the most GPUs one machine of any provider offers (HGX boards hold 8; a few hosts list 10 or 16)
MAX_GPUS = 16
#: GB of memory per GPU beyond any card (the largest hold 192)
MAX_VRAM_GB = 1024.0
#: Mbit/s beyond any host's network link
MAX_LINK_MBPS = 1_000_000.0
#: $/GB (transfer) or $/GB-month (disk) beyond any real tariff
MAX_PER_GB = 10.0


def _finite_in(value: float | None, low: float, high: float) -> bool:
    return value is not None and math.isfinite(value) and low <= value <= high


def _telemetry(value: float | None, high: float) -> float | None:
    """A host's self-reported figure, or None (unknown) when it is not one a real machine reports."""
    return value if _finite_in(value, 0.0, high) else None


def checked_offer(offer: Offer) -> Offer | None:
    """`offer` with absurd telemetry made unknown, or None when its price or hardware is not believable."""
    gpu = offer.gpu
    if not (1 <= gpu.count <= MAX_GPUS) or not _finite_in(gpu.vram_gb, 0.0, MAX_VRAM_GB):
        return None
    if not _finite_in(offer.price_per_hour, 1e-6, MAX_PRICE_PER_GPU_HOUR * gpu.count):
        return None
    if offer.min_bid is not None and not _finite_in(offer.min_bid, 0.0, MAX_PRICE_PER_GPU_HOUR * gpu.count):
        return None
    for charge in (offer.storage_per_gb_month, offer.download_per_gb, offer.upload_per_gb):
        if not _finite_in(charge, 0.0, MAX_PER_GB):
            return None
    return replace(
        offer,
        gpu=GpuSpec(
            name=gpu.name,
            count=gpu.count,
            vram_gb=gpu.vram_gb,
            tflops=_telemetry(gpu.tflops, 10_000.0),
            compute_capability=_telemetry(gpu.compute_capability, 20.0),
        ),
        reliability=offer.reliability if _finite_in(offer.reliability, 0.0, 1.0) else 0.0,
        inet_down_mbps=_telemetry(offer.inet_down_mbps, MAX_LINK_MBPS),
        inet_up_mbps=_telemetry(offer.inet_up_mbps, MAX_LINK_MBPS),
        cpu_cores=_telemetry(offer.cpu_cores, 4096.0),
        ram_gb=_telemetry(offer.ram_gb, 65_536.0),
        cuda_version=_telemetry(offer.cuda_version, 100.0),
    )
