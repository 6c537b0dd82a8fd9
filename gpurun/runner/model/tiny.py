"""Tiny random-weight Stable Diffusion pipelines with the real block topology, for tests and laptop dry runs.

Names of LoRA modules depend only on topology (levels, layers per block, transformer depth, text-encoder
layers), so a tiny model with real topology and small widths proves the file format of a full-size one:
SD 1.5 gives kohya's 192 UNet + 72 text-encoder modules, SDXL 722 + 72 + 192, SD 2.x 192 + 138.
Everything is built in-process from configs (no files, no hub), deterministically from a seed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from gpurun.runner.model.clip_bpe import make_tokenizer, tiny_vocab
from gpurun.runner.model.ldm_layout import pipeline_to_original_state_dict
from gpurun.runner.model.loaded import assemble_pipeline

TinyFamily = Literal["sd15", "sd2", "sdxl"]
TINY_BASE_NAMES: dict[str, TinyFamily] = {"tiny-sd": "sd15", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl"}

_VAE: dict[str, Any] = {
    # SD's VAE topology (4 levels, 2 resnets each, mid attention) at widths 16/32
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [16, 16, 32, 32],
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}

_SD_UNET: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "attention_head_dim": 8,
    "cross_attention_dim": 32,
}

_CLIP_L: dict[str, Any] = {  # CLIP ViT-L/14 topology: 12 layers, quick_gelu
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 12,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 32,
}

# The two SDXL text encoders must differ in width: diffusers' single-file loader tells them apart by the
# width of their position embeddings (768 vs 1280 in the real model).
_SPECS: dict[str, dict[str, Any]] = {
    "sd15": {
        "unet": _SD_UNET,
        "text_encoders": [("CLIPTextModel", _CLIP_L, "<|endoftext|>")],
        "vae": {**_VAE},
        "prediction_type": "epsilon",
    },
    "sd2": {  # SD 2.x: linear projections, OpenCLIP ViT-H text encoder used to its penultimate layer (23 of 24)
        "unet": {**_SD_UNET, "use_linear_projection": True, "attention_head_dim": [2, 4, 8, 8]},
        "text_encoders": [("CLIPTextModel", {**_CLIP_L, "num_hidden_layers": 23, "hidden_act": "gelu"}, "!")],
        "vae": {**_VAE},
        "prediction_type": "v_prediction",
    },
    "sdxl": {
        "unet": {
            "sample_size": 8,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "block_out_channels": [16, 32, 32],
            "layers_per_block": 2,
            "transformer_layers_per_block": [1, 2, 10],
            "norm_num_groups": 8,
            "attention_head_dim": [2, 4, 4],
            "cross_attention_dim": 32 + 48,
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 32 + 6 * 8,
        },
        "text_encoders": [
            ("CLIPTextModel", {**_CLIP_L, "hidden_act": "quick_gelu"}, "<|endoftext|>"),
            (
                "CLIPTextModelWithProjection",
                {**_CLIP_L, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 32, "hidden_act": "gelu"},
                "!",
            ),
        ],
        "vae": {**_VAE, "scaling_factor": 0.13025, "force_upcast": True},
        "prediction_type": "epsilon",
    },
}


def tiny_family(name: str) -> TinyFamily | None:
    """The family of a magic base name ("tiny-sd", "tiny-sd2", "tiny-sdxl"), else None."""
    return TINY_BASE_NAMES.get(name.strip().lower())


def build_tiny_pipeline(family: TinyFamily, seed: int = 0):  # -> StableDiffusionPipeline | StableDiffusionXLPipeline
    """A random-weight pipeline of the family's real topology at tiny widths. Same seed, same weights."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if family not in _SPECS:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {', '.join(_SPECS)}")
    spec = _SPECS[family]
    vocab, _ = tiny_vocab()
    classes = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**spec["unet"])
        vae = AutoencoderKL(**spec["vae"])
        text_encoders, tokenizers = [], []
        for class_name, te_config, pad_token in spec["text_encoders"]:
            tokenizer = make_tokenizer(real=False, pad_token=pad_token)
            config = CLIPTextConfig(
                **te_config,
                vocab_size=len(vocab),
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            text_encoders.append(classes[class_name](config).eval())
            tokenizers.append(tokenizer)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=spec["prediction_type"],
        timestep_spacing="leading",
        steps_offset=1,
    )
    return assemble_pipeline(family, unet.eval(), vae.eval(), text_encoders, tokenizers, scheduler)


def save_tiny(
    family: TinyFamily,
    folder: Path,
    *,
    single_file: Path | None = None,
    config_only: Path | None = None,
    seed: int = 0,
) -> None:
    """Save the tiny pipeline as a diffusers folder, and optionally as an original-layout single file
    (what A1111/ComfyUI users download) and as a config-only folder (what `from_single_file(config=)` needs)."""
    pipe = build_tiny_pipeline(family, seed=seed)
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    if single_file is not None:
        from safetensors.torch import save_file

        state = pipeline_to_original_state_dict(pipe)
        single_file.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(single_file), metadata={"format": "pt"})
    if config_only is not None:
        copy_config_only(folder, config_only)


def copy_config_only(diffusers_folder: Path, target: Path) -> None:
    """Copy a diffusers folder without its weights: model_index.json, */config.json, tokenizers, scheduler."""
    target = Path(target)
    with tempfile.TemporaryDirectory(dir=target.parent if target.parent.exists() else None) as tmp:
        staging = Path(tmp) / "cfg"
        for path in Path(diffusers_folder).rglob("*"):
            if path.is_file() and path.suffix in (".json", ".txt"):
                dest = staging / path.relative_to(diffusers_folder)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
        json.loads((staging / "model_index.json").read_text())  # must exist and parse
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), str(target))
