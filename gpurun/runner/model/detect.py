"""Which Stable Diffusion family a checkpoint or diffusers folder is, decided from its keys and configs, with why.

Single files are recognised by their text-encoder layout, as diffusers and ComfyUI do:
`conditioner.embedders.1` (OpenCLIP-bigG) → SDXL base, `cond_stage_model.model` (OpenCLIP-H) → SD 2.x,
`cond_stage_model.transformer` (CLIP-L) → SD 1.x. Whether an SD 2.x file predicts v or epsilon is not in its
keys; that is what `v_parameterization` says (kohya's rule). Everything else (inpainting, refiner, LoRA or VAE
files, UNet-only files) is refused with an actionable ConfigError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gpurun.errors import ConfigError
from gpurun.lorafile import SafetensorsError, read_header

UNET = "model.diffusion_model."
FAMILY_NAMES = {"sd15": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL base"}


@dataclass(frozen=True, slots=True)
class Detection:
    family: str
    #: how it was recognised, e.g. "single-file checkpoint: conditioner.embedders.1 present"
    how: str
    #: from the folder's scheduler config or a checkpoint's v_pred marker; None when the source does not say
    prediction_type: str | None = None


def checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a .safetensors (header only) or .ckpt/.pt (weights-only unpickling) file."""
    where = str(path)
    if path.suffix.lower() == ".safetensors":
        try:
            return {name: info.shape for name, info in read_header(path).tensors.items()}
        except SafetensorsError as exc:
            raise ConfigError(
                f"unreadable checkpoint: {exc}", where=where, hint="re-download it; the file may be truncated"
            ) from None
    import torch

    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # mmap needs the zip format; very old checkpoints use the legacy pickle format
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unpickling-policy errors all mean "cannot use this file"
        raise ConfigError(
            f"unreadable checkpoint ({type(exc).__name__}: {str(exc)[:200]})",
            where=where,
            hint="use a .safetensors checkpoint, or re-download this one",
        ) from None
    while isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ConfigError("checkpoint does not hold a state dict", where=where, hint="use a .safetensors checkpoint")
    return {k: tuple(v.shape) for k, v in data.items() if hasattr(v, "shape")}


def detect_single_file(path: Path, shapes: dict[str, tuple[int, ...]]) -> Detection:
    """Family of an original-layout (LDM / sgm) checkpoint, or a ConfigError saying what the file is instead."""
    where = str(path)
    keys = shapes.keys()
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        raise ConfigError(
            "this is a LoRA, not a base model", where=where, hint="point pretrained_model_name_or_path at a checkpoint"
        )
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None:
        if any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in keys) and not any(
            k.startswith(UNET) for k in keys
        ):
            raise ConfigError("this is a VAE, not a base model", where=where, hint="pass it as `vae` instead")
        raise ConfigError(
            "unknown architecture: no Stable Diffusion UNet (model.diffusion_model.*) in this checkpoint",
            where=where,
            hint="use an SD 1.5, SD 2.x or SDXL base checkpoint in the original single-file layout, "
            "or a diffusers folder",
        )
    if len(conv_in) == 4 and conv_in[1] != 4:
        kind = {9: "an inpainting model", 8: "an instruct-pix2pix model"}.get(conv_in[1], "not a text-to-image model")
        raise ConfigError(
            f"the UNet takes {conv_in[1]} input channels: {kind}",
            where=where,
            hint="train LoRAs on the base text-to-image checkpoint",
        )
    marker = "v_prediction" if "v_pred" in keys else None
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return Detection("sdxl", "single-file checkpoint: conditioner.embedders.1 (OpenCLIP-bigG) present", marker)
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise ConfigError(
            "this is the SDXL refiner, which LoRAs are not trained on", where=where, hint="use the SDXL base model"
        )
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return Detection("sd2", "single-file checkpoint: cond_stage_model.model (OpenCLIP-H) present", marker)
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return Detection("sd15", "single-file checkpoint: cond_stage_model.transformer (CLIP ViT-L) present", marker)
    raise ConfigError(
        "the checkpoint has a UNet but no text encoder",
        where=where,
        hint="use a full checkpoint (UNet, VAE and text encoder), e.g. v1-5-pruned-emaonly.safetensors",
    )


def check_config_matches(path: Path, shapes: dict[str, tuple[int, ...]], config_dir: Path, label: str) -> None:
    """Refuse early, with a hint, when the checkpoint's widths differ from the config folder's."""
    unet_cfg = json.loads((config_dir / "unet" / "config.json").read_text(encoding="utf-8"))
    problems = []
    conv_in = shapes[UNET + "input_blocks.0.0.weight"]
    if conv_in[0] != unet_cfg["block_out_channels"][0]:
        problems.append(f"conv_in has {conv_in[0]} channels, the config {unet_cfg['block_out_channels'][0]}")
    to_k = next((s for k, s in shapes.items() if k.startswith(UNET) and k.endswith("attn2.to_k.weight")), None)
    if to_k is not None and to_k[-1] != unet_cfg["cross_attention_dim"]:
        problems.append(f"cross-attention width is {to_k[-1]}, the config {unet_cfg['cross_attention_dim']}")
    if problems:
        raise ConfigError(
            f"the checkpoint does not match the {label} config: " + "; ".join(problems),
            where=str(path),
            hint=f"for a non-standard architecture put a diffusers config folder next to it as {path.stem}.config/ "
            "(model_index.json and */config.json)",
        )


def detect_folder(folder: Path, *, where: str | None = None) -> Detection:
    """Family of a diffusers folder from model_index.json and the text encoder's config."""
    where = where or str(folder)
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        hint = "pass the .safetensors file itself" if any(folder.glob("*.safetensors")) else None
        raise ConfigError(
            "not a diffusers model folder (no model_index.json)",
            where=where,
            hint=hint or "give a diffusers folder, a .safetensors checkpoint or a hub id",
        )
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"unreadable model_index.json: {exc}", where=where) from None
    cls = index.get("_class_name", "")
    prediction = _read_json(folder / "scheduler" / "scheduler_config.json").get("prediction_type")
    if cls == "StableDiffusionXLPipeline":
        return Detection("sdxl", f"diffusers folder: {cls} with text_encoder_2", prediction)
    if cls == "StableDiffusionPipeline":
        te = _read_json(folder / "text_encoder" / "config.json")
        if te.get("hidden_act") == "gelu":  # OpenCLIP-H; CLIP ViT-L uses quick_gelu
            return Detection("sd2", f"diffusers folder: {cls} with an OpenCLIP (gelu) text encoder", prediction)
        return Detection("sd15", f"diffusers folder: {cls} with a CLIP ViT-L (quick_gelu) text encoder", prediction)
    raise ConfigError(
        f"unsupported pipeline {cls or '(none)'!r}",
        where=where,
        hint="gpurun trains LoRAs for StableDiffusionPipeline (SD 1.x/2.x) and StableDiffusionXLPipeline models",
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
