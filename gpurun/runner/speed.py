"""How fast the training step runs: the step's speed switches, and the device tuning that goes with them.

`StepSpeed()` is what the runner trains with; `REFERENCE` is the step as it was before issue 10 (kept so a test and
the step benchmark can compare the two: results equal within tolerance, speed measured side by side). None of the
switches changes what is computed, only where and how often:

- device_data: the latent cache lives on the training device and noise and timesteps are drawn there, so nothing is
  uploaded per step. On CPU the device generator *is* a CPU generator, so the draws are bit-identical to the
  reference. On CUDA they come from the CUDA generator (Philox), so a CUDA run draws different (equally random)
  noise than the reference path would; a run and its resume still agree, as the generator state is saved.
- defer_loss_sync: the loss stays on the device and is read when an event is due (one sync per event, not a
  `float(loss)` per step that stalls the GPU queue while the CPU prepares the next step).
- step_caches: min-SNR's table, SDXL's time ids and tokenized captions are made once (gpurun.runner.stepcache).
- lora_input_cast: peft casts every LoRA input to the LoRA weights' fp32 and autocast casts it straight back to
  bf16/fp16: two extra kernels per LoRA layer and pass. Off, the values are the same (autocast computes the LoRA
  matmuls in the autocast dtype either way; bf16→fp32→bf16 is exact); outside autocast (the sample grid) the
  cast is switched back on, as a bf16 input would otherwise meet fp32 weights.
- cuda_tuning: channels_last UNet and cudnn.benchmark, on CUDA only (on CPU channels_last only costs copies).
- compile: torch.compile the UNet in place (off by default: minutes of compiling only pay off on long runs).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from gpurun.runner.data import TrainImage
    from gpurun.runner.model.loaded import LoadedModel


@dataclass(frozen=True)
class StepSpeed:
    device_data: bool = True
    defer_loss_sync: bool = True
    step_caches: bool = True
    lora_input_cast: bool = False
    cuda_tuning: bool = True
    compile: bool = False


#: the step before issue 10's speed work, for equality tests and before/after benchmarks
REFERENCE = StepSpeed(
    device_data=False, defer_loss_sync=False, step_caches=False, lora_input_cast=True, cuda_tuning=False
)


def step_generator(seed: int, device: Any, speed: StepSpeed) -> torch.Generator:
    """The generator noise and timesteps are drawn from: on the training device, or on the CPU (reference)."""
    import torch

    where = torch.device(device) if speed.device_data else torch.device("cpu")
    return torch.Generator(device=where).manual_seed(seed)


def move_latents(images: Sequence[TrainImage], device: Any) -> None:
    """Put the cached latents on the training device once, instead of uploading each batch every step."""
    for image in images:
        if image.latent is not None:
            image.latent = image.latent.to(device)
        if image.flipped is not None:
            image.flipped = image.flipped.to(device)


def lora_layers(model: LoadedModel) -> list[Any]:
    """Every peft LoRA layer in the UNet and text encoders."""
    from peft.tuners.lora import LoraLayer

    return [m for root in (model.unet, *model.text_encoders) for m in root.modules() if isinstance(m, LoraLayer)]


def set_lora_input_cast(model: LoadedModel, enabled: bool) -> None:
    """peft's per-layer switch for casting LoRA inputs to the LoRA weights' dtype."""
    for layer in lora_layers(model):
        layer.cast_input_dtype_enabled = enabled


@contextmanager
def lora_input_cast_on(model: LoadedModel) -> Iterator[None]:
    """peft's input cast switched on for a forward pass outside autocast (the sample grid), restored afterwards."""
    layers = lora_layers(model)
    before = [getattr(layer, "cast_input_dtype_enabled", True) for layer in layers]
    for layer in layers:
        layer.cast_input_dtype_enabled = True
    try:
        yield
    finally:
        for layer, flag in zip(layers, before, strict=True):
            layer.cast_input_dtype_enabled = flag


def tune_device(model: LoadedModel, speed: StepSpeed) -> list[str]:
    """CUDA-only tuning of the base model, before LoRA is injected: the LoRA weights are then made in the default
    layout, as their saved optimizer state is (a channels_last 3x3 LoRA kernel would not match the contiguous Adam
    moments a resumed run loads, and fused Adam requires equal strides). Returns notes for the start event."""
    import torch

    if model.device.type != "cuda" or not speed.cuda_tuning:
        return []
    torch.backends.cudnn.benchmark = True  # one search per bucket shape, then the fastest kernels
    model.unet.to(memory_format=torch.channels_last)
    return ["CUDA: channels_last UNet, cudnn.benchmark"]


def tune_for_training(model: LoadedModel, speed: StepSpeed) -> list[str]:
    """The switches that act on the injected LoRA: peft's input cast, torch.compile. Returns notes."""
    notes: list[str] = []
    if not speed.lora_input_cast:
        set_lora_input_cast(model, False)
    if speed.compile:
        model.unet.compile()  # in place: the module, its parameters and the peft adapter stay what export reads
        notes.append("UNet compiled with torch.compile (the first steps of each bucket shape are slow)")
    return notes
