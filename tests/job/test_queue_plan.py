"""Planning a queue against the fake Vast's offers: the three ways priced, the cheapest chosen, the budget split
over the machines, and the mistakes refused before anything is rented."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gpurun.errors import BudgetError, ConfigError
from gpurun.job.plan import TrainRequest
from gpurun.job.queuefile import jobs_from_datasets
from gpurun.job.queueplan import QueuePlan, QueueRequest, plan_queue
from tests.support.env import run_gpurun, subprocess_env
from tests.support.imaging import make_image


def _datasets(root: Path, count: int) -> list[Path]:
    folders = []
    for n in range(count):
        concept = root / f"set{n}" / f"10_thing{n}"
        for index in range(4):
            make_image(concept / f"img{index}.png", (512, 512), seed=10 * n + index, caption=f"thing{n}, photo")
        folders.append(concept.parent)
    return folders


def _plan(root: Path, count: int = 3, **common: Any) -> QueuePlan:
    request = QueueRequest(
        jobs=tuple(jobs_from_datasets(_datasets(root, count))),
        common=TrainRequest(base="sd15", providers=("vast",), **common),
    )
    return asyncio.run(plan_queue(request))


def test_one_machine_is_chosen_and_saves_the_repeated_setup(fake_vast: Any, tmp_path: Path) -> None:
    plan = _plan(tmp_path, budget=20.0)
    assert plan.mode == "one machine" and len(plan.slots) == 1 and plan.slots[0].jobs == (0, 1, 2)
    one, separate = plan.alternatives["one machine"], plan.alternatives["separate rentals"]
    assert one["expected_dollars"] < separate["expected_dollars"]
    # what one machine saves is the boot, environment and base download of two rentals (on the chosen offer)
    chosen = plan.slots[0].chosen
    own = plan.job_estimates[chosen.offer.key]
    phase = {p.name: p.seconds for p in own[0].phases}
    assert sum(e.seconds for e in own) - chosen.seconds == pytest.approx(
        2 * (phase["boot"] + phase["install"] + phase["model"])
    )
    assert plan.slots[0].request.budget == pytest.approx(20.0)
    doc = plan.to_dict()
    assert [j["name"] for j in doc["jobs"]] == ["set0", "set1", "set2"] and doc["mode"] == "one machine"


def test_parallel_machines_share_the_budget_in_proportion(fake_vast: Any, tmp_path: Path) -> None:
    request = QueueRequest(
        jobs=tuple(jobs_from_datasets(_datasets(tmp_path, 4))),
        common=TrainRequest(base="sd15", providers=("vast",), budget=20.0),
        parallel=2,
    )
    plan = asyncio.run(plan_queue(request))
    assert plan.mode == "machines" and len(plan.slots) == 2
    assert sorted(i for slot in plan.slots for i in slot.jobs) == [0, 1, 2, 3]
    assert sum(slot.request.budget or 0 for slot in plan.slots) == pytest.approx(20.0)
    for slot in plan.slots:
        assert slot.chosen.expected_dollars <= (slot.request.budget or 0)
    assert "2 machines" in plan.alternatives and "one machine" in plan.alternatives


def test_a_budget_too_small_or_missing_is_refused_with_the_cost(fake_vast: Any, tmp_path: Path) -> None:
    with pytest.raises(BudgetError, match=r"does not fit the budget of \$0.01: the cheapest way is expected"):
        _plan(tmp_path / "a", budget=0.01)
    with pytest.raises(BudgetError, match="renting GPUs needs a budget") as caught:
        _plan(tmp_path / "b")
    assert "--budget" in (caught.value.hint or "")


def test_a_bad_job_is_named(fake_vast: Any, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[training]\nnetwork_dim = -1\n")
    with pytest.raises(ConfigError, match=r"^job set0: "):
        _plan(tmp_path, count=1, budget=5.0, config=config)
    with pytest.raises(ConfigError, match="from 1 to 16"):
        asyncio.run(plan_queue(QueueRequest(jobs=tuple(jobs_from_datasets(_datasets(tmp_path / "p", 1))),
                                            common=TrainRequest(base="sd15", budget=5.0), parallel=0)))  # fmt: skip


def test_the_cli_dry_run_shows_the_queue_and_rents_nothing(fake_vast: Any, tmp_path: Path) -> None:
    folders = _datasets(tmp_path, 2)
    proc = run_gpurun("train", *map(str, folders), "--base", "sd15", "--provider", "vast", "--budget", "20",
                      "--dry-run", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["dry_run"] is True and doc["queue"] is True and doc["mode"] == "one machine"
    assert fake_vast.instances == {}
    table = run_gpurun("train", *map(str, folders), "--base", "sd15", "--provider", "vast", "--budget", "20",
                       "--dry-run", env=subprocess_env(COLUMNS="200"))  # fmt: skip
    assert "one machine ← chosen" in table.stdout and "separate rentals" in table.stdout
    refused = run_gpurun("train", *map(str, folders), "--base", "sd15", "--detach", "--budget", "20")
    assert refused.returncode != 0 and "a queue cannot be detached from" in refused.stderr
