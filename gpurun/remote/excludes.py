"""What gets uploaded: default excludes, `.gpurunignore`, rsync-style pattern matching, and the upload plan.

The patterns follow rsync's exclude rules, which `sync.push` passes to rsync verbatim, so the dry run's plan,
the SFTP fallback and rsync agree: a pattern without `/` matches a name at any depth; one with `/` matches
the end of the path (a leading `/` anchors it at the top); a trailing `/` matches directories only; `*` stays
within one path component, `**` crosses them, `?` is one character, and a backslash makes the next character
literal.

The upload goes to a stranger's machine, so nothing leaves the folder by accident: hidden files and folders
(`.git`, `.ssh`, `.env`, ...) and editor backups are never sent (the dataset check ignores them too), and a
symlink is followed only when it is a file link whose target lies inside the folder; links to folders and links
out of the folder are left out (`outside_links`), and the dataset check reports them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from gpurun.errors import ConfigError, SyncError
from gpurun.safenames import link_leaves

DEFAULT_EXCLUDES: tuple[str, ...] = (".*", "__pycache__", "*.pyc", "*~", "#*#", "*.swp", "*.swo")
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
    """The exclude list for uploading `folder`: defaults, its .gpurunignore, links that would leave it, `extra`."""
    return [*DEFAULT_EXCLUDES, *read_ignore_file(folder), *(literal(link) for link in outside_links(folder)), *extra]


def outside_links(root: Path) -> list[str]:
    """The folder's symlinks that the upload leaves out (see `link_leaves`), as paths relative to it."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in [*dirnames, *filenames]:
            path = base / name
            if path.is_symlink() and link_leaves(path, root):
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def literal(rel_path: str) -> str:
    """An exclude pattern that matches exactly this path from the top (wildcards in the name escaped)."""
    if any(ch in rel_path for ch in "*?[\\"):
        rel_path = re.sub(r"([*?\[\\])", r"\\\1", rel_path)
    return "/" + rel_path


def _translate(glob: str) -> str:
    out, i = [], 0
    while i < len(glob):
        char = glob[i]
        if char == "\\" and i + 1 < len(glob):  # an escaped character is itself
            out.append(re.escape(glob[i + 1]))
            i += 2
            continue
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
    """Walk `local_dir` as `push` will (file links inside it followed, excluded folders not entered)."""
    root = Path(local_dir)
    if not root.is_dir():
        raise SyncError(f"not a folder: {root}", where=str(root))
    patterns = tuple(upload_excludes(root) if excludes is None else excludes)
    excluder = Excluder(patterns)
    entries: list[PlannedFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        dirnames[:] = sorted(d for d in dirnames if not excluder.excluded(prefix + d, True))
        for name in sorted(filenames):
            rel = prefix + name
            if excluder.excluded(rel, False):
                continue
            path = Path(dirpath) / name
            if path.is_symlink() and link_leaves(path, root):
                continue  # excluded by `upload_excludes` too; here also when the caller gave its own list
            try:
                info = path.stat()
            except OSError:  # vanished, or unreadable
                continue
            entries.append(PlannedFile(rel, info.st_size, info.st_mtime))
    return UploadPlan(len(entries), sum(e.size for e in entries), tuple(entries), patterns)
