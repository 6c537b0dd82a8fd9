"""Tiny models: real topology, deterministic weights, and single files that diffusers loads back exactly."""

from __future__ import annotations

import pytest

from tests.support.tiny_models import TinyModel

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

FAMILIES = ["sd15", "sd2", "sdxl"]


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)


def _pipeline_class(family: str):
    return diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline


def _components(family: str) -> list[str]:
    return ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    from gpurun.runner.model.tiny import build_tiny_pipeline

    a, b, c = (build_tiny_pipeline("sd15", seed=s) for s in (0, 0, 1))
    assert _state_equal(a.unet, b.unet) == 0.0
    assert _state_equal(a.text_encoder, b.text_encoder) == 0.0
    assert _state_equal(a.unet, c.unet) > 0.0


@pytest.mark.parametrize(
    ("family", "transformers", "blocks", "te_layers"),
    [("sd15", 16, 16, [12]), ("sd2", 16, 16, [23]), ("sdxl", 11, 70, [12, 32])],
)
def test_tiny_topology_is_the_real_one(family: str, transformers: int, blocks: int, te_layers: list[int]) -> None:
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    from gpurun.runner.model.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(family)
    modules = list(pipe.unet.modules())
    assert sum(isinstance(m, Transformer2DModel) for m in modules) == transformers
    assert sum(isinstance(m, BasicTransformerBlock) for m in modules) == blocks
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    assert [te.config.num_hidden_layers for te in encoders] == te_layers
    assert pipe.unet.config.layers_per_block == 2
    assert pipe.vae.config.block_out_channels and len(pipe.vae.config.block_out_channels) == 4
    if family == "sdxl":
        assert pipe.unet.config.addition_embed_type == "text_time"
        assert pipe.unet.config.use_linear_projection is True
        assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    # a caption becomes 77 ids framed by the start and end tokens
    ids = pipe.tokenizer("a photo", padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids.shape == (1, 77)
    assert ids[0, 0].item() == pipe.tokenizer.bos_token_id


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_has_the_original_layout(family: str, request: pytest.FixtureRequest) -> None:
    from safetensors import safe_open

    tiny: TinyModel = request.getfixturevalue(f"tiny_{family}")
    with safe_open(str(tiny.single_file), "pt") as f:
        keys = set(f.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.out.2.weight" in keys
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    if family == "sd15":
        assert "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight" in keys
        assert "model.diffusion_model.output_blocks.11.1.proj_out.weight" in keys
    elif family == "sd2":
        assert "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight" in keys
    else:
        assert "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight" in keys
        assert "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight" in keys
        assert "conditioner.embedders.1.model.text_projection" in keys
        assert "model.diffusion_model.label_emb.0.0.weight" in keys
        assert "model.diffusion_model.middle_block.1.transformer_blocks.9.attn2.to_k.weight" in keys
        assert "model.diffusion_model.output_blocks.5.1.transformer_blocks.1.ff.net.2.weight" in keys
    assert not any(k.startswith(("unet.", "vae.", "text_encoder")) for k in keys)


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_round_trips_exactly_through_diffusers(family: str, request: pytest.FixtureRequest) -> None:
    tiny: TinyModel = request.getfixturevalue(f"tiny_{family}")
    cls = _pipeline_class(family)
    extra = {} if family == "sdxl" else {"safety_checker": None, "feature_extractor": None}
    from_file = cls.from_single_file(
        str(tiny.single_file), config=str(tiny.config_only_dir), local_files_only=True, **extra
    )
    from_folder = cls.from_pretrained(str(tiny.diffusers_dir), local_files_only=True)
    for name in _components(family):
        assert _state_equal(getattr(from_file, name), getattr(from_folder, name)) == 0.0, name


@pytest.mark.parametrize("family", FAMILIES)
def test_config_only_folder_has_configs_but_no_weights(family: str, request: pytest.FixtureRequest) -> None:
    tiny: TinyModel = request.getfixturevalue(f"tiny_{family}")
    files = {p.relative_to(tiny.config_only_dir).as_posix() for p in tiny.config_only_dir.rglob("*") if p.is_file()}
    assert "model_index.json" in files
    assert {"unet/config.json", "vae/config.json", "text_encoder/config.json"} <= files
    assert "scheduler/scheduler_config.json" in files
    assert any(f.startswith("tokenizer/") for f in files)
    assert not [f for f in files if f.endswith((".safetensors", ".bin", ".ckpt"))]
