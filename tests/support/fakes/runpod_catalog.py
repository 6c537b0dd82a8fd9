"""Realistic RunPod GPU types for the fake server: `runpod_gpu_type("NVIDIA GeForce RTX 4090", community_price=0.34)`.

Shapes follow providers.md §2.2.1: ids are RunPod's GPU type ids, prices are $/GPU/h, `memoryInGb` is per
GPU, stock is per cloud ("High"/"Medium"/"Low", or None for none at all).
"""

from __future__ import annotations

from typing import Any


def runpod_gpu_type(
    gpu_id: str = "NVIDIA GeForce RTX 4090",
    *,
    display_name: str | None = None,
    memory_gb: int = 24,
    community_price: float | None = 0.34,
    secure_price: float | None = 0.69,
    community_spot_price: float | None = 0.20,
    secure_spot_price: float | None = 0.50,
    max_gpu_count: int = 8,
    community_stock: str | None = "High",
    secure_stock: str | None = "Medium",
    country_code: str = "CA",
) -> dict[str, Any]:
    return {
        "id": gpu_id,
        "displayName": display_name or gpu_id.replace("NVIDIA ", "").replace("GeForce ", ""),
        "manufacturer": "Nvidia",
        "memoryInGb": memory_gb,
        "cudaCores": 0,
        "secureCloud": secure_price is not None,
        "communityCloud": community_price is not None,
        "securePrice": secure_price,
        "communityPrice": community_price,
        "secureSpotPrice": secure_spot_price,
        "communitySpotPrice": community_spot_price,
        "oneWeekPrice": None,
        "oneMonthPrice": None,
        "threeMonthPrice": None,
        "sixMonthPrice": None,
        "maxGpuCount": max_gpu_count,
        "maxGpuCountSecureCloud": max_gpu_count,
        "maxGpuCountCommunityCloud": max_gpu_count,
        "minPodGpuCount": 1,
        # not part of RunPod's schema: the fake's own stock and location, per cloud
        "_stock": {"COMMUNITY": community_stock, "SECURE": secure_stock},
        "_country": country_code,
    }


def default_runpod_gpu_types() -> list[dict[str, Any]]:
    return [
        runpod_gpu_type(
            "NVIDIA GeForce RTX 3090",
            memory_gb=24,
            community_price=0.22,
            secure_price=0.43,
            community_spot_price=0.11,
            secure_spot_price=0.22,
        ),
        runpod_gpu_type("NVIDIA GeForce RTX 4090"),
        runpod_gpu_type(
            "NVIDIA RTX A6000",
            memory_gb=48,
            community_price=0.33,
            secure_price=0.49,
            community_spot_price=0.25,
            secure_spot_price=0.39,
            country_code="US",
        ),
        runpod_gpu_type(
            "NVIDIA L40S",
            memory_gb=48,
            community_price=0.79,
            secure_price=0.86,
            community_spot_price=0.40,
            secure_spot_price=0.43,
            country_code="RO",
        ),
        runpod_gpu_type(
            "NVIDIA A100 80GB PCIe",
            display_name="A100 PCIe",
            memory_gb=80,
            community_price=1.19,
            secure_price=1.64,
            community_spot_price=0.60,
            secure_spot_price=0.82,
            max_gpu_count=8,
        ),
        runpod_gpu_type(
            "NVIDIA H100 80GB HBM3",
            display_name="H100 SXM",
            memory_gb=80,
            community_price=2.69,
            secure_price=2.99,
            community_spot_price=1.35,
            secure_spot_price=1.75,
            country_code="US",
        ),
        # listed, but no capacity anywhere: must not be offered
        runpod_gpu_type(
            "NVIDIA GeForce RTX 5090",
            memory_gb=32,
            community_price=0.69,
            secure_price=0.94,
            community_stock=None,
            secure_stock=None,
        ),
    ]
