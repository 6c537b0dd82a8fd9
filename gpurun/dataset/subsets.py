"""Subsets and regularization images: a dataset config's subsets scanned as concept folders, and kohya's balancing
of regularization images against the training images.

kohya (library/train_util.py `DreamBoothDataset.__init__`): regularization images are registered in subset and file
order, each with its own repeats, until their samples reach the training samples; when they still fall short,
further passes add one repeat to each in turn until they match. Reg images beyond the training samples are not
used at all, and with no training samples none is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from gpurun.dataset.images import quiet_pil
from gpurun.dataset.scan import scan_dataset, scan_folder
from gpurun.dataset.types import ConceptFolder, DatasetScan, Issue, IssueLog
from gpurun.kohya_dataset import Subset


def scan_subsets(subsets: Sequence[Subset], root: Path) -> DatasetScan:
    """Scan each subset's image_dir as one concept folder with the subset's repeats, class tokens, caption
    extension and options (`root` is where relative paths in the report start: the dataset config's folder).
    Each folder is uploaded on its own, so a link counts only when it stays inside its image_dir."""
    issues = IssueLog()
    folders: list[ConceptFolder] = []
    with quiet_pil():
        for subset in subsets:
            directory = subset.image_dir
            if not directory.is_dir():
                issues.error("missing-folder", directory, "image_dir is not a folder (kohya skips the subset)")
                continue
            folder = scan_folder(
                directory, directory, subset.class_tokens, subset.num_repeats, subset.caption_extension, issues
            )
            if not folder.items:
                issues.warn("empty-subset", directory, "no trainable images in this subset (kohya skips it)")
                continue
            folders.append(dataclasses.replace(folder, is_reg=subset.is_reg, rules=subset.rules))
    if not any(folder.items for folder in folders if not folder.is_reg):
        issues.error("empty-dataset", root, "no trainable images in any subset (is_reg subsets do not count)")
    extension = subsets[0].caption_extension if subsets else ".txt"
    scan = DatasetScan(root=root, layout="dataset-config", caption_ext=extension, folders=folders, issues=issues)
    return balance_regularization(scan)


def with_regularization(scan: DatasetScan, reg_dir: Path, caption_ext: str) -> DatasetScan:
    """The scan plus reg_data_dir's `<repeats>_<class>/` folders as regularization folders, balanced."""
    reg = scan_dataset(reg_dir, caption_ext=caption_ext)
    # an empty reg folder only means no regularization (kohya warns); any other problem stands
    issues = [i for i in reg.issues if i.code != "empty-dataset"]
    if not reg.items:
        issues.append(Issue("warning", "empty-regularization", "no regularization images found", reg_dir))
    folders = [dataclasses.replace(folder, is_reg=True) for folder in reg.folders]
    merged = dataclasses.replace(scan, folders=[*scan.folders, *folders], issues=[*scan.issues, *issues])
    return balance_regularization(merged)


def balance_regularization(scan: DatasetScan) -> DatasetScan:
    """kohya's balancing: reg images' repeats rewritten so their samples match the training samples (see the
    module docstring); reg images it does not register are dropped with a warning."""
    reg_keys = [(f, i) for f, folder in enumerate(scan.folders) if folder.is_reg for i in range(len(folder.items))]
    if not reg_keys:
        return scan
    train = sum(folder.samples_per_epoch for folder in scan.folders if not folder.is_reg)
    repeats: dict[tuple[int, int], int] = {}
    counted, first = 0, True
    while counted < train:
        for f, i in reg_keys:
            if first:
                repeats[f, i] = scan.folders[f].items[i].repeats
                counted += repeats[f, i]
            else:
                repeats[f, i] += 1
                counted += 1
            if counted >= train:
                break
        first = False
    folders, unused = [], 0
    for f, folder in enumerate(scan.folders):
        if not folder.is_reg:
            folders.append(folder)
            continue
        items = [
            dataclasses.replace(item, repeats=repeats[f, i]) for i, item in enumerate(folder.items) if (f, i) in repeats
        ]
        unused += len(folder.items) - len(items)
        folders.append(dataclasses.replace(folder, items=items))
    issues = list(scan.issues)
    if unused:
        issues.append(
            Issue(
                "warning",
                "reg-unused",
                f"{unused} regularization image(s) are not used: kohya uses reg images only up to the training "
                f"samples per epoch ({train})",
                scan.root,
            )
        )
    return dataclasses.replace(scan, folders=folders, issues=issues)
