"""The dataset's plain data: images, concept folders, issues and the scan result (shared with the runner)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gpurun.kohya_dataset import CaptionRules

Severity = Literal["error", "warning"]
Layout = Literal["kohya-root", "concept-folder", "plain", "dataset-config"]


def relative_path(path: Path, root: Path) -> str:
    """`path` relative to the dataset root in POSIX form ("." for the root itself); absolute when outside it."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        return str(path)
    return relative.as_posix()


@dataclass(frozen=True, slots=True)
class ImageItem:
    """One training image and its caption, as training will see it."""

    path: Path
    #: concept folder name, e.g. "10_sks dog" (the folder's own name for a plain folder)
    folder: str
    repeats: int
    #: first non-empty line of the caption file, stripped; the class token when there is no usable caption file
    caption: str
    #: None when the class-token fallback was used (no caption file, or an empty or unreadable one)
    caption_path: Path | None
    #: size as displayed, i.e. after the EXIF orientation (the trainer must apply it: `load_image` does)
    width: int
    height: int
    size_bytes: int = 0
    format: str = ""
    mode: str = "RGB"
    has_alpha: bool = False
    #: EXIF orientation tag, 1 = stored upright
    exif_orientation: int = 1
    #: hex SHA-256 of the file; filled in by the full check (`check_dataset(verify=True)`)
    sha256: str | None = None

    @property
    def exif_rotated(self) -> bool:
        return self.exif_orientation != 1

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)


@dataclass(slots=True)
class ConceptFolder:
    """One `N_name` folder: N repeats per epoch, `name` (after the prefix) the class token."""

    path: Path
    name: str
    repeats: int
    class_token: str
    items: list[ImageItem] = field(default_factory=list)
    #: regularization images (kohya's reg_data_dir / is_reg): loss weighted by prior_loss_weight
    is_reg: bool = False
    #: the subset's own caption and flip options (a dataset config); None = the training config's
    rules: CaptionRules | None = None

    @property
    def samples_per_epoch(self) -> int:
        # per image: regularization images are repeated to balance the training images (see dataset.subsets)
        return sum(item.repeats for item in self.items)


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found in the dataset: an error stops training, a warning is advice."""

    severity: Severity
    #: stable identifier, e.g. "truncated-image" (listed in gpurun.dataset's docstring)
    code: str
    #: what is wrong and what to do, without the path (see `line`)
    message: str
    path: Path | None = None

    def relative_path(self, root: Path) -> str | None:
        return None if self.path is None else relative_path(self.path, root)

    def line(self, root: Path | None = None) -> str:
        """`path: message`, the path relative to `root` when given."""
        where = self.relative_path(root) if root is not None else (str(self.path) if self.path else None)
        return f"{where}: {self.message}" if where else self.message

    def to_dict(self, root: Path) -> dict[str, Any]:
        return {"severity": self.severity, "code": self.code, "path": self.relative_path(root), "message": self.message}


class IssueLog(list[Issue]):
    """A list of issues with shorthands for adding one."""

    def error(self, code: str, path: Path | None, message: str) -> None:
        self.append(Issue("error", code, message, path))

    def warn(self, code: str, path: Path | None, message: str) -> None:
        self.append(Issue("warning", code, message, path))


@dataclass(slots=True)
class DatasetScan:
    """What `scan_dataset` found: the layout, the concept folders with their images, and every issue."""

    root: Path
    layout: Layout
    caption_ext: str
    folders: list[ConceptFolder]
    issues: list[Issue]

    @property
    def items(self) -> list[ImageItem]:
        """Every usable image of every folder, folders in name order, images in file-name order."""
        return [item for folder in self.folders for item in folder.items]

    @property
    def images(self) -> int:
        return sum(len(folder.items) for folder in self.folders)

    @property
    def samples_per_epoch(self) -> int:
        """Images × repeats, summed over folders: how many images one epoch shows the model."""
        return sum(folder.samples_per_epoch for folder in self.folders)

    @property
    def total_bytes(self) -> int:
        return sum(item.size_bytes for item in self.items)

    @property
    def errors(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya's `ss_tag_frequency`: {folder name: {tag: images}}; tags are the comma-separated parts of each
        image's caption (class-token fallbacks included), stripped and lower-cased as kohya does
        (train_util.py `set_tag_frequency`)."""
        frequency: dict[str, dict[str, int]] = {}
        for folder in self.folders:
            counts: Counter[str] = Counter()
            for item in folder.items:
                for tag in item.caption.split(","):
                    tag = tag.strip().lower()
                    if tag:
                        counts[tag] += 1
            frequency[folder.name] = dict(counts)
        return frequency
