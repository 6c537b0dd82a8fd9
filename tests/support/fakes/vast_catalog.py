"""Realistic Vast.ai offers for the fake server: `vast_offer("RTX 4090", dph_base=0.28, inet_down=150)`.

Field names, units and magnitudes follow providers.md §1.3 (gpu_ram and cpu_ram in MB, disk in GB, inet in
Mb/s, inet_*_cost in $/GB, storage_cost in $/GB-month, dph_base in $/h for the whole offer, total_flops in
TFLOPS for all GPUs). Derived fields (totals, reliability2, the country code hash) follow the overrides.
"""

from __future__ import annotations

import itertools
import zlib
from typing import Any

#: per-GPU facts: VRAM MB, TFLOPS, compute capability ×100, on-demand $/h per GPU, minimum bid per GPU
GPU_MODELS: dict[str, dict[str, Any]] = {
    "RTX 3090": {"gpu_ram": 24576, "flops": 35.6, "compute_cap": 860, "price": 0.16, "bid": 0.09, "bw": 936.2},
    "RTX 4090": {"gpu_ram": 24564, "flops": 82.6, "compute_cap": 890, "price": 0.30, "bid": 0.18, "bw": 1008.0},
    "RTX A6000": {"gpu_ram": 49140, "flops": 38.7, "compute_cap": 860, "price": 0.45, "bid": 0.25, "bw": 768.0},
    "A100 SXM4": {"gpu_ram": 81920, "flops": 19.5, "compute_cap": 800, "price": 0.85, "bid": 0.55, "bw": 2039.0},
    "H100 SXM": {"gpu_ram": 81559, "flops": 66.9, "compute_cap": 900, "price": 1.90, "bid": 1.20, "bw": 3352.0},
}

_ids = itertools.count(18_492_733)


def vast_offer(gpu: str = "RTX 4090", *, num_gpus: int = 1, **overrides: Any) -> dict[str, Any]:
    """One /bundles/ offer payload. `dph_base` and `min_bid` are for the whole offer (all GPUs)."""
    model = GPU_MODELS.get(gpu, GPU_MODELS["RTX 4090"])
    offer_id = overrides.pop("id", None) or next(_ids)
    reliability = overrides.pop("reliability", 0.9934)
    geolocation = overrides.pop("geolocation", "Ontario, CA")
    verified = overrides.pop("verified", True)
    offer: dict[str, Any] = {
        "id": offer_id,
        "ask_contract_id": offer_id,
        "bundle_id": offer_id * 7 % 2_000_000_000,
        "bundled_results": None,
        "machine_id": 30_000 + offer_id % 9_000,
        "host_id": 98_000 + offer_id % 700,
        "num_gpus": num_gpus,
        "gpu_name": gpu,
        "gpu_arch": "nvidia",
        "gpu_ram": model["gpu_ram"],
        "gpu_total_ram": model["gpu_ram"] * num_gpus,
        "gpu_frac": 1.0,
        "gpu_lanes": 16,
        "gpu_mem_bw": model["bw"],
        "compute_cap": model["compute_cap"],
        "cuda_max_good": 12.8,
        "driver_version": "570.133.07",
        "driver_vers": 570_133_007,
        "cpu_name": "AMD EPYC 7543 32-Core Processor",
        "cpu_arch": "amd64",
        "cpu_cores": 64,
        "cpu_cores_effective": 16.0 * num_gpus,
        "cpu_ghz": 3.7,
        "cpu_ram": 64_301 * num_gpus,
        "disk_space": 512.4,
        "disk_bw": 2545.3,
        "disk_name": "Samsung SSD 980 PRO 2TB",
        "inet_up": 812.4,
        "inet_down": 905.1,
        "inet_up_cost": 0.00390625,
        "inet_down_cost": 0.00390625,
        "direct_port_count": 499,
        "public_ipaddr": "203.0.113.57",
        "static_ip": True,
        "dph_base": round(model["price"] * num_gpus, 4),
        "storage_cost": 0.15,
        "min_bid": round(model["bid"] * num_gpus, 4),
        "is_bid": False,
        "credit_discount_max": 0.4,
        "reliability_mult": 0.9657,
        "expected_reliability": 0,
        "dlperf": round(model["flops"] * num_gpus * 1.14, 1),
        "total_flops": round(model["flops"] * num_gpus, 1),
        "score": 310.2,
        "duration": 2_851_200.0,
        "start_date": None,
        "end_date": 1_790_000_000.0,
        "verification": "verified" if verified else "unverified",
        "vericode": 1 if verified else 0,
        "rentable": True,
        "rented": False,
        "external": False,
        "hosting_type": 0,
        "hostname": None,
        "pci_gen": 4.0,
        "pcie_bw": 24.3,
        "mobo_name": "ROMED8-2T",
        "os_version": "22.04",
        "has_avx": 1,
        "gpu_max_power": 450,
        "gpu_max_temp": 83,
        "gpu_display_active": False,
        "bw_nvlink": 0.0,
        "vms_enabled": False,
        "resource_type": "gpu",
        "cluster_id": None,
        "gpu_ids": [82_267 + i for i in range(num_gpus)],
        "time_remaining": "",
        "time_remaining_isbid": "",
    }
    offer.update(overrides)
    offer["verified"] = verified
    offer["reliability"] = offer["reliability2"] = reliability
    offer["geolocation"] = geolocation
    offer["geolocode"] = zlib.crc32(geolocation.encode()) % 1_000_000_000
    offer["internet_up_cost_per_tb"] = offer["inet_up_cost"] * 1024
    offer["internet_down_cost_per_tb"] = offer["inet_down_cost"] * 1024
    return offer


def default_vast_offers() -> list[dict[str, Any]]:
    """A small, varied marketplace: cheap-but-flaky hosts, fast datacenter hosts, multi-GPU, unverified, no ports."""
    return [
        vast_offer("RTX 4090"),
        vast_offer("RTX 4090", dph_base=0.26, reliability=0.90, inet_down=95.0, geolocation="Hanoi, VN"),
        vast_offer(
            "RTX 4090", dph_base=0.35, reliability=0.998, inet_down=2400.0, hosting_type=1, geolocation="Texas, US"
        ),
        vast_offer("RTX 3090", geolocation="Bavaria, DE"),
        vast_offer("RTX 3090", dph_base=0.12, verified=False, reliability=0.81, geolocation="Sichuan, CN"),
        vast_offer("RTX 3090", direct_port_count=0, geolocation="Quebec, CA"),
        vast_offer("A100 SXM4", hosting_type=1, geolocation="Oregon, US", inet_down=4100.0),
        vast_offer("H100 SXM", hosting_type=1, geolocation="Virginia, US", inet_down=8900.0),
        vast_offer("RTX 4090", num_gpus=2, geolocation="Utah, US"),
        # the cheapest of all, on a driver too old for a CUDA 12.8 image: it must never be rented with one
        vast_offer("RTX 4090", dph_base=0.2, cuda_max_good=12.2, driver_version="535.183.01", geolocation="Lisbon, PT"),
    ]
