"""Base-model loading: family detection, single-file loading without the hub, flags, errors, conditioning."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from gpurun.errors import ConfigError
from tests.support.tiny_models import TinyModel

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

FAMILIES = ["sd15", "sd2", "sdxl"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # bundled configs are materialised once per session, not into the real ~/.cache
    monkeypatch.setenv("GPURUN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "gpurun-cache"))


def _tiny(request: pytest.FixtureRequest, family: str) -> TinyModel:
    return request.getfixturevalue(f"tiny_{family}")


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_and_folder_load_the_same_weights(family: str, request: pytest.FixtureRequest) -> None:
    from gpurun.runner.model.load import load_base_model

    tiny = _tiny(request, family)
    from_file = load_base_model(str(tiny.single_file))
    from_folder = load_base_model(str(tiny.diffusers_dir))
    assert from_file.family == from_folder.family == family
    for a, b in [(from_file.unet, from_folder.unet), (from_file.vae, from_folder.vae)]:
        assert _max_diff(a, b) == 0.0
    for a, b in zip(from_file.text_encoders, from_folder.text_encoders, strict=True):
        assert _max_diff(a, b) == 0.0
    assert len(from_file.text_encoders) == len(from_file.tokenizers) == (2 if family == "sdxl" else 1)
    # the start event says what was detected and how
    assert "single-file checkpoint" in from_file.detected
    assert "diffusers folder" in from_folder.detected
    marker = {
        "sd15": "cond_stage_model.transformer",
        "sd2": "cond_stage_model.model",
        "sdxl": "conditioner.embedders.1",
    }
    assert marker[family] in from_file.detected
    # a single file is hashed for ss_sd_model_hash / ss_new_sd_model_hash; a folder is not
    import hashlib

    assert from_file.base_sha256 == hashlib.sha256(tiny.single_file.read_bytes()).hexdigest()
    assert from_file.base_model_hash is not None and len(from_file.base_model_hash) == 8
    assert from_folder.base_sha256 is None
    assert from_file.base_name == tiny.single_file.name
    # the base is frozen
    assert not any(p.requires_grad for p in from_file.unet.parameters())


def test_magic_tiny_names_need_no_files() -> None:
    from gpurun.runner.model.load import load_base_model

    model = load_base_model("tiny-sdxl")
    assert model.family == "sdxl" and "tiny" in model.detected
    assert model.source == "tiny-sdxl" and model.base_sha256 is None


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-pickle"])
def test_ckpt_single_file_is_detected_and_loaded(tiny_sd15: TinyModel, tmp_path: Path, zip_format: bool) -> None:
    from safetensors.torch import load_file

    from gpurun.runner.model.load import load_base_model

    ckpt = tmp_path / "model.ckpt"
    state = {"state_dict": load_file(str(tiny_sd15.single_file))}
    torch.save(state, ckpt, _use_new_zipfile_serialization=zip_format)
    shutil.copytree(tiny_sd15.config_only_dir, tmp_path / "model.config")
    model = load_base_model(str(ckpt))
    reference = load_base_model(str(tiny_sd15.diffusers_dir))
    assert model.family == "sd15"
    assert _max_diff(model.unet, reference.unet) == 0.0


def test_flags_choose_the_prediction_type(tiny_sd15: TinyModel, tiny_sd2: TinyModel) -> None:
    from gpurun.runner.model.load import load_base_model

    eps = load_base_model(str(tiny_sd15.single_file))
    assert (eps.prediction_type, eps.noise_scheduler.config.prediction_type) == ("epsilon", "epsilon")
    v = load_base_model(str(tiny_sd15.single_file), v_parameterization=True)
    assert (v.prediction_type, v.noise_scheduler.config.prediction_type) == ("v_prediction", "v_prediction")
    assert "v_parameterization" in v.detected
    # SD 2.x: v-prediction is not in the keys; the flag decides, and v2 is accepted
    sd2 = load_base_model(str(tiny_sd2.single_file), v2=True)
    assert (sd2.family, sd2.prediction_type) == ("sd2", "epsilon")
    sd2v = load_base_model(str(tiny_sd2.single_file), v2=True, v_parameterization=True)
    assert sd2v.prediction_type == "v_prediction" and sd2v.v2 and sd2v.default_resolution == 768
    # a diffusers folder's scheduler config says v-prediction itself (the tiny SD 2 is a 768-v model)
    assert load_base_model(str(tiny_sd2.diffusers_dir)).prediction_type == "v_prediction"


def test_flags_that_contradict_the_checkpoint_are_errors(tiny_sd15: TinyModel) -> None:
    from gpurun.runner.model.load import load_base_model

    with pytest.raises(ConfigError, match=re.escape("v2 = true but the model is SD 1.x")) as info:
        load_base_model(str(tiny_sd15.single_file), v2=True)
    assert info.value.hint and "v2 = false" in info.value.hint
    with pytest.raises(ConfigError, match=re.escape("model_family = 'sdxl' but the model is SD 1.x")):
        load_base_model(str(tiny_sd15.single_file), family="sdxl")
    assert load_base_model(str(tiny_sd15.single_file), family="sd15").family == "sd15"


def test_missing_file_is_a_config_error_with_a_hint(tmp_path: Path) -> None:
    from gpurun.runner.model.load import load_base_model

    with pytest.raises(ConfigError, match="base model not found") as info:
        load_base_model(str(tmp_path / "v1-5-pruned.safetensors"))
    assert info.value.where and info.value.where.endswith("v1-5-pruned.safetensors")
    assert info.value.hint


def test_garbage_file_is_a_config_error(tmp_path: Path) -> None:
    from gpurun.runner.model.load import load_base_model

    for name, data in [("garbage.safetensors", b"\x00" * 5000), ("garbage.ckpt", b"not a pickle at all")]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ConfigError, match="unreadable checkpoint") as info:
            load_base_model(str(path))
        assert info.value.hint and info.value.where == str(path)


def test_truncated_checkpoint_is_a_config_error(tiny_sd15: TinyModel, tmp_path: Path) -> None:
    from gpurun.runner.model.load import load_base_model

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(tiny_sd15.single_file.read_bytes()[: tiny_sd15.single_file.stat().st_size // 2])
    shutil.copytree(tiny_sd15.config_only_dir, tmp_path / "cut.config")
    with pytest.raises(ConfigError) as info:
        load_base_model(str(cut))
    assert info.value.hint


def test_other_kinds_of_files_are_named(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from gpurun.runner.model.load import load_base_model

    cases = {
        "lora.safetensors": ({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, "LoRA, not a base model"),
        "vae.safetensors": ({"encoder.conv_in.weight": torch.zeros(2, 2)}, "VAE, not a base model"),
        "other.safetensors": ({"foo.weight": torch.zeros(2)}, "unknown architecture"),
        "inpaint.safetensors": (
            {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 9, 3, 3)},
            "inpainting",
        ),
        "refiner.safetensors": (
            {
                "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
                "conditioner.embedders.0.model.text_projection": torch.zeros(2, 2),
            },
            "refiner",
        ),
        "unet-only.safetensors": (
            {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)},
            "no text encoder",
        ),
    }
    for name, (tensors, message) in cases.items():
        save_file(tensors, str(tmp_path / name))
        with pytest.raises(ConfigError, match=message):
            load_base_model(str(tmp_path / name))


def test_hub_id_offline_is_a_config_error_with_a_hint() -> None:
    from gpurun.runner.model.load import load_base_model

    with pytest.raises(ConfigError, match=re.escape("cannot fetch 'stabilityai/stable-diffusion-xl-base-1.0'")) as info:
        load_base_model("stabilityai/stable-diffusion-xl-base-1.0")
    assert info.value.hint and "HF_HUB_OFFLINE" in info.value.hint


def test_unknown_names_and_non_model_folders_are_config_errors(tmp_path: Path) -> None:
    from gpurun.runner.model.load import load_base_model

    with pytest.raises(ConfigError, match="unknown base model") as info:
        load_base_model("sd15")
    assert info.value.hint and "tiny-sd" in info.value.hint
    with pytest.raises(ConfigError, match=re.escape("no model_index.json")):
        load_base_model(str(tmp_path))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ConfigError, match="unsupported pipeline 'FluxPipeline'"):
        load_base_model(str(tmp_path))


def test_checkpoint_that_does_not_fit_the_bundled_config_is_refused(tiny_sd15: TinyModel, tmp_path: Path) -> None:
    from gpurun.runner.model.load import load_base_model

    lone = tmp_path / "custom.safetensors"
    shutil.copy(tiny_sd15.single_file, lone)  # no custom.config/ next to it: the bundled SD 1.5 config is used
    expected = re.escape("does not match the bundled sd15 config: conv_in has 32 channels")
    with pytest.raises(ConfigError, match=expected) as info:
        load_base_model(str(lone))
    assert info.value.hint and "custom.config/" in info.value.hint
    # an explicit config folder works as well as the sidecar
    assert load_base_model(str(lone), config_dir=tiny_sd15.config_only_dir).family == "sd15"


@pytest.mark.parametrize(
    ("name", "counts"),
    [
        ("sd15", {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}),
        ("sd2-768-v", {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840}),
        ("sd2-512-base", {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840}),
        (
            "sdxl-base",
            {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
        ),
    ],
)
def test_bundled_configs_describe_the_real_models(name: str, counts: dict[str, int]) -> None:
    """Parameter counts of the official checkpoints, built on the meta device from the bundled configs."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from gpurun.runner.model.bundled import materialize

    folder = materialize(name)
    index = json.loads((folder / "model_index.json").read_text())
    built = {}
    with init_empty_weights():
        built["unet"] = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        built["vae"] = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        for te in ("text_encoder", "text_encoder_2"):
            if te in index:
                cls = CLIPTextModelWithProjection if index[te][1] == "CLIPTextModelWithProjection" else CLIPTextModel
                built[te] = cls(CLIPTextConfig.from_pretrained(folder / te))
    assert {k: sum(p.numel() for p in m.parameters()) for k, m in built.items()} == counts


