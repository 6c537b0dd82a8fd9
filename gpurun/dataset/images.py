"""Reading training images with PIL: a cheap header probe, a full decode, and the RGB load the trainer uses."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

#: the image files kohya's scripts (and gpurun) train on; matched case-insensitively
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
#: image formats people drop into datasets that kohya silently skips
UNSUPPORTED_IMAGE_EXTENSIONS = (".gif", ".tif", ".tiff", ".avif", ".heic", ".heif", ".jxl", ".jfif", ".jp2")

#: modes that train as they are (P and L are converted to RGB without loss of meaning)
NORMAL_MODES = frozenset({"RGB", "L", "P"})
#: modes that carry an alpha channel
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
#: EXIF orientations that swap width and height
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
#: how the pixels of each EXIF orientation are stored, relative to the upright picture
ORIENTATION_NAMES = {
    2: "mirrored",
    3: "upside down",
    4: "upside down and mirrored",
    5: "sideways and mirrored",
    6: "sideways",
    7: "sideways and mirrored",
    8: "sideways",
}


class ImageProblem(Exception):
    """The image cannot be used: `code` is the issue code, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What the header says: stored size, format, mode, alpha, EXIF orientation (1 = upright)."""

    stored_width: int
    stored_height: int
    format: str
    mode: str
    has_alpha: bool
    orientation: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as displayed, i.e. after the EXIF orientation is applied."""
        if self.orientation in _SWAPPING_ORIENTATIONS:
            return self.stored_height, self.stored_width
        return self.stored_width, self.stored_height


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def is_unsupported_image_name(name: str) -> bool:
    return name.lower().endswith(UNSUPPORTED_IMAGE_EXTENSIONS)


def probe(source: Path | bytes) -> ImageHeader:
    """Read only the header (PIL opens lazily). Raises ImageProblem for a file PIL cannot identify."""
    try:
        with _open(source) as image:
            return _header(image)
    except ImageProblem:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise ImageProblem("unreadable-image", f"not a readable image ({_reason(exc)})") from None


def decode(data: bytes) -> ImageHeader:
    """Decode every pixel (what training will do); catches truncated and corrupt files.

    Returns the header as known after decoding (PNG may carry its EXIF block after the pixels).
    """
    try:
        with _open(data) as image:
            image.load()
            return _header(image)
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageProblem("unreadable-image", f"not a readable image ({_reason(exc)})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        reason = _reason(exc)
        if "truncated" in reason or isinstance(exc, EOFError):
            raise ImageProblem("truncated-image", f"truncated image: decoding stopped early ({reason})") from None
        raise ImageProblem("unreadable-image", f"corrupt image data ({reason})") from None


def load_image(path: str | Path) -> Image.Image:
    """The image as training sees it: decoded, turned upright by its EXIF orientation, RGB.

    Transparent areas are composited onto white (a plain RGB conversion would expose whatever colour the
    transparent pixels store, often black); CMYK and 16-bit images are converted by PIL.
    """
    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image)
    if upright.mode in ALPHA_MODES or "transparency" in upright.info:
        rgba = upright.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return upright.convert("RGB")


def _open(source: Path | bytes) -> Image.Image:
    if isinstance(source, bytes):
        return Image.open(io.BytesIO(source))
    return Image.open(source)


def _header(image: Image.Image) -> ImageHeader:
    mode = image.mode
    has_alpha = mode in ALPHA_MODES or "transparency" in image.info
    return ImageHeader(
        stored_width=image.width,
        stored_height=image.height,
        format=image.format or "?",
        mode=mode,
        has_alpha=has_alpha,
        orientation=_orientation(image),
    )


def _orientation(image: Image.Image) -> int:
    # PNG's getexif() decodes the whole image when the EXIF block is not in the header; a header-only probe
    # must not do that, so it only reads EXIF that has already been seen.
    if image.format == "PNG" and "exif" not in image.info and "Raw profile type exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(0x0112, 1)  # 0x0112 = Orientation
    except Exception:  # a corrupt EXIF block: PIL raises assorted errors; it just means "no usable tag"
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


@contextlib.contextmanager
def quiet_pil() -> Iterator[None]:
    """Silence PIL's warnings (odd EXIF, palette transparency, large images) for a whole scan: the check reports
    what matters itself. Use it around a batch in the main thread, never inside worker threads (the warning
    filters are process-global and catch_warnings is not thread-safe)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
