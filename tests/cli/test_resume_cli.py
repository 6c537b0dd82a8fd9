"""`gpurun runs` says which runs `gpurun resume` can continue, and `gpurun resume` refuses the others with one clear
line naming what is wrong (nothing is rented for any of them)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gpurun.job.record import MachineUse, RunRecord, record_path
from gpurun.journal import Journal
from gpurun.models import GpuSpec, Offer, Workload
from gpurun.pricing import estimate
from tests.support.env import subprocess_env


def make_run(home: Path, run_id: str, *, finished: str | None, alive: bool = False, state: bool = True,
             budget: float = 5.0, spent: float = 0.0) -> None:  # fmt: skip
    """A run in the journal and its record: finished as `finished` (None: still active), its machine alive or
    destroyed, with or without a pulled state, `spent` dollars on an earlier machine."""
    out = home / "runs" / run_id
    with Journal.open() as journal:
        journal.record_intent(
            run_id, provider="vast", offer_id="1", gpu="RTX 4090", quoted_price=0.3, budget=budget, workload={},
            estimate={}, output_dir=out, config_toml="", label=f"gpurun-{run_id}",
        )  # fmt: skip
        journal.set_instance(run_id, "27001234", billed_price=0.3)
        if not alive:
            journal.mark_terminated(run_id, True, instance_id="27001234")
        if finished:
            journal.mark_finished(run_id, finished)
    offer = Offer(provider="vast", offer_id="1", gpu=GpuSpec("RTX 4090", 1, 24.0), price_per_hour=0.3)
    record = RunRecord(run_id=run_id, output_dir=out, budget=budget,
                       estimate=estimate(Workload(family="sd15", images=2, repeats=1, epochs=1), offer),
                       request={"dataset": str(home / "data"), "base": "tiny-sd", "budget": budget})  # fmt: skip
    record.training.total_steps = 40
    if spent:
        hour_ago = time.time() - 3600
        record.machines = [MachineUse("vast", "vast:1", "27001234", "RTX 4090", spent, hour_ago, hour_ago + 3600,
                                      "preempted")]  # fmt: skip
    if state:
        (out / "state").mkdir(parents=True)
        for name in ("lora.safetensors", "optimizer.pt", "progress.json", "rng.pt"):
            (out / "state" / name).write_text("{}")
        record.state_step, record.state_files = 10, {name: "ab" * 32 for name in ("lora.safetensors", "rng.pt")}
    record_path(run_id).parent.mkdir(parents=True, exist_ok=True)
    record.save()


def test_runs_says_which_runs_can_be_resumed(gpurun_home: Path, gpurun_cli) -> None:
    make_run(gpurun_home, "r1done", finished="done")
    make_run(gpurun_home, "r2lost", finished="failed")
    make_run(gpurun_home, "r3alive", finished=None, alive=True)
    make_run(gpurun_home, "r4nostate", finished="failed", state=False)
    result = gpurun_cli("runs", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["run_id"]: r for r in json.loads(result.stdout)["runs"]}
    assert {k: r["resumable"] for k, r in rows.items()} == {
        "r1done": False, "r2lost": True, "r3alive": False, "r4nostate": False
    }  # fmt: skip
    assert rows["r2lost"]["resumable_why_not"] is None
    assert rows["r1done"]["resumable_why_not"].startswith("it is done")
    assert "may still be running" in rows["r3alive"]["resumable_why_not"]
    assert "no training state was pulled" in rows["r4nostate"]["resumable_why_not"]
    table = gpurun_cli("runs", env=subprocess_env(COLUMNS="250"))
    assert table.returncode == 0 and "resumable" in table.stdout
    (lost,) = [line for line in table.stdout.splitlines() if "r2lost" in line]
    assert [cell.strip() for cell in lost.split("│")][8] == "yes"


@pytest.mark.parametrize(
    ("run", "args", "needle"),
    [
        ("r9nothere", (), "no run 'r9nothere' in the journal"),
        ("r1done", (), "run r1done cannot be resumed: it is done"),
        ("r4nostate", (), "run r4nostate cannot be resumed: no training state was pulled from it yet"),
        ("r5spent", (), "run r5spent's budget of $1.00 is spent ($2.00 so far)"),
        ("r5spent", ("--budget", "1.5"), "budget of $1.50 is spent"),
        ("r2lost", ("--budget", "-1"), "must be a non-negative amount of dollars"),
    ],
)
def test_resume_refuses_with_what_is_wrong(run: str, args: tuple[str, ...], needle: str, gpurun_home: Path,
                                           gpurun_cli) -> None:  # fmt: skip
    make_run(gpurun_home, "r1done", finished="done")
    make_run(gpurun_home, "r2lost", finished="failed")
    make_run(gpurun_home, "r4nostate", finished="failed", state=False)
    make_run(gpurun_home, "r5spent", finished="failed", budget=1.0, spent=2.0)
    result = gpurun_cli("resume", run, "--yes", *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert needle in result.stderr.replace("\n", " ") and "Traceback" not in result.stderr
    if "budget of" in needle:
        assert "--budget" in result.stderr  # how to fix it
