"""LoRA files made the way the runner makes them: a tiny base with LoRA injected (perturbed, as if trained) and
saved with kohya metadata, for the tests that read, load or render such files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from gpurun.runner.export import build_metadata, save_lora
from gpurun.runner.lora import add_lora
from gpurun.runner.model.load import load_base_model
from gpurun.trainconfig import TrainConfig
from tests.support.env import TUTORIAL_CONFIG

DIM, ALPHA = 32, 16.0  # the tutorial's network_dim / network_alpha
TINY_NAME = {"sd15": "tiny-sd", "sd2": "tiny-sd2", "sdxl": "tiny-sdxl"}
DATASET = {
    "num_train_images": 40,
    "num_batches_per_epoch": 20,
    "tag_frequency": {"10_sks dog": {"sks dog": 3, "on grass": 1}},
    "dataset_dirs": {"10_sks dog": {"n_repeats": 10, "img_count": 4}},
    "trigger": "sks dog",
}


def tutorial_config(**changes: Any) -> TrainConfig:
    """The tutorial's training_config.toml, with `changes` applied."""
    return TrainConfig.from_toml(TUTORIAL_CONFIG).model_copy(update=changes)


def lora_model(
    family: str,
    *,
    train_te: bool = True,
    perturb: bool = True,
    rank: int = DIM,
    alpha: float = ALPHA,
    conv_dim: int | None = None,
    conv_alpha: float = 1.0,
):
    """A tiny `family` base with LoRA (LoCon with `conv_dim`) injected; `perturb` moves the weights as if trained
    (lora_up starts at zero, which would hide every mistake)."""
    model = load_base_model(TINY_NAME[family])
    params = add_lora(
        model, rank=rank, alpha=alpha, train_text_encoder=train_te, seed=0, conv_dim=conv_dim, conv_alpha=conv_alpha
    )
    if perturb:
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in params.all():
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model, params


def save_lora_file(model, path: Path, *, precision: str = "fp16", **config_changes: Any) -> Path:
    """Save `model`'s LoRA to `path` with the metadata of a 2-epoch, 40-step run of the tutorial config."""
    meta = build_metadata(
        config=tutorial_config(**config_changes),
        model=model,
        dataset=DATASET,
        epoch=2,
        steps=40,
        training_started_at=1_700_000_000.0,
    )
    save_lora(model, path, metadata=meta, precision=precision)  # type: ignore[arg-type]
    return path


class WarningRecords(logging.Handler):
    """Collects the warnings a library logs (diffusers' "unexpected keys" when it loads a LoRA file)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
