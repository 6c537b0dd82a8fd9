"""`gpurun train` end to end, with real parts: the fake Vast and RunPod servers rent "instances" whose SSH endpoint is
the real OpenSSH sshd on 127.0.0.1; rsync, the detached runner (tiny model, CPU), event following, checkpoint
pulls, fetch with sha256, destroy and receipt all run for real. The fault cases each end with nothing alive."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gpurun.lorafile import verify_lora_file
from tests.conftest import subprocess_env
from tests.imaging import make_image
from tests.sshd import SshServer

pytest.importorskip("torch")
pytestmark = [pytest.mark.slow, pytest.mark.sshd]

#: orchestration timings shortened for tests (JobOptions reads GPURUN_<NAME>)
FAST = {
    "GPURUN_POLL_S": "0.2",
    "GPURUN_WATCHDOG_POLL_S": "0.5",
    "GPURUN_LEASE_INTERVAL_S": "1",
    "GPURUN_READY_TIMEOUT_S": "20",
    "GPURUN_CONNECT_TIMEOUT_S": "30",
    "GPURUN_RUNNER_STOP_GRACE_S": "20",
    # the "instance" is this machine: the runner uses the interpreter that has torch, no CUDA probe
    "GPURUN_PYTHON": sys.executable,
    "GPURUN_CHECK_CUDA": "0",
}


def small_job(root: Path, epochs: int = 3) -> tuple[Path, Path]:
    """A 2-image dataset (10 samples an epoch: 5 steps at batch 2) and a config that saves every epoch."""
    data = root / "data" / "5_sks robot"
    for index in range(2):
        make_image(data / f"img{index}.png", (64, 64), seed=index, caption="sks robot, on a table")
    config = root / "training_config.toml"
    config.write_text(
        "[dataset]\nresolution = 64\nbatch_size = 2\nenable_bucket = false\n"
        f"[training]\nmax_train_epochs = {epochs}\nsave_every_n_epochs = 1\nnetwork_dim = 4\nnetwork_alpha = 2\n"
        'learning_rate = 1e-4\noptimizer_type = "AdamW"\nseed = 3\n'
        "[sample]\nsample_steps = 1\nsample_seeds = [1]\nsample_weights = [0.0, 1.0]\n"
    )
    return data.parent, config


def train(
    root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    dataset, config = small_job(root)
    return subprocess.run(
        [sys.executable, "-m", "gpurun", "train", str(dataset), "--config", str(config), "--base", "tiny-sd",
         "--yes", "--json", "--output", str(root / "runs"), *args],
        capture_output=True, text=True, timeout=timeout, env=subprocess_env(**{**FAST, **(env or {})}),
    )  # fmt: skip


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def gpurun_json(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "gpurun", *args], capture_output=True, text=True, timeout=60, env=subprocess_env()
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def run_dir(root: Path) -> Path:
    (folder,) = [p for p in (root / "runs").iterdir() if p.is_dir()]
    return folder


def journal_rows(home: Path, sql: str) -> list[tuple]:
    (db,) = list((home / "state").rglob("*.sqlite*"))[:1] or list((home / "state").rglob("*.db"))
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


BOX_RUNS = Path.home() / "gpurun"  # where the "instance" (this machine, over sshd) keeps run folders


@pytest.fixture
def box_runs() -> Any:
    """New run folders on the "instance" during the test; removed afterwards (a real box is destroyed)."""
    before = set(BOX_RUNS.iterdir()) if BOX_RUNS.is_dir() else set()

    def new() -> list[Path]:
        return sorted(set(BOX_RUNS.iterdir()) - before) if BOX_RUNS.is_dir() else []

    yield new
    for folder in new():
        # a fault test may leave the box's processes behind (the real box would be destroyed with them)
        for name, kill in (("runner.pid", os.killpg), ("watchdog.pid", os.kill)):
            with contextlib.suppress(OSError, ValueError):
                kill(int((folder / name).read_text().strip()), signal.SIGKILL)
        for pid in processes_inside(folder):  # and anything else started there
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def processes_inside(folder: Path) -> list[int]:
    """Pids whose working directory is `folder` or below (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                    found.append(int(entry.name))
    return found


@pytest.fixture
def vast_on_sshd(fake_vast: Any, sshd_server: SshServer, box_runs: Any) -> Any:
    fake_vast.set_ssh_endpoint(sshd_server.host, sshd_server.port)
    fake_vast.key_sinks.append(sshd_server.authorize)
    return fake_vast


@pytest.fixture
def runpod_on_sshd(fake_runpod: Any, sshd_server: SshServer, box_runs: Any) -> Any:
    fake_runpod.set_ssh_endpoint(sshd_server.host, sshd_server.port)
    fake_runpod.key_sinks.append(sshd_server.authorize)
    return fake_runpod


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("provider", ["vast", "runpod"])
def test_a_run_rents_trains_fetches_verifies_and_destroys(
    provider: str, request: pytest.FixtureRequest, tmp_path: Path, gpurun_home: Path
) -> None:
    fake = request.getfixturevalue(f"{provider}_on_sshd")
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


def test_the_first_offer_failing_fails_over_to_the_next(vast_on_sshd: Any, tmp_path: Path) -> None:
    dry = subprocess.run(
        [sys.executable, "-m", "gpurun", "train", *map(str, small_job(tmp_path / "plan")[:1]), "--base", "tiny-sd",
         "--provider", "vast", "--budget", "5", "--dry-run", "--json"],
        capture_output=True, text=True, timeout=120, env=subprocess_env(**FAST),
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr[-2000:]
    chosen = json.loads(dry.stdout)["candidates"][0].split(":", 1)[1]
    vast_on_sshd.inject_capacity_gone(chosen)
    proc = train(tmp_path, "--provider", "vast", "--budget", "5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert vast_on_sshd.live_instances() == []
    assert (run_dir(tmp_path) / "lora.safetensors").is_file()
    assert chosen not in {str(i.offer.get("id")) for i in vast_on_sshd.instances.values()}


def test_an_instance_that_never_becomes_ready_is_destroyed_and_replaced(vast_on_sshd: Any, tmp_path: Path) -> None:
    dataset, _ = small_job(tmp_path / "plan")
    dry = subprocess.run(
        [sys.executable, "-m", "gpurun", "train", str(dataset), "--base", "tiny-sd", "--provider", "vast",
         "--budget", "5", "--dry-run", "--json"],
        capture_output=True, text=True, timeout=120, env=subprocess_env(**FAST),
    )  # fmt: skip
    chosen = json.loads(dry.stdout)["candidates"][0].split(":", 1)[1]
    vast_on_sshd.never_ready(chosen)
    proc = train(tmp_path, "--provider", "vast", "--budget", "5", env={"GPURUN_READY_TIMEOUT_S": "3"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(vast_on_sshd.instances) == 2 and vast_on_sshd.live_instances() == []
    assert len(vast_on_sshd.destroyed) == 2


def test_a_crashing_runner_is_reported_with_its_last_lines_and_the_machine_destroyed(
    vast_on_sshd: Any, box_runs: Any, tmp_path: Path
) -> None:
    dataset, config = small_job(tmp_path, epochs=200)
    with subprocess.Popen(
        [sys.executable, "-m", "gpurun", "train", str(dataset), "--config", str(config), "--base", "tiny-sd",
         "--provider", "vast", "--budget", "5", "--yes", "--json", "--output", str(tmp_path / "runs")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(**FAST),
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            if '"type":"step"' in line.replace(" ", ""):
                break
        (folder,) = box_runs()
        pid = int((folder / "runner.pid").read_text())
        os.kill(pid, signal.SIGKILL)  # the runner dies as a segfault or the kernel's OOM killer would end it
        _, errors = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "the runner stopped without finishing (exit 137)" in errors
    assert "its last lines:" in errors and "Killed" in errors  # the box's own words reach the user
    assert vast_on_sshd.live_instances() == []
    receipt = json.loads((run_dir(tmp_path) / "receipt.json").read_text())
    assert receipt["outcome"] == "failed" and receipt["destroyed"] is True
    # what had been trained is kept: the first epoch's checkpoint came back before the crash, or none was due
    assert all(p.stat().st_size > 0 for p in run_dir(tmp_path).glob("*.safetensors"))


@pytest.mark.parametrize("moment", ["sync", "training"])
def test_client_killed_the_watchdog_destroys_the_instance(moment: str, vast_on_sshd: Any, tmp_path: Path) -> None:
    """SIGKILL leaves no finally and no teardown: the lease lapses on the box. During sync nothing trains, so the
    watchdog destroys at once; during training it lets the runner finish (the LoRA is worth the minutes), then
    the artifact grace (0 here) ends, and it destroys. Either way with the instance's own scoped key."""
    dataset, config = small_job(tmp_path, epochs=4)
    env = subprocess_env(**{**FAST, "GPURUN_LEASE_TTL_S": "3", "GPURUN_LEASE_INTERVAL_S": "1"})
    marker = '"name":"sync"' if moment == "sync" else '"type":"step"'
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
    assert len(vast_on_sshd.live_instances()) == 1
    wait_until(lambda: vast_on_sshd.live_instances() == [], timeout=90, what="the watchdog's destroy")
    (record,) = vast_on_sshd.destroyed
    assert record.by == "instance"  # the instance's own scoped key, never the account key
