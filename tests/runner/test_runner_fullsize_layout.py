"""Full-size architectures on the meta device (no memory, no weights): the bundled configs, the original-layout
key set a real checkpoint has, detection from it, and diffusers' own loaders mapping it back key for key."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

CASES = {
    "sd15": ("sd15", "cond_stage_model.transformer.", 768),
    "sd2-768-v": ("sd2", "cond_stage_model.model.", 1024),
    "sdxl-base": ("sdxl", "conditioner.embedders.1.model.", 2048),
}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPURUN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "gpurun-cache"))


@pytest.mark.parametrize("name", list(CASES))
def test_full_size_original_layout_round_trips_through_diffusers_loaders(name: str, tmp_path) -> None:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from gpurun.runner.model.bundled import materialize
    from gpurun.runner.model.detect import check_config_matches, detect_single_file
    from gpurun.runner.model.ldm_layout import clip_to_original, openclip_to_original, unet_to_original, vae_to_original

    family, te_prefix, cross_dim = CASES[name]
    folder = materialize(name)
    index = json.loads((folder / "model_index.json").read_text())
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        encoders = {}
        for te in ("text_encoder", "text_encoder_2"):
            if te in index:
                cls = CLIPTextModelWithProjection if index[te][1] == "CLIPTextModelWithProjection" else CLIPTextModel
                encoders[te] = cls(CLIPTextConfig.from_pretrained(folder / te))

    checkpoint = unet_to_original(unet.state_dict(), unet.config)
    checkpoint.update(vae_to_original(vae.state_dict(), vae.config))
    if family == "sdxl":
        checkpoint.update(
            clip_to_original(encoders["text_encoder"].state_dict(), "conditioner.embedders.0.transformer.")
        )
        checkpoint.update(openclip_to_original(encoders["text_encoder_2"].state_dict(), te_prefix))
    elif family == "sd2":
        checkpoint.update(openclip_to_original(encoders["text_encoder"].state_dict(), te_prefix))
    else:
        checkpoint.update(clip_to_original(encoders["text_encoder"].state_dict(), te_prefix))
    shapes = {k: tuple(v.shape) for k, v in checkpoint.items()}

    # what a real checkpoint of this family looks like to gpurun: detected, and matching the bundled config
    assert shapes["model.diffusion_model.input_blocks.0.0.weight"] == (320, 4, 3, 3)
    attn2 = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
    assert shapes[attn2][-1] == cross_dim
    path = tmp_path / "model.safetensors"
    assert detect_single_file(path, shapes).family == family
    check_config_matches(path, shapes, folder, name)

    def same(converted: dict, model: torch.nn.Module) -> None:
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in converted.items()} == expected

    same(convert_ldm_unet_checkpoint(checkpoint, unet.config), unet)
    same(convert_ldm_vae_checkpoint(checkpoint, vae.config), vae)
    if family in ("sd15", "sdxl"):  # CLIP ViT-L: SD 1.x's only encoder, SDXL's first
        same(
            {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(checkpoint).items()},
            encoders["text_encoder"],
        )
    if family in ("sd2", "sdxl"):  # OpenCLIP: SD 2.x's encoder, SDXL's second
        main = "text_encoder_2" if family == "sdxl" else "text_encoder"
        converted = convert_open_clip_checkpoint(encoders[main], checkpoint, prefix=te_prefix)
        if not hasattr(encoders[main], "text_model"):  # transformers 5 flattened CLIPTextModel
            converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
        same(converted, encoders[main])
