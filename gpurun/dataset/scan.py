"""Scanning a kohya-style dataset folder: layout, concept folders, images (headers only) and their captions.

kohya's rules, reproduced from sd-scripts (library/config_util.py `generate_dreambooth_subsets_config_by_subdirs`,
library/train_util.py `DreamBoothDataset.read_caption`):

- a concept folder is named `N_name`: N (the digits before the first underscore) is how often each image
  repeats per epoch, `name` (everything after that underscore, spaces and further underscores kept) is the
  class token, used as the caption of images without one. kohya silently skips folders whose prefix is not
  a positive integer; gpurun reports them.
- the caption of `img.png` is `img` + the caption extension (`.txt` here; kohya's own default is `.caption`),
  read as UTF-8. kohya uses only its first line; gpurun uses the first non-empty line (and warns when there
  are more).
- only files directly inside a concept folder count (no recursion), hidden files are ignored, image
  extensions are .png .jpg .jpeg .webp .bmp (gpurun matches them case-insensitively).

gpurun adds what the upload needs: a symlink counts only when it is a file link whose target is inside the
dataset (links to folders and out of the dataset are not uploaded, and are reported); a file or folder name that
is not valid UTF-8 text, or holds control characters, is an error (the runner on the box could not read it).
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

from gpurun.dataset.images import (
    ORIENTATION_NAMES,
    ImageHeader,
    ImageProblem,
    is_image_name,
    is_unsupported_image_name,
    probe,
    quiet_pil,
)
from gpurun.dataset.types import ConceptFolder, DatasetScan, ImageItem, IssueLog, Layout
from gpurun.errors import ConfigError, DatasetError
from gpurun.safenames import has_control_chars, link_leaves

#: caption extensions people use; used to spot captions the chosen extension would silently miss
CAPTION_LIKE_EXTENSIONS = (".txt", ".caption")

_FOLDER_NAME = re.compile(r"^(\d+)(?:_(.*))?$", re.DOTALL)
_LOOKS_LIKE_CONCEPT = re.compile(r"^\d+(_|$)")


def parse_folder_name(name: str) -> tuple[int, str] | None:
    """kohya's `N_name` convention: `"10_sks dog"` → `(10, "sks dog")`; `None` when there is no number prefix.

    The repeat count may be 0 here; callers treat anything below 1 as an error, as kohya skips it.
    """
    match = _FOLDER_NAME.match(name)
    if match is None:
        return None
    return int(match.group(1)), match.group(2) or ""


def normalize_caption_ext(caption_ext: str) -> str:
    caption_ext = caption_ext.strip()
    if not caption_ext or caption_ext == ".":
        raise ConfigError("the caption extension must not be empty", where="--caption-ext", hint="e.g. .txt")
    return caption_ext if caption_ext.startswith(".") else f".{caption_ext}"


def scan_dataset(
    path: str | Path, *, caption_ext: str = ".txt", repeats: int | None = None, trigger: str | None = None
) -> DatasetScan:
    """Scan a dataset cheaply: image headers (PIL opens lazily), captions and file sizes; nothing is decoded.

    Layouts: PATH holds `N_name/` folders (kohya root); PATH is itself an `N_name` folder; or PATH is a plain
    folder of images, which needs `repeats` (else an error issue says to pass --repeats). `repeats`, when given,
    also overrides the prefix of concept folders. `trigger` is the class token of a plain folder (the caption of
    images without one). Raises DatasetError only when PATH does not exist or is not a folder; every problem
    with a file is an Issue in the result.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError("dataset folder not found", where=str(root), hint="check the path")
    if not root.is_dir():
        raise DatasetError(
            "not a folder", where=str(root), hint="pass the folder that holds your N_name/ image folders"
        )
    caption_ext = normalize_caption_ext(caption_ext)
    if repeats is not None and repeats < 1:
        raise ConfigError(f"repeats must be a positive integer, got {repeats}", where="--repeats")

    issues = IssueLog()
    folders: list[ConceptFolder] = []
    entries = _visible_entries(root, root, issues)
    subdirs = [entry for entry in entries if entry.is_dir()]
    direct_images = [entry for entry in entries if entry.is_file() and is_image_name(entry.name)]
    own_name = parse_folder_name(root.name)

    layout: Layout
    with quiet_pil():
        if direct_images and own_name is not None:
            layout = "concept-folder"
            _add_concept(root, root, own_name, repeats, caption_ext, folders, issues)
        elif any(_LOOKS_LIKE_CONCEPT.match(d.name) for d in subdirs) or (subdirs and not direct_images):
            layout = "kohya-root"
            for image in direct_images:
                issues.warn(
                    "stray-image",
                    image,
                    "image directly in the dataset folder is not trained: "
                    "only images inside N_name/ folders are — move it into one",
                )
            for subdir in subdirs:
                parsed = parse_folder_name(subdir.name)
                if parsed is None:
                    _report_unprefixed(subdir, root, issues)
                else:
                    _add_concept(subdir, root, parsed, repeats, caption_ext, folders, issues)
        elif direct_images:
            layout = "plain"
            if repeats is None:
                issues.error(
                    "needs-repeats",
                    root,
                    "a plain folder of images has no repeat count: pass --repeats N, "
                    "or move the images into a folder named like 10_name (10 repeats per epoch)",
                )
            folder = scan_folder(root, root, trigger or "", repeats or 1, caption_ext, issues)
            folders.append(folder)
        elif own_name is not None:
            layout = "concept-folder"
            _add_concept(root, root, own_name, repeats, caption_ext, folders, issues)
        else:
            layout = "kohya-root"

    if not any(folder.items for folder in folders):
        issues.error(
            "empty-dataset",
            root,
            "no trainable images: expected N_name/ folders (e.g. 10_mytrigger/) "
            "holding .png .jpg .jpeg .webp or .bmp files",
        )
    _report_caption_ext_mismatch(root, folders, caption_ext, issues)
    return DatasetScan(root=root, layout=layout, caption_ext=caption_ext, folders=folders, issues=issues)


