"""What the GPU tests share: which models and sizes they run (full-size on CUDA, or the tiny ones for a CPU dry run
of the tests themselves), a job writer, the runner in a child process, and a SIGTERM at a chosen step.

`GPURUN_GPU_DRY=1` runs the GPU tests on the CPU with the tiny models at 64 px: it checks the tests' own plumbing
(jobs, events, resume, file checks) here, so the GPU session spends its minutes on the GPU, not on test bugs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpurun import events
from gpurun.trainconfig import TrainConfig
from tests.support.env import subprocess_env
from tests.support.imaging import make_image

DRY = os.environ.get("GPURUN_GPU_DRY") == "1"


@dataclass(frozen=True)
class Size:
    """The model and resolution a GPU test trains at."""

    family: str
    resolution: int
    #: tiny models are built in-process by name; full-size ones are written as a checkpoint by the test
    tiny_name: str | None


def size_for(family: str) -> Size:
    if DRY:
        return Size(family, 64, {"sd15": "tiny-sd", "sdxl": "tiny-sdxl"}[family])
    return Size(family, {"sd15": 512, "sdxl": 1024}[family], None)


def make_dataset(root: Path, count: int, resolution: int, repeats: int = 1) -> Path:
    """`count` captioned square images at the training resolution in one kohya folder."""
    folder = root / f"{repeats}_zkw robot"
    for index in range(count):
        make_image(
            folder / f"{index:02d}.png", (resolution, resolution), seed=index, caption=f"zkw robot, pose {index}"
        )
    return root


def write_job(root: Path, base: str | Path, data: Path, resolution: int, **changes: Any) -> Path:
    """A job TOML the runner reads: sampling kept to one cheap cell, no intermediate saves unless asked."""
    values: dict[str, Any] = {
        "pretrained_model_name_or_path": str(base),
        "train_data_dir": str(data),
        "output_dir": str(root / "out"),
        "output_name": "gpu_lora",
        "resolution": resolution,
        "batch_size": 2,
        "max_train_epochs": 2,
        "network_dim": 32,
        "network_alpha": 16,
        "learning_rate": 1e-4,
        "lr_scheduler": "constant",
        "optimizer_type": "AdamW",
        "mixed_precision": "bf16",
        "seed": 42,
        "save_every_n_epochs": None,
        "sample_steps": 1,
        "sample_seeds": [1],
        "sample_weights": [1.0],
        **changes,
    }
    job = root / "job.toml"
    root.mkdir(parents=True, exist_ok=True)
    job.write_text(TrainConfig(**values).to_toml())
    return job


def runner_argv(job: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gpurun.runner", "--config", str(job), *extra]


#: the runner's entry point under a cap on the CUDA caching allocator (a real out-of-memory, at a size we choose)
CAPPED = (
    "import sys, torch; torch.cuda.set_per_process_memory_fraction(float(sys.argv[1])); "
    "from gpurun.runner.__main__ import main; sys.exit(main(sys.argv[2:]))"
)


def run_runner(job: Path, *extra: str, timeout: float = 300, memory_fraction: float | None = None) -> Any:
    """The runner in a fresh interpreter; returns (exit code, events, stderr)."""
    argv = runner_argv(job, *extra)
    if memory_fraction is not None:
        argv = [sys.executable, "-c", CAPPED, str(memory_fraction), *argv[3:]]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=subprocess_env())
    return proc.returncode, [events.parse_line(line) for line in proc.stdout.splitlines()], proc.stderr


def run_until_sigterm(job: Path, at_step: int, timeout: float = 300) -> tuple[int, list[events.Event]]:
    """Start the runner and send SIGTERM once it reports `at_step`; returns (exit code, events)."""
    seen: list[events.Event] = []
    with subprocess.Popen(
        runner_argv(job), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=subprocess_env()
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(events.parse_line(line))
            if isinstance(seen[-1], events.Step) and seen[-1].step >= at_step:
                proc.send_signal(signal.SIGTERM)
                break
        seen += [events.parse_line(line) for line in proc.stdout]
        return proc.wait(timeout=timeout), seen


def of(kind: type, evs: list[events.Event]) -> list[Any]:
    return [e for e in evs if isinstance(e, kind)]


def relative_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    """‖a−b‖/‖a‖ over all tensors of two LoRA states with the same keys (lora_B starts at zero, so ‖a‖ is what
    training learned plus lora_A's seeded start)."""
    assert a.keys() == b.keys()
    diff = sum(float((a[k].float() - b[k].float()).square().sum()) for k in a)
    norm = sum(float(a[k].float().square().sum()) for k in a)
    return (diff / norm) ** 0.5 if norm else 0.0
