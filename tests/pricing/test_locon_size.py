"""The pricing model knows what LoCon adds: its per-rank parameter counts are those of the real UNets (counted on
meta-device copies built from the real configs, with the runner's own target rule), and the file size grows."""

from __future__ import annotations

from typing import Any

import pytest

from gpurun.pricing.estimate import (
    LOCON_CONV_PARAMS_PER_DIM,
    LOCON_RESNET_PARAMS_PER_DIM,
    LORA_BYTES_PER_DIM,
    lora_file_bytes,
)

#: the UNet configs of SD 1.5, SD 2.1 and SDXL base (what differs from UNet2DConditionModel's defaults)
REAL_UNETS: dict[str, dict[str, Any]] = {
    "sd15": {"cross_attention_dim": 768},
    "sd2": {"cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20), "use_linear_projection": True},
    "sdxl": {
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (320, 640, 1280),
        "transformer_layers_per_block": (1, 2, 10),
        "cross_attention_dim": 2048,
        "attention_head_dim": (5, 10, 20),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    },
}


@pytest.mark.parametrize("family", sorted(REAL_UNETS))
def test_locon_parameter_counts_are_the_real_unets(family: str) -> None:
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from gpurun.runner.lora import is_conv_kxk, kohya_target_names

    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**REAL_UNETS[family])
    plain = set(kohya_target_names(family, unet, [])["unet"])
    modules = dict(unet.named_modules())
    conv = resnet = 0
    for name in kohya_target_names(family, unet, [], conv=True)["unet"]:
        if name in plain:
            continue
        layer = modules[name]
        if is_conv_kxk(layer):  # lora_down [r, in, k, k] + lora_up [out, r, 1, 1]
            conv += layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1] + layer.out_channels
        else:  # Linear or 1x1 conv: [r, in] + [out, r]
            resnet += getattr(layer, "in_features", 0) or layer.in_channels
            resnet += getattr(layer, "out_features", 0) or layer.out_channels
    assert (conv, resnet) == (LOCON_CONV_PARAMS_PER_DIM[family], LOCON_RESNET_PARAMS_PER_DIM[family])


def test_locon_makes_the_file_larger() -> None:
    assert lora_file_bytes("sd15", 32) == LORA_BYTES_PER_DIM["sd15"] * 32
    locon = lora_file_bytes("sd15", 32, conv_dim=8)
    assert locon - lora_file_bytes("sd15", 32) == 2 * (544_000 * 8 + 82_880 * 32)  # fp16: ~14 MB more
    assert lora_file_bytes("sdxl", 32, conv_dim=16) > lora_file_bytes("sdxl", 32, conv_dim=8)


def test_the_workload_of_a_locon_config_carries_conv_dim(tmp_path) -> None:
    from gpurun.job.workload import build_workload
    from gpurun.trainconfig import TrainConfig

    path = tmp_path / "locon.toml"
    path.write_text('network_dim = 16\nnetwork_args = ["conv_dim=8", "conv_alpha=1"]\n')
    assert build_workload(config=TrainConfig.from_toml(path)).workload.conv_dim == 8
    assert build_workload(config=TrainConfig()).workload.conv_dim == 0


def test_a_lycoris_config_with_convolutions_is_priced_with_them(tmp_path) -> None:
    from gpurun.job.workload import build_workload
    from gpurun.trainconfig import TrainConfig

    path = tmp_path / "lycoris.toml"
    path.write_text('network_dim = 16\nnetwork_module = "lycoris.kohya"\nnetwork_args = ["algo=loha", "conv_dim=4"]\n')
    assert build_workload(config=TrainConfig.from_toml(path)).workload.conv_dim == 4
    # lycoris reads an absent conv_dim as network_dim, and a preset without convolutions trains none
    path.write_text('network_dim = 16\nnetwork_module = "lycoris.kohya"\nnetwork_args = ["algo=lokr"]\n')
    assert build_workload(config=TrainConfig.from_toml(path)).workload.conv_dim == 16
    path.write_text('network_dim = 16\nnetwork_module = "lycoris.kohya"\nnetwork_args = ["preset=attn-mlp"]\n')
    assert build_workload(config=TrainConfig.from_toml(path)).workload.conv_dim == 0
