"""Several LoRAs per rental, end to end over the fake Vast and real boxes behind the real sshd: a queue of three
jobs on one machine (one environment, one base download, three LoRAs, one destroy), and `--parallel 2` over a
queue of four (two machines at once, each with its own watchdog, both destroyed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gpurun.lorafile import verify_lora_file
from tests.support.boxes import Box
from tests.support.e2e import FAST, json_documents, messages, small_job
from tests.support.env import REPO_ROOT, subprocess_env
from tests.support.fakes.hub_server import FakeHub
from tests.support.imaging import make_image
from tests.support.sshd import SshServer

pytest.importorskip("torch")
pytestmark = [pytest.mark.slow, pytest.mark.sshd]


def _datasets(root: Path, names: list[str]) -> list[Path]:
    """One small dataset per name (2 images, 5 repeats), each a kohya root."""
    folders = []
    for n, name in enumerate(names):
        concept = root / name / f"5_{name}"
        for index in range(2):
            make_image(concept / f"img{index}.png", (64, 64), seed=10 * n + index, caption=f"{name}, on a table")
        folders.append(concept.parent)
    return folders


def _gpurun(root: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpurun", "train", *args, "--yes", "--json", "--output", str(root / "runs")],
        capture_output=True, text=True, timeout=timeout, env=subprocess_env(**FAST),
    )  # fmt: skip


def _why(proc: subprocess.CompletedProcess) -> str:
    """What a failed queue said: its messages and its jobs' outcomes."""
    jobs = [d.get("jobs") for d in json_documents(proc.stdout) if d.get("type") == "queue-receipt"]
    return "\n".join(messages(proc.stdout)[-30:]) + f"\njobs: {jobs}\n" + proc.stderr[-3000:]


def _queue_folder(root: Path) -> Path:
    (folder,) = [p for p in (root / "runs").iterdir() if p.is_dir()]
    return folder


def test_three_loras_share_one_machine_set_up_once(
    fresh_box: Box, fresh_box_host: tuple[Box, SshServer], fake_vast: Any, fake_hub: FakeHub, tiny_hub_repo: str,
    tmp_path: Path, gpurun_home: Path,
) -> None:  # fmt: skip
    fake_vast.attach_box(fresh_box, fresh_box_host[1].host, fresh_box_host[1].port)
    hub_before = len(fake_hub.requests)  # the hub is the session's: earlier tests downloaded from it too
    _, config = small_job(tmp_path, epochs=2)
    datasets = _datasets(tmp_path, ["robot", "cat", "dog"])
    proc = _gpurun(tmp_path, *map(str, datasets), "--config", str(config), "--base", tiny_hub_repo,
                   "--provider", "vast", "--budget", "5")  # fmt: skip
    assert proc.returncode == 0, _why(proc)

    queue = _queue_folder(tmp_path)
    receipt = json.loads((queue / "receipt.json").read_text())
    assert receipt["mode"] == "one machine"
    assert [(j["name"], j["outcome"]) for j in receipt["jobs"]] == [("robot", "done"), ("cat", "done"), ("dog", "done")]
    (machine,) = receipt["machines"]
    assert machine["jobs"] == ["robot", "cat", "dog"] and machine["destroyed"] is True
    # one rental, destroyed; the jobs' shares add up to no more than the machine's bill
    assert len(fake_vast.instances) == 1 and fake_vast.live_instances() == [] and len(fake_vast.destroyed) == 1
    assert sum(j["dollars"] for j in receipt["jobs"]) <= machine["dollars"] <= receipt["budget"] == 5

    # three LoRAs, each in its own folder with its grid, receipt and report; an index links them
    for job in receipt["jobs"]:
        folder = queue / job["name"]
        assert verify_lora_file(folder / "lora.safetensors", "sd15", network_dim=4, network_alpha=2.0) == []
        assert (folder / "grid.png").stat().st_size > 0 and (folder / "report.html").is_file()
        own = json.loads((folder / "receipt.json").read_text())
        assert own["outcome"] == "done" and own["run_id"] == job["run_id"]
        assert {line["phase"] for line in own["lines"] if line["actual_s"]} == {"upload", "training", "fetch"}
    index = (queue / "index.html").read_text()
    assert all(f'href="{name}/report.html"' in index for name in ("robot", "cat", "dog"))
    machine_receipt = json.loads(Path(machine["receipt"]).read_text())
    assert {line["phase"] for line in machine_receipt["lines"] if line["actual_s"]} >= {"boot", "setup", "teardown"}

    # the environment was installed once and the base model downloaded once, for three jobs
    phases = [d.get("detail", "") for d in json_documents(proc.stdout) if d.get("type") == "client_phase"]
    assert sum(p.startswith("environment installed:") for p in phases) == 1, phases
    unet = [
        r
        for r in fake_hub.requests[hub_before:]
        if r.method == "GET" and r.path.endswith("unet/diffusion_pytorch_model.safetensors")
    ]
    assert len(unet) == 1
    # on the box, each job trained in its own folder; the watchdog followed each job's runner in turn
    (run,) = list(fresh_box.remains.iterdir())
    assert sorted(p.name for p in (run / "jobs").iterdir()) == ["cat", "dog", "robot"]
    log = [json.loads(line) for line in (run / "watchdog.log").read_text().splitlines()]
    assert sum(e["event"] == "config_reloaded" for e in log) >= 3


