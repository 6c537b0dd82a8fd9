"""The training set a config names: train_data_dir (plus reg_data_dir), or the subsets of a dataset config.

One function for the client's check, the planner and the runner on the box, so every side counts the same
images, repeats and regularization balance.
"""

from __future__ import annotations

from pathlib import Path

from gpurun.dataset.scan import scan_dataset
from gpurun.dataset.subsets import scan_subsets, with_regularization
from gpurun.dataset.types import DatasetScan
from gpurun.errors import ConfigError
from gpurun.kohya_dataset import DatasetConfig, Subset, load_dataset_config
from gpurun.trainconfig import TrainConfig, dataset_fallback


def dataset_subsets(config: TrainConfig) -> tuple[DatasetConfig, list[Subset]]:
    """The dataset config file and its subsets, resolved against the training config (needs dataset_config)."""
    assert config.dataset_config, "only for a config with dataset_config"
    dataset = load_dataset_config(config.dataset_config)
    return dataset, dataset.resolved(dataset_fallback(config.model_dump()))


def scan_training_set(
    config: TrainConfig, *, dataset: Path | None = None, repeats: int | None = None, trigger: str | None = None
) -> DatasetScan:
    """Scan what `config` trains on. `dataset` (the PATH given on the command line) replaces train_data_dir;
    `repeats` and `trigger` are the command line's, for a plain folder. Raises ConfigError when no dataset is
    named, DatasetError when a folder does not exist."""
    if config.dataset_config:
        if dataset is not None:
            raise ConfigError(
                "a dataset folder and dataset_config were both given",
                where=str(dataset),
                hint="drop the folder: the dataset config names the images",
            )
        file, subsets = dataset_subsets(config)
        return scan_subsets(subsets, file.path.parent)
    folder = dataset or (Path(config.train_data_dir) if config.train_data_dir else None)
    if folder is None:
        raise ConfigError("no dataset given", where="train_data_dir", hint="set train_data_dir to your image folder")
    scan = scan_dataset(folder, caption_ext=config.caption_extension, repeats=repeats, trigger=trigger)
    if config.reg_data_dir:
        scan = with_regularization(scan, Path(config.reg_data_dir), config.caption_extension)
    return scan
