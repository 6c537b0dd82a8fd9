"""Write the trained LoRA as the kohya-format .safetensors that A1111, ComfyUI, kohya's tools and diffusers load.

Names: `lora_unet_<diffusers path>` for SD 1.x/2.x and `lora_unet_<sgm path>` (input_blocks / middle_block /
output_blocks) for SDXL, as sd-scripts writes them; text encoders `lora_te_` (SD 1.x/2.x) or `lora_te1_` /
`lora_te2_` (SDXL), always with `text_model_` (transformers 5 dropped that level from CLIPTextModel; loaders
expect it). `.alpha` is the configured network_alpha as a 0-dim tensor (diffusers' own converter writes the
rank there, which makes the LoRA rank/alpha times too strong). Metadata: kohya's `ss_*` keys and ModelSpec 1.0.1
`modelspec.*` keys, all strings. Files are written atomically.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gpurun import __version__, optimizers
from gpurun.lorafile import verify_lora_file
from gpurun.runner.lora import ADAPTER, TEXT_ENCODER_NAMES
from gpurun.runner.lycoris_net import module_tensors

if TYPE_CHECKING:
    import torch

    from gpurun.runner.model.loaded import LoadedModel
    from gpurun.trainconfig import TrainConfig

Precision = Literal["fp16", "bf16", "float"]
TE_PREFIXES = {"sd15": ("lora_te",), "sd2": ("lora_te",), "sdxl": ("lora_te1", "lora_te2")}
SDXL_VERSION = "sdxl_base_v1-0"


def verify_kohya_file(
    path: str | Path,
    family: str,
    *,
    network_dim: int | None = None,
    network_alpha: float | None = None,
    conv_dim: int | None = None,
    conv_alpha: float | None = None,
) -> list[str]:
    """Problems with a kohya LoRA file (empty list = OK). Torch-free; the client uses gpurun.lorafile directly."""
    return verify_lora_file(
        path,
        family,  # type: ignore[arg-type]
        network_dim=network_dim,
        network_alpha=network_alpha,
        conv_dim=conv_dim,
        conv_alpha=conv_alpha,
    )


#: diffusers ResnetBlock2D layer → the sgm ResBlock's (kohya's SDXL UNet)
SGM_RESNET_LAYERS = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
    # LyCORIS' train_norm adapts the ResNets' GroupNorms too
    "norm1": "in_layers.0",
    "norm2": "out_layers.0",
}


def sgm_unet_path(path: str, layers_per_block: int = 2, attention_up_blocks: frozenset[int] = frozenset({0, 1})) -> str:
    """diffusers UNet path → kohya's SDXL (sgm) path, e.g. down_blocks.1.attentions.0 → input_blocks.4.1,
    down_blocks.0.resnets.1.conv1 → input_blocks.2.0.in_layers.2, down_blocks.0.downsamplers.0.conv →
    input_blocks.3.0.op. An upsampler sits after the attention in an up block that has one (SDXL's 0 and 1)."""
    parts = path.split(".")
    per_level = layers_per_block + 1
    if parts[0] in ("down_blocks", "up_blocks") and parts[2] in ("attentions", "resnets"):
        level, index = int(parts[1]), int(parts[3])
        block = per_level * level + index + (1 if parts[0] == "down_blocks" else 0)
        kind = "input_blocks" if parts[0] == "down_blocks" else "output_blocks"
        if parts[2] == "attentions":
            return ".".join([f"{kind}.{block}.1", *parts[4:]])
        return f"{kind}.{block}.0." + _sgm_resnet_layer(parts[4:], path)
    if parts[0] == "down_blocks" and parts[2:] == ["downsamplers", "0", "conv"]:
        return f"input_blocks.{per_level * (int(parts[1]) + 1)}.0.op"
    if parts[0] == "up_blocks" and parts[2:] == ["upsamplers", "0", "conv"]:
        level = int(parts[1])
        return f"output_blocks.{per_level * level + layers_per_block}.{2 if level in attention_up_blocks else 1}.conv"
    if parts[:3] == ["mid_block", "attentions", "0"]:
        return ".".join(["middle_block.1", *parts[3:]])
    if parts[:2] == ["mid_block", "resnets"] and parts[2] in ("0", "1"):
        return f"middle_block.{0 if parts[2] == '0' else 2}." + _sgm_resnet_layer(parts[3:], path)
    raise ValueError(f"no sgm name for UNet module {path!r}")


def _sgm_resnet_layer(rest: list[str], path: str) -> str:
    layer = ".".join(rest)
    if layer not in SGM_RESNET_LAYERS:
        raise ValueError(f"no sgm name for UNet module {path!r}")
    return SGM_RESNET_LAYERS[layer]


def kohya_module_name(
    family: str,
    component: str,
    path: str,
    layers_per_block: int = 2,
    attention_up_blocks: frozenset[int] = frozenset({0, 1}),
) -> str:
    """The kohya name of one adapted module, e.g. ("sdxl", "unet", "mid_block.attentions.0.proj_in") →
    "lora_unet_middle_block_1_proj_in"."""
    if component == "unet":
        if family == "sdxl":
            path = sgm_unet_path(path, layers_per_block, attention_up_blocks)
        return "lora_unet_" + path.replace(".", "_")
    prefix = TE_PREFIXES[family][TEXT_ENCODER_NAMES.index(component)]
    return f"{prefix}_text_model_" + path.removeprefix("text_model.").replace(".", "_")


def _adapted_modules(module: Any) -> list[tuple[str, Any]]:
    return [(n, m) for n, m in module.named_modules() if hasattr(m, "lora_A") and ADAPTER in getattr(m, "lora_A", {})]


def kohya_modules(model: LoadedModel) -> dict[str, Any]:
    """The injected LoRA layers by their kohya module name (e.g. "lora_unet_mid_block_attentions_0_proj_in")."""
    lpb = int(model.unet.config.layers_per_block)
    with_attention = frozenset(i for i, block in enumerate(model.unet.up_blocks) if hasattr(block, "attentions"))
    components = [("unet", model.unet), *zip(TEXT_ENCODER_NAMES, model.text_encoders, strict=False)]
    return {
        kohya_module_name(model.family, component, path, lpb, with_attention): layer
        for component, root in components
        for path, layer in _adapted_modules(root)
    }


def kohya_state_dict(model: LoadedModel) -> dict[str, torch.Tensor]:
    """The injected LoRA as kohya tensors: <name>.lora_down.weight, <name>.lora_up.weight, <name>.alpha (fp32, CPU);
    a LyCORIS network's tensors under the same names with its own suffixes (.hada_w1_a, .lokr_w1, .oft_blocks...)."""
    import torch

    state: dict[str, torch.Tensor] = {}
    if model.network is not None:
        lpb = int(model.unet.config.layers_per_block)
        with_attention = frozenset(i for i, block in enumerate(model.unet.up_blocks) if hasattr(block, "attentions"))
        for component, path, part, tensor in module_tensors(model):
            state[f"{kohya_module_name(model.family, component, path, lpb, with_attention)}.{part}"] = tensor
        return state
    for name, layer in kohya_modules(model).items():
        state[f"{name}.lora_down.weight"] = layer.lora_A[ADAPTER].weight.detach().float().cpu().contiguous()
        state[f"{name}.lora_up.weight"] = layer.lora_B[ADAPTER].weight.detach().float().cpu().contiguous()
        state[f"{name}.alpha"] = torch.tensor(float(layer.lora_alpha[ADAPTER]))
    if not state:
        raise ValueError("the model has no LoRA adapter to export (call add_lora first)")
    return state


def base_model_version(family: str, v_prediction: bool) -> str:
    """kohya's ss_base_model_version: sd_v1, sd_v1_v, sd_v2, sd_v2_v or sdxl_base_v1-0."""
    if family == "sdxl":
        return SDXL_VERSION
    return ("sd_v1" if family == "sd15" else "sd_v2") + ("_v" if v_prediction else "")


def modelspec_architecture(family: str, v_prediction: bool) -> str:
    if family == "sdxl":
        return "stable-diffusion-xl-v1-base/lora"
    if family == "sd2":
        return "stable-diffusion-v2-768-v/lora" if v_prediction else "stable-diffusion-v2-512/lora"
    return "stable-diffusion-v1/lora"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def build_metadata(
    *,
    config: TrainConfig,
    model: LoadedModel,
    dataset: dict[str, Any],
    epoch: int,
    steps: int,
    training_started_at: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """kohya `ss_*` + ModelSpec `modelspec.*` metadata for a saved LoRA; every value a string.

    `dataset` keys read (all optional): "tag_frequency" {dir: {tag: count}}, "dataset_dirs" and
    "reg_dataset_dirs" {dir: {"n_repeats": int, "img_count": int}}, "num_train_images" (images × repeats),
    "num_reg_images" (regularization images × their folder's repeats, as kohya counts them),
    "num_batches_per_epoch", "max_train_steps", "bucket_info" (JSON-able), "trigger" (str | None),
    "session_id". `extra` overrides or adds keys last (e.g. the resolved "ss_mixed_precision", or
    "ss_gradient_checkpointing" after an out-of-memory fallback); non-string values are JSON-encoded.
    """
    v_pred = model.prediction_type == "v_prediction"
    width, height = config.resolution
    trigger = dataset.get("trigger")
    optimizer = optimizers.optimizer(config.optimizer_type).class_path  # kohya: the class's module.name
    if config.optimizer_args:
        optimizer += "(" + ",".join(config.optimizer_args) + ")"
    te_lrs = config.text_encoder_lrs(len(TE_PREFIXES[model.family]))
    te_lr: float | list[float] = te_lrs[0] if len(set(te_lrs)) == 1 else te_lrs
    meta: dict[str, Any] = {
        "ss_session_id": dataset.get("session_id") or str(uuid.uuid4().int % 2**31),
        "ss_training_started_at": training_started_at,
        "ss_output_name": config.output_name,
        "ss_learning_rate": config.learning_rate,
        "ss_unet_lr": config.effective_unet_lr,
        "ss_text_encoder_lr": te_lr,
        "ss_num_train_images": dataset.get("num_train_images", 0),
        "ss_num_reg_images": dataset.get("num_reg_images", 0),
        "ss_num_batches_per_epoch": dataset.get("num_batches_per_epoch", ""),
        "ss_num_epochs": config.epochs,
        "ss_max_train_steps": dataset.get("max_train_steps", config.max_train_steps or ""),
        "ss_gradient_checkpointing": config.gradient_checkpointing,
        "ss_gradient_accumulation_steps": config.gradient_accumulation_steps,
        "ss_lr_warmup_steps": config.lr_warmup_steps,
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_network_module": config.network_module,
        "ss_network_dim": config.network_dim,
        "ss_network_alpha": float(config.network_alpha),
        "ss_network_dropout": config.network_dropout,
        "ss_scale_weight_norms": config.scale_weight_norms,
        # only what shaped the trained network (kohya writes the parsed network_args here)
        "ss_network_args": _json(config.network_metadata()),
        "ss_network_train_unet_only": not config.trains_text_encoder,
        "ss_mixed_precision": config.mixed_precision,
        "ss_full_fp16": False,
        "ss_v2": model.family == "sd2",
        "ss_base_model_version": base_model_version(model.family, v_pred),
        "ss_clip_skip": config.clip_skip,
        "ss_max_token_length": config.max_token_length,
        "ss_cache_latents": config.cache_latents,
        "ss_seed": config.seed,
        "ss_lowram": False,
        "ss_noise_offset": config.noise_offset,
        "ss_noise_offset_random_strength": config.noise_offset_random_strength,
        "ss_multires_noise_iterations": config.multires_noise_iterations,
        "ss_multires_noise_discount": config.multires_noise_discount,
        "ss_adaptive_noise_scale": config.adaptive_noise_scale,
        "ss_ip_noise_gamma": config.ip_noise_gamma,
        "ss_ip_noise_gamma_random_strength": config.ip_noise_gamma_random_strength,
        "ss_min_snr_gamma": config.min_snr_gamma,
        "ss_debiased_estimation": config.debiased_estimation_loss,
        "ss_loss_type": config.loss_type,
        "ss_huber_schedule": config.huber_schedule,
        "ss_huber_c": config.huber_c,
        "ss_huber_scale": config.huber_scale,
        "ss_zero_terminal_snr": False,
        "ss_max_grad_norm": config.max_grad_norm,
        "ss_caption_dropout_rate": config.caption_dropout_rate,
        "ss_optimizer": optimizer,
        "ss_batch_size_per_device": config.batch_size,
        "ss_total_batch_size": config.batch_size * config.gradient_accumulation_steps,
        "ss_resolution": f"({width}, {height})",
        "ss_enable_bucket": config.enable_bucket,
        "ss_min_bucket_reso": config.min_bucket_reso,
        "ss_max_bucket_reso": config.max_bucket_reso,
        "ss_bucket_no_upscale": config.bucket_no_upscale,
        "ss_keep_tokens": config.keep_tokens,
        "ss_shuffle_caption": config.shuffle_caption,
        "ss_flip_aug": config.flip_aug,
        "ss_color_aug": False,
        "ss_random_crop": False,
        "ss_caption_extension": config.caption_extension,
        "ss_tag_frequency": _json(dataset.get("tag_frequency", {})),
        "ss_dataset_dirs": _json(dataset.get("dataset_dirs", {})),
        "ss_reg_dataset_dirs": _json(dataset.get("reg_dataset_dirs", {})),
        "ss_prior_loss_weight": config.prior_loss_weight,
        "ss_sd_model_name": model.base_name or model.source,
        "ss_sd_model_hash": model.base_model_hash or "",
        "ss_new_sd_model_hash": model.base_sha256 or "",
        "ss_training_comment": config.training_comment or f"trained with gpurun {__version__}",
        "ss_training_finished_at": time.time(),
        "ss_steps": steps,
        "ss_epoch": epoch,
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": modelspec_architecture(model.family, v_pred),
        # kohya: SD 1.x/2.x LoRAs target diffusers module names, SDXL LoRAs Stability's sgm layout
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models"
        if model.family == "sdxl"
        else "diffusers",
        "modelspec.implementation_version": f"gpurun/{__version__}",
        "modelspec.title": config.metadata_title or config.output_name,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(training_started_at)).isoformat(),
        "modelspec.prediction_type": "v" if v_pred else "epsilon",
    }
    if "bucket_info" in dataset:
        meta["ss_bucket_info"] = _json(dataset["bucket_info"])
    if config.vae:
        meta["ss_vae_name"] = Path(config.vae).name
    if trigger:
        meta["modelspec.trigger_phrase"] = trigger
    for field in ("author", "description", "license", "tags"):
        value = getattr(config, f"metadata_{field}")
        if value:
            meta[f"modelspec.{field}"] = value
    if config.clip_skip:
        meta["modelspec.encoder_layer"] = config.clip_skip
    meta.update(extra or {})
    return {
        k: v if isinstance(v, str) else (_json(v) if isinstance(v, (dict, list)) else str(v)) for k, v in meta.items()
    }


def _dtype(precision: Precision):
    import torch

    try:
        return {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}[precision]
    except KeyError:
        raise ValueError(f"save precision must be fp16, bf16 or float, got {precision!r}") from None


def addnet_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """kohya's sshs_model_hash / sshs_legacy_hash: hashes of the file serialised with only the ss_* metadata
    (sha256 of everything after the header; legacy: first 8 hex of sha256 of 64 KiB at offset 1 MiB)."""
    from safetensors.torch import save

    data = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    buf = io.BytesIO(data)
    header_len = int.from_bytes(buf.read(8), "little")
    model_hash = hashlib.sha256(data[8 + header_len :]).hexdigest()
    legacy_hash = hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    return model_hash, legacy_hash


def save_lora(
    model: LoadedModel, path: Path, *, metadata: dict[str, str], precision: Precision = "fp16"
) -> tuple[str, int]:
    """Write the kohya LoRA atomically (temp file + os.replace); returns (sha256 of the file, size in bytes)."""
    from safetensors.torch import save_file

    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata values must be strings: {bad[:3]}")
    dtype = _dtype(precision)
    tensors = {k: v.to(dtype).contiguous() for k, v in kohya_state_dict(model).items()}
    meta = dict(metadata)
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = addnet_hashes(tensors, meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return file_sha256(path)


def file_sha256(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a written file, for checkpoint and sample events."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest(), Path(path).stat().st_size
