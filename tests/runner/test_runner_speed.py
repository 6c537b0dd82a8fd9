"""The fast training step (issue 10) against the step as it was (speed.REFERENCE): the same LoRA weights and losses
on CPU with fixed seeds, each per-run cache equal to the per-step code it replaces, one read-back per event for the
losses, and peft's input casts gone without changing what autocast computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gpurun import events
from gpurun.buckets import BucketChoice
from gpurun.dataset.types import ImageItem
from gpurun.runner.lossmeter import LossMeter
from gpurun.runner.speed import REFERENCE, StepSpeed, lora_input_cast_on, set_lora_input_cast, step_generator
from gpurun.trainconfig import TrainConfig
from tests.support.imaging import make_image

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

CASES = {
    # text encoder trained (tokens cache), shuffled captions, min-SNR, noise offset, flipped latents
    "sd15": {"pretrained_model_name_or_path": "tiny-sd", "shuffle_caption": True, "noise_offset": 0.05},
    # SDXL time ids, two tokenizers, v-prediction min-SNR
    "sdxl": {"pretrained_model_name_or_path": "tiny-sdxl", "v_parameterization": True},
}


def _job(root: Path, **changes: Any) -> TrainConfig:
    for index, size in enumerate([(64, 64), (96, 64), (64, 96)]):
        make_image(root / "data" / "2_sks robot" / f"a{index}.png", size, seed=index, caption="sks robot, red, tall")
    values: dict[str, Any] = {
        "train_data_dir": str(root / "data"),
        "output_dir": str(root / "out"),
        "resolution": 64,
        "enable_bucket": True,
        "min_bucket_reso": 64,
        "max_bucket_reso": 128,
        "batch_size": 2,
        "max_train_epochs": 2,
        "network_dim": 4,
        "network_alpha": 2,
        "network_train_unet_only": False,
        "learning_rate": 1e-3,
        "min_snr_gamma": 5.0,
        "flip_aug": True,
        "seed": 3,
        "sample_steps": 1,
        "sample_seeds": [1],
        "sample_weights": [1.0],
        **changes,
    }
    return TrainConfig(**values)


def _train(root: Path, speed: StepSpeed, changes: dict[str, Any]) -> tuple[dict[str, Any], dict[int, float]]:
    from safetensors.torch import load_file

    from gpurun.runner.train import Trainer

    seen: list[events.Event] = []
    assert Trainer(_job(root, **changes), emit=seen.append, install_signals=False, speed=speed).run() == 0
    # which steps get an event depends on the clock (one every few seconds, plus the first and the last)
    losses = {e.step: e.loss for e in seen if isinstance(e, events.Step)}
    return load_file(str(root / "out" / "state" / "lora.safetensors")), losses


@pytest.mark.slow
@pytest.mark.parametrize("family", list(CASES))
def test_fast_step_trains_the_same_lora_as_the_reference(family: str, tmp_path: Path) -> None:
    reference, ref_losses = _train(tmp_path / "reference", REFERENCE, CASES[family])
    fast, fast_losses = _train(tmp_path / "fast", StepSpeed(), CASES[family])
    assert reference.keys() == fast.keys() and any(".text_encoder" in k or k.startswith("text_encoder") for k in fast)
    moved = max(fast[k].abs().max().item() for k in fast if "lora_B" in k)
    assert moved > 0  # trained: lora_B starts at zero
    assert max((reference[k] - fast[k]).abs().max().item() for k in fast) <= 1e-6
    common = sorted(fast_losses.keys() & ref_losses.keys())
    assert len(common) >= 2  # at least the first and the last step
    assert [fast_losses[s] for s in common] == pytest.approx([ref_losses[s] for s in common], rel=1e-6, abs=1e-7)


@pytest.fixture(scope="module")
def tiny_sdxl_model() -> Any:
    from gpurun.runner.model.load import load_base_model

    return load_base_model("tiny-sdxl")


def _data(sizes: list[tuple[int, int]]) -> Any:
    from gpurun.runner.data import TrainData, TrainImage

    images = [
        TrainImage(
            ImageItem(Path(f"i{n}.png"), "1_x", 1, "x", None, w, h),
            BucketChoice(bucket=(64, 64), resized=(w, h), crop=(n, 2 * n)),
        )
        for n, (w, h) in enumerate(sizes)
    ]
    return TrainData(scan=None, images=images, buckets={(64, 64): list(range(len(images)))})  # type: ignore[arg-type]


def test_time_ids_made_once_per_image_equal_the_per_step_ones(tiny_sdxl_model: Any) -> None:
    from gpurun.runner.model.loaded import Conditioning
    from gpurun.runner.stepcache import StepCache

    model, data, cache = tiny_sdxl_model, _data([(64, 96), (128, 64), (80, 80)]), StepCache()
    for indices in ([0, 1], [2, 0], [1, 1]):
        pooled = torch.randn(len(indices), 8)
        cond = Conditioning(torch.randn(len(indices), 77, 8), pooled)
        images = [data.images[i] for i in indices]
        expected = model.unet_added_cond(
            cond,
            [i.original_size_hw for i in images],
            [i.crop_top_left for i in images],
            [i.target_size_hw for i in images],
        )
        got = cache.added_cond(model, data, indices, cond)
        assert got is not None and expected is not None
        assert torch.equal(got["time_ids"], expected["time_ids"]) and got["time_ids"].dtype == pooled.dtype
        assert got["text_embeds"] is pooled
    assert len(cache.time_ids) == 3  # one row per image, made once


def test_captions_tokenized_once_equal_the_per_step_tokens(
    tiny_sdxl_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpurun.runner import stepcache

    model, cache = tiny_sdxl_model, stepcache.StepCache()
    calls: list[list[str]] = []
    real = model.tokenize
    monkeypatch.setattr(model, "tokenize", lambda captions: calls.append(list(captions)) or real(captions))
    for batch in (["a red robot", "a cat"], ["a cat", "a red robot"], ["a cat", "a cat"]):
        got = cache.tokenize(model, batch)
        expected = real(batch)
        assert len(got) == len(expected) == 2  # SDXL: two tokenizers
        assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
    assert calls == [["a red robot", "a cat"]]  # each caption once
    monkeypatch.setattr(stepcache, "TOKEN_CACHE_SIZE", 2)
    got = cache.tokenize(model, ["a dog", "a cat"])  # full: starts over, and the batch is still complete
    assert all(torch.equal(g, e) for g, e in zip(got, real(["a dog", "a cat"]), strict=True))
    assert set(cache.tokens) == {"a dog", "a cat"}


@pytest.mark.parametrize("v_prediction", [False, True])
def test_min_snr_table_equals_the_per_step_weights(v_prediction: bool) -> None:
    from diffusers import DDPMScheduler

    from gpurun.runner.loss import snr_weights
    from gpurun.runner.stepcache import StepCache

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    cache = StepCache()
    for seed in range(3):
        t = torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(seed))
        expected = snr_weights(scheduler.alphas_cumprod, t, 5.0, v_prediction)
        assert torch.equal(cache.snr_weights(scheduler.alphas_cumprod, t, 5.0, v_prediction), expected)
    assert len(cache.snr) == 1


def test_loss_meter_keeps_the_old_window_and_reads_back_once() -> None:
    meter, old = LossMeter([9.0, 8.0], size=3), [9.0, 8.0]
    values = [0.5, 0.25, 0.125, 2.0]
    for v in values:
        meter.add(torch.tensor(v))
        old = [*old, v][-3:]
    assert meter.window() == old == [0.25, 0.125, 2.0]
    meter.add(1.5)  # the reference path hands floats
    meter.add(torch.tensor(3.0))
    assert meter.window() == [2.0, 1.5, 3.0]
    assert meter.window() == [2.0, 1.5, 3.0]  # nothing pending: the same window


def test_on_cpu_the_device_generator_draws_what_the_reference_draws() -> None:
    a, b = step_generator(11, "cpu", StepSpeed()), step_generator(11, "cpu", REFERENCE)
    for g in (a, b):
        assert g.device.type == "cpu"
    assert torch.equal(torch.randn(4, 4, generator=a, device=a.device), torch.randn(4, 4, generator=b))
    assert torch.equal(
        torch.randint(0, 1000, (3,), generator=a, device=a.device), torch.randint(0, 1000, (3,), generator=b)
    )


class _CountCasts(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.casts = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._to_copy.default:
            self.casts += 1
        return func(*args, **(kwargs or {}))


def test_without_peft_input_casts_autocast_computes_the_same_with_fewer_casts() -> None:
    """A bf16 base layer with fp32 LoRA weights under bf16 autocast (the CUDA training setup, on CPU autocast):
    the same output and LoRA gradients with and without peft's cast of the input to fp32, and fewer casts."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU(), torch.nn.Linear(16, 16))
    model = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=2, target_modules=["0", "2"]), model)
    model.to(torch.bfloat16)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in lora:
        p.data = torch.randn_like(p, dtype=torch.float32) * 0.1
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    x = torch.randn(4, 16, dtype=torch.bfloat16)

    def run(cast: bool) -> tuple[Any, list[Any], int]:
        for layer in layers:
            layer.cast_input_dtype_enabled = cast
        for p in lora:
            p.grad = None
        with _CountCasts() as counter, torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            out.float().square().mean().backward()
        return out.detach(), [p.grad.clone() for p in lora], counter.casts

    out_cast, grads_cast, casts_on = run(True)
    out_plain, grads_plain, casts_off = run(False)
    assert torch.equal(out_cast, out_plain)
    assert all(torch.equal(a, b) for a, b in zip(grads_cast, grads_plain, strict=True))
    assert casts_off < casts_on


def test_the_grid_gets_the_input_cast_back_and_training_keeps_it_off() -> None:
    from gpurun.runner.lora import add_lora
    from gpurun.runner.model.load import load_base_model
    from gpurun.runner.speed import lora_layers

    model = load_base_model("tiny-sd")
    add_lora(model, rank=2, alpha=1, train_text_encoder=True, seed=0)
    layers = lora_layers(model)
    assert len(layers) > 10
    set_lora_input_cast(model, False)
    with lora_input_cast_on(model):
        assert all(layer.cast_input_dtype_enabled for layer in layers)
    assert not any(layer.cast_input_dtype_enabled for layer in layers)
