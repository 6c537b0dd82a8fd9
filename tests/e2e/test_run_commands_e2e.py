"""The run-management commands on real runs: --detach then `gpurun attach`, Ctrl-C once (detach) and twice
(cancel), `gpurun cancel`, `gpurun logs`, and `gpurun runs --all` / `gpurun down --strays` for a machine the
journal does not know. The fake Vast's instances are the real sshd, as in test_train_e2e."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gpurun.lorafile import verify_lora_file
from tests.support.e2e import FAST, json_documents, read_until, run_dir, small_job, start_train, wait_until
from tests.support.env import subprocess_env

pytest.importorskip("torch")
pytestmark = [pytest.mark.slow, pytest.mark.sshd]


def gpurun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpurun", *args], capture_output=True, text=True, timeout=timeout,
        env=subprocess_env(**FAST),
    )  # fmt: skip


def train_args(tmp_path: Path, epochs: int) -> list[str]:
    dataset, config = small_job(tmp_path, epochs=epochs)
    return ["train", str(dataset), "--config", str(config), "--base", "tiny-sd", "--provider", "vast",
            "--budget", "5", "--yes", "--output", str(tmp_path / "runs")]  # fmt: skip


def only_run_id(tmp_path: Path) -> str:
    return run_dir(tmp_path).name


def test_detach_then_attach_fetches_and_destroys(vast_on_box: Any, tmp_path: Path) -> None:
    detached = gpurun(*train_args(tmp_path, 4), "--detach")
    assert detached.returncode == 0, detached.stderr[-2000:]
    run = only_run_id(tmp_path)
    assert f"gpurun attach {run}" in detached.stderr
    assert len(vast_on_box.live_instances()) == 1  # the run goes on without us

    attached = gpurun("attach", run[:8], "--json")
    assert attached.returncode == 0, attached.stderr[-2000:]
    out = run_dir(tmp_path)
    assert verify_lora_file(out / "lora.safetensors", "sd15", network_dim=4, network_alpha=2.0) == []
    assert vast_on_box.live_instances() == []
    lines = (out / "events.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines))  # attach resumed from the offset: no line twice
    assert json.loads(lines[-1])["type"] == "done"

    logs = gpurun("logs", run)
    assert logs.returncode == 0 and "done" in logs.stdout


def test_cancel_a_detached_run_keeps_what_exists_and_destroys(vast_on_box: Any, box_runs: Any, tmp_path: Path) -> None:
    detached = gpurun(*train_args(tmp_path, 400), "--detach")
    assert detached.returncode == 0, detached.stderr[-2000:]
    run = only_run_id(tmp_path)
    (folder,) = box_runs()
    wait_until(lambda: '"type":"step"' in (folder / "events.jsonl").read_text(), 60, "training on the box")
    cancelled = gpurun("cancel", run, "--json")
    assert cancelled.returncode == 0, cancelled.stderr[-2000:]
    receipt = json_documents(cancelled.stdout)[-1]
    assert receipt["outcome"] == "cancelled" and receipt["destroyed"] is True
    kept = list(run_dir(tmp_path).glob("lora-step*.safetensors"))
    assert len(kept) == 1  # the runner's SIGTERM checkpoint came back
    assert vast_on_box.live_instances() == []


def test_ctrl_c_once_detaches_twice_cancels(vast_on_box: Any, tmp_path: Path) -> None:
    with start_train(tmp_path / "once", 400, "--budget", "5") as proc:
        read_until(proc, '"type":"step"')
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    messages = [d["text"] for d in json_documents(rest) if d.get("type") == "message"]
    assert proc.returncode == 0 and any(m.startswith("detached:") and "gpurun attach" in m for m in messages)
    assert len(vast_on_box.live_instances()) == 1
    cancel = gpurun("cancel", only_run_id(tmp_path / "once"))
    assert cancel.returncode == 0 and vast_on_box.live_instances() == []

    with start_train(tmp_path / "twice", 400, "--budget", "5") as proc:
        read_until(proc, '"type":"step"')
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)  # two presses, as a person makes them (signals sent together coalesce into one)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    assert vast_on_box.live_instances() == []
    receipt = json_documents(rest)[-1]
    assert receipt["type"] == "receipt" and receipt["outcome"] == "cancelled" and receipt["destroyed"] is True
    assert list(run_dir(tmp_path / "twice").glob("lora-step*.safetensors"))


def test_a_stray_instance_is_flagged_and_destroyed(vast_on_box: Any, tmp_path: Path) -> None:
    """A gpurun-labelled machine the journal never heard of (a crash between create and the journal write, or
    another laptop): `runs --all` flags it, `down --strays` destroys it."""
    import httpx

    offer = next(iter(vast_on_box.offers))
    response = httpx.put(
        f"{vast_on_box.base_url}/api/v0/asks/{offer}/",
        headers={"Authorization": f"Bearer {vast_on_box.api_key}"},
        json={"image": "pytorch/pytorch", "disk": 20, "label": "gpurun-rlostrun0000", "runtype": "ssh_direc ssh_proxy"},
    )
    assert response.status_code == 200, response.text
    listed = gpurun("runs", "--all", "--json")
    assert listed.returncode == 0, listed.stderr
    strays = json.loads(listed.stdout)["strays"]
    assert [s["label"] for s in strays] == ["gpurun-rlostrun0000"]
    # a key a crashed run left on the account goes too; the user's own keys, gpurun-named or not, stay
    body = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + "x" * 43
    left_behind, users, users_too = f"{body} gpurun-r01kf3m9x2c7qzab", f"{body}Y me@laptop", f"{body}Z gpurun-laptop"
    for key in (left_behind, users, users_too):
        vast_on_box.ssh_keys.append({"id": len(vast_on_box.ssh_keys) + 900, "public_key": key})
    down = gpurun("down", "--strays", "--yes", "--json")
    assert down.returncode == 0, down.stderr
    assert vast_on_box.live_instances() == []
    assert json.loads(down.stdout)["keys_removed"] == ["vast:r01kf3m9x2c7qzab"]
    assert [k["public_key"] for k in vast_on_box.ssh_keys] == [users, users_too]
