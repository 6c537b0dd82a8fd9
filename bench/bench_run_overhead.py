"""The seconds of a real `gpurun train` that a user pays for without training, on the local-SSH setup.

    python bench/bench_run_overhead.py [--repeat 3] [--network-dim 640] [--epochs 2]

Runs the whole product path for real: a fake Vast (tests/support/fakes) rents an "instance" whose SSH endpoint is a real
OpenSSH sshd on 127.0.0.1 (tests/support/sshd.py); gpurun connects with its per-run key, arms the watchdog, checks the
(warm) environment, rsyncs the dataset and bundle, launches the runner detached (tiny SD model, CPU), follows
events, pulls checkpoints, fetches and verifies the final LoRA and grid, and destroys. `--network-dim 640` makes
the tiny model's LoRA about 40 MB (a typical rank-32 SD 1.5 LoRA is 38 MB), so the fetch moves a real-sized file.

Reported, per run, from event timestamps (client phases, runner events, and the fake provider's destroy record;
one machine, one clock):
  ready_to_first_step_s  "SSH ready" (the client starts connecting) → the runner's first step event,
                         split into connect+watchdog, bootstrap check, sync, launch → runner start (import,
                         model load, latent cache), start → first step
  last_step_to_destroy_s the runner's last step → the provider's destroy call, split into save+grid (runner),
                         done → fetch finished (client), fetch → destroy call
Needs sshd, ssh and rsync (like the sshd tests). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.e2e import small_job  # noqa: E402
from tests.support.fakes.vast_server import FakeVast  # noqa: E402
from tests.support.sshd import start_sshd  # noqa: E402


def one_run(root: Path, vast: FakeVast, network_dim: int, epochs: int) -> dict[str, Any]:
    dataset, config = small_job(root, epochs, network_dim=network_dim)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "GPURUN_VAST_URL": vast.base_url,
        "VAST_API_KEY": vast.api_key,
        "GPURUN_STATE_DIR": str(root / "state"),
        "GPURUN_CONFIG_DIR": str(root / "config"),
        "GPURUN_PYTHON": sys.executable,
        "GPURUN_CHECK_CUDA": "0",
        # the "instance" is this machine's user: never let its watchdog fall back to `shutdown`
        "GPURUN_WATCHDOG_FALLBACK": "0",
        "GPURUN_POLL_S": "0.2",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "gpurun", "train", str(dataset), "--config", str(config), "--base", "tiny-sd",
         "--provider", "vast", "--budget", "5", "--yes", "--json", "--output", str(root / "runs")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"gpurun train failed:\n{proc.stderr[-3000:]}")
    client = {}
    for line in proc.stdout.splitlines():
        if line.startswith('{"v"'):
            event = json.loads(line)
            if event.get("type") == "client_phase":
                client.setdefault(event["name"], event["t"])
    (run,) = [p for p in (root / "runs").iterdir() if p.is_dir()]
    runner = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    steps = [e for e in runner if e["type"] == "step"]
    start = next(e for e in runner if e["type"] == "start")
    done = next(e for e in runner if e["type"] == "done")
    destroy_at = vast.destroyed[-1].at
    lora = run / "lora.safetensors"
    shutil.rmtree(Path.home() / "gpurun" / run.name, ignore_errors=True)  # the "instance" side of the run
    ready = client["watchdog"]
    return {
        "lora_mb": round(lora.stat().st_size / 1e6, 1),
        "ready_to_first_step_s": round(steps[0]["t"] - ready, 2),
        "ready_breakdown_s": {
            "connect_and_watchdog": round(client["bootstrap"] - ready, 2),
            "bootstrap_check": round(client["sync"] - client["bootstrap"], 2),
            "sync": round(client["training"] - client["sync"], 2),
            "launch_to_runner_start": round(start["t"] - client["training"], 2),
            "runner_start_to_first_step": round(steps[0]["t"] - start["t"], 2),
        },
        "last_step_to_destroy_s": round(destroy_at - steps[-1]["t"], 2),
        "end_breakdown_s": {
            "save_and_grid": round(done["t"] - steps[-1]["t"], 2),
            "fetch": round(client["terminating"] - done["t"], 2),
            "destroy_call": round(destroy_at - client["terminating"], 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--network-dim", type=int, default=640)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="gpurun-bench-") as tmp:
        proc, server = start_sshd(Path(tmp) / "sshd")
        try:
            for index in range(args.repeat):
                with FakeVast() as vast:
                    vast.set_ssh_endpoint(server.host, server.port)
                    vast.key_sinks.append(server.authorize)
                    runs.append(one_run(Path(tmp) / f"run{index}", vast, args.network_dim, args.epochs))
        finally:
            proc.terminate()
    summary = {
        key: {"median": statistics.median(r[key] for r in runs), "runs": [r[key] for r in runs]}
        for key in ("ready_to_first_step_s", "last_step_to_destroy_s")
    }
    print(json.dumps({"summary": summary, "runs": runs, "machine": {"cpus": os.cpu_count()}}, indent=1))


if __name__ == "__main__":
    main()
