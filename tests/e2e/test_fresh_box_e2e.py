"""The fresh-box tier: a rented machine as it really comes, and a client that dies before it ever connects.

The box is a new unprivileged user whose only Python is a stock python3.11 with torch and nothing else: no
GPURUN_PYTHON, no test venv, no dev packages. The fake provider starts its container for real (Vast's onstart,
RunPod's start command before the image's /start.sh), so the watchdog arms at container start; bootstrap installs
gpurun's lock from the package index, runs the smoke check, and downloads the base model from a loopback hub
with huggingface_hub; the runner trains; the LoRA comes back verified; the machine is destroyed."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from gpurun.lorafile import verify_lora_file
from gpurun.remote.boxlock import load_lock
from tests.support.boxes import Box, image_python
from tests.support.e2e import json_documents, messages, run_dir, start_train, train, wait_until
from tests.support.fakes.hub_server import FakeHub
from tests.support.sshd import SshServer

pytest.importorskip("torch")
pytestmark = [pytest.mark.slow, pytest.mark.sshd]


@pytest.mark.parametrize("provider", ["vast", "runpod"])
def test_a_stock_pytorch_image_gets_the_locked_stack_trains_and_is_destroyed(
    provider: str,
    request: pytest.FixtureRequest,
    fresh_box: Box,
    fresh_box_host: tuple[Box, SshServer],
    fake_hub: FakeHub,
    tiny_hub_repo: str,
    tmp_path: Path,
) -> None:
    fake = request.getfixturevalue(f"fake_{provider}")
    fake.attach_box(fresh_box, fresh_box_host[1].host, fresh_box_host[1].port)
    proc = train(tmp_path, "--provider", provider, "--budget", "5", base=tiny_hub_repo, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]

    out = run_dir(tmp_path)
    assert verify_lora_file(out / "lora.safetensors", "sd15", network_dim=4, network_alpha=2.0) == []
    receipt = json.loads((out / "receipt.json").read_text())
    assert receipt["outcome"] == "done" and receipt["destroyed"] is True
    live = fake.live_instances() if provider == "vast" else [p.id for p in fake.pods.values() if not p.terminated_at]
    assert live == []

    said = messages(proc.stdout)
    assert any(m.startswith("watchdog adopted (armed when the container started") for m in said), said
    phases = [d.get("detail", "") for d in json_documents(proc.stdout) if d.get("type") == "client_phase"]
    lock = load_lock("3.11")
    assert any(p.startswith("environment installed:") and f"transformers={lock.pins['transformers']}" in p
               for p in phases), phases  # fmt: skip
    assert any(p.startswith("smoke check passed") for p in phases), phases

    # on the box: the lock went into gpurun's own folder, torch stayed the image's; the model came from the hub
    (env,) = list((fresh_box.home / ".gpurun" / "env").iterdir())
    assert (env / ".gpurun-ready").exists() and (env / "transformers").is_dir() and not list(env.glob("torch*"))
    fetched = {r.path for r in fake_hub.requests if r.method == "GET" and "/resolve/" in r.path}
    assert any(p.endswith("unet/diffusion_pytorch_model.safetensors") for p in fetched)
    (run,) = list(fresh_box.remains.iterdir())
    log = [json.loads(line) for line in (run / "watchdog.log").read_text().splitlines()]
    assert [e["event"] for e in log].count("start") == 1 and any(e["event"] == "config_reloaded" for e in log)


@pytest.mark.parametrize("provider", ["vast", "runpod"])
def test_a_client_killed_before_ssh_is_covered_by_the_switch_armed_at_container_start(
    provider: str, request: pytest.FixtureRequest, warm_box: Box, tmp_path: Path
) -> None:
    """The container starts (and with it the watchdog), but the API is slow to say so; the client dies while it
    waits, before any SSH. With nobody to adopt it, the watchdog's boot lease runs out and it destroys the machine
    with the instance's own key, within its bound."""
    fake = request.getfixturevalue(f"{provider}_on_box")
    fake.boot_after_polls = 1
    fake.pending_polls = 10_000  # never reported running: the client can only wait
    boot_lease = 4.0
    env = {"GPURUN_BOOT_LEASE_S": str(boot_lease), "GPURUN_READY_TIMEOUT_S": "600"}
    with start_train(tmp_path, 2, "--budget", "5", provider=provider, env=env) as proc:
        log = wait_until(lambda: _watchdog_log(warm_box), timeout=60, what="the watchdog armed at container start")
        proc.send_signal(signal.SIGKILL)  # no finally, no teardown
        proc.wait(timeout=10)
    started = next(e["t"] for e in log if e["event"] == "start")
    wait_until(lambda: fake.destroyed, timeout=60, what="the watchdog's destroy")
    (record,) = fake.destroyed
    assert record.by == ("instance" if provider == "vast" else "pod")  # its own scoped key, not the account's
    assert record.at - started < boot_lease + 10
    (run,) = list(warm_box.remains.iterdir())
    reasons = [json.loads(line).get("reason") for line in (run / "watchdog.log").read_text().splitlines()]
    assert "lease_lapsed_no_training" in reasons
    assert not (run / "lease").exists()  # the client never reached the box


def _watchdog_log(box: Box) -> list[dict[str, Any]]:
    found = sorted(box.runs.glob("*/watchdog.log")) if box.runs.exists() else []
    if not found:
        return []
    events = [json.loads(line) for line in found[0].read_text().splitlines() if line.strip()]
    return events if any(e["event"] == "credential_checked" for e in events) else []


def test_runpod_with_an_image_that_starts_no_sshd_is_refused_before_renting(runpod_on_box: Any, tmp_path: Path) -> None:
    proc = train(tmp_path, "--provider", "runpod", "--budget", "5", "--image",
                 "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime")  # fmt: skip
    assert proc.returncode != 0
    assert "RunPod starts sshd only in its own images" in proc.stderr
    assert runpod_on_box.pods == {}  # nothing was rented


def test_an_image_without_torch_fails_in_seconds_says_why_and_is_destroyed(
    fresh_box: Box, fresh_box_host: tuple[Box, SshServer], fake_vast: Any, tmp_path: Path
) -> None:
    """A user's --image whose python has no torch: bootstrap refuses it at once (gpurun never installs torch over
    an image), the error says so, and the machine is destroyed."""
    bare = fresh_box.with_image(image_python("bare"))
    bare.reset()
    fake_vast.attach_box(bare, fresh_box_host[1].host, fresh_box_host[1].port)
    started = time.monotonic()
    proc = train(tmp_path, "--provider", "vast", "--budget", "5")
    assert proc.returncode == 1
    assert "lacks what gpurun never installs: torch" in proc.stderr and "use a PyTorch CUDA image" in proc.stderr
    assert fake_vast.live_instances() == [] and [r.by for r in fake_vast.destroyed] == ["account"]
    receipt = json.loads((run_dir(tmp_path) / "receipt.json").read_text())
    assert receipt["outcome"] == "failed" and receipt["destroyed"] is True
    assert time.monotonic() - started < 120
