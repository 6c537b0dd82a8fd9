"""The training dataset: kohya folder scan (`scan_dataset`) and the local check (`check_dataset`). PIL only.

Layouts (kohya's DreamBooth folder convention):

    training_data/10_sks dog/img001.jpg + img001.txt     PATH holds N_name/ folders ("kohya-root")
    10_sks dog/img001.jpg + img001.txt                    PATH is one such folder ("concept-folder")
    my_images/img001.jpg                                  a plain folder of images, needs --repeats ("plain")

`10_sks dog` means 10 repeats per epoch and the class token "sks dog" (the caption of images without one).

Issue codes. Errors (training would fail or silently lose data; `ok` is False):
    unreadable-image  truncated-image  zero-byte-file  caption-not-utf8  unreadable-caption  empty-dataset
    bad-folder-name (prefix not a positive integer, folder holds images)  needs-repeats (plain folder, no --repeats)
    unusable-name (not UTF-8, or control characters)  unreadable-folder  not-a-file (a pipe or device named .png)
    missing-folder (a dataset config subset's image_dir is not a folder)
Warnings (advice; training runs):
    below-minimum (shorter side under the model minimum)  missing-caption  empty-caption  missing-trigger
    duplicate-image  orphan-caption  unusual-mode (CMYK, 16-bit, ...)  transparency  exif-rotated
    few-images (< 15)  many-images (> 150)  caption-extension-mismatch (no caption with the chosen extension,
    but .txt/.caption ones exist)  multiline-caption  stray-image (image beside the N_name/ folders)
    ignored-folder  unsupported-image (.gif .tiff .heic ...)  link-not-uploaded (a link out of the dataset)
    empty-subset  empty-regularization  reg-unused (more reg samples than training samples: kohya uses fewer)

`DatasetReport.to_dict()` — the `gpurun dataset check --json` document, version 1:

    {
      "version": 1,
      "ok": true,                          # false iff there is at least one error
      "verdict": "OK: 8 images, 80 samples/epoch, 400 steps (1 warning)",
      "path": "/abs/path/to/dataset",
      "layout": "kohya-root",              # | "concept-folder" | "plain" | "dataset-config" (kohya's TOML)
      "model": "sd15", "min_image_side": 512,
      "caption_extension": ".txt",
      "trigger": null,                     # --trigger, when given
      "verified": true,                    # false with --no-verify: no decode, no duplicate search
      "settings": {"resolution": [512, 512], "enable_bucket": true, "bucket_no_upscale": false,
                   "min_bucket_reso": 256, "max_bucket_reso": 1024, "bucket_reso_steps": 64, "batch_size": 2,
                   "gradient_accumulation_steps": 1, "epochs": 10, "max_train_steps": null},
      "folders": [{"name": "10_gpurunbot", "path": "10_gpurunbot", "repeats": 10, "class_token": "gpurunbot",
                   "images": 8, "captioned": 8, "trigger": "gpurunbot", "trigger_source": "folder",
                   "with_trigger": 8, "min_side": 512, "median_side": 512, "smallest": [512, 512],
                   "below_minimum": 0, "aspect_ratios": {"1:1": 5, "3:2": 2, "2:3": 1},
                   "buckets": {"384x640": 1, "512x512": 5, "640x384": 2}, "samples_per_epoch": 80,
                   "bytes": 212345, "is_reg": false}],
      "buckets": [{"resolution": [512, 512], "images": 5, "samples": 50, "batches": 25}, ...],
      "totals": {"folders": 1, "images": 8, "captioned": 8, "with_trigger": 8, "samples_per_epoch": 80,
                 "batches_per_epoch": 40, "steps_per_epoch": 40, "epochs": 10, "total_steps": 400,
                 "step_counting": "per-bucket", "bytes": 212345},
      "errors": 0, "warnings": 1,
      "issues": [{"severity": "warning", "code": "few-images", "path": ".", "message": "only 8 training ..."}]
    }

Paths in "folders" and "issues" are relative to "path" ("." is the dataset folder itself; a dataset config's
folder for "dataset-config", where each subset is one folder). "is_reg" folders hold regularization images
(reg_data_dir, is_reg subsets): their images' repeats are balanced against the training samples as kohya does, so
their "samples_per_epoch" is not images x repeats. "trigger_source" is
"option" (--trigger), "folder" (the class token) or null (no trigger to look for). "min_side"/"median_side"
are the shorter image side in px. Steps: kohya batches each bucket separately, so steps per epoch are
ceil(samples in bucket / batch size) summed over buckets ("per-bucket"); without bucketing there is one bucket
("single-bucket"). Issues come errors first, then by path. New fields may be added; existing ones keep their
meaning while "version" is 1.
"""

from __future__ import annotations

from gpurun.dataset.check import check_dataset
from gpurun.dataset.images import IMAGE_EXTENSIONS, load_image
from gpurun.dataset.report import BucketFacts, CheckSettings, DatasetReport, FolderFacts
from gpurun.dataset.scan import parse_folder_name, scan_dataset
from gpurun.dataset.types import ConceptFolder, DatasetScan, ImageItem, Issue

__all__ = [
    "IMAGE_EXTENSIONS",
    "BucketFacts",
    "CheckSettings",
    "ConceptFolder",
    "DatasetReport",
    "DatasetScan",
    "FolderFacts",
    "ImageItem",
    "Issue",
    "check_dataset",
    "load_image",
    "parse_folder_name",
    "scan_dataset",
]
