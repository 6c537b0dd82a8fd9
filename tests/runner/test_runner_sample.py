"""The sample grid: rendered from the saved kohya file, labelled layout, weight 0 = the base model, and the
training state left untouched."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gpurun.runner.sample import cell_origin, default_prompts, grid_geometry

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")


def test_default_prompts_use_training_captions_with_the_trigger() -> None:
    captions = ["sks dog on grass", "a dog running", "a dog running", "", "portrait of a dog", "dog at the beach"]
    assert default_prompts(captions, "sks dog") == [
        "sks dog on grass",
        "sks dog, a dog running",
        "sks dog, portrait of a dog",
    ]
    assert default_prompts(captions, None, n=2) == ["sks dog on grass", "portrait of a dog"]
    assert default_prompts(["one caption"], "ohwx", n=3) == ["ohwx, one caption"]
    assert default_prompts([], "ohwx") == ["ohwx"]
    assert default_prompts([], None) == ["a photo"]


def _base_render(family: str, prompt: str, seeds: list[int], steps: int, size: int):
    """The same cells rendered by a plain pipeline of a fresh base model, no LoRA anywhere."""
    from gpurun.runner.model.load import load_base_model
    from gpurun.runner.sample import _decode

    base = load_base_model("tiny-sd" if family == "sd15" else "tiny-sdxl")
    pipe = base.pipeline("euler_a")
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        latents = pipe(
            prompt=[prompt] * len(seeds),
            num_inference_steps=steps,
            height=size,
            width=size,
            guidance_scale=7.0,
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            output_type="latent",
        ).images
        return _decode(pipe, latents)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "prompts", "seeds", "weights", "steps"),
    [
        ("sd15", ["a photo of sks dog", "sks dog on grass"], [1, 2], [0.0, 0.5, 1.0], 1),
        ("sdxl", ["a photo of sks dog"], [3], [0.0, 1.0], 1),
    ],
)
def test_grid_renders_the_file_and_weight_zero_is_the_base(
    family: str,
    prompts: list[str],
    seeds: list[int],
    weights: list[float],
    steps: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from PIL import Image

    from gpurun.runner.lora import lora_state
    from gpurun.runner.sample import render_grid
    from tests.support.lora_files import lora_model, save_lora_file

    model, params = lora_model(family)
    lora = save_lora_file(model, tmp_path / "lora.safetensors")
    model.unet.train()
    state_before = lora_state(model)
    lat = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = model.encode_prompt(model.tokenize(["x"]))
    added = model.unet_added_cond(cond, [(64, 64)], [(0, 0)], [(64, 64)])

    def unet_out():
        with torch.no_grad():
            model.unet.eval()
            out = model.unet(lat, torch.tensor([9]), encoder_hidden_states=cond.hidden_states, added_cond_kwargs=added)
            model.unet.train()
            return out.sample

    out_before = unet_out()
    out_path = tmp_path / "samples" / "grid.png"
    with caplog.at_level(logging.WARNING):
        result = render_grid(
            model,
            lora,
            prompts=prompts,
            weights=weights,
            seeds=seeds,
            steps=steps,
            resolution=(64, 64),
            out_path=out_path,
        )
    # nothing from the loaders (bitsandbytes' import-time CPU notice is unrelated third-party noise)
    assert [r.getMessage() for r in caplog.records if r.name.startswith(("diffusers", "peft", "transformers"))] == []
    assert result == out_path and [p.name for p in out_path.parent.iterdir()] == ["grid.png"]
    grid = Image.open(out_path).convert("RGB")
    assert grid.size == grid_geometry(len(prompts) * len(seeds), len(weights), (64, 64))

    def cell(row: int, col: int):
        x, y = cell_origin(row, col, (64, 64))
        return grid.crop((x, y, x + 64, y + 64))

    for pi, prompt in enumerate(prompts):
        reference = _base_render(family, prompt, seeds, steps, 64)
        for si in range(len(seeds)):
            row = pi * len(seeds) + si
            assert cell(row, 0).tobytes() == reference[si].tobytes(), (prompt, si)
            assert cell(row, len(weights) - 1).tobytes() != reference[si].tobytes()
    # the label column and header carry ink (labels were drawn)
    assert grid.crop((0, 0, 200, grid.size[1])).getextrema() != ((255, 255),) * 3

    # training state untouched: adapter, scale, modes, trainable flags, weights, outputs
    assert model.unet.training and not model.vae.training
    layer = dict(model.unet.named_modules())["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert layer.active_adapters == ["default"] and layer.scaling == {"default": 0.5}
    assert "gpurun_grid" not in (model.unet.peft_config or {})
    assert all(p.requires_grad for p in params.all())
    assert not any(p.requires_grad for n, p in model.unet.named_parameters() if "lora_" not in n)
    assert all(torch.equal(a, b) for a, b in zip(lora_state(model).values(), state_before.values(), strict=True))
    assert torch.equal(unet_out(), out_before)
