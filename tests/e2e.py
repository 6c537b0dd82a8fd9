"""Shared ground for the end-to-end tests of `gpurun train` and the run commands (registered as a pytest plugin
in conftest): shortened timings, a small job, fake providers whose instances are the real sshd, and cleanup of
what a run leaves on the "instance" (this machine, reached over sshd)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import subprocess_env
from tests.imaging import make_image
from tests.sshd import SshServer

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


def small_job(root: Path, epochs: int = 3, *, network_dim: int = 4) -> tuple[Path, Path]:
    """A 2-image dataset (10 samples an epoch: 5 steps at batch 2) and a config that saves every epoch
    (network_alpha 2)."""
    data = root / "data" / "5_sks robot"
    for index in range(2):
        make_image(data / f"img{index}.png", (64, 64), seed=index, caption="sks robot, on a table")
    config = root / "training_config.toml"
    config.write_text(
        "[dataset]\nresolution = 64\nbatch_size = 2\nenable_bucket = false\n"
        f"[training]\nmax_train_epochs = {epochs}\nsave_every_n_epochs = 1\nnetwork_dim = {network_dim}\n"
        "network_alpha = 2\n"
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


def dry_run(root: Path, *args: str) -> dict[str, Any]:
    """`gpurun train --dry-run --json` for the small job with tiny-sd: the plan document."""
    dataset, _ = small_job(root)
    proc = subprocess.run(
        [sys.executable, "-m", "gpurun", "train", str(dataset), "--base", "tiny-sd", "--dry-run", "--json", *args],
        capture_output=True, text=True, timeout=120, env=subprocess_env(**FAST),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def gpurun_json(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "gpurun", *args], capture_output=True, text=True, timeout=60, env=subprocess_env()
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def run_dir(root: Path) -> Path:
    (folder,) = [p for p in (root / "runs").iterdir() if p.is_dir()]
    return folder


BOX_RUNS = Path.home() / "gpurun"  # where the "instance" (this machine, over sshd) keeps run folders


@pytest.fixture
def box_runs() -> Any:
    """New run folders on the "instance" during the test; removed afterwards (a real box is destroyed)."""
    before = set(BOX_RUNS.iterdir()) if BOX_RUNS.is_dir() else set()

    def new() -> list[Path]:
        return sorted(set(BOX_RUNS.iterdir()) - before) if BOX_RUNS.is_dir() else []

    yield new
    for folder in new():
        # a fault test may leave the box's processes behind (the real box would be destroyed with them); the
        # launcher's shell writes runner.exit when its runner dies, so kill, remove, and sweep once more
        for _ in range(3):
            for name, kill in (("runner.pid", os.killpg), ("watchdog.pid", os.kill)):
                with contextlib.suppress(OSError, ValueError):
                    kill(int((folder / name).read_text().strip()), signal.SIGKILL)
            for pid in processes_inside(folder):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                break
            time.sleep(0.2)


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


def start_train(tmp_path: Path, epochs: int, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    dataset, config = small_job(tmp_path, epochs=epochs)
    return subprocess.Popen(
        [sys.executable, "-m", "gpurun", "train", str(dataset), "--config", str(config), "--base", "tiny-sd",
         "--provider", "vast", "--yes", "--json", "--output", str(tmp_path / "runs"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(**{**FAST, **(env or {})}),
    )  # fmt: skip


def read_until(proc: subprocess.Popen, needle: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if needle in line.replace(" ", ""):
            return
    raise AssertionError(f"{needle} never came")


def json_documents(text: str) -> list[Any]:
    """Every JSON value in a stream that mixes JSON lines and pretty-printed documents (the --json outputs)."""
    decoder = json.JSONDecoder()
    found, index = [], 0
    while True:
        start = text.find("{", index)
        if start < 0:
            return found
        try:
            value, index = decoder.raw_decode(text, start)
        except ValueError:
            index = start + 1
            continue
        found.append(value)
