"""Aspect-ratio buckets agree with kohya-ss/sd-scripts (library/model_util.py make_bucket_resolutions,
library/train_util.py BucketManager.select_bucket and trim_and_resize_if_required).

The expected values below were worked out by hand from kohya's algorithm, not produced by gpurun.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpurun.buckets import (
    adjust_bucket_range,
    aspect_label,
    assign_bucket,
    make_buckets,
    resize_for_bucket,
    select_bucket,
)
from tests.support.env import subprocess_env

# kohya, resolution 512, min_bucket_reso 256, max_bucket_reso 1024, steps 64: for each width w the tallest
# height h with w*h <= 512*512 (capped at 1024), both orientations, plus the square
KOHYA_512 = [
    (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576),
    (512, 512),
    (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256),
]  # fmt: skip


def test_sd15_buckets_match_kohya_exactly() -> None:
    assert make_buckets((512, 512), 256, 1024, 64) == KOHYA_512


def test_sdxl_buckets_contain_the_well_known_ones() -> None:
    buckets = make_buckets((1024, 1024), 512, 2048, 64)
    for known in [(1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344),
                  (1536, 640), (640, 1536), (2048, 512), (512, 2048)]:  # fmt: skip
        assert known in buckets
    assert all(w * h <= 1024 * 1024 and w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    assert all(512 <= w <= 2048 and 512 <= h <= 2048 for w, h in buckets)
    assert buckets == sorted(buckets) == sorted(set(buckets))
    assert make_buckets((1024, 1024), 512, 2048, 64) == buckets  # deterministic


def test_bucket_range_is_rounded_and_checked_like_kohya() -> None:
    assert adjust_bucket_range((512, 512), 250, 1000, 64) == (192, 1024)
    with pytest.raises(ValueError, match="min_bucket_reso"):
        adjust_bucket_range((512, 512), 640, 1024, 64)
    with pytest.raises(ValueError, match="max_bucket_reso"):
        adjust_bucket_range((1024, 1024), 256, 768, 64)


@pytest.mark.parametrize(
    ("size", "bucket"),
    [
        ((512, 512), (512, 512)),
        ((1024, 1024), (512, 512)),
        ((768, 512), (640, 384)),  # 1.5: |1.667-1.5| < |1.286-1.5|
        ((512, 768), (384, 640)),
        ((1920, 1080), (640, 384)),
        ((4000, 3000), (576, 448)),
        ((704, 320), (704, 320)),  # an exact bucket size is kept
        ((3000, 600), (1024, 256)),
        ((600, 3000), (256, 1024)),
    ],
)
def test_assign_picks_the_closest_aspect_ratio(size: tuple[int, int], bucket: tuple[int, int]) -> None:
    assert assign_bucket(*size, KOHYA_512) == bucket


def test_resize_covers_the_bucket_and_crops_the_centre() -> None:
    # wider than the bucket: match the height, crop left/right; taller: match the width, crop top/bottom
    assert resize_for_bucket(1000, 500, (640, 384)) == (768, 384, (64, 0))
    assert resize_for_bucket(768, 512, (640, 384)) == (640, 427, (0, 21))
    assert resize_for_bucket(512, 512, (512, 512)) == (512, 512, (0, 0))
    assert resize_for_bucket(256, 256, (512, 512)) == (512, 512, (0, 0))  # upscaled without bucket_no_upscale


def test_without_bucketing_there_is_one_bucket_the_resolution() -> None:
    assert assign_bucket(768, 512, [(512, 512)]) == (512, 512)
    assert resize_for_bucket(768, 512, (512, 512)) == (768, 512, (128, 0))


def test_no_upscale_small_image_keeps_its_size_rounded_down() -> None:
    choice = select_bucket(300, 200, [], no_upscale=True, resolution=(512, 512), step=64)
    assert choice.bucket == (256, 192)
    assert choice.resized == (300, 200)  # never enlarged
    assert choice.crop == (22, 4)
    assert assign_bucket(300, 200, [], no_upscale=True) == (256, 192)
    assert resize_for_bucket(300, 200, (256, 192), no_upscale=True) == (300, 200, (22, 4))


def test_no_upscale_large_image_is_shrunk_to_the_area_first() -> None:
    # 2000x1000 at 512²: sqrt(512²·2) = 724 → the height rounding (320, ar 2.0) beats the width rounding (704x320)
    choice = select_bucket(2000, 1000, [], no_upscale=True, resolution=(512, 512), step=64)
    assert choice.bucket == (640, 320)
    assert choice.resized == (640, 320)
    assert choice.crop == (0, 0)


def test_select_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        select_bucket(0, 10, KOHYA_512)
    with pytest.raises(ValueError):
        select_bucket(10, 10, [])


def test_aspect_labels() -> None:
    assert aspect_label(512, 512) == "1:1"
    assert aspect_label(768, 512) == "3:2"
    assert aspect_label(1920, 1080) == "16:9"
    assert aspect_label(1000, 730) == "1.37:1"


def test_buckets_module_is_pure() -> None:
    code = "import sys, gpurun.buckets; print(sorted(m for m in ('PIL', 'torch', 'numpy') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), check=True
    )
    assert result.stdout.strip() == "[]"
