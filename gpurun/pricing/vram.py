"""VRAM feasibility and the batch size to train with on a given GPU.

Memory model (GB) = fixed + text-encoder training extra + batch × activations per image × pixel ratio, where the
fixed part holds the fp16/bf16 weights, the fp32 LoRA parameters with their gradients and 8-bit AdamW state,
and the CUDA context. Activations per image are with PyTorch SDPA (memory linear in tokens), and drop to about
30 % with gradient checkpointing. The figures are set so that the tutorial's advice holds: SD 1.5 trains at
batch 1 on 8 GB and comfortably at batch 2 on 12 GB; SDXL needs 16 GB (with checkpointing) and prefers 24;
24 GB cards take batch 4 (SD 1.5) / 2 (SDXL), an A100 40 GB 8 / 4. Reported SDXL runs agree: batch 4 on a 32 GB
RTX 5090 filling 31+ GB (kohya_ss#3296), batch 8 with checkpointing in 18 GB on an RTX 5090D (kohya_ss#3096).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpurun.pricing.throughput import pixel_ratio


@dataclass(frozen=True, slots=True)
class FamilyMemory:
    fixed_gb: float
    text_encoder_gb: float  # extra when the text encoder is trained
    activations_gb: float  # per image at native resolution, no checkpointing
    activations_checkpointed_gb: float
    #: largest batch gpurun recommends (beyond it the LoRA recipe, not the GPU, is the limit)
    max_batch: int


MEMORY: dict[str, FamilyMemory] = {
    # UNet 0.86 B + CLIP-L 0.12 B in half precision ≈ 2 GB, LoRA 19 M params fp32 + grads + 8-bit state, context
    "sd15": FamilyMemory(3.4, 0.3, 3.0, 0.9, 8),
    # SD 1.5's UNet at 768 px plus the larger OpenCLIP-H text tower
    "sd2": FamilyMemory(4.0, 0.7, 6.5, 1.9, 4),
    # UNet 2.57 B + CLIP-L + bigG ≈ 6.7 GB half precision, fp32 VAE, LoRA 114 M params, context
    "sdxl": FamilyMemory(8.5, 1.2, 5.2, 1.2, 4),
}

#: batch sizes gpurun picks from (the powers of two kohya users train with)
CANDIDATE_BATCHES = (8, 4, 2, 1)


def vram_needed_gb(
    family: str, resolution: int, batch_size: int, *, gradient_checkpointing: bool, train_text_encoder: bool
) -> float:
    """Estimated peak VRAM in GB for one training configuration."""
    mem = MEMORY[family]
    per_image = mem.activations_checkpointed_gb if gradient_checkpointing else mem.activations_gb
    extra = mem.text_encoder_gb if train_text_encoder else 0.0
    return mem.fixed_gb + extra + batch_size * per_image * pixel_ratio(family, resolution)


@dataclass(frozen=True, slots=True)
class BatchChoice:
    """The configuration to train with on one GPU, or why none fits."""

    batch_size: int
    gradient_checkpointing: bool
    vram_needed_gb: float
    fits: bool
    #: what the recommendation changed, e.g. "gradient checkpointing on to fit 16 GB"; "" when nothing
    note: str = ""


def choose_batch(
    family: str,
    resolution: int,
    vram_gb: float,
    *,
    batch_size: int | None,
    gradient_checkpointing: bool,
    train_text_encoder: bool,
    headroom: float,
) -> BatchChoice:
    """The batch size (and checkpointing) to train with on a GPU with `vram_gb`, using `headroom` of it.

    A fixed `batch_size` (from the user's config) is kept and only checked. Otherwise the largest candidate batch
    that fits is chosen without checkpointing; only when not even batch 1 fits is checkpointing turned on (it
    costs ~40 % more compute), and the choice says so.
    """
    usable = vram_gb * headroom

    def need(batch: int, gc: bool) -> float:
        return vram_needed_gb(
            family, resolution, batch, gradient_checkpointing=gc, train_text_encoder=train_text_encoder
        )

    if batch_size is not None:
        needed = need(batch_size, gradient_checkpointing)
        return BatchChoice(batch_size, gradient_checkpointing, needed, needed <= usable)
    cap = MEMORY[family].max_batch
    modes = (True,) if gradient_checkpointing else (False, True)
    for gc in modes:
        for batch in CANDIDATE_BATCHES:
            if batch > cap:
                continue
            needed = need(batch, gc)
            if needed <= usable:
                note = ""
                if gc and not gradient_checkpointing:
                    note = f"gradient checkpointing turned on to fit {vram_gb:.0f} GB"
                return BatchChoice(batch, gc, needed, True, note)
    return BatchChoice(1, True, need(1, True), False)
