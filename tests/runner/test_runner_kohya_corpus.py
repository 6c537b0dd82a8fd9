"""Each config of the kohya_ss GUI-shaped corpus (tests/support/fixtures/kohya) trains the tiny model for a few
steps as written (only paths, size and length are pointed at test data), and the file it writes is a valid kohya
LoRA (or LyCORIS file) whose ss_network_args is what was trained; the LyCORIS ones load with every key through
lycoris-lora's own loader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gpurun import events, optimizers
from gpurun.lorafile import read_header, verify_lora_file
from gpurun.lycorisfile import verify_lycoris_file
from gpurun.trainconfig import TrainConfig, _toml_value, tomllib
from tests.support.env import subprocess_env
from tests.support.imaging import make_image
from tests.support.kohya_datasets import make_images
from tests.support.lora_files import lora_model, save_lora_file
from tests.support.tiny_models import TinyModel

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

CORPUS = Path(__file__).resolve().parent.parent / "support" / "fixtures" / "kohya"
STEPS = 3


def gui_config(tmp: Path, name: str, base: Path, family: str) -> Path:
    """The corpus file with its paths at test data, a tiny size and STEPS steps; every other key as written."""
    doc: dict[str, Any] = tomllib.loads((CORPUS / f"{name}.toml").read_text())
    data = tmp / "training_data" / "2_sks robot"
    for index in range(2):
        make_image(data / f"square{index}.jpg", (96, 96), seed=index, caption="sks robot, on a table")
        make_image(data / f"wide{index}.png", (128, 80), seed=10 + index, caption="sks robot, wide")
    if "dataset_config" in doc:
        doc["dataset_config"] = str(tiny_dataset_config(tmp, CORPUS / doc["dataset_config"]))
    else:
        doc["train_data_dir"] = str(data.parent)
    if "network_weights" in doc:
        # a LoRA of this tiny base to continue from (the corpus file is one of the real model's shape)
        model, _ = lora_model(family, rank=4, alpha=2.0)
        doc["network_weights"] = str(save_lora_file(model, tmp / "start.safetensors"))
    if "reg_data_dir" in doc:
        doc["reg_data_dir"] = str(make_images(tmp / "reg" / "1_robot", 3, seed=70, caption="robot").parent)
    doc.update(
        pretrained_model_name_or_path=str(base),
        output_dir=str(tmp / "out"),
        max_train_steps=STEPS,
        train_batch_size=min(int(doc.get("train_batch_size", 1)), 2),
        sample_steps=1,
        sample_seeds=[1],
        sample_weights=[1.0],
    )
    if doc.get("enable_bucket"):
        doc.update(resolution="64,80", min_bucket_reso=64, max_bucket_reso=128)
        doc["bucket_reso_steps"] = min(int(doc["bucket_reso_steps"]), 64)
    else:  # kohya crops to exactly this size: keep a side that is not a multiple of 8 (512,650) as such
        sides = [int(v) for v in str(doc["resolution"]).split(",")]
        doc["resolution"] = "64,76" if any(v % 8 for v in sides) else 64
    path = tmp / "training_config.toml"
    path.write_text("".join(f"{key} = {_toml_value(value)}\n" for key, value in sorted(doc.items())))
    return path


def tiny_dataset_config(tmp: Path, corpus_file: Path) -> Path:
    """The corpus dataset config as written, its subsets pointed at a few tiny images each and its [[datasets]]
    at a tiny size."""
    doc: dict[str, Any] = tomllib.loads(corpus_file.read_text())
    (dataset,) = doc["datasets"]
    dataset.update(resolution=64, min_bucket_reso=64, max_bucket_reso=128, bucket_reso_steps=64)
    for index, subset in enumerate(dataset["subsets"]):
        ext = subset.get("caption_extension", doc.get("general", {}).get("caption_extension", ".caption"))
        folder = make_images(tmp / "subsets" / str(index), 2, seed=100 * index, caption="sks robot, a", ext=ext)
        subset["image_dir"] = str(folder)
    lines = ["[general]", *(f"{k} = {_toml_value(v)}" for k, v in doc.get("general", {}).items()), "[[datasets]]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in dataset.items() if k != "subsets"]
    for subset in dataset["subsets"]:
        lines += ["[[datasets.subsets]]", *(f"{k} = {_toml_value(v)}" for k, v in subset.items())]
    path = tmp / "dataset.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.stem for p in CORPUS.glob("*.toml")))
def test_the_corpus_trains_and_writes_what_it_trained(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    family = "sdxl" if name.endswith("sdxl") else "sd15"
    tiny: TinyModel = request.getfixturevalue(f"tiny_{family}")
    path = gui_config(tmp_path, name, tiny.single_file, family)
    config = TrainConfig.from_toml(path)
    proc = subprocess.run(
        [sys.executable, "-m", "gpurun.runner", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=subprocess_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    evs = [events.parse_line(line) for line in proc.stdout.splitlines()]
    (start,) = [e for e in evs if isinstance(e, events.Start)]
    steps = [e for e in evs if isinstance(e, events.Step)]
    assert start.total_steps == STEPS and steps[-1].step == STEPS
    assert all(s.loss == s.loss and s.loss >= 0 for s in steps)  # finite, never NaN
    # config check's notes reach the run's start event too
    assert all(any(note.startswith(f"{key}: ") for note in start.notes) for key in config.kohya_notes())

    # the grid renders from the saved file (LyCORIS: through lycoris' own loader, which refuses a file with a key it
    # does not take), so a grid proves the file loads
    assert [e.path for e in evs if isinstance(e, events.Sample)][-1] == "grid.png"
    saved = [e.path for e in evs if isinstance(e, events.Checkpoint)]
    every = config.save_every_n_steps or 0
    step_saves = [f"{config.output_name}-step{s:08d}.safetensors" for s in range(1, STEPS) if every and s % every == 0]
    assert [p for p in saved if "-step" in p] == step_saves and saved[-1] == f"{config.output_name}.safetensors"
    final = tmp_path / "out" / f"{config.output_name}.safetensors"
    network, lycoris = config.network, config.lycoris
    if lycoris is None:
        problems = verify_lora_file(
            final,
            family,  # type: ignore[arg-type]
            network_dim=config.network_dim,
            network_alpha=config.network_alpha,
            conv_dim=network.conv_dim,
            conv_alpha=network.conv_alpha,
        )
    else:
        problems = verify_lycoris_file(
            final,
            family,  # type: ignore[arg-type]
            algo=lycoris.algo,
            preset=lycoris.preset,
            network_dim=config.network_dim,
            network_alpha=config.network_alpha,
            conv_alpha=lycoris.conv_alpha(config.network_alpha),
            trains_text_encoder=config.trains_text_encoder,
        )
    assert problems == []
    meta = read_header(final).metadata
    assert json.loads(meta["ss_network_args"]) == config.network_metadata()
    assert meta["ss_network_module"] == config.network_module
    assert meta["ss_loss_type"] == config.loss_type
    assert meta["ss_optimizer"].startswith(optimizers.optimizer(config.optimizer_type).class_path)
    assert meta["ss_multires_noise_iterations"] == str(config.multires_noise_iterations)
    assert meta["ss_scale_weight_norms"] == str(config.scale_weight_norms)
    assert meta["ss_network_dropout"] == str(config.network_dropout)
    rates = config.text_encoder_lrs(2 if family == "sdxl" else 1)
    assert json.loads(meta["ss_text_encoder_lr"]) == (rates[0] if len(set(rates)) == 1 else rates)
    if config.training_comment:
        assert meta["ss_training_comment"] == config.training_comment
    if config.network_weights:
        assert start.dataset["lora"]["modules_fresh"] == 0 and config.network_dim == 4  # dim_from_weights
    if config.dataset_config or config.reg_data_dir:
        # the regularization images trained, and the file says so as kohya's does
        assert [name for name, f in start.dataset["folders"].items() if f.get("is_reg")]
        assert json.loads(meta["ss_reg_dataset_dirs"]) and meta["ss_prior_loss_weight"] == str(config.prior_loss_weight)
    header = read_header(final)
    if lycoris is None:
        assert any(len(i.shape) == 4 and i.shape[2:] == (3, 3) for i in header.tensors.values()) == network.is_locon
    else:  # LoHa / LoKr store a 3x3 convolution's factors flattened: find the ResNets' first convolutions by name
        assert any(("_conv1." in k or "_in_layers_2." in k) for k in header.tensors) == lycoris.trains_conv
