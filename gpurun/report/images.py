"""Pictures for the report as data URIs: sample grids and dataset thumbnails, always re-encoded by Pillow.

A grid came from a rented machine: it is decoded (within Pillow's decompression-bomb limit) and re-encoded,
never embedded as the bytes the machine sent. Big grids are scaled down so the page stays mailable.
"""

from __future__ import annotations

import base64
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from gpurun.dataset.scan import scan_dataset

#: a grid wider than this is scaled down (a 5x3 grid of 1024 px samples would be 5120 px wide)
GRID_MAX_WIDTH = 2048
THUMB_SIDE = 160
MAX_THUMBS = 60


@dataclass(frozen=True)
class Thumb:
    uri: str
    name: str
    caption: str


def _uri(image: Image.Image, fmt: str, **options: object) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def _open(path: Path) -> Image.Image | None:
    """The decoded image, or None when it is not one Pillow can decode safely."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return ImageOps.exif_transpose(image)
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning, SyntaxError):
        return None


def grid_uri(path: Path) -> str | None:
    """A sample grid as a PNG data URI, scaled to at most GRID_MAX_WIDTH wide; None if it does not decode."""
    image = _open(path)
    if image is None:
        return None
    image = image.convert("RGB")
    if image.width > GRID_MAX_WIDTH:
        image = image.resize(
            (GRID_MAX_WIDTH, round(image.height * GRID_MAX_WIDTH / image.width)), Image.Resampling.LANCZOS
        )
    return _uri(image, "PNG", optimize=True)


def dataset_thumbs(dataset_path: str, caption_ext: str = ".txt", limit: int = MAX_THUMBS) -> list[Thumb]:
    """Thumbnails and captions of the dataset's first `limit` images, if the dataset is still where it was."""
    root = Path(dataset_path)
    if not root.is_dir():
        return []
    scan = scan_dataset(root, caption_ext=caption_ext, repeats=1)
    thumbs: list[Thumb] = []
    for folder in scan.folders:
        for item in folder.items:
            if len(thumbs) >= limit:
                return thumbs
            image = _open(item.path)
            if image is None:
                continue
            image = image.convert("RGB")
            image.thumbnail((THUMB_SIDE, THUMB_SIDE))
            name = str(item.path.relative_to(root)) if item.path.is_relative_to(root) else item.path.name
            thumbs.append(Thumb(_uri(image, "JPEG", quality=82), name, item.caption))
    return thumbs
