"""`gpurun train` end to end, with real parts: the fake Vast and RunPod servers rent "instances" whose SSH endpoint is
the real OpenSSH sshd on 127.0.0.1; rsync, the detached runner (tiny model, CPU), event following, checkpoint
pulls, fetch with sha256, destroy and receipt all run for real. The fault cases each end with nothing alive."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gpurun.lorafile import verify_lora_file
from tests.support.boxes import Box
from tests.support.e2e import (
    FAST,
    dry_run,
    gpurun_json,
    json_documents,
    read_until,
    run_dir,
    small_job,
    start_train,
    train,
    wait_until,
)
from tests.support.env import subprocess_env
from tests.support.fakes.vast_catalog import vast_offer
from tests.support.processes import child_pids
from tests.support.sshd import SshServer

pytest.importorskip("torch")
pytestmark = [pytest.mark.slow, pytest.mark.sshd]


@pytest.mark.parametrize("provider", ["vast", "runpod"])
def test_a_run_rents_trains_fetches_verifies_and_destroys(
    provider: str, request: pytest.FixtureRequest, tmp_path: Path, gpurun_home: Path
) -> None:
    fake = request.getfixturevalue(f"{provider}_on_box")
    proc = train(tmp_path, "--provider", provider, "--budget", "5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = run_dir(tmp_path)

    # the LoRA and its epoch checkpoints are here, complete and in kohya's format
    assert sorted(p.name for p in out.glob("*.safetensors")) == [
        "lora-000001.safetensors", "lora-000002.safetensors", "lora.safetensors"
    ]  # fmt: skip
    assert verify_lora_file(out / "lora.safetensors", "sd15", network_dim=4, network_alpha=2.0) == []
    assert (out / "grid.png").stat().st_size > 0 and (out / "config.toml").is_file()
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds.count("checkpoint") == 3 and kinds[-1] == "done"
    # checkpoints came back while training ran: the epoch-1 file was written before the last step
    first = next(e for e in events if e["type"] == "checkpoint")
    assert first["step"] < events[-1]["steps"]

    # the machine is gone, destroyed by the client, and nothing else is alive on the account
    live = fake.live_instances() if provider == "vast" else [p.id for p in fake.pods.values() if not p.terminated_at]
    assert live == []
    assert len(fake.destroyed) == 1
    if provider == "vast":  # the run's key is off the account: Vast would install it on every later machine
        assert fake.ssh_keys == []

    receipt = json.loads((out / "receipt.json").read_text())
    assert receipt["outcome"] == "done" and receipt["destroyed"] is True
    assert {line["phase"] for line in receipt["lines"]} >= {"boot", "setup", "upload", "training", "fetch"}
    assert 0 < receipt["actual_total_usd"] < receipt["budget"] == 5
    shas = {a["path"]: a["sha256"] for a in receipt["artifacts"]}
    assert shas["lora.safetensors"] == hashlib.sha256((out / "lora.safetensors").read_bytes()).hexdigest()

    # the journal knows the run ended and its machine is destroyed
    runs = json.loads(gpurun_json("runs", "--json"))
    (row,) = runs["runs"]
    assert row["state"] == "done" and row["alive"] is False and row["instance"]["status"] == "destroyed"
    assert row["spent"] > 0 and runs["strays"] == []


def test_the_first_offer_failing_fails_over_to_the_next(vast_on_box: Any, tmp_path: Path) -> None:
    chosen = dry_run(tmp_path / "plan", "--provider", "vast", "--budget", "5")["candidates"][0].split(":", 1)[1]
    vast_on_box.inject_capacity_gone(chosen)
    proc = train(tmp_path, "--provider", "vast", "--budget", "5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert vast_on_box.live_instances() == []
    assert (run_dir(tmp_path) / "lora.safetensors").is_file()
    assert chosen not in {str(i.offer.get("id")) for i in vast_on_box.instances.values()}


def test_an_instance_that_never_becomes_ready_is_destroyed_and_replaced(vast_on_box: Any, tmp_path: Path) -> None:
    chosen = dry_run(tmp_path / "plan", "--provider", "vast", "--budget", "5")["candidates"][0].split(":", 1)[1]
    vast_on_box.never_ready(chosen)
    proc = train(tmp_path, "--provider", "vast", "--budget", "5", env={"GPURUN_READY_TIMEOUT_S": "3"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(vast_on_box.instances) == 2 and vast_on_box.live_instances() == []
    assert len(vast_on_box.destroyed) == 2


@pytest.mark.parametrize("keep_minutes", [None, "0.1"])
def test_a_crashing_runner_is_reported_with_its_last_lines_and_the_machine_destroyed(
    keep_minutes: str | None, vast_on_box: Any, box_runs: Any, tmp_path: Path
) -> None:
    """The runner dies (SIGKILL, as a segfault or the kernel's OOM killer would end it): the user gets the box's
    last lines and the machine is destroyed at once; with --keep-on-failure it is kept for debugging (how to
    ssh in is printed) and the re-armed watchdog destroys it when those minutes are up."""
    keep = ["--keep-on-failure", keep_minutes] if keep_minutes else []
    with start_train(tmp_path, 200, "--budget", "5", *keep) as proc:
        read_until(proc, '"type":"step"')
        (folder,) = box_runs()
        os.kill(int((folder / "runner.pid").read_text()), signal.SIGKILL)
        rest, errors = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "the runner stopped without finishing (exit 137)" in errors
    assert "its last lines:" in errors and "Killed" in errors  # the box's own words reach the user
    receipt = json.loads((run_dir(tmp_path) / "receipt.json").read_text())
    assert receipt["outcome"] == "failed"
    assert all(p.stat().st_size > 0 for p in run_dir(tmp_path).glob("*.safetensors"))  # what came back is whole
    if keep_minutes is None:
        assert vast_on_box.live_instances() == [] and receipt["destroyed"] is True
        return
    messages = [d["text"] for d in json_documents(rest) if d.get("type") == "message"]
    assert any(m.startswith("kept for 0.1 min for debugging: ssh -i ") for m in messages)
    assert len(vast_on_box.live_instances()) == 1 and receipt["destroyed"] is False
    wait_until(lambda: vast_on_box.live_instances() == [], timeout=60, what="the watchdog's destroy")
    assert [r.by for r in vast_on_box.destroyed] == ["instance"]


@pytest.mark.parametrize("moment", ["upload", "training"])
def test_client_killed_the_watchdog_destroys_the_instance(moment: str, vast_on_box: Any, tmp_path: Path) -> None:
    """SIGKILL leaves no finally and no teardown: the lease lapses on the box. During sync nothing trains, so the
    watchdog destroys at once; during training it lets the runner finish (the LoRA is worth the minutes), then
    the artifact grace (0 here) ends, and it destroys. Either way with the instance's own scoped key."""
    dataset, config = small_job(tmp_path, epochs=4)
    env = subprocess_env(**{**FAST, "GPURUN_LEASE_TTL_S": "3", "GPURUN_LEASE_INTERVAL_S": "1"})
    marker = '"name":"upload"' if moment == "upload" else '"type":"step"'
    with subprocess.Popen(
        [sys.executable, "-m", "gpurun", "train", str(dataset), "--config", str(config), "--base", "tiny-sd",
         "--provider", "vast", "--budget", "5", "--yes", "--json", "--output", str(tmp_path / "runs"),
         "--artifact-grace", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            if marker in line.replace(" ", ""):
                break
        proc.kill()  # no finally, no teardown: only the watchdog is left
        proc.wait(timeout=10)
    assert len(vast_on_box.live_instances()) == 1
    wait_until(lambda: vast_on_box.live_instances() == [], timeout=90, what="the watchdog's destroy")
    (record,) = vast_on_box.destroyed
    assert record.by == "instance"  # the instance's own scoped key, never the account key


def test_ssh_drop_mid_training_reconnects_and_loses_no_event(
    vast_on_box: Any, warm_box_host: tuple[Box, SshServer], box_runs: Any, tmp_path: Path
) -> None:
    master = int((warm_box_host[1].root / "sshd.pid").read_text())
    with start_train(tmp_path, 6, "--budget", "5") as proc:
        read_until(proc, '"type":"step"')
        killed = child_pids(master)
        for pid in killed:  # every sshd serving a connection: what a network drop or an sshd restart does
            os.kill(pid, signal.SIGKILL)
        assert killed
        _, errors = proc.communicate(timeout=240)
    assert proc.returncode == 0, errors[-3000:]
    (folder,) = box_runs()
    on_box = (folder / "events.jsonl").read_text().splitlines()
    fetched = (run_dir(tmp_path) / "events.jsonl").read_text().splitlines()
    assert fetched == on_box  # every line once, in order: nothing lost, nothing repeated
    steps = [json.loads(line)["step"] for line in fetched if '"type":"step"' in line]
    assert steps == sorted(set(steps)) and steps[-1] == 30
    assert vast_on_box.live_instances() == []


def test_budget_running_out_mid_training_keeps_a_checkpoint_and_destroys(vast_on_box: Any, tmp_path: Path) -> None:
    """The client stops the runner shortly before the hard deadline: GPURUN_CLIENT_DEADLINE_MARGIN_S puts that
    moment 20 s after the watchdog is armed, mid-training, on an offer whose billed price is its quote. The
    runner saves a step checkpoint, it is fetched, the machine destroyed, and the command says the budget ran
    out."""
    vast_on_box.add_offer(vast_offer("RTX 4090", id=4242, dph_base=0.5, storage_cost=0.0, inet_down=5000.0))
    margin = str(dry_run(tmp_path / "plan", "--offer", "vast:4242", "--budget", "5")["hard_deadline_s"] - 20)
    env = {"GPURUN_CLIENT_DEADLINE_MARGIN_S": margin}
    with start_train(tmp_path, 400, "--budget", "5", "--offer", "vast:4242", env=env) as proc:
        _, errors = proc.communicate(timeout=240)
    assert proc.returncode != 0
    assert "the budget ran out before training finished; the last checkpoint was fetched" in errors
    out = run_dir(tmp_path)
    kept = sorted(p.name for p in out.glob("lora-step*.safetensors"))
    assert len(kept) == 1 and verify_lora_file(out / kept[0], "sd15", network_dim=4, network_alpha=2.0) == []
    assert not (out / "lora.safetensors").exists()
    assert vast_on_box.live_instances() == [] and [r.by for r in vast_on_box.destroyed] == ["account"]
    assert json.loads((out / "receipt.json").read_text())["destroyed"] is True
