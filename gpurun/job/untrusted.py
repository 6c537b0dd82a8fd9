"""What the rented machine reports is untrusted: the checks every name, size and hash from it passes before the
laptop acts on it.

A marketplace host is a stranger's computer. File names in the runner's events and in the machine's output
listing become paths on the user's laptop, so they must be plain relative names of the files the runner writes
(LoRA `.safetensors`, sample `.png`), and the local file they map to must lie inside the run's folder. Sizes are
bounded so a lying host cannot fill the disk; hashes must look like hashes. Text for the terminal is cleaned of
control characters (see `gpurun.cli.render.printable`).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from gpurun.errors import UntrustedReportError
from gpurun.safenames import has_control_chars

#: the file types the runner writes to its output folder
ARTIFACT_SUFFIXES = (".safetensors", ".png")
#: a LoRA of the largest SDXL rank in fp32 is ~3.5 GB; nothing the runner writes comes near this
MAX_ARTIFACT_BYTES = 8 * 2**30
#: out/<name> or out/<folder>/<name>
MAX_ARTIFACT_DEPTH = 3
MAX_NAME_CHARS = 200
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def artifact_name(name: object, *, where: str | None = None) -> str:
    """A file name the machine reported for the run's output folder, accepted only if it is a plain relative POSIX
    path to a `.safetensors` or `.png` file: no absolute path, no `..`, no hidden or empty part, no backslash,
    no control character, a bounded depth and length."""

    def refuse(why: str) -> UntrustedReportError:
        return UntrustedReportError(
            f"the machine reported an output file gpurun will not write: {name!r} ({why})",
            where=where,
            hint="a compromised or broken host; nothing outside the run folder was touched",
        )

    if not isinstance(name, str) or not name:
        raise refuse("not a file name")
    if len(name) > MAX_NAME_CHARS or has_control_chars(name) or "\\" in name:
        raise refuse("too long, or control characters or backslashes in it")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise refuse("an absolute path")
    parts = name.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        raise refuse("'..', '.', an empty or a hidden part")
    if len(parts) > MAX_ARTIFACT_DEPTH:
        raise refuse("nested too deep")
    if not name.endswith(ARTIFACT_SUFFIXES):
        raise refuse(f"not one of {', '.join(ARTIFACT_SUFFIXES)}")
    return name


def artifact_size(size: object, *, where: str | None = None) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_ARTIFACT_BYTES:
        raise UntrustedReportError(
            f"the machine reported an impossible file size: {size!r}",
            where=where,
            hint=f"files the runner writes are under {MAX_ARTIFACT_BYTES // 2**30} GiB",
        )
    return size


def sha256_hex(value: object, *, where: str | None = None) -> str:
    if not isinstance(value, str) or not _SHA256.match(value.strip().lower()):
        raise UntrustedReportError(f"the machine reported a malformed sha256: {value!r}", where=where)
    return value.strip().lower()


def inside(folder: Path, name: str) -> Path:
    """The local path for an accepted artifact name, proven to lie inside `folder` (symlinks resolved)."""
    root = folder.resolve()
    target = (root / name).resolve()
    if target == root or root not in target.parents:
        raise UntrustedReportError(f"{name!r} would be written outside {root}", where=str(root))
    return target
