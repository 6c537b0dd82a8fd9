"""`gpurun sample` end to end: LoRA files go up to a rented "instance" (the fake Vast renting a box behind the
real sshd) or to this machine, the sampler renders every grid, the grids come back verified with a report.html,
and the machine is destroyed; the grids show what was asked (rows, columns, cell size)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gpurun.runner.sample import grid_geometry
from tests.support.e2e import FAST, json_documents
from tests.support.env import subprocess_env
from tests.support.lora_files import lora_model, save_lora_file

pytest.importorskip("torch")
pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny SD 1.5 LoRA files, as a run's epochs would be."""
    folder = tmp_path_factory.mktemp("loras")
    files = []
    for epoch in (1, 2):
        model, _ = lora_model("sd15", rank=4, alpha=2.0)
        files.append(save_lora_file(model, folder / f"dog-{epoch:06d}.safetensors"))
    return files


def sample(files: list[Path], output: Path, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "gpurun", "sample", *map(str, files), "--base", "tiny-sd", "-P", "sks dog",
            "-P", "sks dog on a beach", "--seed", "1", "--seed", "2", "--weight", "0", "--weight", "1", "--steps", "2",
            "--yes", "--json", "--output", str(output), *args]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=subprocess_env(**FAST))


def _check_outputs(run: Path, files: list[Path]) -> dict[str, Any]:
    cell, rows, weights = (64, 64), 2 * 2, 2
    for index, source in enumerate(files):
        with Image.open(run / f"{index:02d}-{source.stem}-grid.png") as grid:
            assert grid.size == grid_geometry(rows, weights, cell)  # prompts × seeds by weight
    with Image.open(run / "compare-grid.png") as compare:
        assert compare.size == grid_geometry(len(files) * 2, 2, cell)  # file × prompt by seed
    page = (run / "report.html").read_text()
    assert page.count("<img alt='samples") == len(files) + 1
    receipt = json.loads((run / "receipt.json").read_text())
    assert receipt["outcome"] == "done" and receipt["destroyed"] is True
    assert json.loads((run / "sample.json").read_text())["labels"] == [f.stem for f in files]
    return receipt


@pytest.mark.sshd
def test_sample_on_a_rented_machine_fetches_the_grids_and_destroys_it(
    two_epochs: list[Path], vast_on_box: Any, tmp_path: Path
) -> None:
    proc = sample(two_epochs, tmp_path / "out", "--provider", "vast", "--budget", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = (tmp_path / "out").iterdir()
    receipt = _check_outputs(run, two_epochs)
    assert receipt["provider"] == "vast" and vast_on_box.live_instances() == []
    assert len(vast_on_box.destroyed) == 1
    kinds = [d.get("type") for d in json_documents(proc.stdout)]
    assert "sample" in kinds and kinds[-1] == "receipt"


def test_sample_with_the_local_provider(two_epochs: list[Path], tmp_path: Path) -> None:
    proc = sample(two_epochs, tmp_path / "out", "--provider", "local")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = (tmp_path / "out").iterdir()
    _check_outputs(run, two_epochs)
