"""LoRA on kohya's default targets, injected with peft: which modules, how initialised, what is trained, and the
state that a resumed run restores.

Targets (kohya `networks/lora.py`): every nn.Linear and 1x1 nn.Conv2d inside the UNet's Transformer2DModel blocks,
and every nn.Linear inside the CLIP text encoders' attention and MLP blocks. That is 192 UNet + 72 text-encoder
modules for SD 1.5, 192 + 138 for SD 2.x, and 722 + 72 + 192 for SDXL. Initialisation matches kohya: lora_down
(peft's lora_A) kaiming-uniform with a=sqrt(5), lora_up (lora_B) zeros, so training starts from the base model.
LoRA parameters are fp32 even on an fp16/bf16 base: GradScaler refuses to unscale fp16 gradients, and fp32
master weights are what kohya keeps too.

LoCon (kohya's `conv_dim` in network_args): the targets extend to the UNet's ResnetBlock2D, Downsample2D and
Upsample2D blocks; their Linear and 1x1 convolutions get network_dim/network_alpha, their 3x3 convolutions
conv_dim/conv_alpha (peft's Conv2d LoRA is kohya's: a kxk lora_down and a 1x1 lora_up).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from gpurun.runner.model.loaded import LoadedModel

ADAPTER = "default"
UNET_TARGET_BLOCKS = ("Transformer2DModel",)
#: kohya's UNET_TARGET_REPLACE_MODULE_CONV2D_3X3, added when conv_dim is given
UNET_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_TARGET_BLOCKS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")
TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")


@dataclass
class LoraParams:
    """The trainable LoRA parameters, grouped so the UNet and text encoders can get their own learning rates."""

    unet: list[Any]
    #: one list per text encoder; empty lists when the text encoders are not trained
    text_encoders: list[list[Any]]
    #: module and parameter counts, for the start event
    counts: dict[str, int] = field(default_factory=dict)

    def all(self) -> list[Any]:
        return [*self.unet, *(p for group in self.text_encoders for p in group)]

    def param_groups(self, unet_lr: float, text_encoder_lr: float | list[float]) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the UNet, and one group per text encoder that has parameters and a positive
        lr (`text_encoder_lr` one rate for all, or one per encoder, as kohya's text_encoder_lr list)."""
        groups: list[dict[str, Any]] = [{"params": self.unet, "lr": unet_lr, "name": "unet"}]
        rates = text_encoder_lr if isinstance(text_encoder_lr, list) else [text_encoder_lr] * len(self.text_encoders)
        for name, params, lr in zip(TEXT_ENCODER_NAMES, self.text_encoders, rates, strict=False):
            if params and lr > 0:
                groups.append({"params": params, "lr": lr, "name": name})
        return groups


def _is_target_leaf(module: Any, *, any_conv: bool = False) -> bool:
    import torch

    if hasattr(module, "base_layer"):  # already wrapped by peft: judge the wrapped layer
        module = module.base_layer
    if isinstance(module, torch.nn.Linear):
        return True
    return isinstance(module, torch.nn.Conv2d) and (any_conv or tuple(module.kernel_size) == (1, 1))


def is_conv_kxk(module: Any) -> bool:
    """A convolution LoCon gives conv_dim (kernel other than 1x1)."""
    import torch

    module = getattr(module, "base_layer", module)
    return isinstance(module, torch.nn.Conv2d) and tuple(module.kernel_size) != (1, 1)


def _targets(root: Any, block_classes: tuple[str, ...], *, any_conv: bool = False) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for block_name, block in root.named_modules():
        if type(block).__name__ not in block_classes:
            continue
        for child_name, child in block.named_modules():
            # skip peft's own sub-layers (lora_A/lora_B/base_layer) when called on an injected model
            if not child_name or any(part.startswith(("lora_", "base_layer")) for part in child_name.split(".")):
                continue
            full = f"{block_name}.{child_name}" if block_name else child_name
            if full not in seen and _is_target_leaf(child, any_conv=any_conv):
                seen.add(full)
                names.append(full)
    return names


def kohya_target_names(family: str, unet: Any, text_encoders: list[Any], *, conv: bool = False) -> dict[str, list[str]]:
    """Module paths (diffusers/transformers names) of kohya's LoRA targets, per component:
    {"unet": [...], "text_encoder": [...], "text_encoder_2": [...] (SDXL)}; `conv` adds LoCon's ResNet and
    sampler modules to the UNet's."""
    out = {"unet": _targets(unet, UNET_TARGET_BLOCKS)}
    if conv:
        out["unet"] += _targets(unet, UNET_CONV_BLOCKS, any_conv=True)
    for name, encoder in zip(TEXT_ENCODER_NAMES, text_encoders, strict=False):
        out[name] = _targets(encoder, TEXT_TARGET_BLOCKS)
    return out


