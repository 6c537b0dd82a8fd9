"""Asking the providers for live offers and ranking them by expected total cost for one workload: what
`gpurun offers` shows, and the first half of planning a run.

Every usable provider is asked concurrently; a provider that fails is reported in `errors` and the others still
count. Only when no provider could be asked at all does it raise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from gpurun.errors import ConfigError, GpurunError, ProviderError
from gpurun.models import CostEstimate, GpuRequest, Offer, Workload, to_dict
from gpurun.pricing import (
    DEFAULT,
    SORT_MODES,
    Assumptions,
    BootProfile,
    Calibration,
    CostModel,
    Ranking,
    SortMode,
    rank,
)
from gpurun.pricing.gpus import provider_spellings
from gpurun.pricing.serial import estimate_to_dict, gpu_dict
from gpurun.provision.http import RetryPolicy
from gpurun.provision.registry import PROVIDER_NAMES, available_providers, boot_profiles, make_provider
from gpurun.settings import Settings, load_settings

#: version of the `gpurun offers --json` document (see `OffersResult.to_dict`)
OFFERS_DOC_VERSION = 1
#: a provider that has not answered within this many seconds is reported as failed
PROVIDER_TIMEOUT_S = 90.0

#: `on_progress(provider, event, detail)`: event is "start", "done" (detail "N offers") or "failed" (the error)
Progress = Callable[[str, str, str], None]


@dataclass(frozen=True, slots=True)
class ProviderFailure:
    """A provider that could not be asked: its error class and the one line the CLI prints."""

    provider: str
    error: str
    message: str


@dataclass(frozen=True, slots=True)
class OffersResult:
    """Live offers ranked for one workload, and what happened asking each provider."""

    workload: Workload
    ranking: Ranking
    assumptions: Assumptions
    #: the user's requirements, as the ranking applied them
    requirements: GpuRequest
    #: providers asked, in order; offers each returned; failures; providers not asked and why
    queried: tuple[str, ...]
    offer_counts: Mapping[str, int]
    errors: Mapping[str, ProviderFailure]
    skipped: Mapping[str, str]
    #: every offer the providers returned (ranked or not), for `explain`
    offers: tuple[Offer, ...]
    calibration: Calibration | None = None

    def find(self, ref: str) -> Offer:
        """The offer named `ref`: "provider:id", or a bare id when only one provider has it."""
        exact = [o for o in self.offers if o.key == ref]
        if exact:
            return exact[0]
        by_id = [o for o in self.offers if o.offer_id == ref]
        if len(by_id) == 1:
            return by_id[0]
        if by_id:
            keys = ", ".join(o.key for o in by_id)
            raise ConfigError(f"offer id {ref!r} is ambiguous", where="--explain", hint=f"use one of {keys}")
        raise ConfigError(
            f"no offer {ref!r} among the {len(self.offers)} offers returned",
            where="--explain",
            hint="use an id from the OFFER column (provider:id); offers change from minute to minute",
        )

    def explain(self, ref: str) -> tuple[CostEstimate, tuple[str, ...]]:
        """The estimate for one offer (ranked or not) and, when the ranking left it out, the reasons."""
        offer = self.find(ref)
        estimate = CostModel(self.workload, self.assumptions, self.calibration).estimate(offer)
        rejected = next((r.reasons for r in self.ranking.rejected if r.offer is offer), ())
        return estimate, rejected

    def to_dict(self) -> dict[str, Any]:
        """The `gpurun offers --json` document. Version 1; fields may be added, never changed in meaning:

        {"version", "ok", "workload", "assumptions", "requirements", "budget", "sort",
         "providers": {"queried", "offers": {name: n}, "errors": {name: {"error", "message"}}, "skipped": {name: why}},
         "counts": {"considered", "eligible", "shown", "rejected", "within_budget"},
         "cheapest": estimate | null,        # lowest expected total among eligible offers, whatever sort/limit
         "offers": [estimate + {"rank", "over_budget"}],   # in ranking order
         "rejected": [{"key", "provider", "offer_id", "gpu", "price_per_hour", "reasons"}]}

        An estimate: {"key", "provider", "offer_id", "gpu": {"name", "count", "vram_gb"}, "price_per_hour", "spot",
        "reliability", "location", "inet_down_mbps", "inet_up_mbps", "disk_gb", "batch_size", "feasible",
        "reasons", "seconds", "dollars", "expected_dollars", "phases": [{"name", "seconds", "dollars", "note"}]}.
        Times in seconds, money in USD, bandwidth in Mbit/s.
        """
        ranking = self.ranking
        return {
            "version": OFFERS_DOC_VERSION,
            "ok": True,
            "workload": {**to_dict(self.workload), "samples": self.workload.samples},
            "assumptions": to_dict(self.assumptions),
            "requirements": to_dict(self.requirements),
            "budget": ranking.budget,
            "sort": ranking.sort,
            "providers": {
                "queried": list(self.queried),
                "offers": dict(self.offer_counts),
                "errors": {n: {"error": f.error, "message": f.message} for n, f in self.errors.items()},
                "skipped": dict(self.skipped),
            },
            "counts": {
                "considered": ranking.considered,
                "eligible": ranking.eligible,
                "shown": len(ranking.estimates),
                "rejected": len(ranking.rejected),
                "within_budget": len(ranking.within_budget),
            },
            "cheapest": estimate_to_dict(ranking.cheapest) if ranking.cheapest else None,
            "offers": [
                {"rank": i, **estimate_to_dict(e), "over_budget": ranking.is_over_budget(e)}
                for i, e in enumerate(ranking.estimates, 1)
            ],
            "rejected": [
                {
                    "key": r.offer.key,
                    "provider": r.offer.provider,
                    "offer_id": r.offer.offer_id,
                    "gpu": gpu_dict(r.offer),
                    "price_per_hour": r.offer.price_per_hour,
                    "reasons": list(r.reasons),
                }
                for r in ranking.rejected
            ],
        }


def check_budget(budget: float | None) -> None:
    """The one check of a budget, wherever it is given (`offers`, `train`): a finite amount of dollars, 0 or more
    ($0 = free machines only)."""
    if budget is not None and not (math.isfinite(budget) and budget >= 0):
        raise ConfigError(f"must be a non-negative amount of dollars, got {budget}", where="--budget")


def disk_needed_gb(workload: Workload, assumptions: Assumptions = DEFAULT) -> float:
    """Disk to ask the providers for: the job's files, the container image, slack; whole GB."""
    return float(math.ceil(CostModel(workload, assumptions).disk_needed_gb(BootProfile(0.0))))


