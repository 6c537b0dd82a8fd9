"""The runner's loop parts: lr schedules, kohya batching (the same step count the client plans), optimizer
arguments, and the out-of-memory fallback (checkpointing, then half the batch, epochs kept)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gpurun import events
from gpurun.dataset import check_dataset
from gpurun.errors import ConfigError
from gpurun.lorafile import read_header
from gpurun.runner.data import scan_training_data
from gpurun.runner.oom import split_batches
from gpurun.runner.optim import lr_factor, parse_optimizer_args
from gpurun.trainconfig import TrainConfig
from tests.support.imaging import make_concept, make_image

torch = pytest.importorskip("torch")


def test_warmup_then_each_schedule_shape() -> None:
    kw = {"warmup": 10, "total": 110}
    assert [lr_factor("constant", s, **kw) for s in (0, 4, 9, 10, 109)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    assert lr_factor("linear", 60, **kw) == pytest.approx(0.5)
    assert lr_factor("cosine", 60, **kw) == pytest.approx(0.5)
    assert lr_factor("cosine", 110, **kw) == pytest.approx(0.0)
    # two restarts: back at the top half way through
    assert lr_factor("cosine_with_restarts", 59, cycles=2, **kw) < 0.01
    assert lr_factor("cosine_with_restarts", 60, cycles=2, **kw) == pytest.approx(1.0)
    assert lr_factor("polynomial", 60, power=2.0, **kw) == pytest.approx(0.25)
    with pytest.raises(ConfigError):
        lr_factor("exotic", 50, **kw)


def test_optimizer_args_are_kohyas_key_value_strings() -> None:
    assert parse_optimizer_args(["weight_decay=0.01", "betas=0.9,0.99", "decouple=True", "name=x"]) == {
        "weight_decay": 0.01,
        "betas": (0.9, 0.99),
        "decouple": True,
        "name": "x",
    }
    with pytest.raises(ConfigError, match="not key=value"):
        parse_optimizer_args(["weight_decay 0.01"])


def test_split_batches_keeps_the_done_ones() -> None:
    assert split_batches([[1, 2], [3, 4], [5, 6, 7, 8]], 1, 2) == [[1, 2], [3, 4], [5, 6], [7, 8]]
    assert split_batches([[1, 2], [3, 4]], 1, 1) == [[1, 2], [3], [4]]


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_batches_match_the_planned_step_count_and_replay(tmp_path: Path, batch_size: int) -> None:
    """The runner's epoch plan covers every sample exactly `repeats` times, in as many batches as
    `gpurun dataset check` (and so the price estimate) counted, and is the same on a second call (resume)."""
    make_concept(tmp_path, "3_sks cat", 3, size=(512, 512), caption="sks cat")
    make_concept(tmp_path, "2_sks cat wide", 2, size=(768, 512), caption="sks cat")
    make_image(tmp_path / "2_sks cat wide" / "tall.jpg", (512, 768), seed=9, caption="sks cat")
    config = TrainConfig(train_data_dir=str(tmp_path), resolution=512, batch_size=batch_size, enable_bucket=True)
    data = scan_training_data(config)
    report = check_dataset(tmp_path, model="sd15", batch_size=batch_size, epochs=1, verify=False)
    batches = data.epoch_batches(1, batch_size, seed=5)
    assert len(batches) == data.batches_per_epoch(batch_size) == report.steps_per_epoch
    assert sorted(i for b in batches for i in b) == sorted(
        i for i, image in enumerate(data.images) for _ in range(image.item.repeats)
    )
    assert all(len({data.images[i].bucket for i in b}) == 1 for b in batches)  # one bucket per batch
    assert data.epoch_batches(1, batch_size, seed=5) == batches
    assert len(data.buckets) == 3


def _small_job(tmp_path: Path, **changes: Any) -> TrainConfig:
    for index in range(2):
        make_image(tmp_path / "data" / "5_sks robot" / f"a{index}.png", (64, 64), seed=index, caption="sks robot")
    values = {
        "pretrained_model_name_or_path": "tiny-sd",
        "train_data_dir": str(tmp_path / "data"),
        "output_dir": str(tmp_path / "out"),
        "resolution": 64,
        "batch_size": 2,
        "max_train_epochs": 2,
        "network_dim": 4,
        "network_alpha": 2,
        "seed": 1,
        "sample_steps": 1,
        "sample_seeds": [1],
        "sample_weights": [1.0],
        **changes,
    }
    return TrainConfig(**values)


@pytest.mark.slow
def test_out_of_memory_turns_on_checkpointing_then_halves_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpurun.runner import train

    real_loss = train.batch_loss
    calls: list[int] = []

    def tight_memory(ctx: Any, indices: list[int]) -> Any:
        calls.append(len(indices))
        if len(indices) > 1:  # this "GPU" fits one sample at a time
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_loss(ctx, indices)

    monkeypatch.setattr(train, "batch_loss", tight_memory)
    seen: list[events.Event] = []
    config = _small_job(tmp_path)
    assert train.Trainer(config, emit=seen.append, install_signals=False).run() == 0

    warnings = [e.message for e in seen if isinstance(e, events.WarningEvent)]
    assert len(warnings) == 2
    assert "gradient checkpointing" in warnings[0]
    assert "batch size 2 -> 1" in warnings[1] and "the 2 epochs hold" in warnings[1]
    (start,) = [e for e in seen if isinstance(e, events.Start)]
    (done,) = [e for e in seen if isinstance(e, events.Done)]
    # 2 images x 5 repeats: 5 steps an epoch at batch 2 became 10 at batch 1; the epochs hold
    assert start.total_steps == 10 and done.steps == 20 and done.epochs == 2
    assert calls[:3] == [2, 2, 1]
    meta = read_header(tmp_path / "out" / "lora.safetensors").metadata
    assert meta["ss_gradient_checkpointing"] == "True" and meta["ss_batch_size_per_device"] == "1"
    assert "batch size 2 -> 1" in meta["ss_training_comment"]


def test_out_of_memory_at_batch_one_with_checkpointing_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpurun.runner import train
    from gpurun.runner.oom import OutOfMemory

    def no_memory(ctx: Any, indices: list[int]) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(train, "batch_loss", no_memory)
    config = _small_job(tmp_path, batch_size=1, gradient_checkpointing=True, max_train_epochs=1)
    with pytest.raises(OutOfMemory) as info:
        train.Trainer(config, emit=lambda e: None, install_signals=False).run()
    assert "more memory" in (info.value.hint or "")
    assert not (tmp_path / "out" / "lora.safetensors").exists()


@pytest.mark.slow
def test_the_optional_features_train_together(tmp_path: Path) -> None:
    """Disk latent cache (reused by a second run), flip_aug, noise offset, min-SNR-γ, shuffled captions (so no
    text-encoder cache), Prodigy, polynomial schedule and a grid every epoch (without epoch checkpoints), in one
    short run."""
    from gpurun.runner import train

    config = _small_job(
        tmp_path,
        cache_latents_to_disk=True,
        flip_aug=True,
        noise_offset=0.05,
        min_snr_gamma=5.0,
        shuffle_caption=True,
        optimizer_type="Prodigy",
        learning_rate=1.0,
        lr_scheduler="polynomial",
        lr_warmup_steps=2,
        sample_every_n_epochs=1,
        max_train_epochs=2,
    )
    seen: list[events.Event] = []
    assert train.Trainer(config, emit=seen.append, install_signals=False).run() == 0
    (start,) = [e for e in seen if isinstance(e, events.Start)]
    assert not any("text-encoder outputs cached" in note for note in start.notes)  # captions change per step
    samples = [e.path for e in seen if isinstance(e, events.Sample)]
    assert samples == ["grid-000001.png", "grid.png"]  # a grid each epoch, with no checkpoint due
    assert [e.path for e in seen if isinstance(e, events.Checkpoint)] == ["lora.safetensors"]
    steps = [e for e in seen if isinstance(e, events.Step)]
    assert all(s.loss == s.loss and s.loss > 0 for s in steps)  # finite, not NaN
    cached = sorted((tmp_path / "out" / ".cache" / "latents").glob("*.safetensors"))
    assert len(cached) == 2  # one file per image, holding the latent and its flipped twin

    from gpurun.runner.data import cache_latents, scan_training_data
    from gpurun.runner.model.load import load_base_model

    data = scan_training_data(config)
    reused = cache_latents(load_base_model("tiny-sd"), data.images, disk_dir=tmp_path / "out" / ".cache" / "latents")
    assert reused == 2 and all(i.latent is not None and i.flipped is not None for i in data.images)
