"""The check's result: per-folder facts, buckets, steps, issues, and the stable --json document."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpurun.dataset.types import DatasetScan, Issue, relative_path
from gpurun.models import MIN_IMAGE_SIDE

#: the "version" of `DatasetReport.to_dict()`; bump it when a field changes meaning or disappears
REPORT_VERSION = 1


@dataclass(frozen=True, slots=True)
class CheckSettings:
    """The training settings the step arithmetic and buckets depend on."""

    model: str
    resolution: tuple[int, int]
    enable_bucket: bool
    bucket_no_upscale: bool
    min_bucket_reso: int
    max_bucket_reso: int
    bucket_reso_steps: int
    batch_size: int
    gradient_accumulation_steps: int
    epochs: int
    max_train_steps: int | None


@dataclass(slots=True)
class FolderFacts:
    """Per-folder facts of the report (one row of the table)."""

    name: str
    path: Path
    repeats: int
    class_token: str
    images: int
    captioned: int
    #: the trigger looked for in captions (--trigger, else the folder's class token), None when there is none
    trigger: str | None
    trigger_source: str | None
    with_trigger: int
    min_side: int | None
    median_side: float | None
    smallest: tuple[int, int] | None
    below_minimum: int
    aspect_ratios: dict[str, int]
    buckets: dict[str, int]
    samples_per_epoch: int
    bytes: int
    #: regularization images (reg_data_dir, is_reg): repeats balanced against the training images
    is_reg: bool = False

    def to_dict(self, root: Path) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["path"] = relative_path(self.path, root)
        data["smallest"] = list(self.smallest) if self.smallest else None
        return data


@dataclass(frozen=True, slots=True)
class BucketFacts:
    resolution: tuple[int, int]
    images: int
    samples: int
    batches: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "resolution": list(self.resolution),
            "images": self.images,
            "samples": self.samples,
            "batches": self.batches,
        }


@dataclass(slots=True)
class DatasetReport:
    """Everything `gpurun dataset check` reports; `to_dict()` is the stable --json document."""

    scan: DatasetScan
    settings: CheckSettings
    verified: bool
    trigger: str | None
    folders: list[FolderFacts]
    buckets: list[BucketFacts]
    issues: list[Issue]
    steps_per_epoch: int
    total_steps: int
    epochs: int
    batches_per_epoch: int = 0

    @property
    def errors(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def images(self) -> int:
        return self.scan.images

    @property
    def samples_per_epoch(self) -> int:
        return self.scan.samples_per_epoch

    @property
    def verdict(self) -> str:
        errors, warnings = len(self.errors), len(self.warnings)
        if errors:
            return f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}: fix the errors before renting a GPU"
        text = f"OK: {_plural(self.images, 'image')}, {self.samples_per_epoch} samples/epoch, {self.total_steps} steps"
        return f"{text} ({_plural(warnings, 'warning')})" if warnings else text

    def to_dict(self) -> dict[str, Any]:
        root = self.scan.root
        settings = dataclasses.asdict(self.settings)
        settings.pop("model")
        settings["resolution"] = list(self.settings.resolution)
        return {
            "version": REPORT_VERSION,
            "ok": self.ok,
            "verdict": self.verdict,
            "path": str(root.resolve()),
            "layout": self.scan.layout,
            "model": self.settings.model,
            "min_image_side": MIN_IMAGE_SIDE[self.settings.model],
            "caption_extension": self.scan.caption_ext,
            "trigger": self.trigger,
            "verified": self.verified,
            "settings": settings,
            "folders": [folder.to_dict(root) for folder in self.folders],
            "buckets": [bucket.to_dict() for bucket in self.buckets],
            "totals": {
                "folders": len(self.folders),
                "images": self.images,
                "captioned": sum(f.captioned for f in self.folders),
                "with_trigger": sum(f.with_trigger for f in self.folders),
                "samples_per_epoch": self.samples_per_epoch,
                "batches_per_epoch": self.batches_per_epoch,
                "steps_per_epoch": self.steps_per_epoch,
                "epochs": self.epochs,
                "total_steps": self.total_steps,
                "step_counting": "per-bucket" if self.settings.enable_bucket else "single-bucket",
                "bytes": self.scan.total_bytes,
            },
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "issues": [issue.to_dict(root) for issue in self.issues],
        }


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
