"""One locked training stack: the shipped locks, the [train] extra and this installed environment must agree.

Upgrading is a deliberate act (`python scripts/lock_box.py`, then this suite); these tests fail when someone edits
one of the three by hand, or when CI installs something else."""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys

import pytest
import tomllib
from packaging.requirements import Requirement

from gpurun.remote.boxlock import load_lock, lock_texts, normalise, parse_lock, supported_pythons
from tests.support.env import REPO_ROOT

PY_MINOR = f"{sys.version_info[0]}.{sys.version_info[1]}"
IMAGE_PACKAGES = {"torch", "torchvision", "torchaudio", "triton"}


def requirement_names() -> list[str]:
    text = (REPO_ROOT / "gpurun" / "templates" / "box" / "requirements.in").read_text()
    names = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            names.append(normalise(Requirement(line).name))
    return names


def test_every_supported_python_has_a_complete_exact_lock_without_torch() -> None:
    assert supported_pythons() == ("3.10", "3.11", "3.12", "3.13")
    asked = requirement_names()
    for name, text in lock_texts().items():
        lock = parse_lock(text)
        assert name == f"lock-py{lock.python}.txt"
        assert lock.image_requires.startswith("torch>=")
        assert not IMAGE_PACKAGES & set(lock.pins) and not [p for p in lock.pins if p.startswith("nvidia-")]
        # every line is an exact pin (parse_lock refuses anything else); every direct requirement is pinned
        assert set(lock.direct) <= set(asked) and {"diffusers", "transformers", "peft"} <= set(lock.direct)
        assert re.search(r"gpurun-exclude-newer: \d{4}-\d\d-\d\dT", text)


def test_the_train_extra_pins_exactly_the_locked_direct_versions_on_every_python() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extra = [Requirement(r) for r in project["optional-dependencies"]["train"]]
    for python in supported_pythons():
        lock = load_lock(python)
        env = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython"}  # fmt: skip
        active = [r for r in extra if r.marker is None or r.marker.evaluate(env)]
        pinned = {normalise(r.name): str(r.specifier) for r in active if normalise(r.name) not in IMAGE_PACKAGES}
        assert pinned == {name: f"=={lock.pins[name]}" for name in lock.direct}, python
        torch = [r for r in active if r.name == "torch"]
        assert torch and not str(torch[0].specifier).startswith("==")  # never pinned: the machine's CUDA build


def test_the_lock_script_agrees_with_pyproject() -> None:
    check = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "lock_box.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_this_environment_is_installed_from_the_lock() -> None:
    """CI (and the README's install) install the [train] extra with the lock as constraints: every locked
    distribution present here has exactly the locked version, and every direct one is present."""
    if PY_MINOR not in supported_pythons():
        pytest.skip(f"no box lock for Python {PY_MINOR}")
    lock = load_lock(PY_MINOR)
    installed = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            installed.setdefault(normalise(name), dist.version)
    wrong = {n: (installed[n], v) for n, v in lock.pins.items() if n in installed and installed[n] != v}
    missing = [n for n in lock.direct if n not in installed]
    assert not wrong and not missing, f"installed vs locked: {wrong}; missing: {missing}"


def test_ci_installs_with_the_lock_as_constraints() -> None:
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert '-c "gpurun/templates/box/lock-py' in ci
