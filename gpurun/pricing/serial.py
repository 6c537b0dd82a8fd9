"""The one JSON form of a cost estimate: what `offers --json`, the plan, the journal, run.json and the receipt
carry. `estimate_from_dict` reads it back into the types (the offer's vendor payload does not travel)."""

from __future__ import annotations

from typing import Any

from gpurun.models import CostEstimate, GpuSpec, Offer, PhaseEstimate


def gpu_dict(offer: Offer) -> dict[str, Any]:
    return {"name": offer.gpu.name, "count": offer.gpu.count, "vram_gb": offer.gpu.vram_gb}


def estimate_to_dict(estimate: CostEstimate) -> dict[str, Any]:
    """{"key", "provider", "offer_id", "gpu": {"name", "count", "vram_gb"}, "price_per_hour", "spot",
    "reliability", "location", "inet_down_mbps", "inet_up_mbps", "disk_gb", "batch_size", "feasible", "reasons",
    "seconds", "dollars", "expected_dollars", "phases": [{"name", "seconds", "dollars", "note"}]}"""
    offer = estimate.offer
    return {
        "key": offer.key,
        "provider": offer.provider,
        "offer_id": offer.offer_id,
        "gpu": gpu_dict(offer),
        "price_per_hour": offer.price_per_hour,
        "spot": offer.spot,
        "reliability": offer.reliability,
        "location": offer.location,
        "inet_down_mbps": offer.inet_down_mbps,
        "inet_up_mbps": offer.inet_up_mbps,
        "disk_gb": offer.disk_gb,
        "batch_size": estimate.batch_size,
        "feasible": estimate.feasible,
        "reasons": list(estimate.reasons),
        "seconds": estimate.seconds,
        "dollars": estimate.dollars,
        "expected_dollars": estimate.expected_dollars,
        "phases": [
            {"name": p.name, "seconds": p.seconds, "dollars": p.dollars, "note": p.note} for p in estimate.phases
        ],
    }


def _number(data: dict[str, Any], key: str, default: float = 0.0) -> float:
    value = data.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _optional(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def estimate_from_dict(data: dict[str, Any]) -> CostEstimate:
    """The estimate `estimate_to_dict` wrote (ValueError when it is not one)."""
    if not isinstance(data, dict) or not data.get("provider") or data.get("offer_id") is None:
        raise ValueError("not a saved cost estimate")
    found = data.get("gpu")
    gpu: dict[str, Any] = found if isinstance(found, dict) else {}
    offer = Offer(
        provider=str(data["provider"]),
        offer_id=str(data["offer_id"]),
        gpu=GpuSpec(name=str(gpu.get("name", "?")), count=int(gpu.get("count") or 1), vram_gb=_number(gpu, "vram_gb")),
        price_per_hour=_number(data, "price_per_hour"),
        spot=bool(data.get("spot", False)),
        reliability=_number(data, "reliability", 1.0),
        location=str(data.get("location") or ""),
        inet_down_mbps=_optional(data, "inet_down_mbps"),
        inet_up_mbps=_optional(data, "inet_up_mbps"),
        disk_gb=_optional(data, "disk_gb"),
    )
    phases = tuple(
        PhaseEstimate(str(p.get("name", "")), _number(p, "seconds"), _number(p, "dollars"), str(p.get("note", "")))
        for p in data.get("phases") or []
        if isinstance(p, dict)
    )
    return CostEstimate(
        offer=offer,
        phases=phases,
        batch_size=int(data.get("batch_size") or 1),
        feasible=bool(data.get("feasible", True)),
        seconds=_number(data, "seconds"),
        dollars=_number(data, "dollars"),
        expected_dollars=_number(data, "expected_dollars"),
        reasons=tuple(str(r) for r in data.get("reasons") or ()),
    )
