"""`gpurun sample`'s plan: the files, the base and the grid are checked before anything is rented, every mistake
named; a billing offer needs a budget; the plan prices the grids it will render."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gpurun.api import SampleRequest, plan_sample
from gpurun.errors import BudgetError, ConfigError
from gpurun.lorafile import read_header
from tests.support.lora_files import lora_model, save_lora_file

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _ = lora_model("sd15", rank=4, alpha=2.0)
    return save_lora_file(model, tmp_path_factory.mktemp("lora") / "dog.safetensors")


def _plan(**fields):
    fields.setdefault("prompts", ("sks dog",))
    return asyncio.run(plan_sample(SampleRequest(**fields)))


def test_a_local_plan_renders_what_was_asked(lora_file: Path) -> None:
    plan = _plan(loras=(lora_file,), base="tiny-sd", providers=("local",), seeds=(1, 2), weights=(0.0, 1.0))
    assert plan.chosen.offer.provider == "local" and plan.job.cells == 4
    assert plan.job.loras == ["loras/00-dog.safetensors"] and plan.job.width == 64
    assert plan.request.output == lora_file.parent / "samples"
    samples = next(p for p in plan.chosen.phases if p.name == "samples")
    assert samples.seconds == pytest.approx(4 * 0.25)  # the tiny model's measured seconds per grid image
    document = plan.to_dict()
    assert document["kind"] == "sample" and document["images"] == 4


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: d / "missing.safetensors", "LoRA file not found"),
        (lambda d: _write(d / "junk.safetensors", b"\x00" * 4), "too short"),
        (lambda d: _write(d / "empty.safetensors", _safetensors({})), "not a kohya LoRA file"),
    ],
)
def test_files_that_are_not_loras_are_refused_by_name(tmp_path: Path, make, fragment: str) -> None:
    path = make(tmp_path)
    with pytest.raises(ConfigError) as caught:
        _plan(loras=(path,), base="tiny-sd", providers=("local",))
    assert fragment in caught.value.message and path.name in (caught.value.where or "") + caught.value.message


def test_a_lora_of_another_family_is_refused(lora_file: Path) -> None:
    with pytest.raises(ConfigError, match="a sd15 LoRA cannot be sampled with a sdxl base model"):
        _plan(loras=(lora_file,), base="tiny-sdxl", providers=("local",))


def test_the_grid_is_checked_before_renting(lora_file: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _plan(loras=(lora_file,), base="tiny-sd", providers=("local",), prompts=())
    assert "prompts" in (caught.value.where or "")
    with pytest.raises(ConfigError, match="images to render, more than 2000"):
        _plan(loras=(lora_file,) * 100, base="tiny-sd", providers=("local",), prompts=("a",) * 10, seeds=(1, 2, 3))
    with pytest.raises(ConfigError) as caught:
        _plan(loras=(lora_file,), base="tiny-sd", providers=("local",), weights=(9.0,))
    assert "weights" in (caught.value.where or "")


def test_no_base_and_no_run_is_a_clear_error(lora_file: Path) -> None:
    with pytest.raises(ConfigError, match="no base model"):
        _plan(loras=(lora_file,))


def test_a_billing_offer_needs_a_budget(lora_file: Path, fake_vast) -> None:
    with pytest.raises(BudgetError, match="renting a GPU needs a budget"):
        _plan(loras=(lora_file,), base="tiny-sd", providers=("vast",))
    plan = _plan(loras=(lora_file,), base="tiny-sd", providers=("vast",), budget=1.0)
    assert plan.chosen.offer.provider == "vast" and plan.chosen.expected_dollars <= 1.0


def test_a_runs_checkpoints_are_sampled_epoch_by_epoch(lora_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "r1"
    run.mkdir()
    lines = []
    for step, (name, epoch, final) in enumerate((("lora-000001.safetensors", 1, False),
                                                 ("lora.safetensors", 2, True)), start=1):  # fmt: skip
        (run / name).write_bytes(lora_file.read_bytes())
        lines.append(json.dumps({"v": 1, "type": "checkpoint", "path": name, "epoch": epoch, "step": step * 5,
                                 "final": final, "sha256": "0" * 64, "bytes": 1}))  # fmt: skip
    (run / "events.jsonl").write_text("\n".join(lines) + "\n")
    (run / "config.toml").write_text('[model]\npretrained_model_name_or_path = "tiny-sd"\n')
    plan = _plan(run_dir=run, providers=("local",))
    assert plan.base.ref == "tiny-sd" and [p.name for p in plan.loras] == ["lora-000001.safetensors",
                                                                            "lora.safetensors"]  # fmt: skip
    assert plan.job.labels == ["epoch 1", "epoch 2 (final)"]
    assert plan.job.cells == 2 * 3 + 2  # each file's grid (3 default weights) and the comparison
    assert read_header(plan.loras[0]).tensors


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _safetensors(header: dict) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw
