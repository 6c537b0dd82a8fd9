"""The benchmark scripts keep working as the runner changes (smallest settings; the numbers are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.env import REPO_ROOT, subprocess_env

pytest.importorskip("torch")


@pytest.mark.slow
def test_lora_step_benchmark_runs_at_tiny_size() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "bench_runner_step.py"), "--size", "tiny", "--family", "sd15",
         "--batch", "2", "--checkpointing", "on", "--steps", "1"],
        capture_output=True, text=True, timeout=300, env=subprocess_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(proc.stdout)["rows"]
    assert row["batch"] == 2 and row["checkpointing"] is True and row["samples_per_s"] > 0
