"""Which local folders hold a run's images and where each goes on the machine, so the runner there reads the
same training set the local check counted: the dataset as a kohya root under data/, reg_data_dir under reg/, or
each subset of a dataset config in subsets/<i>/<name>/ with a resolved copy of the dataset config beside
job.toml. A LoRA file to continue from (network_weights) goes beside job.toml too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpurun.dataset.trainset import dataset_subsets
from gpurun.kohya_dataset import canonical_toml
from gpurun.trainconfig import TrainConfig, dataset_fallback

#: the dataset config's name on the machine, in the run folder (beside job.toml)
BOX_DATASET_CONFIG = "dataset.toml"
#: network_weights' name on the machine, in the run folder
BOX_NETWORK_WEIGHTS = "network_weights.safetensors"


@dataclass(frozen=True, slots=True)
class DatasetUpload:
    """The folders to push (local folder, path relative to the run folder), files to write there, and the
    training config's dataset keys as the runner reads them."""

    folders: list[tuple[Path, str]]
    files: dict[str, str] = field(default_factory=dict)
    job_keys: dict[str, Any] = field(default_factory=dict)
    #: single local files to copy (local file, path relative to the run folder)
    copies: list[tuple[Path, str]] = field(default_factory=list)


def run_upload(
    config: TrainConfig, dataset: Path, kind: str, repeats: int | None, trigger: str | None
) -> DatasetUpload:
    """The dataset's upload (see dataset_upload) plus the LoRA file to continue from, when there is one: the
    config already holds its rank and alpha (dim_from_weights was applied when it was read)."""
    upload = dataset_upload(config, dataset, kind, repeats, trigger)
    if not config.network_weights:
        return upload
    return DatasetUpload(
        folders=upload.folders,
        files=upload.files,
        job_keys={**upload.job_keys, "network_weights": BOX_NETWORK_WEIGHTS, "dim_from_weights": False},
        copies=[(Path(config.network_weights), BOX_NETWORK_WEIGHTS)],
    )


def dataset_upload(
    config: TrainConfig, dataset: Path, kind: str, repeats: int | None, trigger: str | None
) -> DatasetUpload:
    """Where the run's images go: `kind` is the scan's layout (kohya-root, concept-folder, plain or
    dataset-config); a plain folder or one concept folder becomes a folder of the data/ kohya root."""
    if config.dataset_config:
        file, subsets = dataset_subsets(config)
        # subsets/<i>/<the folder's own name>: kohya names a subset by its folder in the metadata (ss_dataset_dirs,
        # ss_tag_frequency), and two subsets may share a name
        targets = [f"subsets/{index}/{subset.image_dir.name}" for index, subset in enumerate(subsets)]
        text = canonical_toml(file, dataset_fallback(config.model_dump()), targets)
        return DatasetUpload(
            folders=[(subset.image_dir, target) for subset, target in zip(subsets, targets, strict=True)],
            files={BOX_DATASET_CONFIG: text},
            job_keys={"dataset_config": BOX_DATASET_CONFIG, "train_data_dir": None, "reg_data_dir": None},
        )
    if kind == "concept-folder":
        target = f"data/{dataset.name}"
    elif kind == "plain":
        target = f"data/{repeats or 1}_{trigger or dataset.name}"
    else:
        target = "data"
    folders = [(dataset, target)]
    if config.reg_data_dir:
        folders.append((Path(config.reg_data_dir), "reg"))
    keys = {"train_data_dir": "data", "reg_data_dir": "reg" if config.reg_data_dir else None}
    return DatasetUpload(folders=folders, job_keys=keys)
