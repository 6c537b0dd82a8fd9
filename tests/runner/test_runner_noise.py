"""kohya's noise, timestep and loss options with its arithmetic (runner.noise), and Adafactor as kohya builds it
(runner.optim): each checked against the formula from sd-scripts, not against our own output."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from gpurun.trainconfig import TrainConfig

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")


def config(**values: Any) -> TrainConfig:
    return TrainConfig(**values)


def scheduler() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)


def test_default_noise_draws_exactly_what_it_drew_before() -> None:
    # a run resumed across this change must draw the same noise: plain N(0,1), then the offset draw
    from gpurun.runner.noise import sample_noise

    latents = torch.randn(2, 4, 8, 8)
    got = sample_noise(latents, config(noise_offset=0.1), torch.Generator().manual_seed(3), random.Random(0))
    gen = torch.Generator().manual_seed(3)
    want = torch.randn(latents.shape, generator=gen)
    want += 0.1 * torch.randn((2, 4, 1, 1), generator=gen)
    assert torch.equal(got, want)


def test_adaptive_noise_scale_and_random_strength() -> None:
    from gpurun.runner.noise import sample_noise

    latents = torch.randn(2, 4, 8, 8) + torch.tensor([0.5, -2.0, 0.0, 1.0]).view(1, 4, 1, 1)
    cfg = config(noise_offset=0.1, adaptive_noise_scale=0.05, noise_offset_random_strength=True)
    got = sample_noise(latents, cfg, torch.Generator().manual_seed(4), random.Random(0))
    gen = torch.Generator().manual_seed(4)
    noise = torch.randn(latents.shape, generator=gen)
    offset = torch.rand(1, generator=gen) * 0.1  # kohya: torch.rand(1) * noise_offset
    offset = torch.clamp(offset + 0.05 * latents.mean(dim=(2, 3), keepdim=True).abs(), min=0.0)
    want = noise + offset * torch.randn((2, 4, 1, 1), generator=gen)
    assert torch.allclose(got, want)


def test_multires_noise_is_kohyas_pyramid() -> None:
    from gpurun.runner.noise import sample_noise

    latents = torch.zeros(2, 4, 16, 16)
    cfg = config(multires_noise_iterations=3, multires_noise_discount=0.3)
    got = sample_noise(latents, cfg, torch.Generator().manual_seed(5), random.Random(9))
    gen, rng = torch.Generator().manual_seed(5), random.Random(9)
    noise = torch.randn(latents.shape, generator=gen)
    up = torch.nn.Upsample(size=(16, 16), mode="bilinear")
    for i in range(3):
        r = rng.random() * 2 + 2
        wn, hn = max(1, int(16 / r**i)), max(1, int(16 / r**i))
        noise = noise + up(torch.randn(2, 4, wn, hn, generator=gen)) * 0.3**i
    assert torch.allclose(got, noise / noise.std())
    assert abs(got.std().item() - 1.0) < 1e-5


def test_timestep_window() -> None:
    from gpurun.runner.noise import sample_timesteps

    gen = torch.Generator().manual_seed(0)
    drawn = sample_timesteps(4000, 1000, config(min_timestep=100, max_timestep=300), gen)
    assert drawn.min().item() >= 100 and drawn.max().item() < 300 and drawn.dtype == torch.long
    assert sample_timesteps(500, 1000, config(), gen).max().item() < 1000
    # kohya's get_timesteps: an empty window means every timestep is max_timestep
    assert torch.equal(
        sample_timesteps(3, 1000, config(min_timestep=500, max_timestep=500), gen), torch.full((3,), 500)
    )


def test_input_perturbation_keeps_the_target() -> None:
    from gpurun.runner.noise import input_perturbation

    noise = torch.randn(2, 4, 8, 8)
    assert input_perturbation(noise, config(), torch.Generator()) is noise
    got = input_perturbation(noise, config(ip_noise_gamma=0.1), torch.Generator().manual_seed(1))
    assert torch.allclose(got, noise + 0.1 * torch.randn(noise.shape, generator=torch.Generator().manual_seed(1)))


def test_huber_schedules_and_losses_follow_kohya() -> None:
    from gpurun.runner.noise import elementwise_loss, huber_threshold

    sched, t = scheduler(), torch.tensor([0, 250, 999])
    assert huber_threshold(config(), t, sched) is None  # l2
    exp = huber_threshold(
        config(loss_type="huber", huber_schedule="exponential", huber_c=0.1, huber_scale=2.0), t, sched
    )
    alpha = -math.log(0.1) / 1000
    assert exp is not None and torch.allclose(exp, torch.exp(-alpha * t.float()) * 2.0)
    snr = huber_threshold(config(loss_type="huber", huber_c=0.1), t, sched)
    ac = sched.alphas_cumprod[t]
    assert snr is not None and torch.allclose(snr, 0.9 / (1 + ((1 - ac) / ac) ** 0.5) ** 2 + 0.1)
    const = huber_threshold(config(loss_type="smooth_l1", huber_schedule="constant", huber_c=0.3), t, sched)
    assert const is not None and torch.allclose(const, torch.full((3,), 0.3))

    pred, target = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    c = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1, 1)
    huber = 2 * c * (torch.sqrt((pred - target) ** 2 + c**2) - c)
    assert torch.allclose(elementwise_loss(pred, target, "huber", c.flatten()), huber)
    assert torch.allclose(elementwise_loss(pred, target, "smooth_l1", c.flatten()), huber / c)
    assert torch.allclose(elementwise_loss(pred, target, "l1", None), (pred - target).abs())
    assert torch.allclose(elementwise_loss(pred, target, "l2", None), (pred - target) ** 2)


def test_debiased_estimation_weights() -> None:
    from gpurun.runner.noise import debiased_weights

    sched, t = scheduler(), torch.tensor([0, 500, 999])
    ac = sched.alphas_cumprod[t]
    snr = torch.clamp(ac / (1 - ac), max=1000)
    assert torch.allclose(debiased_weights(sched.alphas_cumprod, t, False), 1 / torch.sqrt(snr))
    assert torch.allclose(debiased_weights(sched.alphas_cumprod, t, True), 1 / (snr + 1))


def test_adafactor_as_kohya_builds_it() -> None:
    from transformers.optimization import AdafactorSchedule

    from gpurun.runner.optim import make_optimizer, schedule_for

    params = [torch.nn.Parameter(torch.randn(4, 4))]
    groups = [{"params": params, "lr": 1.0, "name": "unet"}]
    relative = make_optimizer("Adafactor", groups, [], "cpu")
    assert relative.defaults["relative_step"] and relative.param_groups[0]["lr"] is None
    cfg = config(optimizer_type="adafactor", lr_scheduler="constant_with_warmup", lr_warmup_steps=5)
    schedule = schedule_for(cfg, 100)
    assert (schedule.name, schedule.warmup, schedule.initial_lr) == ("adafactor", 0, 1e-4)  # kohya swaps it in
    lr_scheduler = schedule.attach(relative)
    assert isinstance(lr_scheduler, AdafactorSchedule)
    params[0].grad = torch.randn(4, 4)
    relative.step()
    lr_scheduler.step()
    # relative step: min(1e-2, 1/sqrt(step)) times the parameter's RMS (scale_parameter, kohya's default)
    rms = max(1e-3, float(params[0].detach().pow(2).mean().sqrt()))
    assert relative.param_groups[0]["lr"] == pytest.approx(1e-2 * rms, rel=0.05)

    fixed = make_optimizer(
        "Adafactor", [{"params": params, "lr": 3e-4}], ["relative_step=False", "scale_parameter=False"], "cpu"
    )
    assert not fixed.defaults["relative_step"] and fixed.param_groups[0]["lr"] == 3e-4
    fixed_cfg = config(optimizer_type="Adafactor", optimizer_args=["relative_step=False"], lr_warmup_steps=0.1)
    assert schedule_for(fixed_cfg, 100).name == "constant" and schedule_for(fixed_cfg, 100).warmup == 10
    assert config(
        optimizer_type="Adafactor", optimizer_args=["relative_step=False", "warmup_init=True"]
    ).adafactor_relative_step


def test_per_encoder_learning_rates_become_groups() -> None:
    from gpurun.runner.lora import LoraParams

    unet, te1, te2 = (
        [torch.nn.Parameter(torch.zeros(1))],
        [torch.nn.Parameter(torch.zeros(1))],
        [torch.nn.Parameter(torch.zeros(1))],
    )
    lora = LoraParams(unet=unet, text_encoders=[te1, te2])
    groups = lora.param_groups(1e-4, [5e-5, 1e-5])
    assert [(g["name"], g["lr"]) for g in groups] == [("unet", 1e-4), ("text_encoder", 5e-5), ("text_encoder_2", 1e-5)]
    assert [g["name"] for g in lora.param_groups(1e-4, [5e-5, 0.0])] == ["unet", "text_encoder"]
    assert [g["lr"] for g in lora.param_groups(1e-4, 2e-5)] == [1e-4, 2e-5, 2e-5]
