"""The Workload to price: from a dataset folder, a training_config.toml, or plain numbers (the tutorial's example).

Precedence, field by field: an explicit number (--images/--repeats/--epochs/--model) wins, then the dataset
folder (scanned: images, repeats, bytes), then the training config (family, resolution, batch, epochs,
gradient checkpointing, text-encoder training, dim), then the tutorial's example run: 20 images × 10 repeats ×
10 epochs of SD 1.5 at 512 px with the text encoder trained and dim 32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from gpurun.dataset import DatasetScan, scan_dataset
from gpurun.dataset.trainset import scan_training_set
from gpurun.errors import ConfigError, DatasetError
from gpurun.models import MODEL_FAMILIES, NATIVE_RESOLUTION, ModelFamily, Workload
from gpurun.pricing import BASE_MODEL_BYTES
from gpurun.trainconfig import TrainConfig

#: the tutorial's example run
DEFAULT_IMAGES, DEFAULT_REPEATS, DEFAULT_EPOCHS, DEFAULT_DIM = 20, 10, 10, 32
#: bytes per training image when there is no dataset to measure (a sharp JPEG at 512–1024 px)
ASSUMED_IMAGE_BYTES = 2_000_000


@dataclass(frozen=True, slots=True)
class WorkloadSource:
    """A Workload and where its figures came from, for the footer of `gpurun offers` and its JSON."""

    workload: Workload
    #: "dataset", "config" or "options": what defined the images
    source: str
    #: human notes: assumptions made, approximations
    notes: tuple[str, ...] = field(default=())


def family_of(config: TrainConfig) -> ModelFamily:
    """The base-model family a training config means: model_family, else v2, else an XL-looking name or size."""
    if config.model_family is not None:
        return config.model_family
    if config.v2:
        return "sd2"
    name = (config.pretrained_model_name_or_path or "").lower()
    if "xl" in name or max(config.resolution) >= 1024:
        return "sdxl"
    return "sd15"


def build_workload(
    *,
    model: str | None = None,
    dataset: Path | None = None,
    config: TrainConfig | None = None,
    images: int | None = None,
    repeats: int | None = None,
    epochs: int | None = None,
    scan: DatasetScan | None = None,
) -> WorkloadSource:
    """The Workload for `gpurun offers`/`plan`. Raises ConfigError/DatasetError naming the bad input. `scan`: the
    dataset already scanned (the plan's check did), so it is not walked twice."""
    notes: list[str] = []
    if model is not None and model not in MODEL_FAMILIES:
        raise ConfigError(f"unknown model {model!r}", where="--model", hint=f"one of {', '.join(MODEL_FAMILIES)}")
    for name, value in (("--images", images), ("--repeats", repeats), ("--epochs", epochs)):
        if value is not None and value < 1:
            raise ConfigError(f"must be at least 1, got {value}", where=name)
    # (the check above narrows --model to a ModelFamily)
    family: ModelFamily = model or (family_of(config) if config else "sd15")
    if config is not None and model is not None and config.model_family and config.model_family != model:
        notes.append(f"--model {model} overrides the config's model_family {config.model_family}")

    resolution = NATIVE_RESOLUTION[family]
    batch_size: int | None = None
    checkpointing, train_te, dim, cache_latents, conv_dim = False, True, DEFAULT_DIM, True, 0
    config_epochs: int | None = None
    if config is not None:
        width, height = config.resolution
        # kohya buckets keep the area of resolution²: price the equivalent square side
        resolution = int(round(math.sqrt(width * height) / 64) * 64) or 64
        batch_size = config.batch_size  # the micro-batch: what VRAM and GPU efficiency depend on
        checkpointing = config.gradient_checkpointing
        train_te = config.trains_text_encoder
        dim = config.network_dim
        network, lycoris = config.network, config.lycoris
        conv_dim = network.conv_dim if network.is_locon and network.conv_dim else 0
        if lycoris is not None and lycoris.trains_conv:
            # LyCORIS' 3x3 convolutions are priced as LoCon's at its conv_dim (LoHa stores two factor pairs, LoKr
            # far fewer numbers: the file-size term is an estimate for both)
            conv_dim = lycoris.conv_dim(dim)
        cache_latents = config.cache_latents
        config_epochs = config.max_train_epochs
        if dataset is None and config.dataset_config:
            dataset = Path(config.dataset_config)
        elif dataset is None and config.train_data_dir and Path(config.train_data_dir).is_dir():
            dataset = Path(config.train_data_dir)

    source = "options"
    dataset_bytes: int | None = None
    scanned_images = scanned_repeats = None
    if dataset is not None:
        scanned = scan
        if scanned is None and config is not None:
            # the config's whole training set: a dataset config's subsets, reg_data_dir's images
            folder = None if config.dataset_config else dataset
            scanned = scan_training_set(config, dataset=folder, repeats=repeats)
        elif scanned is None:
            scanned = scan_dataset(dataset, repeats=repeats)
        scanned_images, scanned_repeats, dataset_bytes, scan_notes = _measure(scanned, dataset)
        notes += scan_notes
        source = "dataset"
    elif config is not None:
        source = "config"

    n_images = images or scanned_images or DEFAULT_IMAGES
    n_repeats = repeats or scanned_repeats or DEFAULT_REPEATS
    n_epochs = epochs or config_epochs
    if n_epochs is None and config is not None and config.max_train_steps:
        per_epoch = max(1, math.ceil(n_images * n_repeats / (batch_size or 1)))
        n_epochs = max(1, math.ceil(config.max_train_steps / per_epoch))
        notes.append(f"max_train_steps {config.max_train_steps} ≈ {n_epochs} epochs")
    n_epochs = n_epochs or DEFAULT_EPOCHS
    if dataset_bytes is not None and scanned_images and images is not None:
        dataset_bytes = round(dataset_bytes / scanned_images * images)  # the dataset's bytes per image
    elif dataset_bytes is None:
        dataset_bytes = n_images * ASSUMED_IMAGE_BYTES
        notes.append(f"dataset size assumed: {ASSUMED_IMAGE_BYTES / 1e6:.0f} MB per image")
    workload = Workload(
        family=family,
        resolution=resolution,
        images=n_images,
        repeats=n_repeats,
        epochs=n_epochs,
        batch_size=batch_size,
        gradient_checkpointing=checkpointing,
        train_text_encoder=train_te,
        network_dim=dim,
        conv_dim=conv_dim,
        dataset_bytes=dataset_bytes,
        base_model_bytes=BASE_MODEL_BYTES[family],
        cache_latents=cache_latents,
    )
    return WorkloadSource(workload, source, tuple(notes))


def _measure(scan: DatasetScan, path: Path) -> tuple[int, int, int, list[str]]:
    """(images, repeats, bytes, notes) of a scanned kohya dataset folder; DatasetError when it cannot be priced."""
    if scan.images == 0:
        raise DatasetError("no training images found", where=str(path), hint="see `gpurun dataset check`")
    samples = scan.samples_per_epoch
    if samples == 0:
        blocking = next((issue.message for issue in scan.errors), "no repeats")
        raise DatasetError(blocking, where=str(path), hint="pass --repeats N or name folders like 10_concept")
    notes: list[str] = []
    per_image = samples / scan.images
    rounded = max(1, round(per_image))
    if rounded * scan.images != samples:
        notes.append(f"folders repeat differently: {samples} samples/epoch priced as {scan.images} × {rounded}")
    return scan.images, rounded, scan.total_bytes, notes
