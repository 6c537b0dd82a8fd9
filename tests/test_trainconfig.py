"""TrainConfig: the tutorial's kohya-style training_config.toml loads; mistakes are named precisely."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpurun.errors import ConfigError
from gpurun.trainconfig import TrainConfig
from tests.support.env import TUTORIAL_CONFIG

FIXTURE = TUTORIAL_CONFIG


def test_tutorial_config_loads_as_written() -> None:
    config = TrainConfig.from_toml(FIXTURE)
    assert config.resolution == (512, 512)
    assert config.batch_size == 2
    assert config.enable_bucket and (config.min_bucket_reso, config.max_bucket_reso) == (256, 1024)
    assert config.output_name == "mi_lora" and config.epochs == 10
    assert (config.network_dim, config.network_alpha) == (32, 16)
    assert config.optimizer_type == "AdamW8bit"
    assert config.lr_scheduler == "cosine_with_restarts" and config.lr_warmup_steps == 100
    assert config.effective_unet_lr == 1e-4 and config.effective_text_encoder_lr == 5e-5
    assert config.trains_text_encoder
    assert config.save_every_n_epochs == 2 and config.mixed_precision == "fp16"
    # relative paths are taken relative to the config file, not the working directory
    assert config.train_data_dir == str((FIXTURE.parent / "training_data").resolve())
    assert config.pretrained_model_name_or_path == str((FIXTURE.parent / "models/sd/v1-5-pruned.safetensors").resolve())


def test_flat_form_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "flat.toml"
    path.write_text('train_data_dir = "data"\nresolution = "512,768"\ntrain_batch_size = 3\nnetwork_dim = 8\n')
    config = TrainConfig.from_toml(path)
    assert config.resolution == (512, 768)
    assert config.batch_size == 3  # kohya's train_batch_size spelling
    assert config.network_dim == 8


def test_misspelled_key_suggests_the_closest(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text(FIXTURE.read_text().replace("network_alpha", "network_alhpa"))
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_toml(path)
    line = info.value.one_line()
    assert "network_alhpa" in line and "did you mean 'network_alpha'" in line
    assert str(path) in line and "[training]" in line


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ('[training]\nnetwork_dim = "big"\n', "[training].network_dim"),
        ('[training]\noptimizer_type = "SGDNesterov"\n', "optimizer 'SGDNesterov' is not available (SGD with Nesterov"),
        ('[training]\noptimizer_type = "SGD"\n', "unsupported optimizer 'SGD'"),
        ('[training]\nlr_scheduler = "warp"\n', "unsupported scheduler 'warp'"),
        (
            "[dataset]\nresolution = 40\n",
            "[dataset].resolution: each side must be from 64 to 8192",
        ),
        ("[dataset]\nmin_bucket_reso = 2048\nmax_bucket_reso = 1024\n", "larger than max_bucket_reso"),
        ('[training]\nsave_model_as = "ckpt"\n', "save_model_as"),
        ("[model]\nv2 = true\n[training]\nv2 = false\n", "given twice"),
        ("[training\n", "not valid TOML"),
        # caught here, before renting, not after training when the grid is drawn
        ('[sample]\nsample_sampler = "euler_ancestral"\n', "unknown sampler 'euler_ancestral'"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, toml: str, fragment: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_toml(path)
    assert fragment in info.value.one_line()


def test_ignored_kohya_keys_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "kohya.toml"
    path.write_text("xformers = true\nlogging_dir = './logs'\nnetwork_dim = 4\n")
    config = TrainConfig.from_toml(path)
    assert set(config.ignored_keys) == {"xformers", "logging_dir"}


def test_presets_carry_the_tutorial_values() -> None:
    sd15, sdxl = TrainConfig.preset("sd15"), TrainConfig.preset("sdxl")
    assert sd15.resolution == (512, 512) and sdxl.resolution == (1024, 1024)
    for preset in (sd15, sdxl):
        assert (preset.network_dim, preset.network_alpha, preset.optimizer_type) == (32, 16, "AdamW8bit")
        assert preset.lr_scheduler == "cosine_with_restarts" and preset.save_every_n_epochs == 2
    assert sdxl.model_family == "sdxl" and sdxl.gradient_checkpointing
    with pytest.raises(ConfigError, match="unknown preset"):
        TrainConfig.preset("sd3")


def test_round_trip_through_toml(tmp_path: Path) -> None:
    config = TrainConfig.from_toml(FIXTURE)
    path = tmp_path / "again.toml"
    path.write_text(config.to_toml())
    again = TrainConfig.from_toml(path)
    assert again.model_dump() == config.model_dump()


def test_unet_only_freezes_text_encoder() -> None:
    config = TrainConfig(network_train_unet_only=True, text_encoder_lr=5e-5)
    assert not config.trains_text_encoder
    assert not TrainConfig(text_encoder_lr=0).trains_text_encoder
