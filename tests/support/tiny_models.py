"""Session fixtures: tiny random-weight SD 1.5 / SD 2 / SDXL models with the real topology, saved three ways.

Each fixture builds once per session (about a second) into a temporary folder and returns a TinyModel:
`diffusers_dir` (save_pretrained), `single_file` (original LDM/sgm layout, as users download checkpoints) and
`config_only_dir` (configs, tokenizers and scheduler, no weights). The config folder sits next to the single
file as `<stem>.config/`, the sidecar that `load_base_model` picks up for non-standard architectures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class TinyModel:
    family: str
    diffusers_dir: Path
    single_file: Path
    config_only_dir: Path


def build_tiny_model(root: Path, family: str) -> TinyModel:
    from gpurun.runner.model.tiny import save_tiny

    single = root / f"tiny-{family}.safetensors"
    model = TinyModel(family, root / "diffusers", single, root / f"tiny-{family}.config")
    save_tiny(family, model.diffusers_dir, single_file=model.single_file, config_only=model.config_only_dir)  # type: ignore[arg-type]
    return model


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-sd15"), "sd15")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-sdxl"), "sdxl")


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-sd2"), "sd2")
