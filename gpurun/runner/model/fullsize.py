"""Full-size SD 1.5 / SDXL architectures with random weights, built from the bundled configs (nothing downloaded):
for GPU tests, benchmarks and loader measurements, as components or as an original-layout single-file checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpurun.runner.model.bundled import bundled_config_name, materialize
from gpurun.runner.model.ldm_layout import pipeline_to_original_state_dict


@dataclass
class RandomComponents:
    """What pipeline_to_original_state_dict reads: a UNet, a VAE and one or two text encoders."""

    unet: Any
    vae: Any
    text_encoder: Any
    text_encoder_2: Any = None


def random_components(family: str, *, device: Any = "cpu", seed: int = 0, vae: bool = True) -> RandomComponents:
    """The family's full-size modules in fp32 with seeded random weights, created on `device` (on CUDA the random
    init takes seconds where a CPU takes a minute)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = materialize(bundled_config_name(family, v_prediction=False))
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        auto = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")) if vae else None
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        text_encoder_2 = (
            CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
            if family == "sdxl"
            else None
        )
    return RandomComponents(unet, auto, text_encoder, text_encoder_2)


def write_random_checkpoint(family: str, path: Path, *, dtype: Any = None, device: Any = "cpu", seed: int = 0) -> Path:
    """An original-layout single-file checkpoint (as users download them) of random weights, fp16 by default;
    load_base_model finds the bundled config for it. Written atomically."""
    import torch
    from safetensors.torch import save_file

    parts = random_components(family, device=device, seed=seed)
    state = pipeline_to_original_state_dict(parts)
    tensors = {k: v.detach().to(dtype or torch.float16).contiguous().cpu() for k, v in state.items()}
    del parts, state
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)
    return path
