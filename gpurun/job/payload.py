"""What a rented machine does between setup and fetch: train a LoRA (`gpurun train`) or render sample grids
(`gpurun sample`). The run's flow (run.py: boot, setup, upload, training, fetch, teardown, receipt, report) is the
same for both; a payload says what is written next to the outputs, what goes up, and what is launched."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gpurun.dataset import DatasetReport
from gpurun.job import machine
from gpurun.job.context import RunContext
from gpurun.job.datasets import DatasetUpload, run_upload
from gpurun.report.rundata import DATASET_FILE
from gpurun.trainconfig import TrainConfig


class Payload(Protocol):
    #: what the journal keeps as the run's config (a training config's TOML, a sample job's JSON)
    def config_text(self) -> str: ...

    def prepare(self, out_dir: Path) -> None:
        """Write the run's local description next to its outputs (config, dataset check, job)."""

    def upload_detail(self) -> str: ...

    async def ship(self, ctx: RunContext) -> None:
        """Send the run's inputs to the machine (the upload phase)."""

    async def launch(self, ctx: RunContext, model_path: str) -> None:
        """Start the job on the machine, detached (the training phase then follows its events)."""


@dataclass(frozen=True)
class TrainingPayload:
    """`gpurun train`: the dataset goes up, the trainer runs."""

    config: TrainConfig
    report: DatasetReport
    dataset: Path
    repeats: int | None
    trigger: str | None
    upload_files: int
    upload_bytes: int

    def config_text(self) -> str:
        return self.config.to_toml()

    def prepare(self, out_dir: Path) -> None:
        (out_dir / "config.toml").write_text(self.config_text(), encoding="utf-8")
        # the dataset check as the report shows it (thumbnails come from the dataset folder when it is written)
        report = json.dumps(self.report.to_dict(), indent=2) + "\n"
        (out_dir / DATASET_FILE).write_text(report, encoding="utf-8")

    def upload_detail(self) -> str:
        return f"{self.upload_files} files, {self.upload_bytes / 1e6:.1f} MB"

    def _upload(self) -> DatasetUpload:
        return run_upload(self.config, self.dataset, self.report.scan.layout, self.repeats, self.trigger)

    async def ship(self, ctx: RunContext) -> None:
        assert ctx.transport is not None and ctx.layout is not None
        upload = self._upload()
        for folder, target in upload.folders:
            await machine.ship_dataset(ctx.transport, folder, ctx.layout.path(*target.split("/")))
        for name, text in upload.files.items():
            await ctx.transport.put_text(ctx.layout.path(name), text)
        for local, name in upload.copies:
            await ctx.transport.put_file(local, ctx.layout.path(name))

    async def launch(self, ctx: RunContext, model_path: str) -> None:
        assert ctx.transport is not None and ctx.layout is not None
        job = machine.job_config(self.config, model_path, self._upload().job_keys)
        await machine.launch_runner(ctx.transport, ctx.layout, job)
