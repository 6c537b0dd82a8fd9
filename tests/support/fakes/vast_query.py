"""Vast's search query language, server side: operators, virtual columns, aliases, pricing by allocated storage.

providers.md §1.2/§1.3/§1.12: a filter maps field → {op: value} with eq, neq, gt, gte, lt, lte, in, notin;
`verified`, `datacenter`, `geolocation` (two-letter country codes), `reliability2` and the aliases are
virtual; `allocated_storage` prices storage into dph_total and also filters disk_space; `type: "bid"`
prices on the minimum bid. Unknown fields are refused, so an adapter typo fails loudly.
"""

from __future__ import annotations

import copy
from typing import Any

CONTROL_KEYS = {"order", "type", "limit", "allocated_storage", "disable_bundling", "select_cols"}
ALIASES = {
    "reliability2": "reliability",
    "dphtotal": "dph_total",
    "dph": "dph_total",
    "cuda_vers": "cuda_max_good",
    "ubuntu_version": "os_version",
    "dlperf_usd": "dlperf_per_dphtotal",
    "flops_usd": "flops_per_dphtotal",
    "display_active": "gpu_display_active",
    "driver_vers": "driver_vers",
    "target_reliability": "expected_reliability",
}
#: both spellings of on-demand are accepted (SDK/CLI "on-demand", OpenAPI enum "ondemand")
PRICING_TYPES = {
    "on-demand": "on-demand",
    "ondemand": "on-demand",
    "bid": "bid",
    "interruptible": "bid",
    "reserved": "on-demand",
}
HOURS_PER_MONTH = 720.0
DEFAULT_ALLOCATED_STORAGE = 5.0


class QueryError(ValueError):
    """A malformed query; the server answers 400 invalid_args."""


def _compare(op: str, actual: Any, wanted: Any) -> bool:
    if op == "eq":
        return actual == wanted
    if op == "neq":
        return actual != wanted
    if op == "in":
        if not isinstance(wanted, list):
            raise QueryError(f"'in' needs a list, got {wanted!r}")
        return actual in wanted
    if op == "notin":
        if not isinstance(wanted, list):
            raise QueryError(f"'notin' needs a list, got {wanted!r}")
        return actual not in wanted
    if op in ("gt", "gte", "lt", "lte"):
        if actual is None or isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return False
        if isinstance(wanted, bool) or not isinstance(wanted, (int, float)):
            raise QueryError(f"'{op}' needs a number, got {wanted!r}")
        return {"gt": actual > wanted, "gte": actual >= wanted, "lt": actual < wanted, "lte": actual <= wanted}[op]
    raise QueryError(f"unknown operator {op!r}")


def _field_value(offer: dict[str, Any], name: str) -> Any:
    if name == "verified":
        if "verified" in offer:
            return offer["verified"]
        return offer.get("vericode") == 1 or offer.get("verification") == "verified"
    if name == "datacenter":
        return offer.get("hosting_type") == 1
    if name == "geolocation":
        # filters take two-letter country codes; offers carry "Region, CC"
        text = str(offer.get("geolocation") or "")
        return text[-2:] if len(text) >= 2 else text
    return offer.get(ALIASES.get(name, name))


def priced(offer: dict[str, Any], *, allocated_storage: float, pricing: str) -> dict[str, Any]:
    """A copy of `offer` with storage_total_cost / dph_total computed for this search."""
    view = copy.deepcopy(offer)
    base = float(view.get("dph_base") or 0.0)
    if pricing == "bid" and view.get("min_bid") is not None:
        base = float(view["min_bid"])
        view["is_bid"] = True
    storage = float(view.get("storage_cost") or 0.0) * allocated_storage / HOURS_PER_MONTH
    view["dph_base"] = base
    view["storage_total_cost"] = storage
    view["dph_total"] = base + storage
    view["dph_total_adj"] = view["discounted_dph_total"] = base + storage
    view["search"] = {
        "gpuCostPerHour": base,
        "diskHour": storage,
        "totalHour": base + storage,
        "discountTotalHour": 0,
        "discountedTotalPerHour": base + storage,
    }
    view["instance"] = {
        "gpuCostPerHour": 0,
        "diskHour": storage,
        "totalHour": storage,
        "discountTotalHour": 0,
        "discountedTotalPerHour": storage,
    }
    flops = view.get("total_flops")
    if isinstance(flops, (int, float)) and base + storage > 0:
        view["flops_per_dphtotal"] = flops / (base + storage)
    return view


def search(offers: list[dict[str, Any]], query: dict[str, Any]) -> list[dict[str, Any]]:
    """The offers matching `query`, priced, ordered and limited as Vast's /bundles/ would."""
    if not isinstance(query, dict):
        raise QueryError("the query must be a JSON object")
    pricing = PRICING_TYPES.get(str(query.get("type", "on-demand")))
    if pricing is None:
        raise QueryError(f"unknown type {query.get('type')!r}")
    allocated = query.get("allocated_storage", DEFAULT_ALLOCATED_STORAGE)
    if isinstance(allocated, bool) or not isinstance(allocated, (int, float)):
        raise QueryError(f"allocated_storage must be a number, got {allocated!r}")
    filters = {k: v for k, v in query.items() if k not in CONTROL_KEYS}
    computed = {"dph_total", "storage_total_cost", "dph_total_adj", "discounted_dph_total", "flops_per_dphtotal"}
    known = (
        {key for offer in offers for key in offer} | computed | set(ALIASES) | {"verified", "datacenter", "geolocation"}
    )
    for name, ops in filters.items():
        if name not in known:
            raise QueryError(f"unknown filter field {name!r}")
        if not isinstance(ops, dict) or not ops:
            raise QueryError(f"filter {name!r} must map operators to values")
    result = []
    for offer in offers:
        view = priced(offer, allocated_storage=float(allocated), pricing=pricing)
        if float(view.get("disk_space") or 0) < float(allocated):
            continue  # allocated_storage also acts as disk_space >= allocated
        if pricing == "bid" and view.get("min_bid") is None:
            continue
        if all(
            _compare(op, _field_value(view, name), wanted)
            for name, ops in filters.items()
            for op, wanted in ops.items()
        ):
            result.append(view)
    order = query.get("order", [["score", "desc"]])
    for column, direction in reversed(order if isinstance(order, list) else []):
        # stable multi-key sort, last key first; offers without the column go last either way
        present = [item for item in result if isinstance(_field_value(item, column), (int, float, str))]
        missing = [item for item in result if not isinstance(_field_value(item, column), (int, float, str))]
        present.sort(key=lambda item, c=column: _field_value(item, c), reverse=str(direction).lower() == "desc")
        result = present + missing
    limit = query.get("limit")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
        result = result[:limit]
    return result
