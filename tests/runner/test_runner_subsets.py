"""The runner on a dataset config and on regularization images: each image keeps its subset's caption and flip
options, reg images count as kohya balances them, and their loss is weighted by prior_loss_weight."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gpurun.kohya_dataset import CaptionRules
from gpurun.runner.data import cache_latents, caption_for_step, loss_weights, scan_training_data
from gpurun.trainconfig import TrainConfig
from tests.support.kohya_datasets import make_dataset_config, make_reg_dirs

torch = pytest.importorskip("torch")


def dataset_job(tmp_path: Path, **changes: object) -> TrainConfig:
    make_dataset_config(tmp_path)
    lines = ['dataset_config = "dataset.toml"', 'pretrained_model_name_or_path = "tiny-sd"']
    lines += [f"{key} = {value!r}".replace("'", '"') for key, value in changes.items()]
    (tmp_path / "config.toml").write_text("\n".join(lines) + "\n")
    return TrainConfig.from_toml(tmp_path / "config.toml")


def test_each_image_keeps_its_subsets_options(tmp_path: Path) -> None:
    config = dataset_job(tmp_path)
    data = scan_training_data(config)
    rules = {(image.item.folder, image.is_reg): image.rules for image in data.images}
    assert rules == {
        ("robot", False): CaptionRules(keep_tokens=1, flip_aug=True),
        ("closeups", False): CaptionRules(shuffle_caption=True, keep_tokens=1),
        ("reg", True): CaptionRules(keep_tokens=1),
    }
    # 2x3 + 1x2 training samples, the reg images balanced to 8: the epoch shows 16 samples
    assert data.samples_per_epoch == 16 and config.batch_size == 2 and data.batches_per_epoch(2) == 8
    # flipped latents only for the subset with flip_aug
    from gpurun.runner.model.load import load_base_model

    cache_latents(load_base_model("tiny-sd"), data.images, disk_dir=None)
    assert {image.item.folder for image in data.images if image.flipped is not None} == {"robot"}
    assert all(image.latent is not None for image in data.images)


def test_captions_follow_the_subset_rules() -> None:
    rng = random.Random(0)
    fixed = CaptionRules(keep_tokens=1)
    assert {caption_for_step("a, b, c, d", fixed, rng) for _ in range(20)} == {"a, b, c, d"}
    shuffled = {
        caption_for_step("a, b, c, d", CaptionRules(shuffle_caption=True, keep_tokens=1), rng) for _ in range(40)
    }
    assert len(shuffled) > 1 and all(caption.startswith("a, ") for caption in shuffled)
    dropped = [caption_for_step("a, b", CaptionRules(caption_dropout_rate=1.0), rng) for _ in range(5)]
    assert dropped == [""] * 5


def test_reg_images_are_weighted_by_prior_loss_weight(tmp_path: Path) -> None:
    train, reg = make_reg_dirs(tmp_path)
    config = TrainConfig(
        train_data_dir=str(train),
        reg_data_dir=str(reg),
        prior_loss_weight=0.25,
        pretrained_model_name_or_path="tiny-sd",
    )
    data = scan_training_data(config)
    regs = [index for index, image in enumerate(data.images) if image.is_reg]
    assert len(regs) == 2 and sum(len(s) for s in data.buckets.values()) == 12  # 6 training + 6 balanced reg
    mixed = [0, regs[0], 1, regs[1]]
    assert loss_weights(data, mixed, config.prior_loss_weight) == [1.0, 0.25, 1.0, 0.25]


@pytest.mark.slow
@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_the_batch_loss_of_reg_images_scales_with_prior_loss_weight(tmp_path: Path, weight: float) -> None:
    from gpurun.runner.loss import StepContext, batch_loss
    from gpurun.runner.model.load import load_base_model

    train, reg = make_reg_dirs(tmp_path)
    model = load_base_model("tiny-sd")

    def loss_of(prior: float, indices: list[int]) -> float:
        config = TrainConfig(
            train_data_dir=str(train),
            reg_data_dir=str(reg),
            prior_loss_weight=prior,
            pretrained_model_name_or_path="tiny-sd",
        )
        data = scan_training_data(config)
        cache_latents(model, data.images, disk_dir=None)
        generator = torch.Generator().manual_seed(3)
        ctx = StepContext(model, data, config, torch.float32, generator, random.Random(3), False)
        with torch.no_grad():
            return float(batch_loss(ctx, indices))

    reg_only, mixed = [3, 4], [0, 3]  # images 3 and 4 are the reg folder's
    assert loss_of(weight, reg_only) == pytest.approx(weight * loss_of(1.0, reg_only), rel=1e-5, abs=1e-7)
    full, weighed = loss_of(1.0, mixed), loss_of(weight, mixed)
    assert weighed < full and weighed > 0  # the training image's half of the loss is untouched
