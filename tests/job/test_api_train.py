"""The library path: `gpurun.api.plan` + `gpurun.api.train` run the same flow as the command, in-process, on the
local provider with the tiny model; progress reaches the caller's view and the receipt comes back."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from gpurun.api import TrainRequest, plan, train
from gpurun.cli.live import JsonView
from gpurun.lorafile import verify_lora_file
from tests.support.e2e import small_job

pytest.importorskip("torch")


@pytest.mark.slow
def test_plan_then_train_from_python(tmp_path: Path) -> None:
    dataset, config = small_job(tmp_path, epochs=2)
    request = TrainRequest(
        dataset=dataset, config=config, base="tiny-sd", providers=("local",), output=tmp_path / "runs"
    )
    the_plan = asyncio.run(plan(request))
    assert the_plan.chosen.offer.provider == "local" and the_plan.workload.epochs == 2

    stream = io.StringIO()
    seen = []
    receipt = asyncio.run(train(the_plan, view=JsonView(stream), on_start=seen.append))
    assert receipt.outcome == "done" and receipt.destroyed
    (job,) = seen
    lora = Path(job.out_dir) / "lora.safetensors"
    assert verify_lora_file(lora, "sd15", network_dim=4, network_alpha=2.0) == []
    kinds = [json.loads(line)["type"] for line in stream.getvalue().splitlines()]
    assert "step" in kinds and "done" in kinds and "client_phase" in kinds
