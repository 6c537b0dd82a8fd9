"""kohya-compatible aspect-ratio bucketing: the bucket list, which bucket an image falls into, how it is resized.

Pure arithmetic (no PIL, no torch), shared by `gpurun dataset check` and the training runner so both agree on
every number. It reproduces kohya-ss/sd-scripts exactly:

- `make_buckets` is `make_bucket_resolutions` from library/model_util.py (the current form, which works on
  the pixel area and drops buckets whose short side falls below `min_reso`), after the range adjustment of
  `BaseDataset.adjust_min_max_bucket_reso_by_steps` in library/train_util.py. Note what kohya really builds:
  for every width from `min_reso` to `max_reso` in `step`s, the *tallest* height that keeps the area within
  resolution² (capped at `max_reso`), both orientations, plus the square — not every pair that fits.
- `assign_bucket` / `select_bucket` are `BucketManager.select_bucket` (library/train_util.py): an image whose
  exact size is a bucket keeps it; otherwise the bucket with the closest aspect ratio (absolute difference of
  width/height, first one in sorted order on a tie). With `no_upscale` (kohya's `bucket_no_upscale`) no
  predefined buckets are used: an image larger than the area is first scaled down (aspect kept) to the area,
  then its size is rounded down to `step`; a smaller image keeps its size, rounded down — it is never upscaled.
- `resize_for_bucket` is the resize of `select_bucket` plus the centre crop of `trim_and_resize_if_required`
  (library/train_util.py, no random crop): scale so the image covers the bucket, then crop the overhang evenly.

Without bucketing (`enable_bucket = false`) kohya uses a single bucket, the training resolution itself, with
the same cover-and-centre-crop: `assign_bucket(w, h, [resolution])`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BucketChoice:
    """Where one image goes: its bucket, the size it is resized to, and the crop offset inside that size."""

    bucket: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int]


def adjust_bucket_range(resolution: tuple[int, int], min_reso: int, max_reso: int, step: int = 64) -> tuple[int, int]:
    """kohya's `adjust_min_max_bucket_reso_by_steps`: min rounded down and max rounded up to `step`.

    Raises ValueError (as kohya asserts) when the training resolution lies outside the bucket range.
    """
    if step < 1:
        raise ValueError(f"bucket_reso_steps must be positive, got {step}")
    if min_reso % step:
        min_reso -= min_reso % step
    if max_reso % step:
        max_reso += step - max_reso % step
    if min(resolution) < min_reso:
        raise ValueError(
            f"min_bucket_reso ({min_reso}) must not be larger than the resolution ({resolution[0]}x{resolution[1]})"
        )
    if max(resolution) > max_reso:
        raise ValueError(
            f"max_bucket_reso ({max_reso}) must not be smaller than the resolution ({resolution[0]}x{resolution[1]})"
        )
    return min_reso, max_reso


def make_buckets(resolution: tuple[int, int], min_reso: int, max_reso: int, step: int = 64) -> list[tuple[int, int]]:
    """The (width, height) buckets kohya builds for `resolution`, sorted. See the module docstring."""
    min_reso, max_reso = adjust_bucket_range(resolution, min_reso, max_reso, step)
    max_area = resolution[0] * resolution[1]
    square = int(math.sqrt(max_area) // step) * step
    buckets = {(square, square)}
    width = min_reso
    while width <= max_reso:
        height = min(max_reso, int((max_area // width) // step) * step)
        if height >= min_reso:
            buckets.add((width, height))
            buckets.add((height, width))
        width += step
    return sorted(buckets)


def predefined_buckets(
    resolution: tuple[int, int],
    *,
    enable_bucket: bool,
    no_upscale: bool,
    min_reso: int,
    max_reso: int,
    step: int = 64,
) -> list[tuple[int, int]]:
    """The bucket list a run chooses from, as kohya builds it: the training resolution alone without bucketing,
    none with `no_upscale` (each image's own size decides), else `make_buckets` over the adjusted range.
    Raises ValueError when the resolution lies outside the bucket range."""
    if not enable_bucket:
        return [resolution]
    if no_upscale:
        return []
    low, high = adjust_bucket_range(resolution, min_reso, max_reso, step)
    return make_buckets(resolution, low, high, step)


def _round_to_steps(value: float, step: int) -> int:
    rounded = int(value + 0.5)
    return rounded - rounded % step


def _no_upscale_size(width: int, height: int, max_area: int, step: int) -> tuple[int, int]:
    """kohya's bucket_no_upscale resize: shrink to the area if larger (rounding the side that keeps the aspect
    ratio best to `step`), otherwise keep the size."""
    if width * height <= max_area:
        return width, height
    aspect = width / height
    resized_width = math.sqrt(max_area * aspect)
    resized_height = max_area / resized_width
    width_rounded = _round_to_steps(resized_width, step)
    height_in_wr = _round_to_steps(width_rounded / aspect, step)
    height_rounded = _round_to_steps(resized_height, step)
    width_in_hr = _round_to_steps(height_rounded * aspect, step)
    # kohya divides by these without a guard; a degenerate (extremely thin) image would divide by zero there
    ar_width_rounded = width_rounded / height_in_wr if height_in_wr else math.inf
    ar_height_rounded = width_in_hr / height_rounded if height_rounded else math.inf
    if abs(ar_width_rounded - aspect) < abs(ar_height_rounded - aspect):
        return width_rounded, int(width_rounded / aspect + 0.5)
    return int(height_rounded * aspect + 0.5), height_rounded


def select_bucket(
    width: int,
    height: int,
    buckets: list[tuple[int, int]],
    *,
    no_upscale: bool = False,
    resolution: tuple[int, int] = (512, 512),
    step: int = 64,
) -> BucketChoice:
    """Bucket, resized size and centre-crop offset for one image (kohya's `select_bucket` + centre crop).

    `buckets` are the predefined buckets (`make_buckets`, or `[resolution]` without bucketing); with
    `no_upscale` they are not used and the bucket comes from the image size (see the module docstring).
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if no_upscale:
        resized = _no_upscale_size(width, height, resolution[0] * resolution[1], step)
        bucket = (resized[0] - resized[0] % step, resized[1] - resized[1] % step)
        if bucket[0] < step or bucket[1] < step:
            # kohya would produce a zero-sized bucket and fail later; the smallest usable bucket is one step
            bucket = (max(bucket[0], step), max(bucket[1], step))
            resized, _ = _cover(width, height, bucket)
    else:
        if not buckets:
            raise ValueError("no buckets to choose from")
        bucket = _closest_bucket(width, height, buckets)
        resized, _ = _cover(width, height, bucket)
    crop = (max(0, (resized[0] - bucket[0]) // 2), max(0, (resized[1] - bucket[1]) // 2))
    return BucketChoice(bucket=bucket, resized=resized, crop=crop)


def assign_bucket(
    width: int,
    height: int,
    buckets: list[tuple[int, int]],
    *,
    no_upscale: bool = False,
    resolution: tuple[int, int] = (512, 512),
    step: int = 64,
) -> tuple[int, int]:
    """The (width, height) bucket an image of this size falls into, as kohya chooses it."""
    return select_bucket(width, height, buckets, no_upscale=no_upscale, resolution=resolution, step=step).bucket


def resize_for_bucket(
    width: int,
    height: int,
    bucket: tuple[int, int],
    *,
    no_upscale: bool = False,
    resolution: tuple[int, int] = (512, 512),
    step: int = 64,
) -> tuple[int, int, tuple[int, int]]:
    """(resized width, resized height, (crop left, crop top)) to turn the image into exactly `bucket`.

    The resized size covers the bucket with the aspect ratio kept; the crop takes the centre. With `no_upscale`
    (and the same `resolution`/`step` given to `assign_bucket`) this is kohya's no-upscale size instead, which
    never enlarges the image.
    """
    if no_upscale:
        choice = select_bucket(width, height, [], no_upscale=True, resolution=resolution, step=step)
        resized = choice.resized
    else:
        resized, _ = _cover(width, height, bucket)
    crop = (max(0, (resized[0] - bucket[0]) // 2), max(0, (resized[1] - bucket[1]) // 2))
    return resized[0], resized[1], crop


def _closest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    if (width, height) in buckets:
        return (width, height)
    aspect = width / height
    best = buckets[0]
    best_error = abs(best[0] / best[1] - aspect)
    for candidate in buckets[1:]:
        error = abs(candidate[0] / candidate[1] - aspect)
        if error < best_error:  # strict: the first bucket wins a tie, as numpy's argmin does in kohya
            best, best_error = candidate, error
    return best


def _cover(width: int, height: int, bucket: tuple[int, int]) -> tuple[tuple[int, int], float]:
    """Size that covers `bucket` with the image's aspect ratio (kohya: match the height when the image is wider
    than the bucket, else the width), and the scale factor."""
    aspect = width / height
    scale = bucket[1] / height if aspect > bucket[0] / bucket[1] else bucket[0] / width
    resized = (int(width * scale + 0.5), int(height * scale + 0.5))
    # float rounding must never leave the image a pixel short of the bucket
    return (max(resized[0], bucket[0]), max(resized[1], bucket[1])), scale


def aspect_label(width: int, height: int) -> str:
    """A readable aspect ratio: a common ratio name within 1% ("3:2"), else the ratio to two decimals ("1.37:1")."""
    ratio = width / height
    for a, b in _COMMON_RATIOS:
        if abs(ratio / (a / b) - 1) <= 0.01:
            return f"{a}:{b}"
    return f"{ratio:.2f}:1"


_COMMON_RATIOS = (
    (1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16), (5, 4), (4, 5),
    (2, 1), (1, 2), (21, 9), (9, 21), (7, 5), (5, 7), (16, 10), (10, 16),
)  # fmt: skip
