"""diffusers → original (LDM / sgm) single-file layout: the exact inverse of diffusers' single_file_utils loaders.

diffusers ships only the other direction (`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`,
`convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`); the tests need checkpoints like the ones users
download (`v1-5-pruned.safetensors`, `sd_xl_base_1.0.safetensors`), so this writes them. Generalised to any
number of levels; layers_per_block comes from the UNet config.
"""

from __future__ import annotations

from typing import Any

_RESNET = {  # diffusers UNet resnet child → LDM name
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _split(key: str, prefix: str) -> list[str] | None:
    return key[len(prefix) :].split(".") if key.startswith(prefix) else None


def unet_to_original(state: dict[str, Any], config: Any) -> dict[str, Any]:
    """UNet2DConditionModel state dict → `model.diffusion_model.*` (input_blocks / middle_block / output_blocks)."""
    per_level = config["layers_per_block"] + 1
    up_has_attention = ["CrossAttn" in t for t in config["up_block_types"]]
    out: dict[str, Any] = {}
    for key, value in state.items():
        head, _, leaf = key.rpartition(".")
        parts = head.split(".")
        if head in _UNET_TOP:
            ldm = _UNET_TOP[head]
        elif parts[0] in ("down_blocks", "up_blocks"):
            level, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            if parts[0] == "down_blocks":
                if kind == "downsamplers":  # down_blocks.i.downsamplers.0.conv → input_blocks.{3(i+1)}.0.op
                    ldm = f"input_blocks.{per_level * (level + 1)}.0.op"
                else:
                    block = per_level * level + index + 1
                    ldm = f"input_blocks.{block}.{0 if kind == 'resnets' else 1}"
            elif kind == "upsamplers":  # after the block's last resnet (and attention, if any)
                slot = 2 if up_has_attention[level] else 1
                ldm = f"output_blocks.{per_level * level + per_level - 1}.{slot}.conv"
            else:
                ldm = f"output_blocks.{per_level * level + index}.{0 if kind == 'resnets' else 1}"
            if kind == "resnets":
                rest = [_RESNET.get(rest[0], rest[0]), *rest[1:]]
            elif kind in ("downsamplers", "upsamplers"):
                rest = rest[1:]  # drop the ".conv" already folded into the target name
            ldm = ".".join([ldm, *rest])
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), parts[3:]
            if kind == "resnets":
                ldm = ".".join([f"middle_block.{0 if index == 0 else 2}", _RESNET.get(rest[0], rest[0]), *rest[1:]])
            else:
                ldm = ".".join(["middle_block.1", *rest])
        else:
            raise ValueError(f"no original-layout name for UNet key {key!r}")
        out[f"model.diffusion_model.{ldm}.{leaf}"] = value
    return out


def vae_to_original(state: dict[str, Any], config: Any) -> dict[str, Any]:
    """AutoencoderKL state dict → `first_stage_model.*` (encoder.down.i.block.j, decoder.up.{reversed}...)."""
    levels = len(config["block_out_channels"])
    out: dict[str, Any] = {}
    for key, value in state.items():
        parts = key.split(".")
        side = parts[0]
        if side in ("encoder", "decoder") and parts[1] in ("down_blocks", "up_blocks"):
            level, kind, rest = int(parts[2]), parts[3], parts[4:]
            name = "down" if side == "encoder" else "up"
            ldm_level = level if side == "encoder" else levels - 1 - level
            if kind == "resnets":
                rest = ["block", rest[0], *rest[1:]]
                rest = [r.replace("conv_shortcut", "nin_shortcut") for r in rest]
            else:  # downsamplers.0.conv / upsamplers.0.conv
                rest = ["downsample" if side == "encoder" else "upsample", *rest[1:]]
            ldm = ".".join([side, name, str(ldm_level), *rest])
        elif side in ("encoder", "decoder") and parts[1] == "mid_block":
            if parts[2] == "resnets":
                ldm = ".".join([side, "mid", f"block_{int(parts[3]) + 1}", *parts[4:]])
            else:  # attentions.0.<child>: diffusers Linear → LDM 1x1 conv
                child = ".".join(parts[4:-1])
                ldm = ".".join([side, "mid", "attn_1", _VAE_ATTN[child], parts[-1]])
                if parts[-1] == "weight" and value.ndim == 2:
                    value = value[:, :, None, None]
        else:
            ldm = key.replace("conv_norm_out", "norm_out")
        out[f"first_stage_model.{ldm}"] = value
    return out


def clip_to_original(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """CLIPTextModel (HF layout) → `<prefix>text_model.*`, re-adding the `text_model.` that transformers 5 dropped."""
    out = {}
    for key, value in state.items():
        name = key if key.startswith("text_model.") else f"text_model.{key}"
        out[prefix + name] = value
    return out


def openclip_to_original(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """CLIPTextModel(WithProjection) → OpenCLIP layout under prefix (`cond_stage_model.model.` for SD 2,
    `conditioner.embedders.1.model.` for SDXL): resblocks, fused in_proj q/k/v, transposed text_projection."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    import torch

    out: dict[str, Any] = {}
    fused: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        parts = key.split(".")
        if key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif parts[0] == "final_layer_norm":
            out[f"ln_final.{parts[1]}"] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif parts[:2] == ["encoder", "layers"]:
            layer, child, leaf = parts[2], ".".join(parts[3:-1]), parts[-1]
            if child in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                fused.setdefault(f"{layer}.{leaf}", {})[child[-6]] = value
                continue
            out[f"transformer.resblocks.{layer}.{_OPENCLIP_LAYER[child]}.{leaf}"] = value
        else:
            raise ValueError(f"no OpenCLIP name for text-encoder key {key!r}")
    for layer_leaf, qkv in fused.items():
        layer, leaf = layer_leaf.split(".")
        name = "in_proj_weight" if leaf == "weight" else "in_proj_bias"
        out[f"transformer.resblocks.{layer}.attn.{name}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return {prefix + k: v for k, v in out.items()}


def pipeline_to_original_state_dict(pipe: Any) -> dict[str, Any]:
    """The whole pipeline as one original-layout state dict (SD 1.x, SD 2.x or SDXL base)."""
    state = unet_to_original(pipe.unet.state_dict(), pipe.unet.config)
    state.update(vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    te = pipe.text_encoder
    if getattr(pipe, "text_encoder_2", None) is not None:
        state.update(clip_to_original(te.state_dict(), "conditioner.embedders.0.transformer."))
        state.update(openclip_to_original(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    elif te.config.hidden_act == "gelu":  # OpenCLIP ViT-H (SD 2.x); CLIP ViT-L uses quick_gelu
        state.update(openclip_to_original(te.state_dict(), "cond_stage_model.model."))
    else:
        state.update(clip_to_original(te.state_dict(), "cond_stage_model.transformer."))
    return state
