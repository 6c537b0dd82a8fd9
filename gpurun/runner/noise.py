"""kohya's noise, timestep and loss options, with its arithmetic (sd-scripts library/train_util.py
`get_noise_noisy_latents_and_timesteps`, `get_huber_threshold_if_needed`, `conditional_loss`, and
library/custom_train_functions.py `apply_noise_offset`, `pyramid_noise_like`, `apply_debiased_estimation`).

Every random draw comes from the run's generator, on its device (and Python RNG for multires' scale factors, as
kohya uses `random`), so a resumed run draws the same noise.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from gpurun.trainconfig import TrainConfig

#: kohya caps the SNR at t=0 (infinite) at 1000 for debiased estimation
DEBIASED_SNR_CAP = 1000.0


def sample_noise(
    latents: torch.Tensor, config: TrainConfig, generator: torch.Generator, rng: random.Random
) -> torch.Tensor:
    """Gaussian noise shaped like `latents` (on its device), with offset noise (random strength and adaptive
    scale optional) and then multires noise, in kohya's order."""
    import torch

    shape = latents.shape
    noise = torch.randn(shape, generator=generator, device=generator.device)
    if config.noise_offset:
        offset: Any = config.noise_offset
        if config.noise_offset_random_strength:
            offset = torch.rand(1, generator=generator, device=generator.device) * config.noise_offset
        if config.adaptive_noise_scale is not None:
            # per image and channel: offset + scale * |latent mean|, never below 0
            mean = latents.detach().float().to(generator.device).mean(dim=(2, 3), keepdim=True).abs()
            offset = torch.clamp(offset + config.adaptive_noise_scale * mean, min=0.0)
        noise = noise + offset * torch.randn((shape[0], shape[1], 1, 1), generator=generator, device=generator.device)
    if config.multires_noise_iterations:
        noise = pyramid_noise(noise, config.multires_noise_iterations, config.multires_noise_discount, generator, rng)
    return noise


def pyramid_noise(
    noise: torch.Tensor, iterations: int, discount: float, generator: torch.Generator, rng: random.Random
) -> torch.Tensor:
    """kohya's pyramid_noise_like: add upsampled coarser noise, each level `discount` weaker, at a random scale
    of 2-4x per level; rescaled to unit standard deviation over the batch."""
    import torch

    b, c, w, h = noise.shape
    upsample = torch.nn.Upsample(size=(w, h), mode="bilinear")
    for i in range(iterations):
        r = rng.random() * 2 + 2
        wn, hn = max(1, int(w / (r**i))), max(1, int(h / (r**i)))
        noise = (
            noise + upsample(torch.randn((b, c, wn, hn), generator=generator, device=generator.device)) * discount**i
        )
        if wn == 1 or hn == 1:
            break
    return noise / noise.std()


def sample_timesteps(batch: int, num_train_timesteps: int, config: TrainConfig, generator: Any) -> torch.Tensor:
    """Timesteps uniform in [min_timestep, max_timestep) (kohya's defaults 0 and num_train_timesteps); a window
    of zero width gives max_timestep itself, as kohya's get_timesteps does."""
    import torch

    low = config.min_timestep or 0
    high = num_train_timesteps if config.max_timestep is None else config.max_timestep
    if low < high:
        return torch.randint(low, high, (batch,), generator=generator, device=generator.device)
    return torch.full((batch,), high, dtype=torch.long, device=generator.device)


def input_perturbation(noise: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """The noise added to the latents with ip_noise_gamma (the target stays the unperturbed noise)."""
    import torch

    if not config.ip_noise_gamma:
        return noise
    strength: Any = config.ip_noise_gamma
    if config.ip_noise_gamma_random_strength:
        strength = torch.rand(1, generator=generator, device=generator.device) * config.ip_noise_gamma
    return noise + strength * torch.randn(noise.shape, generator=generator, device=generator.device)


def huber_threshold(config: TrainConfig, timesteps: torch.Tensor, scheduler: Any) -> torch.Tensor | None:
    """Per-sample Huber c for loss_type huber / smooth_l1 on kohya's schedules (None for l1/l2)."""
    import torch

    if config.loss_type not in ("huber", "smooth_l1"):
        return None
    c = config.huber_c
    if config.huber_schedule == "exponential":
        alpha = -math.log(c) / scheduler.config.num_train_timesteps
        return torch.exp(-alpha * timesteps.float()) * config.huber_scale
    if config.huber_schedule == "snr":
        alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
        sigmas = ((1.0 - alphas) / alphas) ** 0.5
        return (1 - c) / (1 + sigmas) ** 2 + c  # kohya applies no huber_scale on this schedule
    return torch.full(timesteps.shape, c * config.huber_scale, device=timesteps.device)


def elementwise_loss(
    prediction: torch.Tensor, target: torch.Tensor, loss_type: str, huber_c: torch.Tensor | None
) -> torch.Tensor:
    """kohya's conditional_loss with reduction "none"."""
    import torch.nn.functional as F

    if loss_type == "l2":
        return F.mse_loss(prediction, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(prediction, target, reduction="none")
    if huber_c is None:
        raise ValueError(f"loss_type {loss_type} needs a Huber threshold")
    c = huber_c.view(-1, *([1] * (prediction.ndim - 1)))
    smooth = (((prediction - target) ** 2 + c**2) ** 0.5) - c
    if loss_type == "huber":
        return 2 * c * smooth
    if loss_type == "smooth_l1":
        return 2 * smooth
    raise ValueError(f"unknown loss_type {loss_type!r}")


def debiased_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, v_prediction: bool) -> torch.Tensor:
    """Debiased estimation loss weights (Yu et al. 2024, as kohya): 1/sqrt(SNR) for ε, 1/(SNR+1) for v."""
    import torch

    alpha = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = torch.clamp(alpha / (1.0 - alpha), max=DEBIASED_SNR_CAP)
    return 1.0 / (snr + 1.0) if v_prediction else 1.0 / torch.sqrt(snr)
