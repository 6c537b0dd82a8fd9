"""`check_dataset`: the scan plus a full decode, duplicate search, model-size, trigger and step arithmetic."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from gpurun.buckets import BucketChoice, adjust_bucket_range, aspect_label, predefined_buckets, select_bucket
from gpurun.dataset.images import ImageHeader, ImageProblem, decode, quiet_pil
from gpurun.dataset.report import BucketFacts, CheckSettings, DatasetReport, FolderFacts
from gpurun.dataset.scan import scan_dataset, warn_exif_rotation
from gpurun.dataset.types import ConceptFolder, DatasetScan, ImageItem, Issue, IssueLog, relative_path
from gpurun.errors import ConfigError
from gpurun.models import MIN_IMAGE_SIDE, MODEL_FAMILIES, NATIVE_RESOLUTION

#: the tutorial: 15–20 images is the minimum for reasonable results; beyond 150 rarely helps a LoRA
FEW_IMAGES = 15
MANY_IMAGES = 150

Progress = Callable[[int, int], None]


def check_dataset(
    path: str | Path,
    *,
    model: str = "sd15",
    caption_ext: str = ".txt",
    repeats: int | None = None,
    trigger: str | None = None,
    epochs: int = 10,
    batch_size: int = 1,
    resolution: int | tuple[int, int] | None = None,
    enable_bucket: bool = True,
    min_bucket_reso: int = 256,
    max_bucket_reso: int = 1024,
    bucket_reso_steps: int = 64,
    bucket_no_upscale: bool = False,
    gradient_accumulation_steps: int = 1,
    max_train_steps: int | None = None,
    verify: bool = True,
    progress: Progress | None = None,
    scan: DatasetScan | None = None,
) -> DatasetReport:
    """Scan and check a dataset (see gpurun.dataset for the report's facts and issue codes).

    verify=True decodes every image (catching truncated files) and hashes it (exact duplicates); verify=False
    reads headers only. `max_train_steps`, when given, replaces `epochs` as kohya does. `progress(done, total)`
    is called as images are verified. `scan`, when given (a dataset config's subsets, reg images: see
    dataset.trainset), is checked instead of scanning `path`.
    """
    settings = _validated(
        CheckSettings(
            model=model,
            resolution=_resolution(model, resolution),
            enable_bucket=enable_bucket,
            bucket_no_upscale=bucket_no_upscale,
            min_bucket_reso=min_bucket_reso,
            max_bucket_reso=max_bucket_reso,
            bucket_reso_steps=bucket_reso_steps,
            batch_size=batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            epochs=epochs,
            max_train_steps=max_train_steps,
        )
    )
    trigger = trigger.strip() if trigger and trigger.strip() else None
    if scan is None:
        scan = scan_dataset(path, caption_ext=caption_ext, repeats=repeats, trigger=trigger)
    issues = IssueLog(scan.issues)
    if verify:
        scan = _verified(scan, issues, progress)
        issues.extend(_duplicates(scan))

    buckets = _predefined_buckets(settings)
    choices = {
        item.path: select_bucket(
            item.width,
            item.height,
            buckets,
            no_upscale=settings.enable_bucket and settings.bucket_no_upscale,
            resolution=settings.resolution,
            step=settings.bucket_reso_steps,
        )
        for item in scan.items
    }
    minimum = MIN_IMAGE_SIDE[settings.model]
    folders = [_folder_facts(folder, trigger, minimum, choices, issues) for folder in scan.folders]
    _warn_below_minimum(scan, settings, choices, issues)
    _count_warnings(scan, issues)

    bucket_facts = _bucket_facts(scan, choices, settings.batch_size)
    # kohya: one batch list per bucket, ceil(samples in bucket / batch size) each
    batches = sum(bucket.batches for bucket in bucket_facts)
    steps_per_epoch, epochs, total_steps = plan_steps(
        batches, settings.gradient_accumulation_steps, settings.epochs, settings.max_train_steps
    )

    return DatasetReport(
        scan=scan,
        settings=settings,
        verified=verify,
        trigger=trigger,
        folders=folders,
        buckets=bucket_facts,
        issues=_ordered(issues),
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        epochs=epochs,
        batches_per_epoch=batches,
    )


def _resolution(model: str, resolution: int | tuple[int, int] | None) -> tuple[int, int]:
    if resolution is None:
        resolution = NATIVE_RESOLUTION.get(model, 512)
    return (resolution, resolution) if isinstance(resolution, int) else (int(resolution[0]), int(resolution[1]))


def _validated(settings: CheckSettings) -> CheckSettings:
    if settings.model not in MODEL_FAMILIES:
        raise ConfigError(
            f"unknown model family {settings.model!r}", where="--model", hint=f"one of {', '.join(MODEL_FAMILIES)}"
        )
    for name in ("batch_size", "epochs", "gradient_accumulation_steps"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(settings, name)}")
    if settings.max_train_steps is not None and settings.max_train_steps < 1:
        raise ConfigError(f"max_train_steps must be at least 1, got {settings.max_train_steps}")
    if not settings.enable_bucket:
        return settings
    try:
        low, high = adjust_bucket_range(
            settings.resolution, settings.min_bucket_reso, settings.max_bucket_reso, settings.bucket_reso_steps
        )
    except ValueError as exc:
        raise ConfigError(str(exc), hint="adjust min_bucket_reso / max_bucket_reso or the resolution") from None
    return dataclasses.replace(settings, min_bucket_reso=low, max_bucket_reso=high)


def _predefined_buckets(settings: CheckSettings) -> list[tuple[int, int]]:
    return predefined_buckets(
        settings.resolution,
        enable_bucket=settings.enable_bucket,
        no_upscale=settings.bucket_no_upscale,
        min_reso=settings.min_bucket_reso,
        max_reso=settings.max_bucket_reso,
        step=settings.bucket_reso_steps,
    )


def plan_steps(
    batches_per_epoch: int, gradient_accumulation_steps: int, epochs: int, max_train_steps: int | None
) -> tuple[int, int, int]:
    """(steps per epoch, epochs, total steps), kohya's way: an optimizer step takes gradient_accumulation_steps
    batches; max_train_steps, when set, decides the epochs. Shared with the runner, so the step count the client
    planned and priced is the one the machine runs."""
    steps_per_epoch = math.ceil(batches_per_epoch / gradient_accumulation_steps)
    if max_train_steps is not None:
        return (
            steps_per_epoch,
            (math.ceil(max_train_steps / steps_per_epoch) if steps_per_epoch else 0),
            max_train_steps,
        )
    return steps_per_epoch, epochs, epochs * steps_per_epoch


def _warn_below_minimum(
    scan: DatasetScan, settings: CheckSettings, choices: dict[Path, BucketChoice], issues: IssueLog
) -> None:
    minimum = MIN_IMAGE_SIDE[settings.model]
    for item in scan.items:
        if item.short_side < minimum:
            choice = choices[item.path]
            scale = max(choice.resized[0] / item.width, choice.resized[1] / item.height)
            upscale = (
                f": upscaled ×{scale:.2f} to fill its {_wxh(choice.bucket)} bucket, it trains blurry"
                if scale > 1.01
                else ""
            )
            issues.warn(
                "below-minimum",
                item.path,
                f"{item.width}×{item.height} is below the {settings.model} minimum "
                f"of {minimum} px on the shorter side{upscale}",
            )


def _bucket_facts(scan: DatasetScan, choices: dict[Path, BucketChoice], batch_size: int) -> list[BucketFacts]:
    per_bucket: dict[tuple[int, int], list[ImageItem]] = defaultdict(list)
    for item in scan.items:
        per_bucket[choices[item.path].bucket].append(item)
    facts = []
    for bucket, items in sorted(per_bucket.items()):
        samples = sum(item.repeats for item in items)  # each image appears `repeats` times per epoch
        facts.append(BucketFacts(bucket, len(items), samples, math.ceil(samples / batch_size)))
    return facts


def _verified(scan: DatasetScan, issues: IssueLog, progress: Progress | None) -> DatasetScan:
    """Decode and hash every image in a few threads (PIL and hashlib release the GIL); drop the broken ones."""
    items = scan.items
    results: dict[Path, tuple[ImageItem, ImageHeader] | Issue] = {}
    workers = max(1, min(4, os.cpu_count() or 1))
    with quiet_pil(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpurun-verify") as pool:
        futures = {pool.submit(_verify_one, item): item for item in items}
        for done, future in enumerate(as_completed(futures), start=1):
            results[futures[future].path] = future.result()
            if progress is not None:
                progress(done, len(items))
    folders = []
    for folder in scan.folders:
        kept = []
        for item in folder.items:
            result = results[item.path]
            if isinstance(result, Issue):
                issues.append(result)
                continue
            kept.append(result[0])
            if result[0].exif_orientation != item.exif_orientation and result[0].exif_orientation != 1:
                warn_exif_rotation(issues, item.path, result[1])  # a PNG whose EXIF block follows its pixels
        folders.append(dataclasses.replace(folder, items=kept))
    return dataclasses.replace(scan, folders=folders, issues=list(scan.issues))


def _verify_one(item: ImageItem) -> tuple[ImageItem, ImageHeader] | Issue:
    try:
        data = item.path.read_bytes()
    except OSError as exc:
        return Issue("error", "unreadable-image", f"cannot read the file ({exc.strerror or exc})", item.path)
    try:
        header = decode(data)
    except ImageProblem as problem:
        return Issue("error", problem.code, str(problem), item.path)
    width, height = header.size  # PNG may reveal its EXIF orientation only once decoded
    digest = hashlib.sha256(data).hexdigest()
    return (
        dataclasses.replace(item, sha256=digest, width=width, height=height, exif_orientation=header.orientation),
        header,
    )


def _duplicates(scan: DatasetScan) -> list[Issue]:
    first_seen: dict[str, ImageItem] = {}
    issues = IssueLog()
    for item in scan.items:
        assert item.sha256 is not None
        original = first_seen.setdefault(item.sha256, item)
        if original is not item:
            where = relative_path(original.path, scan.root)
            issues.warn(
                "duplicate-image",
                item.path,
                f"exact duplicate of {where}: it trains twice as often — delete one of them",
            )
    return issues


def _folder_facts(
    folder: ConceptFolder, trigger: str | None, minimum: int, choices: dict[Path, BucketChoice], issues: IssueLog
) -> FolderFacts:
    items = folder.items
    # regularization captions describe the class, not the trigger
    wanted = None if folder.is_reg else trigger or folder.class_token.strip() or None
    source = None if wanted is None else "option" if trigger else "folder"
    with_trigger = 0
    if wanted is not None:
        pattern = _trigger_pattern(wanted)
        for item in items:
            if pattern.search(item.caption):
                with_trigger += 1
            elif item.caption_path is not None:
                how = "" if trigger else " (taken from the folder name; set it with --trigger)"
                issues.warn("missing-trigger", item.caption_path, f'caption lacks the trigger "{wanted}"{how}')
    sides = [item.short_side for item in items]
    smallest = min(items, key=lambda item: (item.short_side, item.width * item.height), default=None)
    median = statistics.median(sides) if sides else None
    return FolderFacts(
        name=folder.name,
        path=folder.path,
        repeats=folder.repeats,
        class_token=folder.class_token,
        images=len(items),
        captioned=sum(1 for item in items if item.caption_path is not None),
        trigger=wanted,
        trigger_source=source,
        with_trigger=with_trigger,
        min_side=min(sides) if sides else None,
        median_side=(int(median) if median is not None and median == int(median) else median),
        smallest=(smallest.width, smallest.height) if smallest else None,
        below_minimum=sum(1 for side in sides if side < minimum),
        aspect_ratios=dict(Counter(aspect_label(item.width, item.height) for item in items).most_common()),
        buckets={_wxh(b): n for b, n in sorted(Counter(choices[item.path].bucket for item in items).items())},
        samples_per_epoch=folder.samples_per_epoch,
        bytes=sum(item.size_bytes for item in items),
        is_reg=folder.is_reg,
    )


def _trigger_pattern(trigger: str) -> re.Pattern[str]:
    # whole words, any case, any run of spaces between words: "sks dog" matches "a photo of SKS  dog, ..."
    words = [re.escape(word) for word in trigger.split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)", re.IGNORECASE)


def _count_warnings(scan: DatasetScan, issues: IssueLog) -> None:
    count = sum(len(folder.items) for folder in scan.folders if not folder.is_reg)
    if 0 < count < FEW_IMAGES:
        issues.warn(
            "few-images",
            scan.root,
            f"only {count} training image(s): 15–20 is the minimum for reasonable results, 20–40 suit a simple concept",
        )
    elif count > MANY_IMAGES:
        issues.warn(
            "many-images",
            scan.root,
            f"{count} training images: more than {MANY_IMAGES} rarely improves a "
            "LoRA and makes every epoch longer — keep the best and most varied",
        )


def _ordered(issues: list[Issue]) -> list[Issue]:
    """Errors first, then warnings; within each, by file path, then code (stable, so tests and diffs agree)."""
    return sorted(issues, key=lambda i: (i.severity != "error", str(i.path) if i.path else "", i.code))


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
