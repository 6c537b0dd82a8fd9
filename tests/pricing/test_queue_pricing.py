"""Pricing a queue on one machine: boot and environment once, each base once, every job's own work added; the
expected/actual ratio carried over; jobs dealt to N machines longest first."""

from __future__ import annotations

import dataclasses

import pytest

from gpurun.models import GpuSpec, Offer, Workload
from gpurun.pricing import estimate
from gpurun.pricing.queue import combine, split

OFFER = Offer(
    provider="vast", offer_id="1", gpu=GpuSpec("RTX 4090", 1, 24.0), price_per_hour=0.36, reliability=0.95,
    disk_gb=200.0, inet_down_mbps=800.0, inet_up_mbps=800.0,
)  # fmt: skip
JOBS = [Workload(family="sd15", images=20), Workload(family="sd15", images=40, epochs=6), Workload(family="sdxl")]


def _phases(e) -> dict[str, float]:
    return {p.name: p.seconds for p in e.phases}


def test_boot_and_environment_are_paid_once_and_each_base_once() -> None:
    one = [estimate(w, OFFER) for w in JOBS]
    queue = combine(one, ["sd15", "sd15", "sdxl"])
    got, each = _phases(queue), [_phases(e) for e in one]
    assert got["boot"] == each[0]["boot"] and got["install"] == each[0]["install"]
    assert got["model"] == pytest.approx(each[0]["model"] + each[2]["model"])  # two bases, the shared one once
    for name in ("upload", "caching", "training", "samples", "fetch"):
        assert got[name] == pytest.approx(sum(e[name] for e in each))
    assert queue.seconds == pytest.approx(sum(got.values()))
    assert queue.dollars == pytest.approx(queue.seconds * OFFER.price_per_hour / 3600 + sum(
        p.dollars for p in queue.phases if p.name in ("storage", "bandwidth")))  # fmt: skip
    # one machine is cheaper than three: what is saved is exactly two boots, two installs and one download
    saved = sum(e.seconds for e in one) - queue.seconds
    assert saved == pytest.approx(2 * (each[0]["boot"] + each[0]["install"]) + each[1]["model"])
    assert queue.expected_dollars < sum(e.expected_dollars for e in one)


def test_the_expected_ratio_is_the_jobs_own() -> None:
    one = [estimate(w, OFFER) for w in JOBS[:2]]
    queue = combine(one, ["sd15", "sd15"])
    assert queue.expected_dollars / queue.dollars == pytest.approx(one[0].expected_dollars / one[0].dollars)
    assert queue.expected_dollars / queue.dollars == pytest.approx(1 / 0.95)


def test_a_single_job_is_its_own_estimate() -> None:
    (only,) = [estimate(JOBS[0], OFFER)]
    queue = combine([only], ["sd15"])
    assert queue.seconds == pytest.approx(only.seconds) and queue.dollars == pytest.approx(only.dollars)
    assert queue.expected_dollars == pytest.approx(only.expected_dollars)


def test_estimates_on_different_offers_are_refused() -> None:
    other = dataclasses.replace(OFFER, offer_id="2")
    with pytest.raises(ValueError, match="same offer"):
        combine([estimate(JOBS[0], OFFER), estimate(JOBS[0], other)], ["sd15", "sd15"])
    with pytest.raises(ValueError, match="at least one job"):
        combine([], [])


def test_jobs_are_dealt_longest_first_to_the_least_loaded_machine() -> None:
    assert split([10, 50, 20, 40], 2) == [[0, 1], [2, 3]]  # 50, 40, then 20 to the 40, 10 to the 50
    assert split([10, 50, 20, 40], 1) == [[0, 1, 2, 3]]
    assert split([5, 5], 4) == [[0], [1]]  # no machine without a job
    loads = [sum([10, 50, 20, 40][i] for i in lane) for lane in split([10, 50, 20, 40], 2)]
    assert loads == [60, 60]
    with pytest.raises(ValueError):
        split([1], 0)
