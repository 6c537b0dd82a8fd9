"""The gpurun bundle: the package's own source, shipped to the instance so the runner there is this exact
version (no pip install of gpurun on the box, no version skew between client and runner)."""

from __future__ import annotations

from pathlib import Path

from gpurun.remote.excludes import UploadPlan, plan_upload

#: the folder holding the `gpurun` package; it is synced to `<run>/bundle/gpurun` and put on PYTHONPATH
PACKAGE_DIR = Path(__file__).resolve().parent.parent
BUNDLE_EXCLUDES = ["__pycache__/", "*.pyc", "*.pyo", ".DS_Store"]


def bundle_plan() -> UploadPlan:
    """What the bundle uploads (files, bytes)."""
    return plan_upload(PACKAGE_DIR, BUNDLE_EXCLUDES)
