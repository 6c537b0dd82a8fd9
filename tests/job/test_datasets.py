"""Where a run's images go on the machine: the folders, the resolved dataset config and the job's dataset keys
give the runner there the same training set the local check counted."""

from __future__ import annotations

import shutil
from pathlib import Path

from gpurun.dataset.trainset import scan_training_set
from gpurun.job.datasets import BOX_DATASET_CONFIG, BOX_NETWORK_WEIGHTS, dataset_upload, run_upload
from gpurun.job.machine import job_config
from gpurun.trainconfig import TrainConfig
from tests.support.fake_lora import UNET_LINEAR, write_lora
from tests.support.kohya_datasets import make_dataset_config, make_reg_dirs


def on_the_box(box: Path, config: TrainConfig, dataset: Path, kind: str) -> TrainConfig:
    """What ship + launch do, with a local folder for the machine: copy the folders, write the files and job.toml,
    and read the job back as the runner does."""
    upload = dataset_upload(config, dataset, kind, None, None)
    for folder, target in upload.folders:
        shutil.copytree(folder, box / target)
    for name, text in upload.files.items():
        (box / name).write_text(text)
    (box / "job.toml").write_text(job_config(config, "tiny-sd", upload.job_keys).to_toml())
    return TrainConfig.from_toml(box / "job.toml")


def samples(config: TrainConfig) -> list[tuple[str, bool, list[int], str]]:
    scan = scan_training_set(config)
    return [(f.name, f.is_reg, [i.repeats for i in f.items], repr(f.rules)) for f in scan.folders]


def test_a_dataset_config_travels_as_subsets_and_a_resolved_copy(tmp_path: Path) -> None:
    local = tmp_path / "laptop"
    make_dataset_config(local)
    (local / "config.toml").write_text('dataset_config = "dataset.toml"\ntrain_batch_size = 1\n')
    config = TrainConfig.from_toml(local / "config.toml")
    upload = dataset_upload(config, Path(config.dataset_config or ""), "dataset-config", None, None)
    assert [target for _, target in upload.folders] == ["subsets/0", "subsets/1", "subsets/2"]
    assert [folder.name for folder, _ in upload.folders] == ["robot", "closeups", "reg"]
    assert upload.job_keys == {"dataset_config": BOX_DATASET_CONFIG, "train_data_dir": None, "reg_data_dir": None}
    box = on_the_box(tmp_path / "box", config, Path(config.dataset_config or ""), "dataset-config")
    assert box.dataset_config == str(tmp_path / "box" / BOX_DATASET_CONFIG) and box.batch_size == 2
    mine, theirs = samples(config), samples(box)
    assert [row[1:] for row in theirs] == [row[1:] for row in mine]  # same repeats, balance and options


def test_reg_data_dir_travels_beside_the_data(tmp_path: Path) -> None:
    train, reg = make_reg_dirs(tmp_path / "laptop")
    config = TrainConfig(train_data_dir=str(train), reg_data_dir=str(reg), prior_loss_weight=0.5)
    upload = dataset_upload(config, train, "kohya-root", None, None)
    assert upload.folders == [(train, "data"), (reg, "reg")] and upload.files == {}
    box = on_the_box(tmp_path / "box", config, train, "kohya-root")
    assert box.reg_data_dir == str(tmp_path / "box" / "reg") and box.prior_loss_weight == 0.5
    assert samples(box) == samples(config)


def test_a_plain_folder_still_becomes_one_concept_folder(tmp_path: Path) -> None:
    config = TrainConfig()
    upload = dataset_upload(config, tmp_path / "photos", "plain", 5, "sks")
    assert upload.folders == [(tmp_path / "photos", "data/5_sks")]
    assert upload.job_keys == {"train_data_dir": "data", "reg_data_dir": None}


def test_a_lora_to_continue_from_travels_beside_job_toml(tmp_path: Path) -> None:
    local, box = tmp_path / "laptop", tmp_path / "box"
    train, _ = make_reg_dirs(local)
    write_lora(local / "w.safetensors", {UNET_LINEAR: (8, 4.0, False)})
    (local / "c.toml").write_text(
        f'network_weights = "w.safetensors"\ndim_from_weights = true\ntrain_data_dir = "{train}"\n'
    )
    config = TrainConfig.from_toml(local / "c.toml")
    upload = run_upload(config, train, "kohya-root", None, None)
    assert upload.copies == [(local / "w.safetensors", BOX_NETWORK_WEIGHTS)] and upload.folders == [(train, "data")]
    box.mkdir()
    shutil.copy(local / "w.safetensors", box / BOX_NETWORK_WEIGHTS)
    (box / "job.toml").write_text(job_config(config, "tiny-sd", upload.job_keys).to_toml())
    there = TrainConfig.from_toml(box / "job.toml")
    assert there.network_weights == str(box / BOX_NETWORK_WEIGHTS) and not there.dim_from_weights
    assert (there.network_dim, there.network_alpha, there.network_train_unet_only) == (8, 4.0, True)
