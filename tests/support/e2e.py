"""Shared ground for the end-to-end tests of `gpurun train` and the run commands (registered as a pytest plugin
in conftest): shortened timings, a small job, and fake providers whose instances are boxes (tests/support/boxes.py):
unprivileged users on this machine behind their own sshd, started and destroyed as a provider does it.

Two box images: `warm` (a stock python3.11 with torch and gpurun's lock: the stack is there, bootstrap only checks
it) and `fresh` (a stock python3.11 with torch and nothing else: bootstrap installs the lock from the package
index for real). The warm box keeps its ~/.gpurun between tests (a warm host); the fresh box starts empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.boxes import Box, can_make_boxes, ensure_user, image_python, remove_user
from tests.support.env import subprocess_env
from tests.support.imaging import make_image
from tests.support.sshd import SshServer, start_sshd

#: orchestration timings shortened for tests (JobOptions reads GPURUN_<NAME>)
FAST = {
    "GPURUN_POLL_S": "0.2",
    "GPURUN_WATCHDOG_POLL_S": "0.5",
    "GPURUN_LEASE_INTERVAL_S": "1",
    "GPURUN_READY_TIMEOUT_S": "20",
    "GPURUN_CONNECT_TIMEOUT_S": "30",
    "GPURUN_RUNNER_STOP_GRACE_S": "20",
    # a box is a user on this machine: no `shutdown` fallback, and a boot lease long enough for a busy CI box
    "GPURUN_WATCHDOG_FALLBACK": "0",
    "GPURUN_BOOT_LEASE_S": "120",
    # no GPU here: bootstrap need not import torch to report CUDA
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
    root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300, base: str = "tiny-sd"
) -> subprocess.CompletedProcess:
    dataset, config = small_job(root)
    return subprocess.run(
        [sys.executable, "-m", "gpurun", "train", str(dataset), "--config", str(config), "--base", base,
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


#: what the warm image's environment says to an SSH session: no model hub is reachable from here
WARM_IMAGE_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
FRESH_IMAGE_ENV = {"HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
#: the test machine's network settings (a TLS-inspecting proxy's CA, proxies): a box on this network needs them
#: to reach the package index, as a real box needs its own network's
NETWORK_ENV = (
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT", "UV_NATIVE_TLS",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)  # fmt: skip


def _box_host(name: str, image: str, env: dict[str, str], tmp: Path) -> Iterator[tuple[Box, SshServer]]:
    reason = can_make_boxes()
    if reason is not None:
        pytest.skip(reason)
    network = {k: os.environ[k] for k in NETWORK_ENV if os.environ.get(k)}
    box = ensure_user(name, image_python(image), {**network, **env})
    proc, server = start_sshd(tmp, box_user=box.name, box_home=box.home)
    try:
        yield box, server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        remove_user(box)


@pytest.fixture(scope="session")
def warm_box_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Box, SshServer]]:
    """The warm box user and its sshd, for the session."""
    yield from _box_host("gpurun-box", "warm", WARM_IMAGE_ENV, tmp_path_factory.mktemp("warm-box-sshd"))


@pytest.fixture(scope="session")
def fresh_box_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Box, SshServer]]:
    """The fresh (stock image) box user and its sshd, for the session."""
    yield from _box_host("gpurun-fresh", "stock", FRESH_IMAGE_ENV, tmp_path_factory.mktemp("fresh-box-sshd"))


@pytest.fixture
def warm_box(warm_box_host: tuple[Box, SshServer]) -> Iterator[Box]:
    """A new container on the warm host: nothing running, no run folders, no keys; ~/.gpurun (the checked
    environment, the smoke marker) and caches stay, as on a host that has run gpurun before."""
    box, _ = warm_box_host
    box.reset(keep=(".gpurun", ".cache"))
    yield box
    box.destroy()


@pytest.fixture
def fresh_box(fresh_box_host: tuple[Box, SshServer]) -> Iterator[Box]:
    """A new container on a never-used stock image: an empty home."""
    box, _ = fresh_box_host
    box.reset()
    yield box
    box.destroy()


@pytest.fixture(scope="session")
def second_warm_box_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Box, SshServer]]:
    """A second warm host and its sshd (a fleet rents two machines at once)."""
    yield from _box_host("gpurun-box2", "warm", WARM_IMAGE_ENV, tmp_path_factory.mktemp("warm-box2-sshd"))


@pytest.fixture
def vast_on_two_boxes(
    fake_vast: Any, warm_box_host: tuple[Box, SshServer], warm_box: Box, second_warm_box_host: tuple[Box, SshServer]
) -> Iterator[Any]:
    """The fake Vast, renting the warm box and a second warm box: two instances can run at once."""
    box, server = second_warm_box_host
    box.reset(keep=(".gpurun", ".cache"))
    fake_vast.attach_box(warm_box, warm_box_host[1].host, warm_box_host[1].port)
    fake_vast.add_box(box, server.host, server.port)
    yield fake_vast
    box.destroy()


#: the tiny SD 1.5 model's repo on the fake hub (`tiny_hub_repo`)
TINY_REPO = "gpurun-tests/tiny-sd15"


@pytest.fixture
def tiny_hub_repo(fake_hub: Any, tiny_sd15: Any) -> str:
    """The tiny SD 1.5 model as a diffusers repo on the fake hub, as a user's fine-tune would be."""
    folder = Path(tiny_sd15.diffusers_dir)
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    fake_hub.add_repo(TINY_REPO, files)
    return TINY_REPO


@pytest.fixture
def box_runs(warm_box: Box) -> Any:
    """The run folders on the warm box (each test starts with none); once the instance is destroyed, the folders
    as they were at that moment."""

    def runs() -> list[Path]:
        for folder in (warm_box.runs, warm_box.remains):
            if folder.is_dir() and any(folder.iterdir()):
                return sorted(p for p in folder.iterdir() if p.is_dir())
        return []

    return runs


@pytest.fixture
def vast_on_box(fake_vast: Any, warm_box_host: tuple[Box, SshServer], warm_box: Box) -> Any:
    """The fake Vast, renting the warm box."""
    fake_vast.attach_box(warm_box, warm_box_host[1].host, warm_box_host[1].port)
    return fake_vast


@pytest.fixture
def runpod_on_box(fake_runpod: Any, warm_box_host: tuple[Box, SshServer], warm_box: Box) -> Any:
    """The fake RunPod, renting the warm box."""
    fake_runpod.attach_box(warm_box, warm_box_host[1].host, warm_box_host[1].port)
    return fake_runpod


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def start_train(
    tmp_path: Path, epochs: int, *args: str, env: dict[str, str] | None = None, provider: str = "vast"
) -> subprocess.Popen:
    dataset, config = small_job(tmp_path, epochs=epochs)
    return subprocess.Popen(
        [sys.executable, "-m", "gpurun", "train", str(dataset), "--config", str(config), "--base", "tiny-sd",
         "--provider", provider, "--yes", "--json", "--output", str(tmp_path / "runs"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(**{**FAST, **(env or {})}),
    )  # fmt: skip


def read_until(proc: subprocess.Popen, needle: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if needle in line.replace(" ", ""):
            return
    raise AssertionError(f"{needle} never came")


def messages(stdout: str) -> list[str]:
    """The `message` events of a `--json` run."""
    return [d["text"] for d in json_documents(stdout) if d.get("type") == "message"]


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
