"""Names that become paths, and links that could lead out of a folder: the checks shared by the config, the
dataset check, the upload and what the rented machine reports.

A name a user (or a host) gives gpurun may end up as a file or folder name on the laptop and on the box, or on a
box's command line. It must be one plain path component: no separator, no `..`, no leading dot or dash, no
control character, valid UTF-8 text. A symlink in a dataset is followed only when it is a file link whose target
stays inside the dataset.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

MAX_COMPONENT_CHARS = 120


def has_control_chars(text: str) -> bool:
    """True if `text` holds control characters (newline and tab included), format characters, lone surrogates
    (a file name that was not valid UTF-8) or unassigned code points."""
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in text)


def component_problem(name: str) -> str | None:
    """Why `name` cannot be one file or folder name, or None when it can."""
    if not name or not name.strip():
        return "it is empty"
    if has_control_chars(name):
        return "it holds control characters or bytes that are not UTF-8 text"
    if "/" in name or "\\" in name:
        return "it holds a path separator"
    if name in (".", "..") or name.startswith("."):
        return "it starts with a dot"
    if name.startswith("-"):
        return "it starts with a dash (it would read as an option)"
    if len(name) > MAX_COMPONENT_CHARS:
        return f"it is longer than {MAX_COMPONENT_CHARS} characters"
    return None


def link_leaves(link: Path, root: Path) -> bool:
    """True for a symlink the upload does not follow: a link to a folder, a dangling one or a loop, or one whose
    target is outside `root`."""
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):
        return True
    return target.is_dir() or not target.is_relative_to(root.resolve())