def _visible_entries(directory: Path, root: Path, issues: IssueLog | None = None) -> list[Path]:
    """The entries that are training data candidates, as the upload will send them; with `issues`, what is left
    out for a reason the user should hear (a link out of the dataset, an unreadable folder, a bad name)."""
    try:
        listing = list(directory.iterdir())
    except OSError as exc:
        if issues is not None:
            issues.error("unreadable-folder", directory, f"cannot list this folder ({exc.strerror or exc})")
        return []
    kept = []
    for entry in listing:
        # hidden files (.DS_Store, macOS ._* resource forks, .ipynb_checkpoints) are never training data
        if entry.name.startswith("."):
            continue
        if entry.is_symlink() and link_leaves(entry, root):
            if issues is not None:
                issues.warn(
                    "link-not-uploaded",
                    entry,
                    "a link to a folder or out of the dataset is not uploaded (and not trained): copy the file in",
                )
            continue
        if has_control_chars(entry.name):
            if issues is not None:
                issues.error(
                    "unusable-name",
                    entry,
                    "the name is not valid UTF-8 text or holds control characters: rename it",
                )
            continue
        kept.append(entry)
    return sorted(kept, key=lambda p: p.name)


def _add_concept(
    directory: Path,
    root: Path,
    parsed: tuple[int, str],
    repeats_override: int | None,
    caption_ext: str,
    folders: list[ConceptFolder],
    issues: IssueLog,
) -> None:
    prefix, class_token = parsed
    if prefix < 1:
        count = _count_images(directory, root)
        issues.error(
            "bad-folder-name",
            directory,
            f"repeat count {prefix} is not a positive integer: kohya skips this "
            f"folder, so its {count} image(s) would not be trained — rename it like 1_{class_token or 'name'}",
        )
        return
    folders.append(scan_folder(directory, root, class_token, repeats_override or prefix, caption_ext, issues))


