"""LoRA injection and kohya export: exactly kohya's key set, real alpha, metadata, and a file diffusers loads
back (no warnings) that reproduces the in-memory model; weight 0 is the base model."""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from gpurun.lorafile import read_header, read_scalar, text_encoder_module_names, unet_module_names
from tests.support.lora_files import ALPHA, DATASET, DIM, TINY_NAME, WarningRecords, lora_model, save_lora_file
from tests.support.tiny_models import TinyModel

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    root = tmp_path_factory.mktemp("exported")
    out = {}
    for family in ("sd15", "sd2", "sdxl"):
        model, _ = lora_model(family)
        out[family] = (model, save_lora_file(model, root / f"{family}.safetensors"))
    return out


@pytest.mark.parametrize(
    ("family", "counts"),
    [
        ("sd15", {"unet": 192, "text_encoder": 72}),
        ("sd2", {"unet": 192, "text_encoder": 138}),
        ("sdxl", {"unet": 722, "text_encoder": 72, "text_encoder_2": 192}),
    ],
)
def test_targets_are_kohyas_defaults(family: str, counts: dict[str, int]) -> None:
    from gpurun.runner.lora import kohya_target_names
    from gpurun.runner.model.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(family)
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    targets = kohya_target_names(family, pipe.unet, encoders)
    assert {k: len(v) for k, v in targets.items()} == counts
    assert all(".transformer_blocks." in n or n.endswith(("proj_in", "proj_out")) for n in targets["unet"])
    assert all(
        n.split(".")[-1] in {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"} for n in targets["text_encoder"]
    )


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_exported_key_set_is_exactly_kohyas(family: str, exported: dict[str, tuple[Any, Path]]) -> None:
    from gpurun.runner.export import verify_kohya_file

    model, path = exported[family]
    header = read_header(path)
    expected = set(unet_module_names(family)) | {n for v in text_encoder_module_names(family).values() for n in v}
    expected_keys = {f"{n}.{part}" for n in expected for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert set(header.tensors) == expected_keys
    # shapes: rank DIM, in/out features of the module they adapt; SD 1.5's proj_in/out are 1x1 convs
    modules = dict(model.unet.named_modules())
    down = header.tensors[
        "lora_unet_"
        + ("input_blocks_4_1" if family == "sdxl" else "down_blocks_1_attentions_0")
        + "_transformer_blocks_0_attn2_to_k.lora_down.weight"
    ]
    path_in_unet = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    base = modules[path_in_unet].base_layer
    assert down.shape == (DIM, base.in_features)
    up = header.tensors[down_key_to_up(header, path_in_unet, family)]
    assert up.shape == (base.out_features, DIM)
    proj = header.tensors[
        ("lora_unet_mid_block_attentions_0" if family != "sdxl" else "lora_unet_middle_block_1")
        + "_proj_in.lora_down.weight"
    ]
    assert len(proj.shape) == (4 if family == "sd15" else 2)
    for name in expected:
        assert header.tensors[f"{name}.alpha"].shape == ()
        assert read_scalar(header, f"{name}.alpha") == ALPHA
        assert header.tensors[f"{name}.lora_down.weight"].dtype == "F16"
    assert verify_kohya_file(path, family, network_dim=DIM, network_alpha=ALPHA) == []


def down_key_to_up(header, diffusers_path: str, family: str) -> str:
    from gpurun.runner.export import kohya_module_name

    return kohya_module_name(family, "unet", diffusers_path) + ".lora_up.weight"


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_metadata_is_kohyas(family: str, exported: dict[str, tuple[Any, Path]]) -> None:
    import json

    _, path = exported[family]
    meta = read_header(path).metadata
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "32"
    assert meta["ss_network_alpha"] == "16.0"
    assert meta["ss_output_name"] == "mi_lora"
    assert meta["ss_base_model_version"] == {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}[family]
    assert meta["ss_v2"] == "False"
    assert json.loads(meta["ss_tag_frequency"]) == DATASET["tag_frequency"]
    assert json.loads(meta["ss_dataset_dirs"]) == DATASET["dataset_dirs"]
    assert meta["ss_num_train_images"] == "40" and meta["ss_epoch"] == "2" and meta["ss_steps"] == "40"
    assert meta["ss_optimizer"] == "bitsandbytes.optim.adamw.AdamW8bit"
    assert meta["ss_unet_lr"] == "0.0001" and meta["ss_text_encoder_lr"] == "5e-05"
    assert meta["ss_lr_scheduler"] == "cosine_with_restarts"
    assert meta["ss_resolution"] == "(512, 512)"
    assert meta["ss_sd_model_name"] == TINY_NAME[family]
    assert meta["modelspec.sai_model_spec"] == "1.0.1"
    assert (
        meta["modelspec.architecture"]
        == {
            "sd15": "stable-diffusion-v1/lora",
            "sdxl": "stable-diffusion-xl-v1-base/lora",
        }[family]
    )
    assert meta["modelspec.title"] == "mi_lora"
    assert meta["modelspec.resolution"] == "512x512"
    assert meta["modelspec.prediction_type"] == "epsilon"
    assert meta["modelspec.trigger_phrase"] == "sks dog"
    assert meta["modelspec.date"].startswith("2023-11-1")
    # kohya's addnet hash: sha256 of the tensor bytes after the header, independent of the metadata
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(data[8 + header_len :]).hexdigest()
    assert len(meta["sshs_legacy_hash"]) == 8


def test_modelspec_metadata_keys_as_kohya_writes_them(tmp_path: Path) -> None:
    model, _ = lora_model("sd15", perturb=False)
    path = save_lora_file(
        model,
        tmp_path / "meta.safetensors",
        metadata_title="Robot v1",
        metadata_author="me",
        metadata_license="CreativeML Open RAIL-M",
        metadata_tags="robot, toy",
    )
    meta = read_header(path).metadata
    assert (meta["modelspec.title"], meta["modelspec.author"]) == ("Robot v1", "me")
    assert meta["modelspec.license"] == "CreativeML Open RAIL-M" and meta["modelspec.tags"] == "robot, toy"
    assert "modelspec.description" not in meta and meta["ss_output_name"] == "mi_lora"


def test_v_prediction_and_sd2_versions() -> None:
    from gpurun.runner.export import base_model_version, modelspec_architecture

    assert base_model_version("sd15", True) == "sd_v1_v"
    assert base_model_version("sd2", True) == "sd_v2_v"
    assert base_model_version("sd2", False) == "sd_v2"
    assert modelspec_architecture("sd2", True) == "stable-diffusion-v2-768-v/lora"


def test_unet_only_file_has_no_text_encoder_keys(tmp_path: Path) -> None:
    from gpurun.runner.export import verify_kohya_file

    model, params = lora_model("sdxl", train_te=False, perturb=False)
    assert params.text_encoders == [[], []] and params.counts["text_encoder_modules"] == 0
    path = save_lora_file(model, tmp_path / "unet-only.safetensors", precision="bf16", network_train_unet_only=True)
    header = read_header(path)
    assert not [k for k in header.tensors if k.startswith("lora_te")]
    assert {i.dtype for i in header.tensors.values()} == {"BF16"}
    assert header.metadata["ss_network_train_unet_only"] == "True"
    assert verify_kohya_file(path, "sdxl", network_dim=DIM, network_alpha=ALPHA) == []


def _rewrite(src: Path, dst: Path, edit) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        meta = dict(f.metadata())
    edit(tensors, meta)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def test_verify_names_each_problem(exported: dict[str, tuple[Any, Path]], tmp_path: Path) -> None:
    from gpurun.runner.export import verify_kohya_file

    _, good = exported["sd15"]
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"

    def check(name: str, edit, family: str = "sd15") -> list[str]:
        path = _rewrite(good, tmp_path / f"{name}.safetensors", edit)
        return verify_kohya_file(path, family, network_dim=DIM, network_alpha=ALPHA)

    stray = check("stray", lambda t, m: t.update({"unet.down_blocks.0.to_q.lora_A.weight": torch.zeros(2, 2)}))
    assert any("unexpected key 'unet.down_blocks.0.to_q.lora_A.weight'" in p for p in stray)
    missing_up = check("missing-up", lambda t, m: t.pop(f"{q}.lora_up.weight"))
    assert any(f"missing {q}.lora_up.weight" in p for p in missing_up)
    wrong_alpha = check("alpha", lambda t, m: t.update({f"{q}.alpha": torch.tensor(32.0, dtype=torch.float16)}))
    assert wrong_alpha == [f"{q}.alpha is 32, expected network_alpha 16"]
    no_version = check("no-version", lambda t, m: m.pop("ss_base_model_version"))
    assert no_version == ["metadata ss_base_model_version is missing"]
    rank = check("rank", lambda t, m: t.update({f"{q}.lora_down.weight": torch.zeros(8, 32, dtype=torch.float16)}))
    assert any("rank mismatch" in p for p in rank)
    as_sdxl = verify_kohya_file(good, "sdxl")
    assert any("not a kohya sdxl LoRA module" in p for p in as_sdxl)
    assert any("ss_base_model_version is 'sd_v1'" in p for p in as_sdxl)
    partial = check(
        "partial", lambda t, m: [t.pop(k) for k in list(t) if k.startswith("lora_te_text_model_encoder_layers_3_")]
    )
    assert partial == ["6 of 72 lora_te modules are missing, e.g. lora_te_text_model_encoder_layers_3_mlp_fc1"]
    assert verify_kohya_file(good, "sd15", network_dim=16) == [
        "LoRA rank [32] differs from network_dim 16",
        "ss_network_dim is '32', expected 16",
    ]


def test_add_lora_inits_like_kohya_and_keeps_lora_fp32_on_half_base() -> None:
    from gpurun.runner.lora import add_lora
    from gpurun.runner.model.load import load_base_model

    model = load_base_model("tiny-sd", weight_dtype=torch.bfloat16)
    lat, t = torch.randn(1, 4, 8, 8, dtype=torch.bfloat16), torch.tensor([500])
    cond = model.encode_prompt(model.tokenize(["a dog"]))
    with torch.no_grad():
        before = model.unet(lat, t, encoder_hidden_states=cond.hidden_states).sample
    params = add_lora(model, rank=4, alpha=2.0, train_text_encoder=True, seed=3)
    with torch.no_grad():
        after = model.unet(lat, t, encoder_hidden_states=cond.hidden_states).sample
    assert torch.equal(before, after)  # lora_up starts at zero: training starts from the base
    assert {p.dtype for p in params.all()} == {torch.float32}
    assert all(p.requires_grad for p in params.all())
    trainable = {id(p) for p in params.all()}
    assert not [n for n, p in model.unet.named_parameters() if p.requires_grad and id(p) not in trainable]
    assert next(model.unet.parameters()).dtype == torch.bfloat16
    layer = dict(model.unet.named_modules())["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    down, up = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert torch.count_nonzero(up) == 0
    bound = 1 / down.shape[1] ** 0.5  # kaiming_uniform(a=sqrt(5)) bound = 1/sqrt(fan_in)
    assert 0 < down.abs().max().item() <= bound
    assert layer.scaling["default"] == 0.5  # alpha / rank
    # same seed, same initial LoRA
    again = load_base_model("tiny-sd", weight_dtype=torch.bfloat16)
    add_lora(again, rank=4, alpha=2.0, train_text_encoder=True, seed=3)
    layer2 = dict(again.unet.named_modules())["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert torch.equal(layer2.lora_A["default"].weight, down)
    groups = params.param_groups(1e-4, 5e-5)
    assert [g["name"] for g in groups] == ["unet", "text_encoder"] and groups[1]["lr"] == 5e-5
    assert [g["name"] for g in params.param_groups(1e-4, 0.0)] == ["unet"]


def test_lora_state_round_trips_and_refuses_a_different_network() -> None:
    from gpurun.runner.lora import add_lora, load_lora_state, lora_state
    from gpurun.runner.model.load import load_base_model

    model, _ = lora_model("sd15")
    state = lora_state(model)
    assert state and all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())
    fresh = load_base_model("tiny-sd")
    add_lora(fresh, rank=DIM, alpha=ALPHA, train_text_encoder=True, seed=7)
    load_lora_state(fresh, state)
    assert all(torch.equal(a, b) for a, b in zip(lora_state(fresh).values(), state.values(), strict=True))
    other = load_base_model("tiny-sd")
    add_lora(other, rank=DIM, alpha=ALPHA, train_text_encoder=False)
    with pytest.raises(ValueError, match="does not fit the model"):
        load_lora_state(other, state)
    smaller = load_base_model("tiny-sd")
    add_lora(smaller, rank=8, alpha=ALPHA, train_text_encoder=True)
    with pytest.raises(ValueError, match="has shape"):
        load_lora_state(smaller, state)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_diffusers_loads_the_file_silently_and_reproduces_the_model(
    family: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )
    from safetensors.torch import load_file

    tiny: TinyModel = request.getfixturevalue(f"tiny_{family}")
    model, _ = lora_model(family)
    gen = torch.Generator().manual_seed(5)
    lat, t = torch.randn(1, 4, 8, 8, generator=gen), torch.tensor([500])
    ids = model.tokenize(["a photo of sks dog"])
    with torch.no_grad():
        cond = model.encode_prompt(ids)
        added = model.unet_added_cond(cond, [(64, 64)], [(0, 0)], [(64, 64)])
        trained_unet = model.unet(lat, t, encoder_hidden_states=cond.hidden_states, added_cond_kwargs=added).sample
        trained_te = [te(i).last_hidden_state for te, i in zip(model.text_encoders, ids, strict=True)]

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(str(tiny.diffusers_dir), local_files_only=True)  # a fresh pipeline, as a user has
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])

    def unet_out():
        with torch.no_grad():
            return pipe.unet(lat, t, encoder_hidden_states=cond.hidden_states, added_cond_kwargs=added).sample

    base_unet = unet_out()
    assert (base_unet - trained_unet).abs().max().item() > 0.05  # the LoRA matters
    for precision, tol in [("float", 1e-6), ("fp16", 3e-3)]:
        path = save_lora_file(model, tmp_path / f"lora-{precision}.safetensors", precision=precision)
        adapter = f"kohya_{precision}"
        handler = WarningRecords()
        loggers = [logging.getLogger(n) for n in ("", "diffusers", "peft", "transformers")]
        for logger in loggers:
            logger.addHandler(handler)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pipe.load_lora_weights(str(path), adapter_name=adapter)
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
        assert [r.getMessage() for r in handler.records] == []
        assert [str(w.message) for w in caught] == []
        expected_parts = {"unet", "text_encoder"} | ({"text_encoder_2"} if family == "sdxl" else set())
        assert {k for k, v in pipe.get_list_adapters().items() if adapter in v} == expected_parts
        pipe.set_adapters([adapter], adapter_weights=[1.0])
        assert (unet_out() - trained_unet).abs().max().item() <= tol, precision  # the file reproduces the model
        with torch.no_grad():
            for encoder, i, expected in zip(encoders, ids, trained_te, strict=True):
                assert (encoder(i).last_hidden_state - expected).abs().max().item() <= 10 * tol, precision
        pipe.set_adapters([adapter], adapter_weights=[0.0])
        assert torch.equal(unet_out(), base_unet)  # weight 0 is the base model, exactly
        pipe.delete_adapters(adapter)

        # diffusers' strict kohya parser renames every key (it raises on leftovers)
        state = load_file(str(path))
        if family == "sdxl":
            state = _maybe_map_sgm_blocks_to_diffusers(state, pipe.unet.config)
        modules = len(state) // 3
        converted, alphas = _convert_non_diffusers_lora_to_diffusers(dict(state))
        assert len(alphas) == modules and set(alphas.values()) == {ALPHA}
        assert len(converted) == 2 * modules
        assert all(k.startswith(("unet.", "text_encoder.", "text_encoder_2.")) for k in converted)


def test_save_is_atomic_and_reports_the_file_hash(tmp_path: Path) -> None:
    from gpurun.runner.export import save_lora

    model, _ = lora_model("sd15", perturb=False)
    path = tmp_path / "out" / "lora.safetensors"
    digest, size = save_lora(model, path, metadata={"ss_output_name": "x"}, precision="float")
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() and size == path.stat().st_size
    assert [p.name for p in path.parent.iterdir()] == ["lora.safetensors"]
    with pytest.raises(TypeError, match="must be strings"):
        save_lora(model, tmp_path / "bad.safetensors", metadata={"ss_network_dim": 32}, precision="fp16")  # type: ignore[dict-item]
    assert not (tmp_path / "bad.safetensors").exists()
    from gpurun.runner.export import kohya_state_dict

    fresh_model = lora_model("sd15", perturb=False)[0]
    assert time.time() > 0 and kohya_state_dict(fresh_model).keys() == kohya_state_dict(model).keys()
