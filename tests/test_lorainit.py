"""Continuing from a kohya LoRA file (network_weights, dim_from_weights): the file is read without torch, its rank,
alpha, LoCon convs and text-encoder weights are checked against the config (or give it its rank), and a file of
another base family or with modules that are not kohya's is refused naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpurun.errors import ConfigError
from gpurun.lorainit import check_family, read_lora_weights
from gpurun.trainconfig import TrainConfig
from tests.support.fake_lora import SDXL_TE, TE, UNET_CONV3, UNET_LINEAR, write_lora


def config(tmp_path: Path, text: str) -> TrainConfig:
    (tmp_path / "config.toml").write_text(text)
    return TrainConfig.from_toml(tmp_path / "config.toml")


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        config(tmp_path, text)
    return info.value.one_line()


def test_the_file_tells_its_rank_alpha_convs_and_encoders(tmp_path: Path) -> None:
    locon = write_lora(
        tmp_path / "a.safetensors", {UNET_LINEAR: (8, 4.0, False), UNET_CONV3: (4, 1.0, True), TE: (8, 4.0, False)}
    )
    weights = read_lora_weights(locon)
    assert (weights.dim, weights.alpha, weights.conv_dim, weights.conv_alpha) == (8, 4.0, 4, 1.0)
    assert weights.has_text_encoder and weights.family == "sd15"
    check_family(weights, "sd15")
    old = read_lora_weights(write_lora(tmp_path / "old.safetensors", {UNET_LINEAR: (16, None, False)}))
    assert (old.alpha, old.conv_dim, old.has_text_encoder) == (16.0, None, False)  # kohya: no alpha = rank


@pytest.mark.parametrize(
    ("modules", "said"),
    [
        ({UNET_LINEAR: (8, 4.0, False), TE: (4, 4.0, False)}, "different ranks [4, 8]"),
        ({UNET_LINEAR: (8, 4.0, False), TE: (8, 2.0, False)}, "or alphas [2.0, 4.0]"),
        ({UNET_CONV3: (8, 4.0, True)}, "only 3x3 conv modules"),
        ({UNET_LINEAR: (8, 0.0, False)}, "alpha 0.0"),
    ],
)
def test_files_gpurun_cannot_continue_are_refused(tmp_path: Path, modules: dict, said: str) -> None:
    path = write_lora(tmp_path / "bad.safetensors", modules)
    with pytest.raises(ConfigError) as info:
        read_lora_weights(path)
    assert said in info.value.one_line() and str(path) in info.value.one_line()


def test_not_a_lora_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_lora_weights(tmp_path / "none.safetensors")
    (tmp_path / "text.safetensors").write_text("hello there, not a safetensors file")
    with pytest.raises(ConfigError, match="not a safetensors file"):
        read_lora_weights(tmp_path / "text.safetensors")
    model = write_lora(tmp_path / "m.safetensors", {"model_diffusion_model_out": (4, 1.0, False)})
    with pytest.raises(ConfigError, match="is not a kohya LoRA key"):
        read_lora_weights(model)


def test_the_base_family_must_match(tmp_path: Path) -> None:
    sdxl = read_lora_weights(write_lora(tmp_path / "xl.safetensors", {SDXL_TE: (8, 4.0, False)}))
    with pytest.raises(ConfigError, match="the file is a sdxl LoRA, the base model is sd15"):
        check_family(sdxl, "sd15")
    stranger = read_lora_weights(write_lora(tmp_path / "s.safetensors", {"lora_unet_nowhere_to_q": (8, 4.0, False)}))
    with pytest.raises(
        ConfigError, match=r"1 module\(s\) are not sd15 kohya LoRA modules, e\.g\. lora_unet_nowhere_to_q"
    ):
        check_family(stranger, "sd15")


def test_the_config_must_match_the_file_without_dim_from_weights(tmp_path: Path) -> None:
    write_lora(tmp_path / "w.safetensors", {UNET_LINEAR: (8, 4.0, False), TE: (8, 4.0, False)})
    ok = config(tmp_path, 'network_weights = "w.safetensors"\nnetwork_dim = 8\nnetwork_alpha = 4\n')
    assert ok.network_weights == str(tmp_path / "w.safetensors")
    assert "training starts from w.safetensors (rank 8, alpha 4)" in ok.kohya_notes()["network_weights"]
    said = refused(tmp_path, 'network_weights = "w.safetensors"\nnetwork_dim = 16\nnetwork_alpha = 4\n')
    assert "rank 8 and alpha 4, the config network_dim 16 and alpha 4" in said and "dim_from_weights = true" in said
    said = refused(
        tmp_path,
        'network_weights = "w.safetensors"\nnetwork_dim = 8\nnetwork_alpha = 4\nnetwork_train_unet_only = true\n',
    )
    assert "has text-encoder weights, and network_train_unet_only drops them" in said
    write_lora(tmp_path / "c.safetensors", {UNET_LINEAR: (8, 4.0, False), UNET_CONV3: (4, 2.0, True)})
    said = refused(tmp_path, 'network_weights = "c.safetensors"\nnetwork_dim = 8\nnetwork_alpha = 4\n')
    assert "LoCon conv_dim 4 and conv_alpha 2, network_args conv_dim None" in said
    assert "dim_from_weights needs network_weights" in refused(tmp_path, "dim_from_weights = true\n")
    assert "is not found" in refused(tmp_path, 'network_weights = "gone.safetensors"\n')


def test_dim_from_weights_takes_the_files_shape(tmp_path: Path) -> None:
    write_lora(tmp_path / "c.safetensors", {UNET_LINEAR: (8, 4.0, False), UNET_CONV3: (4, 2.0, True)})
    taken = config(
        tmp_path,
        'network_weights = "c.safetensors"\ndim_from_weights = true\nnetwork_dim = 64\n'
        'network_args = ["conv_dim=16"]\n',
    )
    assert (taken.network_dim, taken.network_alpha, taken.network_args) == (8, 4.0, ["conv_dim=4", "conv_alpha=2"])
    # kohya builds the network from the file's modules: without text-encoder weights the encoders are not trained
    assert taken.network_train_unet_only and not taken.trains_text_encoder
    assert "taken by dim_from_weights" in taken.kohya_notes()["network_weights"]
    write_lora(tmp_path / "t.safetensors", {UNET_LINEAR: (8, 4.0, False), TE: (8, 4.0, False)})
    both = config(tmp_path, 'network_weights = "t.safetensors"\ndim_from_weights = true\n')
    assert both.trains_text_encoder and both.network.conv_dim is None
