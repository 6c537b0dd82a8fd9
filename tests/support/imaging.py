"""Building small real image datasets for the dataset tests (PIL, in tmp_path)."""

from __future__ import annotations

import zlib
from pathlib import Path

from PIL import Image, ImageDraw


def make_image(
    path: Path,
    size: tuple[int, int] = (512, 512),
    *,
    seed: int = 0,
    mode: str = "RGB",
    orientation: int | None = None,
    caption: str | None = None,
) -> Path:
    """A small image whose pixels depend on `seed` (so two seeds never give duplicates), saved by extension.

    `orientation` writes an EXIF orientation tag (JPEG); `caption` writes a sidecar .txt.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    hue = zlib.crc32(f"{path.name}-{seed}".encode())
    color = (hue & 0xFF, (hue >> 8) & 0xFF, (hue >> 16) & 0xFF)
    image = Image.new("RGB", size, color)
    draw = ImageDraw.Draw(image)
    offset = (seed * 37) % max(1, size[0] // 2)
    draw.rectangle([offset, offset, offset + size[0] // 3, offset + size[1] // 3], fill=(255 - color[0], 80, 160))
    if mode == "RGBA":
        image = image.convert("RGBA")
        image.putpixel((0, 0), (0, 0, 0, 0))
    elif mode != "RGB":
        image = image.convert(mode)
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(path, **kwargs)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def make_concept(root: Path, name: str, count: int, *, size: tuple[int, int] = (512, 512), caption: str = "") -> Path:
    """`root/name/` with `count` distinct JPEGs, each with a caption (`{caption}, picture N` when given)."""
    folder = root / name
    for index in range(count):
        make_image(
            folder / f"img{index:03d}.jpg", size, seed=index, caption=f"{caption}, picture {index}" if caption else None
        )
    return folder
