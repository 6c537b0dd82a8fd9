"""A sampling job (`gpurun sample`): which LoRA files to render with which base model, prompts, seeds and weights.

Written by the client as sample.json, read by the sampler on the machine (`python -m gpurun.runner.sampling`).
Strict: unknown keys, empty lists and out-of-range numbers are refused with the field named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpurun.errors import ConfigError
from gpurun.trainconfig import SAMPLERS

#: the most cells one job renders: 2,000 images is hours on a fast GPU, and a grid no person reads
MAX_CELLS = 2000


class SampleJob(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    pretrained_model_name_or_path: str = Field(min_length=1)
    model_family: Literal["sd15", "sd2", "sdxl"] | None = None
    v2: bool = False
    v_parameterization: bool = False
    #: LoRA files, relative to the job file's folder (or absolute)
    loras: list[str] = Field(min_length=1, max_length=100)
    #: a label per LoRA file for the comparison grid (epoch names); defaults to the file names
    labels: list[str] = Field(default_factory=list)
    prompts: list[str] = Field(min_length=1, max_length=50)
    negative_prompt: str = ""
    seeds: list[int] = Field(default_factory=lambda: [1], min_length=1, max_length=16)
    weights: list[float] = Field(default_factory=lambda: [0.0, 0.5, 1.0], min_length=1, max_length=16)
    #: the LoRA weight of the comparison grid (several files: files × seeds at this weight)
    compare_weight: float = Field(default=1.0, ge=-4.0, le=4.0)
    steps: int = Field(default=20, ge=1, le=150)
    width: int = Field(default=512, ge=32, le=2048, multiple_of=8)
    height: int = Field(default=512, ge=32, le=2048, multiple_of=8)
    sampler: str = "euler_a"
    guidance_scale: float = Field(default=7.0, ge=0.0, le=30.0)
    output_dir: str = "out"

    @field_validator("prompts")
    @classmethod
    def _prompts_have_text(cls, prompts: list[str]) -> list[str]:
        if any(not p.strip() for p in prompts):
            raise ValueError("a prompt is empty")
        return prompts

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, sampler: str) -> str:
        if sampler.lower() not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
        return sampler.lower()

    @field_validator("weights")
    @classmethod
    def _weights_in_range(cls, weights: list[float]) -> list[float]:
        bad = [w for w in weights if not -4.0 <= w <= 4.0]
        if bad:
            raise ValueError(f"LoRA weights run from -4 to 4, got {bad[0]}")
        return weights

    @property
    def cells(self) -> int:
        """Images the job renders: every file's grid, and the comparison grid when there are several files."""
        per_file = len(self.prompts) * len(self.seeds) * len(self.weights)
        compare = len(self.loras) * len(self.prompts) * len(self.seeds) if len(self.loras) > 1 else 0
        return len(self.loras) * per_file + compare

    def label_of(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else Path(self.loras[index]).stem

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"

    @classmethod
    def parse(cls, data: object, where: str) -> SampleJob:
        try:
            job = cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "(top level)"
            raise ConfigError(f"{first['msg']}", where=f"{where}: {field}") from None
        if job.cells > MAX_CELLS:
            raise ConfigError(
                f"{job.cells} images to render, more than {MAX_CELLS}",
                where=where,
                hint="fewer prompts, seeds, weights or files",
            )
        return job

    @classmethod
    def from_file(cls, path: str | Path) -> SampleJob:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the sample job: {exc}", where=str(path)) from None
        return cls.parse(data, str(path))
