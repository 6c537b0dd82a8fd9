"""kohya's scale_weight_norms and network_dropout on the injected LoRA: the delta kohya measures is the change the
module really makes (3x3 LoCon included), max-norm brings every delta to the limit and leaves the others alone,
and the dropout acts on the rank activations only while training."""

from __future__ import annotations

import pytest

from tests.support.lora_files import lora_model

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")


def test_delta_weight_is_what_the_module_adds() -> None:
    from gpurun.runner.lora import ADAPTER
    from gpurun.runner.maxnorm import delta_weight

    model, _ = lora_model("sd15", conv_dim=4, conv_alpha=2.0)
    modules = dict(model.unet.named_modules())
    for path, x in [
        ("down_blocks.0.resnets.0.conv1", torch.randn(1, 32, 8, 8)),
        ("down_blocks.0.downsamplers.0.conv", torch.randn(1, 32, 8, 8)),
        ("down_blocks.0.attentions.0.proj_in", torch.randn(1, 32, 8, 8)),
        ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", torch.randn(1, 5, 32)),
    ]:
        layer = modules[path]
        down, up = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        delta = delta_weight(down, up, float(layer.scaling[ADAPTER]))
        with torch.no_grad():
            added = layer(x) - layer.base_layer(x)
            if isinstance(layer.base_layer, torch.nn.Conv2d):
                base = layer.base_layer
                expected = torch.nn.functional.conv2d(x, delta, stride=base.stride, padding=base.padding)
            else:
                expected = x @ delta.T
        assert torch.allclose(added, expected, atol=1e-5), path


def test_max_norm_scales_only_what_exceeds_the_limit() -> None:
    from gpurun.runner.lora import ADAPTER
    from gpurun.runner.maxnorm import adapted_layers, apply_max_norm, delta_weight

    model, _ = lora_model("sd15", conv_dim=4, conv_alpha=2.0)
    layers = adapted_layers([model.unet, *model.text_encoders])

    @torch.no_grad()
    def norms() -> list[float]:
        return [
            float(delta_weight(m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight, float(m.scaling[ADAPTER])).norm())
            for m in layers
        ]

    before = norms()
    limit = sorted(before)[len(before) // 2]  # half the modules exceed it
    report = apply_max_norm(layers, limit)
    after = norms()
    assert report.keys_scaled == sum(b > limit for b in before) > 0
    for b, a in zip(before, after, strict=True):
        assert a == pytest.approx(min(b, limit), rel=1e-4)
    assert report.mean_norm == pytest.approx(sum(after) / len(after), rel=1e-4)
    apply_max_norm(layers, limit)  # kohya calls it every batch: a second call changes nothing beyond rounding
    assert norms() == pytest.approx(after, rel=1e-5)


def test_rank_dropout_acts_on_lora_down_while_training() -> None:
    from gpurun.runner.lora import ADAPTER
    from gpurun.runner.maxnorm import adapted_layers, add_rank_dropout

    model, _ = lora_model("sd15")
    layer = dict(model.unet.named_modules())["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    handles = add_rank_dropout(adapted_layers([model.unet]), 0.5)
    x = torch.randn(1, 5, 32)
    down = layer.lora_A[ADAPTER]
    assert down.training  # peft's new modules train; the sample grid puts them in eval
    with torch.no_grad():
        dropped = down(x)
        assert (dropped == 0).float().mean().item() == pytest.approx(0.5, abs=0.15)
        kept = dropped[dropped != 0]
        assert torch.allclose(kept, (torch.nn.functional.linear(x, down.weight) * 2)[dropped != 0])  # 1/(1-p)
        down.eval()
        assert torch.equal(down(x), torch.nn.functional.linear(x, down.weight))
    for handle in handles:
        handle.remove()