def test_two_machines_share_a_queue_of_four(
    vast_on_two_boxes: Any, warm_box: Box, second_warm_box_host: tuple[Box, SshServer], tmp_path: Path,
    gpurun_home: Path,
) -> None:  # fmt: skip
    _, config = small_job(tmp_path, epochs=1)
    datasets = _datasets(tmp_path, ["a", "b", "c", "d"])
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        f'[defaults]\nbase = "tiny-sd"\nconfig = "{config}"\n'
        + "".join(f'[[job]]\ndataset = "{d.name}"\nname = "lora-{d.name}"\n' for d in datasets)
    )
    plan = _gpurun(tmp_path, "--queue", str(jobs), "--parallel", "2", "--provider", "vast", "--budget", "5",
                   "--dry-run", timeout=120)  # fmt: skip
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = json.loads(plan.stdout)
    assert planned["mode"] == "machines" and len(planned["machines"]) == 2
    assert sum(m["budget"] for m in planned["machines"]) == pytest.approx(5.0)
    assert {"one machine", "2 machines", "separate rentals"} <= set(planned["alternatives"])

    proc = _gpurun(tmp_path, "--queue", str(jobs), "--parallel", "2", "--provider", "vast", "--budget", "5")
    assert proc.returncode == 0, _why(proc)
    receipt = json.loads((_queue_folder(tmp_path) / "receipt.json").read_text())
    assert sorted(j["name"] for j in receipt["jobs"] if j["outcome"] == "done") == [
        "lora-a", "lora-b", "lora-c", "lora-d"
    ]  # fmt: skip
    machines = receipt["machines"]
    assert len(machines) == 2 and all(m["destroyed"] for m in machines)
    assert sorted(j for m in machines for j in m["jobs"]) == ["lora-a", "lora-b", "lora-c", "lora-d"]
    assert all(m["jobs"] for m in machines)  # both machines worked
    # two rentals at once (one per box), both destroyed; each box ran its own watchdog
    instances = vast_on_two_boxes.instances
    assert len(instances) == 2 and vast_on_two_boxes.live_instances() == []
    assert {inst.host for inst in instances.values()} == {0, 1}
    for box in (warm_box, second_warm_box_host[0]):
        (run,) = list(box.remains.iterdir())
        assert (run / "watchdog.log").is_file() and list((run / "jobs").iterdir())
    listing = subprocess.run(
        [sys.executable, "-m", "gpurun", "runs", "--json", "--limit", "50"], capture_output=True, text=True,
        timeout=60, env=subprocess_env(), check=True,
    )  # fmt: skip
    runs = json.loads(listing.stdout)
    assert all(row["alive"] is False for row in runs["runs"]) and runs["strays"] == []


@pytest.mark.skipif(not os.environ.get("GPURUN_BENCH"), reason="a benchmark: GPURUN_BENCH=1 runs it (see bench/)")
def test_bench_a_queue_of_three_against_three_separate_rentals(
    fresh_box: Box, fresh_box_host: tuple[Box, SshServer], fake_vast: Any, tiny_hub_repo: str, tmp_path: Path,
    gpurun_home: Path,
) -> None:  # fmt: skip
    """Seconds and dollars of three jobs on one machine against the same three jobs rented one by one, each rental
    on a fresh stock image (environment installed, base model downloaded). Writes bench/results/queue.json."""
    fake_vast.attach_box(fresh_box, fresh_box_host[1].host, fresh_box_host[1].port)
    _, config = small_job(tmp_path, epochs=2)
    datasets = _datasets(tmp_path, ["robot", "cat", "dog"])
    common = ("--config", str(config), "--base", tiny_hub_repo, "--provider", "vast", "--budget", "5")
    started = time.monotonic()
    proc = _gpurun(tmp_path / "queue", *map(str, datasets), *common)
    queue_s = time.monotonic() - started
    assert proc.returncode == 0, _why(proc)
    queue = json.loads((_queue_folder(tmp_path / "queue") / "receipt.json").read_text())
    separate = []
    for dataset in datasets:
        fresh_box.reset()  # a new rental: a fresh container on a stock image
        started = time.monotonic()
        one = _gpurun(tmp_path / dataset.name, str(dataset), *common)
        assert one.returncode == 0, one.stderr[-3000:]
        (folder,) = [p for p in (tmp_path / dataset.name / "runs").iterdir() if p.is_dir()]
        receipt = json.loads((folder / "receipt.json").read_text())
        separate.append({"seconds": time.monotonic() - started, "dollars": receipt["actual_total_usd"]})
    result = {
        "jobs": 3,
        "one_machine": {
            "seconds": queue_s,
            "dollars": queue["actual_total_usd"],
            "estimated_expected": queue["estimated_expected_usd"],
        },
        "separate": {
            "seconds": sum(r["seconds"] for r in separate),
            "dollars": sum(r["dollars"] for r in separate),
            "runs": separate,
        },
        "plan": {name: way["expected_dollars"] for name, way in queue["alternatives"].items()},
    }
    out = REPO_ROOT / "bench" / "results" / "queue.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    assert result["one_machine"]["dollars"] < result["separate"]["dollars"]
