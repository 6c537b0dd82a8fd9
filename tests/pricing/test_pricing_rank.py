"""rank(): the case that defines gpurun, budget marking, sort orders, stable tie-breaks, filters and reasons."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from gpurun.models import GpuRequest, GpuSpec, Offer, Workload
from gpurun.pricing import BASE_MODEL_BYTES, estimate, rank
from tests.support.env import REPO_ROOT, subprocess_env

# A cheaper-per-hour host with a slow download and 90 % reliability, and a slightly dearer fast, reliable one.
CHEAP_SLOW = Offer(
    "vast",
    "cheap",
    GpuSpec("RTX 4090", 1, 24.0),
    price_per_hour=0.28,
    reliability=0.90,
    inet_down_mbps=50.0,
    inet_up_mbps=50.0,
    location="Hanoi, VN",
)
DEAR_FAST = Offer(
    "vast",
    "dear",
    GpuSpec("RTX 4090", 1, 24.0),
    price_per_hour=0.36,
    reliability=0.995,
    inet_down_mbps=1000.0,
    inet_up_mbps=1000.0,
    location="Texas, US",
)
# 50 images, the tutorial's 10 repeats × 10 epochs, SD 1.5 with its 4 GB base model
SHORT_SD15 = Workload(
    family="sd15", images=50, repeats=10, epochs=10, dataset_bytes=100_000_000, base_model_bytes=4_000_000_000
)
# a long SDXL job: 100 images × 20 repeats × 20 epochs, the 6.9 GB base model
LONG_SDXL = Workload(
    family="sdxl",
    resolution=1024,
    images=100,
    repeats=20,
    epochs=20,
    dataset_bytes=300_000_000,
    base_model_bytes=BASE_MODEL_BYTES["sdxl"],
)


@pytest.mark.parametrize(
    ("workload", "winner", "why"),
    [
        (SHORT_SD15, "dear", "setup dominates: 7.5 GB of image and model at 50 Mbit/s, then a 90 % host"),
        (LONG_SDXL, "cheap", "hours of training: the $/h gap outweighs slow setup and 10 % risk"),
    ],
)
def test_total_cost_not_hourly_price_picks_the_host(workload: Workload, winner: str, why: str) -> None:
    ranking = rank(workload, [CHEAP_SLOW, DEAR_FAST])
    assert ranking.estimates[0].offer.offer_id == winner, why
    cheap, dear = (estimate(workload, o) for o in (CHEAP_SLOW, DEAR_FAST))
    if winner == "dear":
        # the slow host loses on time and on expected money, even though its $/h is 22 % lower
        assert cheap.seconds > dear.seconds * 2
        assert cheap.expected_dollars > dear.expected_dollars
    else:
        assert cheap.seconds > 5 * 3600  # a long job: the hourly rate is what matters
        assert cheap.expected_dollars < dear.expected_dollars
    # ranking by $/h alone would always have picked the cheap host
    assert rank(workload, [CHEAP_SLOW, DEAR_FAST], sort="price").estimates[0].offer.offer_id == "cheap"


def _offer(offer_id: str, price: float, **overrides) -> Offer:
    fields = dict(
        provider="vast",
        offer_id=offer_id,
        gpu=GpuSpec("RTX 4090", 1, 24.0),
        price_per_hour=price,
        reliability=0.99,
        inet_down_mbps=800.0,
        inet_up_mbps=800.0,
    )
    fields.update(overrides)
    return Offer(**fields)


def test_budget_marks_and_reports_the_cheapest() -> None:
    offers = [_offer("a", 0.30), _offer("b", 0.60), _offer("c", 3.00)]
    costs = {o.offer_id: estimate(SHORT_SD15, o).expected_dollars for o in offers}
    budget = (costs["a"] + costs["b"]) / 2  # between the cheapest and the next
    ranking = rank(SHORT_SD15, offers, budget=budget)
    assert [e.offer.offer_id for e in ranking.estimates] == ["a", "b", "c"]  # marked, not dropped
    assert ranking.over_budget == {"vast:b", "vast:c"}
    assert [e.offer.offer_id for e in ranking.within_budget] == ["a"]
    nothing_fits = rank(SHORT_SD15, offers, budget=costs["a"] / 2)
    assert nothing_fits.within_budget == ()
    assert nothing_fits.cheapest is not None and nothing_fits.cheapest.offer.offer_id == "a"
    assert nothing_fits.cheapest.expected_dollars == pytest.approx(costs["a"])


def test_sort_modes() -> None:
    slow_cheap = _offer("slowcheap", 0.20, gpu=GpuSpec("RTX 3090", 1, 24.0))
    fast_dear = _offer("fastdear", 2.50, gpu=GpuSpec("H100 SXM", 1, 80.0), inet_down_mbps=5000.0)
    middle = _offer("middle", 0.35)
    offers = [fast_dear, middle, slow_cheap]
    by_time = [e.offer.offer_id for e in rank(LONG_SDXL, offers, sort="time").estimates]
    by_price = [e.offer.offer_id for e in rank(LONG_SDXL, offers, sort="price").estimates]
    by_cost = rank(LONG_SDXL, offers, sort="cost").estimates
    assert by_time[0] == "fastdear" and by_time == sorted(
        by_time, key=lambda i: estimate(LONG_SDXL, next(o for o in offers if o.offer_id == i)).seconds
    )
    assert by_price == ["slowcheap", "middle", "fastdear"]
    assert [e.expected_dollars for e in by_cost] == sorted(e.expected_dollars for e in by_cost)
    with pytest.raises(ValueError, match="sort"):
        rank(LONG_SDXL, offers, sort="speed")  # type: ignore[arg-type]


def test_ties_break_by_time_price_provider_then_id() -> None:
    twins = [_offer("9", 0.3, provider="vast"), _offer("10", 0.3, provider="vast"), _offer("5", 0.3, provider="runpod")]
    order = [e.offer.key for e in rank(SHORT_SD15, twins).estimates]
    assert order == ["runpod:5", "vast:10", "vast:9"]  # provider, then id (as text)
    assert order == [e.offer.key for e in rank(SHORT_SD15, list(reversed(twins))).estimates]  # input order irrelevant
    # equal expected cost: the faster one first
    a = _offer("a", 0.30, inet_down_mbps=800.0, reliability=1.0)
    b = _offer("b", 0.30, inet_down_mbps=800.0, reliability=1.0)
    assert [e.offer.offer_id for e in rank(SHORT_SD15, [b, a]).estimates] == ["a", "b"]


def test_limit_keeps_the_best_and_counts_the_rest() -> None:
    offers = [_offer(str(i), 0.2 + i / 100) for i in range(30)]
    ranking = rank(SHORT_SD15, offers, limit=5)
    assert [e.offer.offer_id for e in ranking.estimates] == ["0", "1", "2", "3", "4"]
    assert (ranking.considered, ranking.eligible) == (30, 30)
    assert rank(SHORT_SD15, offers, limit=0).estimates == ()
    assert [e.offer.offer_id for e in rank(SHORT_SD15, offers, limit=5, sort="price").estimates] == [
        "0",
        "1",
        "2",
        "3",
        "4",
    ]


def test_requirements_filter_with_reasons() -> None:
    offers = [
        _offer("ok", 0.30),
        _offer("3090", 0.20, gpu=GpuSpec("RTX 3090", 1, 24.0)),
        _offer("dear", 0.90),
        _offer("small", 0.25, gpu=GpuSpec("RTX 4090", 1, 16.0)),
        _offer("unverified", 0.10, verified=False),
        _offer("spot", 0.15, spot=True),
        _offer("flaky", 0.15, reliability=0.7),
    ]
    req = GpuRequest(gpu_names=("4090",), max_price_per_hour=0.5, min_vram_gb=20, min_reliability=0.9)
    ranking = rank(SHORT_SD15, offers, requirements=req)
    assert [e.offer.offer_id for e in ranking.estimates] == ["ok"]
    reasons = {r.offer.offer_id: " / ".join(r.reasons) for r in ranking.rejected}
    assert "requested GPUs" in reasons["3090"]
    assert "maximum" in reasons["dear"]
    assert "VRAM" in reasons["small"]
    assert "unverified" in reasons["unverified"]
    assert "spot" in reasons["spot"]
    assert "reliability" in reasons["flaky"]
    # spot requested: only interruptible offers
    spot_only = rank(SHORT_SD15, offers, requirements=GpuRequest(spot=True))
    assert [e.offer.offer_id for e in spot_only.estimates] == ["spot"]


def test_infeasible_offers_are_rejected_with_the_estimates_reasons() -> None:
    tiny = _offer("tiny", 0.05, gpu=GpuSpec("RTX 3070", 1, 8.0))
    ranking = rank(LONG_SDXL, [tiny, _offer("ok", 0.3)])
    assert [e.offer.offer_id for e in ranking.estimates] == ["ok"]
    (rejected,) = ranking.rejected
    assert rejected.offer.offer_id == "tiny" and any("VRAM" in r for r in rejected.reasons)


def test_empty_input() -> None:
    ranking = rank(SHORT_SD15, [])
    assert ranking.estimates == () and ranking.cheapest is None and ranking.eligible == 0


def test_ranking_matches_individual_estimates() -> None:
    offers = [_offer(str(i), 0.2 + (i * 37 % 11) / 10, inet_down_mbps=50.0 + i * 97 % 900) for i in range(40)]
    ranked = rank(LONG_SDXL, offers)
    for est in ranked.estimates:
        single = estimate(LONG_SDXL, est.offer)
        assert est == dataclasses.replace(single)


def test_benchmark_script_runs(tmp_path) -> None:
    out = tmp_path / "rank.json"
    result = subprocess.run(
        [sys.executable, "bench/bench_rank.py", "--offers", "300", "--runs", "1", "--out", str(out)],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    assert document["offers"] == 300 and document["results"]["limit"]["returned"] == 20
    assert document["results"]["all"]["eligible"] == document["results"]["all"]["returned"] > 0
