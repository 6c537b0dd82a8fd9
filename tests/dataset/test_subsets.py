"""A dataset config's subsets and reg_data_dir scanned as concept folders, and kohya's balancing of
regularization images against the training images (library/train_util.py `DreamBoothDataset.__init__`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpurun.dataset import check_dataset
from gpurun.dataset.subsets import balance_regularization
from gpurun.dataset.trainset import scan_training_set
from gpurun.dataset.types import ConceptFolder, DatasetScan, ImageItem
from gpurun.errors import ConfigError, DatasetError
from gpurun.kohya_dataset import CaptionRules
from gpurun.trainconfig import TrainConfig
from tests.support.kohya_datasets import make_dataset_config, make_reg_dirs


def folder(name: str, repeats: int, images: int, *, reg: bool = False) -> ConceptFolder:
    items = [ImageItem(Path(f"/{name}/{i}.png"), name, repeats, name, None, 64, 64) for i in range(images)]
    return ConceptFolder(Path(f"/{name}"), name, repeats, name, items, is_reg=reg)


def reg_repeats(*folders: ConceptFolder) -> list[list[int]]:
    scan = balance_regularization(DatasetScan(Path("/"), "kohya-root", ".txt", list(folders), []))
    return [[item.repeats for item in f.items] for f in scan.folders if f.is_reg]


@pytest.mark.parametrize(
    ("train", "reg", "expected"),
    [
        # kohya: each reg image registered once with its repeats, then one more repeat each in turn
        ((10, 1), [(1, 3)], [[4, 3, 3]]),
        ((5, 1), [(2, 2)], [[3, 2]]),
        # more reg samples than training samples: registration stops as soon as they match
        ((2, 1), [(1, 3)], [[1, 1]]),
        ((3, 1), [(2, 2)], [[2, 2]]),
        # two reg folders are one queue, in folder order
        ((8, 2), [(1, 1), (1, 2)], [[3], [3, 2]]),
        ((4, 2), [(1, 1), (1, 2)], [[2], [1, 1]]),
        # no training samples: kohya registers no reg image at all
        ((0, 0), [(1, 2)], [[]]),
    ],
)
def test_reg_images_are_balanced_as_kohya_does(
    train: tuple[int, int], reg: list[tuple[int, int]], expected: list[list[int]]
) -> None:
    folders = [folder("train", train[1], train[0] // max(train[1], 1))]
    folders += [folder(f"reg{index}", repeats, count, reg=True) for index, (repeats, count) in enumerate(reg)]
    assert reg_repeats(*folders) == expected


def test_unused_reg_images_are_reported() -> None:
    scan = balance_regularization(
        DatasetScan(Path("/"), "kohya-root", ".txt", [folder("t", 1, 2), folder("r", 1, 5, reg=True)], [])
    )
    (issue,) = [i for i in scan.issues if i.code == "reg-unused"]
    assert "3 regularization image(s) are not used" in issue.message
    assert scan.samples_per_epoch == 4  # 2 training + 2 regularization samples


def test_a_dataset_config_is_scanned_subset_by_subset(tmp_path: Path) -> None:
    dataset = make_dataset_config(tmp_path)
    (tmp_path / "config.toml").write_text('dataset_config = "dataset.toml"\n')
    config = TrainConfig.from_toml(tmp_path / "config.toml")
    scan = scan_training_set(config)
    robot, closeups, reg = scan.folders
    assert scan.layout == "dataset-config" and scan.root == dataset.parent
    assert [(f.name, f.repeats, f.is_reg) for f in scan.folders] == [
        ("robot", 3, False),
        ("closeups", 2, False),
        ("reg", 1, True),
    ]
    assert robot.rules == CaptionRules(keep_tokens=1, flip_aug=True)
    assert closeups.rules == CaptionRules(shuffle_caption=True, keep_tokens=1)
    # each subset reads its own caption extension; the class tokens caption images without one
    assert [i.caption for i in closeups.items] == ["sks robot, closeup, 0"]
    assert [i.caption for i in reg.items] == ["robot"] * 3
    # 8 training samples: the 3 reg images get 3, 3 and 2 repeats
    assert [i.repeats for i in reg.items] == [3, 3, 2] and scan.samples_per_epoch == 16
    report = check_dataset(
        dataset, scan=scan, model="sd15", resolution=config.resolution, batch_size=config.batch_size,
        min_bucket_reso=64, max_bucket_reso=128, epochs=1, verify=True,
    )  # fmt: skip
    assert report.ok and report.samples_per_epoch == 16
    assert [f.is_reg for f in report.folders] == [False, False, True]
    assert not any(i.code == "missing-trigger" for i in report.issues)  # reg captions name the class
    assert not any(i.code == "few-images" and "6" in i.message for i in report.issues)


def test_missing_subset_folders_and_empty_configs_are_errors(tmp_path: Path) -> None:
    (tmp_path / "dataset.toml").write_text('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "gone"\n')
    (tmp_path / "config.toml").write_text('dataset_config = "dataset.toml"\n')
    config = TrainConfig.from_toml(tmp_path / "config.toml")
    assert [i.code for i in scan_training_set(config).errors] == ["missing-folder", "empty-dataset"]
    with pytest.raises(ConfigError, match="dataset_config were both given"):
        scan_training_set(config, dataset=tmp_path)


def test_reg_data_dir_joins_the_training_folders(tmp_path: Path) -> None:
    train, reg = make_reg_dirs(tmp_path)
    config = TrainConfig(train_data_dir=str(train), reg_data_dir=str(reg))
    scan = scan_training_set(config)
    assert [(f.name, f.is_reg) for f in scan.folders] == [("2_sks robot", False), ("1_robot", True)]
    # 6 training samples, 2 reg images: 1 each, then +1 each twice
    assert [i.repeats for i in scan.folders[1].items] == [3, 3] and scan.samples_per_epoch == 12
    missing = TrainConfig(train_data_dir=str(train), reg_data_dir=str(tmp_path / "nothing"))
    with pytest.raises(DatasetError, match="dataset folder not found"):
        scan_training_set(missing)
