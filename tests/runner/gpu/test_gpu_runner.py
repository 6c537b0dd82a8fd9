"""The runner on a CUDA GPU (issue 10), full-size SD 1.5 and SDXL with random weights: bf16, and fp16 with gradient
scaling; AdamW8bit; SDPA's fused kernels; a real out-of-memory the fallback survives; SIGTERM + --resume ending on
the weights of an uninterrupted run; every output file passing the format checks a CPU run passes.

Skipped without CUDA. `GPURUN_GPU_DRY=1` runs the runner-level tests on the CPU with the tiny models (see
tests/support/gpu_runs.py); the kernel-level ones need CUDA either way. Run by bench/gpu_session.sh.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from gpurun import events
from gpurun.lorafile import verify_lora_file
from tests.support.gpu_runs import (
    DRY,
    make_dataset,
    of,
    relative_difference,
    run_runner,
    run_until_sigterm,
    size_for,
    write_job,
)

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

CUDA = torch.cuda.is_available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (CUDA or DRY), reason="needs a CUDA GPU (or GPURUN_GPU_DRY=1 for a CPU dry run)"),
]
STRAIGHT_STEPS = 40
needs_cuda = pytest.mark.skipif(not CUDA, reason="measures CUDA kernels and memory")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Per family, what the runner loads: a full-size random-weight fp16 single file (built on the GPU), or the
    tiny model's name in a dry run. Written lazily, once per module."""
    root = tmp_path_factory.mktemp("checkpoints")

    class Lazy(dict):
        def __missing__(self, family: str) -> Any:
            size = size_for(family)
            if size.tiny_name:
                self[family] = size.tiny_name
            else:
                from gpurun.runner.model.fullsize import write_random_checkpoint

                self[family] = write_random_checkpoint(family, root / f"{family}.safetensors", device="cuda")
            return self[family]

    return Lazy()


def _check_run(
    rc: int, evs: list[events.Event], stderr: str, out: Path, family: str, dim: int, alpha: float
) -> events.Start:
    assert rc == 0, stderr[-3000:]
    (start,) = of(events.Start, evs)
    (done,) = of(events.Done, evs)
    losses = [e.loss for e in of(events.Step, evs)]
    assert losses and all(math.isfinite(v) for v in losses), losses
    assert done.steps == start.total_steps
    problems = verify_lora_file(out / done.final, family, network_dim=dim, network_alpha=alpha)  # type: ignore[arg-type]
    assert problems == []
    return start


