"""Shared pieces for the bootstrap.sh tests: running the script here, reading its progress, small locks."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

from gpurun.remote.bootstrap import BootstrapLine, parse_line
from tests.support.env import REPO_ROOT

SCRIPT = REPO_ROOT / "gpurun" / "templates" / "bootstrap.sh"
#: the shipped locks (this venv is installed from the one for its Python, so it is a "warm image")
SHIPPED_LOCKS = SCRIPT.parent / "box"
PY_MINOR = f"{sys.version_info[0]}.{sys.version_info[1]}"


def write_lock(
    folder: Path,
    pins: dict[str, str],
    *,
    direct: list[str] | None = None,
    python: str = PY_MINOR,
    image: str = "torch>=2.3",
) -> Path:
    """A lock in the shipped format (see gpurun/remote/boxlock.py); no pins = nothing to install."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(pins) if direct is None else direct
    text = (
        f"# gpurun-python: {python}\n# gpurun-exclude-newer: 2026-12-04T00:00:00Z\n"
        f"# gpurun-image-requires: {image}\n# gpurun-direct: {' '.join(names)}\n"
        + "".join(f"{name}=={version}    # via -r requirements.in\n" for name, version in pins.items())
    )
    (folder / f"lock-py{python}.txt").write_text(text)
    return folder


def bootstrap(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "GPURUN_PYTHON": sys.executable, "GPURUN_CHECK_CUDA": "0", **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def progress(result: subprocess.CompletedProcess[str]) -> list[BootstrapLine]:
    return [line for line in map(parse_line, result.stdout.splitlines()) if line is not None]


def by_phase(result: subprocess.CompletedProcess[str], phase: str) -> list[BootstrapLine]:
    return [line for line in progress(result) if line.phase == phase]


def build_wheel(
    folder: Path, name: str, version: str, requires: list[str], extra: dict[str, str] | None = None
) -> None:
    """A minimal pure-python wheel, so the cold install runs with `--no-index` and no network."""
    module, dist = name.replace("-", "_"), f"{name.replace('-', '_')}-{version}"
    files = {
        **(extra or {}),
        f"{module}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: gpurun-tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}.dist-info/RECORD"] = "\n".join([*record, f"{dist}.dist-info/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            info = zipfile.ZipInfo(path)
            mode = 0o755 if ".data/scripts/" in path else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16  # pip keeps executable bits of regular files
            wheel.writestr(info, text)


def find_uv() -> str | None:
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.exists() else shutil.which("uv")