async def offers(
    workload: Workload | None = None,
    *,
    providers: Sequence[str] | None = None,
    requirements: GpuRequest | None = None,
    budget: float | None = None,
    sort: SortMode = "cost",
    limit: int | None = 20,
    settings: Settings | None = None,
    assumptions: Assumptions | None = None,
    calibration: Calibration | None = None,
    on_progress: Progress | None = None,
    retry: RetryPolicy | None = None,
    timeout: float = PROVIDER_TIMEOUT_S,
) -> OffersResult:
    """Ask providers for live offers and rank them by expected total cost for `workload`.

    `providers`: names to ask (default: every usable one; unusable ones are listed in `skipped`). A provider
    named here that is not usable, or that fails, is listed in `errors`. Raises ProviderError when no
    provider answered at all, ConfigError for a bad option. `assumptions` defaults to the built-in ones with
    the settings file's `[pricing] efficiency`; `calibration` maps measured runs to samples/s.
    """
    workload = workload or Workload()
    requirements = requirements or GpuRequest()
    if sort not in SORT_MODES:
        raise ConfigError(f"unknown sort {sort!r}", where="--sort", hint=f"one of {', '.join(SORT_MODES)}")
    check_budget(budget)
    if limit is not None and limit < 0:
        raise ConfigError(f"must not be negative, got {limit}", where="--limit")
    settings = settings if settings is not None else load_settings()
    if assumptions is None:
        assumptions = dataclasses.replace(DEFAULT, efficiency=dict(settings.pricing.efficiency))
    if not assumptions.boot:
        assumptions = dataclasses.replace(assumptions, boot=boot_profiles())  # each provider's own
    try:
        CostModel(workload, assumptions, calibration)  # a bad workload or calibration fails before any network call
    except ValueError as exc:
        raise ConfigError(str(exc), where="workload") from None

    status = available_providers(settings)
    skipped: dict[str, str] = {}
    errors: dict[str, ProviderFailure] = {}
    if providers:
        names = list(dict.fromkeys(providers))
        for name in names:
            if name not in PROVIDER_NAMES:
                raise ConfigError(
                    f"unknown provider {name!r}", where="--provider", hint=f"one of {', '.join(PROVIDER_NAMES)}"
                )
        for name in [n for n in names if status.get(n)]:
            errors[name] = ProviderFailure(name, "ConfigError", f"{name}: {status[name]}")
            names.remove(name)
    else:
        names = [n for n in PROVIDER_NAMES if not status.get(n)]
        skipped = {n: why for n, why in status.items() if why}

    query = dataclasses.replace(
        requirements,
        gpu_names=tuple(dict.fromkeys(s for name in requirements.gpu_names for s in provider_spellings(name))),
        min_disk_gb=max(requirements.min_disk_gb, disk_needed_gb(workload, assumptions)),
    )
    found: dict[str, list[Offer]] = {}
    if names:
        found, failures = await _ask(names, query, settings, on_progress, retry, timeout)
        errors.update(failures)
    if not found:
        detail = "; ".join(f.message for f in errors.values()) or "; ".join(f"{n}: {why}" for n, why in skipped.items())
        raise ProviderError(
            f"no provider could be asked for offers ({detail})" if detail else "no provider could be asked for offers",
            provider=", ".join(names or list(errors) or list(skipped)) or "providers",
            hint="set VAST_API_KEY or RUNPOD_API_KEY, or declare [[ssh_hosts]]; `gpurun providers` shows the status",
        )
    every = tuple(o for name in names if name in found for o in found[name])
    ranking = rank(
        workload,
        every,
        budget=budget,
        sort=sort,
        requirements=requirements,
        limit=limit,
        assumptions=assumptions,
        calibration=calibration,
    )
    return OffersResult(
        workload=workload,
        ranking=ranking,
        assumptions=assumptions,
        requirements=requirements,
        queried=tuple(names),
        offer_counts={name: len(found.get(name, ())) for name in names},
        errors=errors,
        skipped=skipped,
        offers=every,
        calibration=calibration,
    )