@pytest.fixture(scope="module")
def sd15_straight(checkpoints: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted SD 1.5 bf16 run: 4 images x 10 repeats, batch 2, 2 epochs = 40 steps (a few seconds on an
    H200: enough for a SIGTERM to land mid-run), AdamW8bit."""
    size = size_for("sd15")
    root = tmp_path_factory.mktemp("sd15-straight")
    data = make_dataset(root / "data", 4, size.resolution, repeats=10)
    job = write_job(root, checkpoints["sd15"], data, size.resolution, optimizer_type="AdamW8bit")
    rc, evs, stderr = run_runner(job)
    return {"root": root, "data": data, "rc": rc, "events": evs, "stderr": stderr}


def test_sd15_bf16_adamw8bit_trains_and_the_file_passes_the_format_checks(sd15_straight: dict[str, Any]) -> None:
    run = sd15_straight
    start = _check_run(run["rc"], run["events"], run["stderr"], run["root"] / "out", "sd15", 32, 16)
    assert start.total_steps == STRAIGHT_STEPS and start.config["optimizer_type"] == "AdamW8bit"
    if not DRY:
        assert start.device.startswith("cuda") and start.dtype == "bfloat16"
        assert any("channels_last" in note for note in start.notes)
    assert of(events.Sample, run["events"])  # the grid rendered (outside autocast: the input cast back on)


def test_sd15_fp16_with_gradient_scaling_trains(
    checkpoints: dict[str, Any], sd15_straight: dict[str, Any], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    size = size_for("sd15")
    job = write_job(tmp_path, checkpoints["sd15"], sd15_straight["data"], size.resolution, mixed_precision="fp16")
    rc, evs, stderr = run_runner(job)
    start = _check_run(rc, evs, stderr, tmp_path / "out", "sd15", 32, 16)
    if not DRY:
        assert start.dtype.startswith("float16") and "gradient scaling" in start.dtype
    state = load_file(str(tmp_path / "out" / "state" / "lora.safetensors"))
    ups = [v for k, v in state.items() if "lora_B" in k]
    # the scaler stepped (lora_B starts at zero) and never wrote inf/nan into the weights
    assert any(float(v.abs().max()) > 0 for v in ups)
    assert all(bool(torch.isfinite(v).all()) for v in state.values())


def test_sigterm_and_resume_end_on_the_uninterrupted_weights(
    checkpoints: dict[str, Any], sd15_straight: dict[str, Any], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    assert sd15_straight["rc"] == 0, sd15_straight["stderr"][-2000:]
    size = size_for("sd15")
    job = write_job(tmp_path, checkpoints["sd15"], sd15_straight["data"], size.resolution, optimizer_type="AdamW8bit")
    rc, seen = run_until_sigterm(job, at_step=3)
    assert rc == 143
    (ckpt,) = of(events.Checkpoint, seen)
    assert 3 <= ckpt.step < STRAIGHT_STEPS
    assert verify_lora_file(tmp_path / "out" / ckpt.path, "sd15", network_dim=32, network_alpha=16) == []
    rc, resumed, stderr = run_runner(job, "--resume")
    start = _check_run(rc, resumed, stderr, tmp_path / "out", "sd15", 32, 16)
    assert start.resumed_from_step == ckpt.step and of(events.Step, resumed)[0].step == ckpt.step + 1
    straight = load_file(str(sd15_straight["root"] / "out" / "state" / "lora.safetensors"))
    cut = load_file(str(tmp_path / "out" / "state" / "lora.safetensors"))
    # the same data order, noise (the CUDA generator's state is saved) and schedule; what remains is the
    # run-to-run noise of GPU kernels (atomics in attention and convolution backward, bf16 rounding)
    tolerance = 1e-5 if DRY else 0.05
    assert relative_difference(straight, cut) <= tolerance


def test_sdxl_bf16_trains_at_1024_and_the_file_passes_the_format_checks(
    checkpoints: dict[str, Any], tmp_path: Path
) -> None:
    size = size_for("sdxl")
    data = make_dataset(tmp_path / "data", 2, size.resolution)
    job = write_job(
        tmp_path, checkpoints["sdxl"], data, size.resolution, batch_size=1, max_train_epochs=1, network_dim=8,
        network_alpha=4, optimizer_type="AdamW8bit",
    )  # fmt: skip
    rc, evs, stderr = run_runner(job)
    start = _check_run(rc, evs, stderr, tmp_path / "out", "sdxl", 8, 4)
    assert start.family == "sdxl" and start.total_steps == 2
    if not DRY:
        assert start.dtype == "bfloat16"


@needs_cuda
def test_a_real_out_of_memory_turns_on_checkpointing_or_halves_the_batch_and_the_run_finishes(
    checkpoints: dict[str, Any], sd15_straight: dict[str, Any], tmp_path: Path
) -> None:
    """SD 1.5 at 512 px, batch 16 without checkpointing needs tens of GiB of activations; under a 14 GiB cap on
    the caching allocator the first step runs out of memory for real, and the policy's changes let it finish."""
    size = size_for("sd15")
    data = make_dataset(tmp_path / "data", 16, size.resolution)
    job = write_job(tmp_path, checkpoints["sd15"], data, size.resolution, batch_size=16, max_train_epochs=2)
    total = torch.cuda.get_device_properties(0).total_memory
    rc, evs, stderr = run_runner(job, memory_fraction=min(1.0, 14 * 2**30 / total))
    _check_run(rc, evs, stderr, tmp_path / "out", "sd15", 32, 16)
    warnings = [e for e in of(events.WarningEvent, evs) if e.code == "out-of-memory"]
    assert warnings, "the cap did not cause an out-of-memory: lower it"
    assert "gradient checkpointing" in warnings[0].message


def _fullsize_unet(dtype: Any) -> Any:
    from diffusers.models.attention_processor import AttnProcessor2_0

    from gpurun.runner.model.fullsize import random_components

    parts = random_components("sd15", device="cuda", vae=False)
    unet = parts.unet.to(dtype).requires_grad_(False)
    unet.set_attn_processor(AttnProcessor2_0())
    return unet


def _unet_inputs(dtype: Any, batch: int = 2) -> tuple[Any, Any, Any]:
    g = torch.Generator(device="cuda").manual_seed(0)
    latents = torch.randn(batch, 4, 64, 64, device="cuda", generator=g, dtype=dtype)
    t = torch.randint(0, 1000, (batch,), device="cuda", generator=g)
    hidden = torch.randn(batch, 77, 768, device="cuda", generator=g, dtype=dtype)
    return latents, t, hidden


@needs_cuda
def test_attention_runs_in_sdpa_fused_kernels_not_the_math_fallback() -> None:
    from torch.profiler import ProfilerActivity, profile

    unet = _fullsize_unet(torch.bfloat16)
    latents, t, hidden = _unet_inputs(torch.bfloat16)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        unet(latents, t, encoder_hidden_states=hidden).sample.float().mean()
        torch.cuda.synchronize()
    names = {e.key for e in prof.key_averages()}
    fused = {n for n in names if "scaled_dot_product" in n and any(k in n for k in ("flash", "efficient", "cudnn"))}
    assert fused, sorted(n for n in names if "scaled_dot_product" in n)
    assert not any("_scaled_dot_product_attention_math" in n for n in names)


@needs_cuda
def test_without_peft_input_casts_the_cuda_step_is_the_same_with_fewer_casts() -> None:
    """The full-size UNet with the runner's LoRA under bf16 autocast: the same output with and without peft's
    cast of LoRA inputs to fp32, and fewer cast kernels launched."""
    from torch.profiler import ProfilerActivity, profile

    from gpurun.runner.lora import add_lora
    from gpurun.runner.model.loaded import LoadedModel
    from gpurun.runner.speed import set_lora_input_cast

    unet = _fullsize_unet(torch.bfloat16)
    model = LoadedModel(
        family="sd15", prediction_type="epsilon", detected="gpu test", unet=unet, vae=None, text_encoders=[],
        tokenizers=[], noise_scheduler=None, source="gpu test",
    )  # fmt: skip
    add_lora(model, rank=32, alpha=16, train_text_encoder=False, seed=0)
    for name, param in unet.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.01)  # a trained adapter, so the LoRA branch changes the output
    latents, t, hidden = _unet_inputs(torch.bfloat16)

    def forward(cast: bool) -> tuple[Any, int]:
        set_lora_input_cast(model, cast)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)
        with torch.no_grad(), autocast, profile(activities=[ProfilerActivity.CPU]) as prof:
            out = unet(latents, t, encoder_hidden_states=hidden).sample
        casts = sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")
        return out.float(), casts

    with_cast, casts_on = forward(True)
    without, casts_off = forward(False)
    # the same arithmetic (bf16 -> fp32 -> bf16 is exact); a tolerance only for kernel choice between two calls
    assert float((with_cast - without).abs().max()) <= 1e-3 * float(with_cast.abs().max())
    assert casts_off < casts_on
