"""kohya's `scale_weight_norms` (max-norm regularization, networks/lora.py `apply_max_norm_regularization`) and
`network_dropout` (dropout on each LoRA's rank activations, LoRAModule.forward), on the peft-injected LoRA.

Max-norm: after each step, every module's delta W = up @ down x alpha/rank (for a 3x3 LoCon module the composed
3x3 kernel) whose Frobenius norm exceeds the limit has both factors scaled by sqrt(limit/norm), so the delta's norm
becomes the limit. Dropout: kohya drops lora_down's output (not the layer input, which is what peft's lora_dropout
would drop), only while training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gpurun.runner.lora import ADAPTER

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, slots=True)
class NormReport:
    """How many modules were scaled this step, and the mean delta norm after scaling (kohya logs both)."""

    keys_scaled: int
    mean_norm: float


def adapted_layers(roots: list[Any]) -> list[Any]:
    """Every peft LoRA layer of the adapter under `roots` (UNet, text encoders)."""
    return [m for root in roots for m in root.modules() if ADAPTER in (getattr(m, "lora_A", None) or {})]


def delta_weight(down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    """kohya's updown: the weight change a module adds, in the shape of the weight it adapts."""
    import torch

    if up.shape[2:] == (1, 1) and down.shape[2:] == (1, 1):
        updown = (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3)
    elif up.dim() == 4 and (up.shape[2:] == (3, 3) or down.shape[2:] == (3, 3)):
        updown = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
    else:
        updown = up @ down
    return updown * scale


def apply_max_norm(layers: list[Any], max_norm: float) -> NormReport:
    """Scale down every LoRA whose delta norm exceeds `max_norm`, in place (kohya's arithmetic)."""
    import torch

    scaled, norms = 0, []
    with torch.no_grad():
        for layer in layers:
            down, up = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            updown = delta_weight(down.float(), up.float(), float(layer.scaling[ADAPTER]))
            # kohya clamps the norm from below at half the limit, so tiny deltas keep ratio 1
            norm = updown.norm().clamp(min=max_norm / 2)
            ratio = torch.clamp(norm, max=max_norm) / norm
            if ratio.item() != 1:
                scaled += 1
                root = ratio.sqrt().to(down.dtype)
                up.mul_(root)
                down.mul_(root)
            norms.append((updown.norm() * ratio).item())
    return NormReport(scaled, sum(norms) / len(norms) if norms else 0.0)


def add_rank_dropout(layers: list[Any], p: float) -> list[Any]:
    """kohya's network_dropout: dropout on lora_down's output while the layer trains. Returns the hook handles."""
    import torch

    def hook(module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(output, p=p, training=module.training)

    return [layer.lora_A[ADAPTER].register_forward_hook(hook) for layer in layers]
