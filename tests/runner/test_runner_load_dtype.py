"""Single-file checkpoints load straight into the training dtype (issue 10's memory-lean loader): the same weights,
bit for bit, as loading in fp32 and casting afterwards (what the loader did before), with SDXL's VAE kept in fp32."""

from __future__ import annotations

import pytest

from tests.support.tiny_models import TinyModel

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_loading_in_bf16_equals_loading_in_fp32_then_casting(family: str, request: pytest.FixtureRequest) -> None:
    from gpurun.runner.model.load import load_base_model

    tiny: TinyModel = request.getfixturevalue(f"tiny_{family}")
    direct = load_base_model(str(tiny.single_file), weight_dtype=torch.bfloat16)
    full = load_base_model(str(tiny.single_file))
    assert direct.dtype == torch.bfloat16 and full.dtype == torch.float32
    assert direct.vae_dtype == (torch.float32 if family == "sdxl" else torch.bfloat16)
    pairs = [
        (direct.unet, full.unet),
        (direct.vae, full.vae),
        *zip(direct.text_encoders, full.text_encoders, strict=True),
    ]
    for lean, reference in pairs:
        a, b = lean.state_dict(), reference.state_dict()
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert torch.equal(value, b[key].to(value.dtype)), key
