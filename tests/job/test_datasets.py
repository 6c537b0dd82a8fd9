"""Where a run's images go on the machine: the folders, the resolved dataset config and the job's dataset keys
give the runner there the same training set the local check counted."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from pathlib import Path

import pytest

from gpurun.api import TrainRequest, plan, train
from gpurun.cli.live import JsonView
from gpurun.dataset.trainset import scan_training_set
from gpurun.job.datasets import BOX_DATASET_CONFIG, BOX_NETWORK_WEIGHTS, dataset_upload, run_upload
from gpurun.job.machine import job_config
from gpurun.lorafile import read_header, verify_lora_file
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
    assert [target for _, target in upload.folders] == ["subsets/0/robot", "subsets/1/closeups", "subsets/2/reg"]
    assert [folder.name for folder, _ in upload.folders] == ["robot", "closeups", "reg"]
    assert upload.job_keys == {"dataset_config": BOX_DATASET_CONFIG, "train_data_dir": None, "reg_data_dir": None}
    box = on_the_box(tmp_path / "box", config, Path(config.dataset_config or ""), "dataset-config")
    assert box.dataset_config == str(tmp_path / "box" / BOX_DATASET_CONFIG) and box.batch_size == 2
    # the same folders (by name, as the metadata names them), repeats, balance and options
    assert samples(box) == samples(config)


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


@pytest.mark.slow
def test_a_dataset_config_with_reg_images_and_a_start_lora_trains_on_the_local_machine(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from tests.support.lora_files import lora_model, save_lora_file

    make_dataset_config(tmp_path)
    model, _ = lora_model("sd15", train_te=False, rank=4, alpha=2.0)
    save_lora_file(model, tmp_path / "start.safetensors")
    config = tmp_path / "training_config.toml"
    config.write_text(
        'dataset_config = "dataset.toml"\nnetwork_weights = "start.safetensors"\ndim_from_weights = true\n'
        "prior_loss_weight = 0.5\nmax_train_epochs = 1\nsample_steps = 1\nsample_seeds = [1]\n"
        "sample_weights = [1.0]\n"
    )
    request = TrainRequest(config=config, base="tiny-sd", providers=("local",), output=tmp_path / "runs")
    the_plan = asyncio.run(plan(request))
    assert the_plan.upload.parts["network weights"] > 0
    seen: list = []
    receipt = asyncio.run(train(the_plan, view=JsonView(io.StringIO()), on_start=seen.append))
    assert receipt.outcome == "done"
    lora = Path(seen[0].out_dir) / "lora.safetensors"
    assert verify_lora_file(lora, "sd15", network_dim=4, network_alpha=2.0) == []
    meta = read_header(lora).metadata
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"reg": {"n_repeats": 1, "img_count": 3}}
    assert set(json.loads(meta["ss_dataset_dirs"])) == {"robot", "closeups"} and meta["ss_prior_loss_weight"] == "0.5"