async def _ask(
    names: list[str],
    query: GpuRequest,
    settings: Settings,
    on_progress: Progress | None,
    retry: RetryPolicy | None,
    timeout: float,
) -> tuple[dict[str, list[Offer]], dict[str, ProviderFailure]]:
    """Every provider at once; each failure is captured on its own so the others still count."""
    notify = on_progress or (lambda provider, event, detail: None)
    found: dict[str, list[Offer]] = {}
    failures: dict[str, ProviderFailure] = {}

    async def one(name: str, client: httpx.AsyncClient) -> None:
        notify(name, "start", "")
        started = time.monotonic()
        provider = None
        try:
            provider = make_provider(name, settings, client=client, retry=retry)
            offers = await asyncio.wait_for(provider.list_offers(query), timeout)
        except GpurunError as error:
            failures[name] = ProviderFailure(name, type(error).__name__, _with_provider(name, error.one_line()))
        except asyncio.TimeoutError:
            failures[name] = ProviderFailure(name, "TimeoutError", f"{name}: no answer within {timeout:.0f} s")
        except Exception as error:  # an adapter bug must not hide the other providers' offers
            failures[name] = ProviderFailure(name, type(error).__name__, f"{name}: {type(error).__name__}: {error}")
        else:
            found[name] = offers
            notify(name, "done", f"{len(offers)} offers in {time.monotonic() - started:.1f} s")
            return
        finally:
            if provider is not None:
                await provider.aclose()
        notify(name, "failed", failures[name].message)

    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0)) as client:
        await asyncio.gather(*(one(name, client) for name in names))
    return found, failures


def _with_provider(name: str, line: str) -> str:
    return line if line.startswith(name) else f"{name}: {line}"
