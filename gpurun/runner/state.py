"""The resumable training state in `<output_dir>/state/`: LoRA weights, optimizer, progress, RNG, and the facts
a resumed run must agree with. Written atomically (a new folder renamed over the old), so a kill mid-save leaves
the previous state intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpurun.dataset.check import plan_steps
from gpurun.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from gpurun.runner.data import TrainData
    from gpurun.trainconfig import TrainConfig

STATE_DIR = "state"
PROGRESS_FILE = "progress.json"


@dataclass
class Progress:
    """Where training stands; a resumed run continues from here with the same schedule."""

    #: optimizer steps done
    step: int = 0
    #: 1-based epoch in progress (or the next one, when batch_in_epoch is 0)
    epoch: int = 1
    #: batches of `epoch` already trained
    batch_in_epoch: int = 0
    total_steps: int = 0
    epochs: int = 0
    batch_size: int = 1
    gradient_checkpointing: bool = False
    seed: int = 0
    #: what the run must agree with to be resumed (rank, alpha, family, dataset size, ...)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    #: what an out-of-memory fallback changed, for the metadata and the done event
    changes: list[str] = field(default_factory=list)
    loss_window: list[float] = field(default_factory=list)
    started_at: float = 0.0
    session_id: str = ""


def initial_progress(config: TrainConfig, data: TrainData, family: str) -> Progress:
    """A fresh run's progress: the planned steps (the count the client priced), the seed, and the fingerprint."""
    batch_size = config.batch_size
    _, epochs, total = plan_steps(
        data.batches_per_epoch(batch_size),
        config.gradient_accumulation_steps,
        config.epochs,
        config.max_train_steps,
    )
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
    fingerprint = {
        "family": family,
        "network_dim": config.network_dim,
        "network_alpha": float(config.network_alpha),
        "trains_text_encoder": config.trains_text_encoder,
        "samples_per_epoch": data.samples_per_epoch,
        "images": len(data.images),
    }
    return Progress(
        total_steps=total,
        epochs=epochs,
        batch_size=batch_size,
        gradient_checkpointing=config.gradient_checkpointing,
        seed=seed,
        fingerprint=fingerprint,
        started_at=time.time(),
        session_id=str(uuid.uuid4().int % 2**31),
    )


def plain_python_rng(state: tuple) -> list:
    """random.Random's state as plain lists: what a weights_only torch.load reads back."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def python_rng_from_plain(raw: Any) -> tuple:
    """The inverse of plain_python_rng: the tuple random.Random.setstate takes."""
    version, internal, gauss = raw
    return (int(version), tuple(int(x) for x in internal), gauss)


def resume_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / STATE_DIR


def save_state(
    folder: Path,
    progress: Progress,
    lora: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    rng: dict[str, Any],
) -> None:
    """Write the state into a fresh folder, then swap it in (the old one survives until the new one is whole)."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    fresh = folder.with_name(f".{folder.name}.{os.getpid()}.new")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in lora.items()}, str(fresh / "lora.safetensors"))
    torch.save(optimizer, fresh / "optimizer.pt")
    torch.save(rng, fresh / "rng.pt")
    (fresh / PROGRESS_FILE).write_text(json.dumps(asdict(progress), indent=1), encoding="utf-8")
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(fresh, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_state(folder: Path) -> tuple[Progress, dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(progress, LoRA weights, optimizer state, RNG state) from a state folder. ConfigError when unusable."""
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    progress_file = folder / PROGRESS_FILE
    if not progress_file.is_file():
        raise ConfigError(
            "no training state to resume from",
            where=str(folder),
            hint="resume needs a run that saved a state (every save_every_n_epochs, or when stopped); "
            "drop --resume to start over",
        )
    try:
        data = json.loads(progress_file.read_text(encoding="utf-8"))
        known = set(Progress.__dataclass_fields__)
        progress = Progress(**{k: v for k, v in data.items() if k in known})
        lora = load_file(str(folder / "lora.safetensors"))
        # weights_only: the optimizer state is plain tensors and numbers; never unpickle arbitrary objects
        optimizer = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        rng = torch.load(folder / "rng.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"the training state is damaged: {exc}", where=str(folder), hint="drop --resume") from None
    return progress, lora, optimizer, rng


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], folder: Path) -> None:
    """A state only resumes the run it came from: same rank, alpha, base family, dataset, batch plan."""
    differing = sorted(k for k in current if k in saved and saved[k] != current[k])
    if differing:
        detail = ", ".join(f"{k}: saved {saved[k]!r}, now {current[k]!r}" for k in differing)
        raise ConfigError(
            f"the saved state belongs to a different run ({detail})",
            where=str(folder),
            hint="resume with the config and dataset it was saved with, or drop --resume to start over",
        )
