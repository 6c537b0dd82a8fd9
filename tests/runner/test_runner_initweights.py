"""Training starts from a kohya LoRA file: its weights land in the adapters by kohya name, modules it lacks start
fresh, modules the run does not train are refused, and a run at learning rate 0 writes the file it started from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gpurun import events
from gpurun.errors import ConfigError
from gpurun.runner.export import kohya_state_dict
from gpurun.runner.initweights import load_network_weights
from gpurun.runner.lora import ADAPTER, add_lora
from gpurun.runner.model.load import load_base_model
from tests.support.env import subprocess_env
from tests.support.imaging import make_concept
from tests.support.lora_files import lora_model, save_lora_file

torch = pytest.importorskip("torch")
safetensors = pytest.importorskip("safetensors.torch")


def saved(tmp_path: Path, *, train_te: bool, conv_dim: int | None = None) -> Path:
    model, _ = lora_model("sd15", train_te=train_te, rank=4, alpha=2.0, conv_dim=conv_dim)
    return save_lora_file(model, tmp_path / "start.safetensors", precision="float")


def test_the_files_weights_land_in_the_adapters(tmp_path: Path) -> None:
    path = saved(tmp_path, train_te=True)
    model = load_base_model("tiny-sd")
    add_lora(model, rank=4, alpha=2.0, train_text_encoder=True, seed=9)
    counts = load_network_weights(model, path)
    assert counts["modules_fresh"] == 0 and counts["modules_from_file"] > 0
    file, state = safetensors.load_file(str(path)), kohya_state_dict(model)
    assert state.keys() == file.keys()
    assert all(torch.equal(state[key], file[key]) for key in file)


def test_modules_the_file_lacks_start_fresh(tmp_path: Path) -> None:
    path = saved(tmp_path, train_te=False)
    model = load_base_model("tiny-sd")
    add_lora(model, rank=4, alpha=2.0, train_text_encoder=True, seed=9)
    counts = load_network_weights(model, path)
    assert counts["modules_fresh"] > 0  # the text encoder's
    text = [m for _, m in model.text_encoders[0].named_modules() if hasattr(m, "lora_B") and ADAPTER in m.lora_B]
    assert text and all(torch.count_nonzero(m.lora_B[ADAPTER].weight) == 0 for m in text)  # lora_up starts at 0


def test_modules_the_run_does_not_train_are_refused(tmp_path: Path) -> None:
    path = saved(tmp_path, train_te=True)
    model = load_base_model("tiny-sd")
    add_lora(model, rank=4, alpha=2.0, train_text_encoder=False, seed=9)
    with pytest.raises(ConfigError, match=r"module\(s\) of the file are not trained in this run, e\.g\. lora_te_"):
        load_network_weights(model, path)
    other = load_base_model("tiny-sdxl")
    add_lora(other, rank=4, alpha=2.0, train_text_encoder=True, seed=9)
    with pytest.raises(ConfigError, match="the file is a sd15 LoRA, the base model is sdxl"):
        load_network_weights(other, path)


@pytest.mark.slow
def test_a_run_at_learning_rate_zero_writes_the_file_it_started_from(tmp_path: Path) -> None:
    start = saved(tmp_path, train_te=False, conv_dim=2)
    make_concept(tmp_path / "data", "2_sks", 2, size=(64, 64), caption="sks")
    job = tmp_path / "job.toml"
    job.write_text(
        f'pretrained_model_name_or_path = "tiny-sd"\ntrain_data_dir = "{tmp_path / "data"}"\n'
        f'output_dir = "{tmp_path / "out"}"\nresolution = 64\nmax_train_steps = 2\nlearning_rate = 0.0\n'
        f'network_weights = "{start}"\ndim_from_weights = true\nsave_precision = "float"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "gpurun.runner", "--config", str(job)],
        capture_output=True, text=True, timeout=600, env=subprocess_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (begin,) = [e for e in map(events.parse_line, proc.stdout.splitlines()) if isinstance(e, events.Start)]
    assert begin.config["network_dim"] == 4 and begin.config["network_args"] == ["conv_dim=2", "conv_alpha=1"]
    assert begin.dataset["lora"]["modules_fresh"] == 0 and begin.config["network_train_unet_only"] is True
    assert any(note.startswith("network_weights: training starts from start.safetensors") for note in begin.notes)
    before, after = safetensors.load_file(str(start)), safetensors.load_file(str(tmp_path / "out" / "lora.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
