"""Processes on this machine, as the tests see them: waiting for a condition, alive or not, children, old Pythons."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, what: str = "condition", interval: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy and return that; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def process_alive(pid: int) -> bool:
    """True if `pid` exists and is neither a zombie nor dead (zombies linger here: PID 1 reaps lazily)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def child_pids(parent: int) -> list[int]:
    """Pids whose parent is `parent` (Linux /proc): e.g. the sshd processes serving each connection."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def python38() -> str | None:
    """A Python 3.8 interpreter, the oldest the box scripts support (stock images ship old ones), if this machine
    has one."""
    pyenv = os.path.expanduser(os.environ.get("PYENV_ROOT", "~/.pyenv"))
    candidates = [os.environ.get("GPURUN_TEST_PYTHON38"), *glob.glob(f"{pyenv}/versions/3.8*/bin/python3.8")]
    candidates.append(shutil.which("python3.8"))
    for candidate in filter(None, candidates):
        probe = [candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 8)"]
        if subprocess.run(probe, capture_output=True).returncode == 0:
            return candidate
    return None
