"""Starting from a kohya LoRA file (network_weights): its lora_down/lora_up weights copied into the injected
adapters by kohya module name, after the same checks the client ran (gpurun.lorainit), against the real model.

Modules the file lacks keep their fresh initialisation (kohya's `load_state_dict(strict=False)`); file modules the
model has no adapter for are refused by name, where kohya would drop them silently.
"""

from __future__ import annotations

from pathlib import Path

from gpurun.errors import ConfigError
from gpurun.lorainit import check_family, read_lora_weights
from gpurun.runner.export import kohya_modules
from gpurun.runner.lora import ADAPTER
from gpurun.runner.model.loaded import LoadedModel


def load_network_weights(model: LoadedModel, path: Path) -> dict[str, int]:
    """Copy the file's weights into the model's LoRA adapters; returns how many modules came from the file and
    how many start fresh. Raises ConfigError naming the file when it does not fit the model."""
    import torch
    from safetensors.torch import load_file

    weights = read_lora_weights(path)
    check_family(weights, model.family)
    where = f"network_weights {path}"
    modules = kohya_modules(model)
    strangers = sorted(weights.modules - modules.keys())
    if strangers:
        raise ConfigError(
            f"{len(strangers)} module(s) of the file are not trained in this run, e.g. {strangers[0]}",
            where=where,
            hint="train the same parts (text encoder, LoCon conv_dim) as the file, or set dim_from_weights = true",
        )
    tensors = load_file(str(path))
    with torch.no_grad():
        for name in sorted(weights.modules):
            layer = modules[name]
            for part, target in (
                ("lora_down", layer.lora_A[ADAPTER].weight),
                ("lora_up", layer.lora_B[ADAPTER].weight),
            ):
                value = tensors[f"{name}.{part}.weight"]
                if tuple(value.shape) != tuple(target.shape):
                    raise ConfigError(
                        f"{name}.{part} has shape {list(value.shape)}, this model's {list(target.shape)}",
                        where=where,
                        hint="continue from a LoRA trained on this base model",
                    )
                target.copy_(value.to(device=target.device, dtype=target.dtype))
    return {"modules_from_file": len(weights.modules), "modules_fresh": len(modules) - len(weights.modules)}
