"""The loss of one batch, kohya's way: noise (offset, adaptive, multires: runner.noise), timesteps in the configured
window, input perturbation, epsilon or v target, l2/l1/Huber loss, min-SNR-γ and debiased weighting. Noise and
timesteps come from the run's generator (saved with the state), so a resumed run draws the same ones; where it lives
and what is cached per run is gpurun.runner.speed's business.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpurun.runner.data import TrainData, batch_latents, caption_for_step, loss_weights
from gpurun.runner.model.loaded import Conditioning, LoadedModel
from gpurun.runner.noise import (
    debiased_weights,
    elementwise_loss,
    huber_threshold,
    input_perturbation,
    sample_noise,
    sample_timesteps,
)
from gpurun.runner.speed import StepSpeed
from gpurun.runner.stepcache import StepCache

if TYPE_CHECKING:
    import torch

    from gpurun.trainconfig import TrainConfig


@dataclass
class StepContext:
    """Everything a batch's loss needs besides the batch."""

    model: LoadedModel
    data: TrainData
    config: TrainConfig
    #: the dtype of the frozen base weights; autocast runs the forward pass in it on CUDA
    weight_dtype: Any
    generator: torch.Generator
    rng: random.Random
    use_cond_cache: bool
    speed: StepSpeed = field(default_factory=StepSpeed)
    cache: StepCache = field(default_factory=StepCache)


def snr_weights(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float, v_prediction: bool
) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023): min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR+1) for v."""
    import torch

    alpha = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alpha / (1.0 - alpha)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return clipped / (snr + 1.0) if v_prediction else clipped / snr


def conditioning(ctx: StepContext, captions: Sequence[str]) -> Conditioning:
    """Cached text-encoder outputs for frozen encoders, else a (differentiable) forward through them."""
    import torch

    if ctx.use_cond_cache:
        cached = [ctx.data.cond_cache[c] for c in captions]
        hidden = torch.cat([c.hidden_states for c in cached])
        pooled = None if cached[0].pooled is None else torch.cat([c.pooled for c in cached])  # type: ignore[misc]
        return Conditioning(hidden, pooled)
    ids = ctx.cache.tokenize(ctx.model, captions) if ctx.speed.step_caches else ctx.model.tokenize(list(captions))
    with _autocast(ctx):
        return ctx.model.encode_prompt(ids, clip_skip=ctx.config.clip_skip)


def batch_loss(ctx: StepContext, indices: Sequence[int]) -> torch.Tensor:
    """The mean training loss of one batch (a scalar with a graph back to the LoRA weights)."""
    model, config = ctx.model, ctx.config
    device = model.device
    latents = batch_latents(ctx.data, indices, ctx.rng) * model.vae_scaling_factor
    batch = latents.shape[0]
    # drawn where the generator lives (the training device, or the CPU on the reference path), in a fixed order
    noise = sample_noise(latents, config, ctx.generator, ctx.rng)
    scheduler = model.noise_scheduler
    timesteps = sample_timesteps(batch, scheduler.config.num_train_timesteps, config, ctx.generator)
    added_noise = input_perturbation(noise, config, ctx.generator)
    latents, noise, timesteps = latents.to(device), noise.to(device), timesteps.to(device)
    noisy = scheduler.add_noise(latents, added_noise.to(device), timesteps)
    target = noise if model.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)

    images = [ctx.data.images[i] for i in indices]
    captions = [caption_for_step(image.caption, image.rules, ctx.rng) for image in images]
    cond = conditioning(ctx, captions)
    if ctx.speed.step_caches:
        added = ctx.cache.added_cond(model, ctx.data, indices, cond)
    else:
        added = model.unet_added_cond(
            cond,
            [image.original_size_hw for image in images],
            [image.crop_top_left for image in images],
            [image.target_size_hw for image in images],
        )
    with _autocast(ctx):
        prediction = model.unet(
            noisy.to(ctx.weight_dtype),
            timesteps,
            encoder_hidden_states=cond.hidden_states.to(ctx.weight_dtype),
            added_cond_kwargs=added,
        ).sample
    huber_c = huber_threshold(config, timesteps, scheduler)
    loss = elementwise_loss(prediction.float(), target.float(), config.loss_type, huber_c).mean(dim=(1, 2, 3))
    v_prediction = model.prediction_type == "v_prediction"
    if any(image.is_reg for image in images):
        # kohya: per-sample loss weights (prior_loss_weight for regularization images) before min-SNR/debiasing
        weights = loss_weights(ctx.data, indices, config.prior_loss_weight)
        loss = loss * loss.new_tensor(weights)
    if config.min_snr_gamma:
        weigh = ctx.cache.snr_weights if ctx.speed.step_caches else snr_weights
        loss = loss * weigh(scheduler.alphas_cumprod, timesteps, config.min_snr_gamma, v_prediction)
    if config.debiased_estimation_loss:
        loss = loss * debiased_weights(scheduler.alphas_cumprod, timesteps, v_prediction)
    return loss.mean()


def _autocast(ctx: StepContext) -> Any:
    import torch

    if ctx.model.device.type == "cuda" and ctx.weight_dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=ctx.weight_dtype)
    return nullcontext()