def add_lora(
    model: LoadedModel,
    *,
    rank: int,
    alpha: float,
    train_text_encoder: bool,
    dropout: float = 0.0,
    seed: int | None = None,
    conv_dim: int | None = None,
    conv_alpha: float = 1.0,
) -> LoraParams:
    """Inject LoRA adapters (peft adapter "default") on kohya's targets; only the LoRA weights are trainable.

    The text encoders get adapters only when they are trained (the exported file then has no lora_te keys,
    like kohya's network_train_unet_only). `seed` makes the lora_down initialisation reproducible. `conv_dim`
    (kohya's LoCon) adds the UNet's ResNet blocks and samplers, their 3x3 convolutions at conv_dim/conv_alpha.
    """
    import torch
    from peft import LoraConfig

    if rank < 1 or alpha <= 0:
        raise ValueError(f"LoRA rank must be >= 1 and alpha > 0, got rank {rank}, alpha {alpha}")
    if _has_adapter(model.unet):
        raise ValueError("the model already has a LoRA adapter")
    if conv_dim is not None and (conv_dim < 1 or conv_alpha <= 0):
        raise ValueError(f"LoCon conv_dim must be >= 1 and conv_alpha > 0, got {conv_dim}, {conv_alpha}")
    targets = kohya_target_names(model.family, model.unet, model.text_encoders, conv=conv_dim is not None)
    modules = dict(model.unet.named_modules())
    # peft matches pattern keys as regexes against the end of a module path: escape the full paths
    kxk = [re.escape(n) for n in targets["unet"] if conv_dim is not None and is_conv_kxk(modules[n])]

    def config(names: list[str], conv: bool = False) -> LoraConfig:
        return LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=dropout,
            init_lora_weights=True,
            target_modules=names,
            rank_pattern=dict.fromkeys(kxk, conv_dim) if conv else {},
            alpha_pattern=dict.fromkeys(kxk, conv_alpha) if conv else {},
        )

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model.unet.add_adapter(config(targets["unet"], conv=True), adapter_name=ADAPTER)
        if train_text_encoder:
            for name, encoder in zip(TEXT_ENCODER_NAMES, model.text_encoders, strict=False):
                encoder.add_adapter(config(targets[name]), adapter_name=ADAPTER)

    unet_params = _lora_parameters(model.unet)
    te_params = [_lora_parameters(e) if train_text_encoder else [] for e in model.text_encoders]
    for module in (model.unet, *model.text_encoders):
        module.requires_grad_(False)
    for param in [*unet_params, *(p for group in te_params for p in group)]:
        param.data = param.data.float()
        param.requires_grad_(True)

    counts = {"unet_modules": len(targets["unet"]), "unet_params": sum(p.numel() for p in unet_params)}
    if kxk:
        counts["unet_conv_modules"] = len(kxk)
    for name, group in zip(TEXT_ENCODER_NAMES, te_params, strict=False):
        counts[f"{name}_modules"] = len(targets[name]) if train_text_encoder else 0
        counts[f"{name}_params"] = sum(p.numel() for p in group)
    return LoraParams(unet=unet_params, text_encoders=te_params, counts=counts)


def _has_adapter(module: Any) -> bool:
    return ADAPTER in (getattr(module, "peft_config", None) or {})


def _lora_parameters(module: Any) -> list[Any]:
    return [p for n, p in module.named_parameters() if _is_lora_param(n)]


def _is_lora_param(name: str) -> bool:
    return (".lora_A." in name or ".lora_B." in name) and f".{ADAPTER}." in name


def _components(model: LoadedModel) -> list[tuple[str, Any]]:
    return [("unet", model.unet), *zip(TEXT_ENCODER_NAMES, model.text_encoders, strict=False)]


def lora_state(model: LoadedModel) -> dict[str, torch.Tensor]:
    """The LoRA weights (fp32, on CPU) keyed "<component>.<parameter path>", for a resumable training state."""
    return {
        f"{component}.{name}": param.detach().to("cpu", copy=True)
        for component, module in _components(model)
        for name, param in module.named_parameters()
        if _is_lora_param(name)
    }


def load_lora_state(model: LoadedModel, state: dict[str, torch.Tensor]) -> None:
    """Restore weights saved by lora_state into an injected model; the key sets must match exactly."""
    import torch

    params = {
        f"{component}.{name}": param
        for component, module in _components(model)
        for name, param in module.named_parameters()
        if _is_lora_param(name)
    }
    missing, unexpected = sorted(params.keys() - state.keys()), sorted(state.keys() - params.keys())
    if missing or unexpected:
        raise ValueError(
            f"LoRA state does not fit the model: {len(missing)} missing (e.g. {missing[:1]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:1]}); was it saved with other network_dim, "
            "text-encoder training or base model?"
        )
    with torch.no_grad():
        for key, param in params.items():
            value = state[key]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"LoRA state {key} has shape {list(value.shape)}, the model {list(param.shape)}")
            param.copy_(value.to(device=param.device, dtype=param.dtype))
