"""kohya LoRA files written byte by byte (no torch): chosen module names, ranks and alphas, zero weights."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

UNET_LINEAR = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
UNET_CONV3 = "lora_unet_mid_block_resnets_0_conv1"
TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
SDXL_TE = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"


def write_lora(path: Path, modules: dict[str, tuple[int, float | None, bool]], *, width: int = 32) -> Path:
    """`modules`: name → (rank, alpha or None for an old file without alpha, 3x3 conv or Linear)."""
    tensors: dict[str, tuple[tuple[int, ...], bytes]] = {}
    for name, (rank, alpha, conv) in modules.items():
        down = (rank, width, 3, 3) if conv else (rank, width)
        up = (width, rank, 1, 1) if conv else (width, rank)
        tensors[f"{name}.lora_down.weight"] = (down, bytes(4 * math.prod(down)))
        tensors[f"{name}.lora_up.weight"] = (up, bytes(4 * math.prod(up)))
        if alpha is not None:
            tensors[f"{name}.alpha"] = ((), struct.pack("<f", alpha))
    header, offset = {}, 0
    for key, (shape, raw) in tensors.items():
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(raw for _, raw in tensors.values()))
    return path
