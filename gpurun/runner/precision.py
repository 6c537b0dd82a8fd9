"""Which device and dtypes a run trains in: bf16 where the GPU has it, else fp16 with gradient scaling; CPU fp32."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Precision:
    device: str
    weight_dtype: Any
    label: str
    scaler: Any = None
    notes: list[str] = field(default_factory=list)


def choose_precision(mixed_precision: str) -> Precision:
    """bf16 where the GPU supports it, else fp16 (with gradient scaling); CPU trains in fp32."""
    import torch

    if not torch.cuda.is_available():
        notes = (
            [] if mixed_precision == "no" else [f"CPU: training in fp32 (mixed_precision={mixed_precision} ignored)"]
        )
        return Precision("cpu", torch.float32, "float32", notes=notes)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if mixed_precision == "no":
        return Precision("cuda", torch.float32, "float32 (TF32 matmuls)")
    bf16_ok = torch.cuda.is_bf16_supported()
    if mixed_precision == "bf16" and not bf16_ok:
        mixed_precision = "fp16"
    if mixed_precision == "bf16" or (mixed_precision == "auto" and bf16_ok):
        return Precision("cuda", torch.bfloat16, "bfloat16")
    return Precision("cuda", torch.float16, "float16 (fp32 LoRA weights, gradient scaling)", torch.amp.GradScaler())


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)
