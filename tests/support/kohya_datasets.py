"""Datasets in kohya's other shapes, on disk: a dataset config TOML with its subsets, and reg_data_dir folders."""

from __future__ import annotations

from pathlib import Path

from tests.support.imaging import make_image


def make_images(folder: Path, count: int, *, seed: int, caption: str | None, ext: str = ".txt") -> Path:
    """`count` small images (alternately square and wide) with a caption file each (`caption` None: none)."""
    for index in range(count):
        size = (96, 96) if index % 2 == 0 else (128, 80)
        path = make_image(folder / f"img{index}.png", size, seed=seed + index)
        if caption is not None:
            path.with_suffix(ext).write_text(f"{caption}, {index}", encoding="utf-8")
    return folder


def make_dataset_config(root: Path, *, resolution: str = "64", extra_general: str = "") -> Path:
    """A dataset config with three subsets: 2 images x 3 repeats with flip, 1 image x 2 repeats with .caption
    captions and caption shuffling, and a regularization subset of 3 images without captions."""
    make_images(root / "images" / "robot", 2, seed=1, caption="sks robot, table")
    make_images(root / "images" / "closeups", 1, seed=20, caption="sks robot, closeup", ext=".caption")
    make_images(root / "images" / "reg", 3, seed=40, caption=None)
    path = root / "dataset.toml"
    path.write_text(
        f"""[general]
caption_extension = ".txt"
keep_tokens = 1
{extra_general}
[[datasets]]
resolution = {resolution}
batch_size = 2
enable_bucket = true
min_bucket_reso = 64
max_bucket_reso = 128
bucket_reso_steps = 64

  [[datasets.subsets]]
  image_dir = "images/robot"
  class_tokens = "sks robot"
  num_repeats = 3
  flip_aug = true

  [[datasets.subsets]]
  image_dir = "images/closeups"
  class_tokens = "sks robot"
  num_repeats = 2
  caption_extension = ".caption"
  shuffle_caption = true

  [[datasets.subsets]]
  is_reg = true
  image_dir = "images/reg"
  class_tokens = "robot"
""",
        encoding="utf-8",
    )
    return path


def make_reg_dirs(root: Path) -> tuple[Path, Path]:
    """(train_data_dir, reg_data_dir): 3 training images x 2 repeats; 2 regularization images x 1 repeat."""
    make_images(root / "img" / "2_sks robot", 3, seed=1, caption="sks robot")
    make_images(root / "reg" / "1_robot", 2, seed=50, caption=None)
    return root / "img", root / "reg"