@pytest.mark.parametrize("name", ["sd15", "sd2-768-v", "sdxl-base"])
def test_bundled_tokenizers_use_the_real_clip_vocabulary(name: str) -> None:
    from transformers import CLIPTokenizer

    from gpurun.runner.model.bundled import materialize

    folder = materialize(name)
    for sub in sorted(p.name for p in folder.glob("tokenizer*")):
        tok = CLIPTokenizer.from_pretrained(folder / sub)
        assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert len(tok) == 49408 and tok.model_max_length == 77
        # SD 1.x pads with the end token, OpenCLIP-based encoders with "!" (id 0)
        expected_pad = 0 if (name != "sd15" and (sub == "tokenizer_2" or name.startswith("sd2"))) else 49407
        assert tok.pad_token_id == expected_pad
    assert materialize(name) == folder  # cached


def test_encode_prompt_sd15_follows_kohyas_clip_skip() -> None:
    from gpurun.runner.model.load import load_base_model

    model = load_base_model("tiny-sd")
    ids = model.tokenize(["a photo of sks dog", "a cat"])
    assert len(ids) == 1 and ids[0].shape == (2, 77)
    last = model.encode_prompt(ids)
    assert last.pooled is None and last.hidden_states.shape == (2, 77, 32)
    skip2 = model.encode_prompt(ids, clip_skip=2)
    te = model.text_encoders[0]
    with torch.no_grad():
        expected = te.final_layer_norm(te(ids[0], output_hidden_states=True).hidden_states[-2])
        assert torch.equal(skip2.hidden_states, expected)
        assert torch.equal(model.encode_prompt(ids, clip_skip=1).hidden_states, last.hidden_states)
    assert not torch.equal(skip2.hidden_states, last.hidden_states)
    assert model.unet_added_cond(last, [(64, 64)] * 2, [(0, 0)] * 2, [(64, 64)] * 2) is None


