"""The orchestrator's own state, in process: the run record's file, the receipt it becomes, a phase's bounds, and
reopening a run that cannot be reopened."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import pytest

from gpurun.errors import DeadlineError, JournalError
from gpurun.job import control
from gpurun.job.context import RunContext
from gpurun.job.machine import BoxLayout
from gpurun.job.options import JobOptions
from gpurun.job.receipt import build_receipt
from gpurun.job.record import MachineUse, RunRecord, TrainingFacts, record_path
from gpurun.job.view import SilentView
from gpurun.journal import Journal
from gpurun.models import GpuSpec, Offer, SshEndpoint, Workload
from gpurun.phases import RUN_PHASES, SETUP, TRAINING
from gpurun.pricing import TIME_PHASES, estimate


def chosen():
    offer = Offer(provider="vast", offer_id="42", gpu=GpuSpec("RTX 4090", 1, 24.0), price_per_hour=0.36,
                  reliability=0.9, inet_down_mbps=800.0, inet_up_mbps=400.0, disk_gb=30.0)  # fmt: skip
    return estimate(Workload(family="sd15", images=20, repeats=10, epochs=2), offer)


def full_record(tmp_path) -> RunRecord:
    return RunRecord(
        run_id="r01kf3m9x2c7qzab", output_dir=tmp_path / "runs" / "r01kf3m9x2c7qzab", estimate=chosen(), budget=5.0,
        instance_id="27001234", price_per_hour=0.37, created_at=1_800_000_000.0, workdir="/workspace",
        boot_armed=True, ssh=SshEndpoint("1.2.3.4", 40022, "root"), identity_file="/k/id_ed25519",
        layout=BoxLayout(root="/root/gpurun/r1", home="/root/.gpurun", python="/usr/bin/python3", pythonpath="/x"),
        deadline=1_800_040_000.0, timings={"boot": 61.5, "setup": 120.0}, fetched={"lora.safetensors": "ab" * 32},
        final="lora.safetensors", samples_per_s=7.5,
        training=TrainingFacts(resolution=512, device="cuda", dtype="bf16", family="sd15", batch_size=4,
                               total_steps=100),
        machines=[
            MachineUse(provider="vast", offer="vast:41", instance_id="27001233", gpu="RTX 4090", price_per_hour=0.2,
                       created_at=1_799_990_000.0, ended_at=1_799_993_600.0, ended="preempted", state_step=40,
                       lost_s=300.0, lost_usd=0.02),
            MachineUse(provider="vast", offer="vast:42", instance_id="27001234", gpu="RTX 4090", price_per_hour=0.37,
                       created_at=1_800_000_000.0),
        ],
        state_step=40, state_files={"lora.safetensors": "cd" * 32}, state_at=1_799_993_000.0,
    )  # fmt: skip


def test_every_estimate_phase_is_measured_by_exactly_one_run_phase() -> None:
    covered = [name for phase in RUN_PHASES for name in phase.covers]
    assert sorted(covered) == sorted(TIME_PHASES)


def test_the_record_comes_back_from_its_file_as_the_same_types(tmp_path) -> None:
    record = full_record(tmp_path)
    record.save()
    again = RunRecord.load(record.run_id)
    assert again == replace(record, estimate=again.estimate)
    assert again.estimate.offer.key == "vast:42" and again.estimate.dollars == pytest.approx(record.estimate.dollars)
    assert [p.name for p in again.estimate.phases] == [p.name for p in record.estimate.phases]
    assert again.provider == "vast"


def test_a_run_json_from_the_previous_release_still_loads(tmp_path) -> None:
    """Runs detached before an upgrade must stay attachable: version-1 files had the estimate as a dict and the
    GPU, SSH and layout as loose dicts."""
    old = {
        "run_id": "r01kf3m9x2c7qzab", "provider": "vast", "output_dir": str(tmp_path / "out"),
        "instance_id": "7", "price_per_hour": 0.4, "created_at": 1.0,
        "layout": {"root": "/r", "home": "/h", "python": "python3", "pythonpath": ""},
        "ssh": {"host": "h", "port": 22, "user": "root"}, "workdir": None, "identity_file": None, "budget": 2.0,
        "deadline": None, "artifact_grace_s": 1800.0, "keep_on_failure_min": 0.0,
        "estimate": {"key": "vast:7", "provider": "vast", "offer_id": "7", "gpu": {"name": "RTX 3090", "count": 1,
                     "vram_gb": 24}, "price_per_hour": 0.4, "dollars": 0.2, "expected_dollars": 0.25, "phases": []},
        "gpu": {"name": "RTX 3090", "count": 1}, "timings": {}, "fetched": {}, "final": None, "samples_per_s": None,
        "training": {"resolution": 512}, "boot_armed": False,
    }  # fmt: skip
    record_path(old["run_id"]).write_text(json.dumps(old))
    record = RunRecord.load(old["run_id"])
    assert record.estimate.offer.gpu.name == "RTX 3090" and record.layout == BoxLayout("/r", "/h")
    assert record.ssh == SshEndpoint("h", 22, "root") and record.training.resolution == 512
    # before version 3 a record listed no machines and no pulled state
    assert record.machines == [] and record.state_step is None and record.state_files == {}
    assert record.earlier_usd() == 0.0


def test_the_record_lists_the_machines_a_continued_run_used(tmp_path) -> None:
    record = full_record(tmp_path)
    record.save()
    data = json.loads(record_path(record.run_id).read_text())
    assert data["version"] == 3 and [m["instance_id"] for m in data["machines"]] == ["27001233", "27001234"]
    again = RunRecord.load(record.run_id)
    assert again.machines == record.machines and again.machines[0].ended == "preempted"
    # what the earlier machines cost counts toward the budget: an hour at $0.20
    assert again.earlier_usd() == pytest.approx(0.2)
    data["machines"][0]["from_a_newer_gpurun"] = 1  # lenient on read: unknown fields are dropped
    record_path(record.run_id).write_text(json.dumps(data))
    assert RunRecord.load(record.run_id).machines[0].state_step == 40


@pytest.mark.parametrize("text", ["", "[]", '{"run_id": 3}', '{"run_id": "r", "output_dir": "/o", "estimate": 1}'])
def test_a_damaged_record_is_a_journal_error_naming_the_file(text: str) -> None:
    record_path("r01kf3m9x2c7qzab").write_text(text)
    with pytest.raises(JournalError) as caught:
        RunRecord.load("r01kf3m9x2c7qzab")
    assert "run.json" in caught.value.one_line()


def test_the_receipt_has_one_line_per_run_phase_against_its_estimate(tmp_path) -> None:
    record = full_record(tmp_path)
    receipt = build_receipt(
        run_id=record.run_id, estimate=record.estimate, billed_per_hour=0.36, actual_seconds={"boot": 60.0},
        billed_seconds=3600.0, budget=5.0, outcome="done", destroyed=True,
    )  # fmt: skip
    by_phase = {line.phase: line for line in receipt.lines}
    assert list(by_phase) == [phase.name for phase in RUN_PHASES]
    boot = next(p for p in record.estimate.phases if p.name == "boot")
    assert by_phase["boot"].estimated_s == pytest.approx(boot.seconds) and by_phase["boot"].actual_usd == pytest.approx(
        0.006
    )
    assert by_phase["setup"].actual_s is None and receipt.actual_total_usd == pytest.approx(0.36)
    assert receipt.offer == "vast:42" and receipt.gpu == "RTX 4090 x1"
    receipt.write(tmp_path / "receipt.json")
    assert json.loads((tmp_path / "receipt.json").read_text())["lines"][0]["phase"] == "boot"


def _context(tmp_path, **options) -> tuple[RunContext, Journal]:
    journal = Journal.open(tmp_path / "journal.sqlite3")
    record = full_record(tmp_path)
    journal.record_intent(
        record.run_id, provider="vast", offer_id="42", gpu="RTX 4090", quoted_price=0.36, budget=5.0, workload={},
        estimate={}, output_dir=record.output_dir, config_toml="", label="gpurun-" + record.run_id,
    )  # fmt: skip
    return RunContext(replace(record, timings={}), SilentView(), journal, JobOptions(**options)), journal


async def test_a_phase_is_journalled_and_timed(tmp_path) -> None:
    ctx, journal = _context(tmp_path)
    async with ctx.phase(TRAINING, "runner launched"):
        await asyncio.sleep(0.05)
    assert ctx.record.timings["training"] >= 0.05
    assert journal.get(ctx.run_id).phase == "training" and journal.phases(ctx.run_id)[-1].detail == "runner launched"
    journal.close()


async def test_a_phase_past_its_deadline_is_a_deadline_error_and_its_time_still_counts(tmp_path) -> None:
    ctx, journal = _context(tmp_path, bootstrap_timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(DeadlineError, match=r"setup phase ran past its deadline of 0\.2 s"):
        async with ctx.phase(SETUP):
            await asyncio.sleep(30)
    assert time.monotonic() - started < 5 and ctx.record.timings["setup"] >= 0.2
    # the task is not left cancelled: the teardown that follows can still wait
    await asyncio.sleep(0.01)
    journal.close()


async def test_a_run_without_saved_state_cannot_be_reopened(tmp_path) -> None:
    ctx, journal = _context(tmp_path)
    with pytest.raises(JournalError, match="no saved state"):
        await control.reopen(ctx.run_id, SilentView(), journal, JobOptions())
    replace(ctx.record, instance_id=None).save()
    with pytest.raises(JournalError, match="never reached its machine"):
        await control.reopen(ctx.run_id, SilentView(), journal, JobOptions())
    journal.close()
