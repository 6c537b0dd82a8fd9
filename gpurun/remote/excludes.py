"""What gets uploaded: default excludes, `.gpurunignore`, rsync-style pattern matching, and the upload plan.

The patterns follow rsync's exclude rules, which `sync.push` passes to rsync verbatim, so the dry run's plan,
the SFTP fallback and rsync agree: a pattern without `/` matches a name at any depth; one with `/` matches
the end of the path (a leading `/` anchors it at the top); a trailing `/` matches directories only; `*` stays
within one path component, `**` crosses them, `?` is one character.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from gpurun.errors import ConfigError, SyncError

DEFAULT_EXCLUDES: tuple[str, ...] = (".git", "__pycache__", "*.pyc", ".DS_Store", ".ipynb_checkpoints")
IGNORE_FILE = ".gpurunignore"


def read_ignore_file(folder: Path) -> list[str]:
    """Patterns from `folder/.gpurunignore`: one per line, `#` comments and blank lines skipped."""
    path = folder / IGNORE_FILE
    if not path.is_file():
        return []
    patterns = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("!"):
            raise ConfigError(
                f"line {number}: negated patterns ({line!r}) are not supported",
                where=str(path),
                hint="list only what to leave out",
            )
        patterns.append(line)
    return patterns


def upload_excludes(folder: Path, extra: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The exclude list for uploading `folder`: defaults, then its .gpurunignore, then `extra`."""
    return [*DEFAULT_EXCLUDES, *read_ignore_file(folder), *extra]


def _translate(glob: str) -> str:
    out, i = [], 0
    while i < len(glob):
        char = glob[i]
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = glob.find("]", i + 1)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = glob[i + 1 : end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end + 1
                continue
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class ExcludeRule:
    pattern: str
    regex: re.Pattern[str] = field(repr=False)
    dir_only: bool
    #: no `/` in the pattern: it is matched against the last path component only
    name_only: bool

    @classmethod
    def parse(cls, pattern: str) -> ExcludeRule:
        text = pattern.strip()
        if not text or text == "/":
            raise ConfigError(f"empty exclude pattern {pattern!r}")
        dir_only = text.endswith("/")
        text = text.rstrip("/")
        if text.startswith("/"):
            return cls(pattern, re.compile(f"^{_translate(text[1:])}$"), dir_only, name_only=False)
        if "/" in text:  # matched against the tail of the path, at a component boundary
            return cls(pattern, re.compile(f"(^|/){_translate(text)}$"), dir_only, name_only=False)
        return cls(pattern, re.compile(f"^{_translate(text)}$"), dir_only, name_only=True)

    def matches(self, rel_path: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        subject = rel_path.rsplit("/", 1)[-1] if self.name_only else rel_path
        return bool(self.regex.search(subject))


class Excluder:
    def __init__(self, patterns: list[str] | tuple[str, ...]) -> None:
        self.rules = [ExcludeRule.parse(p) for p in patterns]

    def excluded(self, rel_path: str, is_dir: bool) -> bool:
        return any(rule.matches(rel_path, is_dir) for rule in self.rules)


@dataclass(frozen=True, slots=True)
class PlannedFile:
    rel_path: str
    size: int
    mtime: float


@dataclass(frozen=True, slots=True)
class UploadPlan:
    """What `push` will send: `files` regular files totalling `bytes`, after excludes."""

    files: int
    bytes: int
    entries: tuple[PlannedFile, ...] = field(default=(), repr=False)
    excludes: tuple[str, ...] = ()


def plan_upload(local_dir: Path, excludes: list[str] | tuple[str, ...] | None = None) -> UploadPlan:
    """Walk `local_dir` as `push` will (symlinks followed, excluded folders not entered)."""
    root = Path(local_dir)
    if not root.is_dir():
        raise SyncError(f"not a folder: {root}", where=str(root))
    patterns = tuple(upload_excludes(root) if excludes is None else excludes)
    excluder = Excluder(patterns)
    entries: list[PlannedFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        base = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        dirnames[:] = sorted(d for d in dirnames if not excluder.excluded(prefix + d, True))
        for name in sorted(filenames):
            rel = prefix + name
            if excluder.excluded(rel, False):
                continue
            try:
                info = (Path(dirpath) / name).stat()
            except FileNotFoundError:  # a dangling symlink: rsync --copy-links skips it too
                continue
            entries.append(PlannedFile(rel, info.st_size, info.st_mtime))
    return UploadPlan(len(entries), sum(e.size for e in entries), tuple(entries), patterns)