def test_encode_prompt_sdxl_concatenates_penultimate_states_and_pools() -> None:
    from gpurun.runner.model.load import load_base_model

    model = load_base_model("tiny-sdxl")
    ids = model.tokenize(["a photo of sks dog"])
    assert [t.shape for t in ids] == [(1, 77), (1, 77)]
    assert ids[1][0, -1].item() == model.tokenizers[1].pad_token_id != model.tokenizers[0].pad_token_id
    cond = model.encode_prompt(ids)
    te1, te2 = model.text_encoders
    with torch.no_grad():
        h1 = te1(ids[0], output_hidden_states=True).hidden_states[-2]
        out2 = te2(ids[1], output_hidden_states=True)
    assert torch.equal(cond.hidden_states, torch.cat([h1, out2.hidden_states[-2]], dim=-1))
    assert cond.hidden_states.shape[-1] == model.unet.config.cross_attention_dim
    assert torch.equal(cond.pooled, out2.text_embeds)
    added = model.unet_added_cond(cond, [(768, 512)], [(0, 32)], [(512, 512)])
    assert added is not None and added["time_ids"].tolist() == [[768.0, 512.0, 0.0, 32.0, 512.0, 512.0]]
    out = model.unet(
        torch.randn(1, 4, 8, 8), torch.tensor([10]), encoder_hidden_states=cond.hidden_states, added_cond_kwargs=added
    ).sample
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_dtypes_sdxl_vae_stays_fp32(family: str) -> None:
    from gpurun.runner.model.load import load_base_model

    model = load_base_model("tiny-sd" if family == "sd15" else "tiny-sdxl", weight_dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert all(next(te.parameters()).dtype == torch.bfloat16 for te in model.text_encoders)
    assert model.vae_dtype == (torch.float32 if family == "sdxl" else torch.bfloat16)
    forced = load_base_model("tiny-sd", weight_dtype=torch.bfloat16, vae_dtype=torch.float32)
    assert forced.vae_dtype == torch.float32


def test_models_use_sdpa_attention() -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    from gpurun.runner.model.load import load_base_model

    model = load_base_model("tiny-sd")
    assert {type(p) for p in model.unet.attn_processors.values()} == {AttnProcessor2_0}


def test_pipeline_shares_components_and_knows_kohyas_samplers() -> None:
    from gpurun.runner.model.load import load_base_model

    model = load_base_model("tiny-sd", v_parameterization=True)
    pipe = model.pipeline("euler_a")
    assert pipe.unet is model.unet and pipe.text_encoder is model.text_encoders[0]
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert type(model.pipeline("dpmsolver++").scheduler).__name__ == "DPMSolverMultistepScheduler"
    with pytest.raises(ConfigError, match="unknown sampler"):
        model.pipeline("magic")


def test_vae_override_from_folder_or_single_file(tiny_sd15: TinyModel, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from gpurun.runner.model.load import load_base_model

    reference = load_base_model(str(tiny_sd15.diffusers_dir))
    from_folder = load_base_model(str(tiny_sd15.single_file), vae=str(tiny_sd15.diffusers_dir / "vae"))
    assert _max_diff(from_folder.vae, reference.vae) == 0.0
    # a standalone VAE file in the original layout (keys without the first_stage_model. prefix, as shipped)
    vae_file = tmp_path / "vae.safetensors"
    state = load_file(str(tiny_sd15.single_file))
    save_file(
        {k.removeprefix("first_stage_model."): v for k, v in state.items() if k.startswith("first_stage_model.")},
        str(vae_file),
    )
    from_file = load_base_model(str(tiny_sd15.single_file), vae=str(vae_file))
    assert _max_diff(from_file.vae, reference.vae) == 0.0
    with pytest.raises(ConfigError, match="VAE not found"):
        load_base_model(str(tiny_sd15.single_file), vae=str(tmp_path / "missing-vae.safetensors"))


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sdxl"])
def test_conditioning_carries_gradients_to_text_encoder_lora(name: str) -> None:
    from gpurun.runner.lora import add_lora
    from gpurun.runner.model.load import load_base_model

    model = load_base_model(name)
    params = add_lora(model, rank=4, alpha=4.0, train_text_encoder=True, seed=0)
    cond = model.encode_prompt(model.tokenize(["a photo of sks dog"]))
    added = model.unet_added_cond(cond, [(64, 64)], [(0, 0)], [(64, 64)])
    pred = model.unet(torch.randn(1, 4, 8, 8), torch.tensor([500]), cond.hidden_states, added_cond_kwargs=added).sample
    pred.pow(2).mean().backward()
    for group in [params.unet, *params.text_encoders]:
        # lora_up starts at zero, so its gradient is the one that flows first
        grads = [p.grad for p in group if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for n, p in model.unet.named_parameters() if "lora_" not in n)