def _report_unprefixed(directory: Path, root: Path, issues: IssueLog) -> None:
    count = _count_images(directory, root)
    if count:
        issues.error(
            "bad-folder-name",
            directory,
            f"folder name has no repeat-count prefix: kohya skips it, so its "
            f"{count} image(s) would not be trained — rename it like 10_{directory.name}",
        )
    else:
        issues.warn("ignored-folder", directory, "folder without a repeat-count prefix and without images is ignored")


def _count_images(directory: Path, root: Path) -> int:
    return sum(1 for entry in _visible_entries(directory, root) if entry.is_file() and is_image_name(entry.name))


def scan_folder(
    directory: Path, root: Path, class_token: str, repeats: int, caption_ext: str, issues: IssueLog
) -> ConceptFolder:
    """One folder of images and captions (no recursion); links are followed only when they stay inside `root`."""
    entries = _visible_entries(directory, root, issues)
    names = {entry.name for entry in entries if entry.is_file()}
    used_captions: set[str] = set()
    items: list[ImageItem] = []
    for entry in entries:
        if entry.is_dir():
            count = _count_images(entry, root)
            if count:
                issues.warn(
                    "ignored-folder",
                    entry,
                    f"subfolder with {count} image(s) is not trained: kohya "
                    "does not look into subfolders — move them up or into their own N_name/ folder",
                )
            continue
        if is_unsupported_image_name(entry.name):
            issues.warn(
                "unsupported-image",
                entry,
                f"{entry.suffix} files are skipped by kohya and gpurun: convert it to PNG or JPEG to train on it",
            )
            continue
        if not is_image_name(entry.name):
            continue
        caption_name = entry.stem + caption_ext
        if caption_name in names:
            used_captions.add(caption_name)
        item = _scan_image(
            entry, directory.name, repeats, class_token, caption_name in names, caption_ext, names, issues
        )
        if item is not None:
            items.append(item)
    for name in sorted(names - used_captions):
        if name.endswith(caption_ext):
            issues.warn(
                "orphan-caption",
                directory / name,
                f"caption file without a matching image (no {name[: -len(caption_ext)]}.png/.jpg/...): it is ignored",
            )
    return ConceptFolder(path=directory, name=directory.name, repeats=repeats, class_token=class_token, items=items)


def _scan_image(
    path: Path,
    folder: str,
    repeats: int,
    fallback: str,
    has_caption: bool,
    caption_ext: str,
    names: set[str],
    issues: IssueLog,
) -> ImageItem | None:
    try:
        info = path.stat()
    except OSError as exc:
        issues.error("unreadable-image", path, f"cannot read the file ({exc.strerror or exc})")
        return None
    if not stat.S_ISREG(info.st_mode):
        # a FIFO or a device named like an image: reading it could block forever or never end
        issues.error("not-a-file", path, "not a regular file (a pipe, socket or device): replace it with the image")
        return None
    size_bytes = info.st_size
    if size_bytes == 0:
        issues.error("zero-byte-file", path, "zero-byte file: the copy or download did not finish")
        return None
    try:
        header = probe(path)
    except ImageProblem as problem:
        issues.error(problem.code, path, str(problem))
        return None

    caption, caption_path = _read_caption(path, path.with_name(path.stem + caption_ext), has_caption, issues)
    if caption is None:
        caption = fallback
        fallback_text = f'the caption "{fallback}"' if fallback else "an empty caption"
        if caption_path is None and not has_caption:
            others = [path.stem + ext for ext in CAPTION_LIKE_EXTENSIONS if ext != caption_ext]
            found = [name for name in others if name in names]
            hint = (
                f"; {found[0]} exists but captions are read from {caption_ext} files (--caption-ext)" if found else ""
            )
            issues.warn(
                "missing-caption",
                path,
                f"no caption file ({path.stem}{caption_ext}): trains with {fallback_text}{hint}",
            )
        elif caption_path is not None:
            issues.warn("empty-caption", caption_path, f"caption file is empty: trains with {fallback_text}")
        caption_path = None

    width, height = header.size
    if header.mode == "CMYK":
        issues.warn(
            "unusual-mode",
            path,
            "CMYK image: converted to RGB without a colour profile, colours may shift — save it as RGB",
        )
    elif header.mode not in ("RGB", "L", "P", "RGBA", "LA", "PA"):
        issues.warn(
            "unusual-mode",
            path,
            f"unusual colour mode {header.mode}: it is converted to 8-bit RGB for "
            "training — save it as 8-bit RGB to see what trains",
        )
    if header.has_alpha:
        issues.warn(
            "transparency",
            path,
            f"has transparency ({header.mode}): training uses RGB, so transparent "
            "areas get a flat background — flatten it onto the background you want",
        )
    if header.orientation != 1:
        warn_exif_rotation(issues, path, header)
    return ImageItem(
        path=path,
        folder=folder,
        repeats=repeats,
        caption=caption,
        caption_path=caption_path,
        width=width,
        height=height,
        size_bytes=size_bytes,
        format=header.format,
        mode=header.mode,
        has_alpha=header.has_alpha,
        exif_orientation=header.orientation,
    )


