"""The reference for resumed runs: the same job run once, uninterrupted, on the box image's own Python (the
interpreter and locked stack the box ran), and a tensor-by-tensor comparison of two LoRA files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support.boxes import Box
from tests.support.env import REPO_ROOT


def straight_run(run_folder: Path, box: Box, dest: Path) -> Path:
    """Run the job of a box's run folder (its job.toml and data/) again from the start, uninterrupted, in `dest`;
    returns its output folder."""
    dest.mkdir(parents=True)
    shutil.copy(run_folder / "job.toml", dest / "job.toml")
    shutil.copytree(run_folder / "data", dest / "data")
    env = {
        "PATH": f"{box.python_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(dest), "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1",
        **{k: v for k, v in os.environ.items() if k.startswith("LC_") or k == "LANG"},
    }  # fmt: skip
    proc = subprocess.run(
        [str(box.python_bin / "python"), "-m", "gpurun.runner", "--config", "job.toml"],
        cwd=dest, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dest / "out"


def max_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between two safetensors files' tensors (their keys must match)."""
    from safetensors.torch import load_file

    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    return max((left[k].float() - right[k].float()).abs().max().item() for k in left)