def _read_caption(
    image: Path, caption_path: Path, has_caption: bool, issues: IssueLog
) -> tuple[str | None, Path | None]:
    """(caption, path) from the caption file; (None, path) when it is empty or unusable, (None, None) if absent."""
    if not has_caption:
        return None, None
    try:
        raw = caption_path.read_bytes()
    except OSError as exc:
        issues.error("unreadable-caption", caption_path, f"cannot read the caption ({exc.strerror or exc})")
        return None, None
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 byte-order mark is harmless; drop it
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        issues.error(
            "caption-not-utf8",
            caption_path,
            f"caption is not UTF-8 text (byte 0x{bad} at offset {exc.start}): "
            "kohya stops with an error on it — re-save the file as UTF-8",
        )
        return None, None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None, caption_path
    if len(lines) > 1:
        issues.warn(
            "multiline-caption",
            caption_path,
            f"caption has {len(lines)} lines: only the first one is used (as kohya does) — join them with commas",
        )
    return lines[0], caption_path


def _report_caption_ext_mismatch(root: Path, folders: list[ConceptFolder], caption_ext: str, issues: IssueLog) -> None:
    """kohya's default `.caption` silently ignores `.txt` captions (and vice versa): say so loudly."""
    items = [item for folder in folders for item in folder.items]
    if not items or any(item.caption_path is not None for item in items):
        return
    if any(i.code in ("empty-caption", "caption-not-utf8", "unreadable-caption") for i in issues):
        return  # caption files with this extension exist; the per-file issues say what is wrong with them
    for ext in CAPTION_LIKE_EXTENSIONS:
        if ext == caption_ext:
            continue
        found = sum(1 for item in items if item.path.with_name(item.path.stem + ext).is_file())
        if found:
            issues.warn(
                "caption-extension-mismatch",
                root,
                f"NO CAPTIONS USED: no image has a {caption_ext} "
                f"caption, but {found} of {len(items)} have a {ext} one — pass --caption-ext {ext} (and set "
                f'caption_extension = "{ext}" in a kohya config; kohya\'s default is .caption)',
            )
            return


def warn_exif_rotation(issues: IssueLog, path: Path, header: ImageHeader) -> None:
    how = ORIENTATION_NAMES[header.orientation]
    issues.warn(
        "exif-rotated",
        path,
        f"pixels stored {how} ({header.stored_width}×{header.stored_height}), shown upright only through an EXIF "
        f"orientation tag ({header.orientation}): tools that ignore EXIF, kohya's scripts among them, train it "
        f"{how} — re-save it upright",
    )
