"""kohya's LoCon (networks.lora with conv_dim/conv_alpha): the ResNet and sampler modules with kohya's names and
shapes, conv_alpha on the 3x3 convolutions, ss_network_args equal to what was trained, and a file diffusers loads
with every key, silently, reproducing the in-memory model."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest

from gpurun.lorafile import locon_module_names, read_header, read_scalar, unet_module_names
from tests.support.lora_files import ALPHA, DIM, WarningRecords, lora_model, save_lora_file
from tests.support.tiny_models import TinyModel

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

CONV_DIM, CONV_ALPHA = 8, 4.0
LOCON_ARGS = [f"conv_dim={CONV_DIM}", "conv_alpha=4"]


@pytest.fixture(scope="module")
def locon(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    root = tmp_path_factory.mktemp("locon")
    out = {}
    for family in ("sd15", "sdxl"):
        model, _ = lora_model(family, conv_dim=CONV_DIM, conv_alpha=CONV_ALPHA)
        path = save_lora_file(model, root / f"{family}.safetensors", precision="float", network_args=LOCON_ARGS)
        out[family] = (model, path)
    return out


@pytest.mark.parametrize(
    ("family", "sample"),
    [
        ("sd15", ("lora_unet_down_blocks_0_resnets_1_conv1", "lora_unet_up_blocks_1_upsamplers_0_conv")),
        ("sdxl", ("lora_unet_input_blocks_2_0_in_layers_2", "lora_unet_output_blocks_5_2_conv")),
    ],
)
def test_locon_file_has_kohyas_conv_modules(
    family: str, sample: tuple[str, str], locon: dict[str, tuple[Any, Path]]
) -> None:
    from gpurun.runner.export import verify_kohya_file

    _, path = locon[family]
    header = read_header(path)
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in header.tensors}
    required, optional = locon_module_names(family)  # type: ignore[arg-type]
    unet = {n for n in names if n.startswith("lora_unet_")}
    assert set(required) <= unet and unet - set(required) - set(unet_module_names(family)) <= set(optional)  # type: ignore[arg-type]
    for name in sample:
        down, up = header.tensors[f"{name}.lora_down.weight"], header.tensors[f"{name}.lora_up.weight"]
        assert down.shape[0] == CONV_DIM and down.shape[2:] == (3, 3) and up.shape[1:] == (CONV_DIM, 1, 1)
        assert read_scalar(header, f"{name}.alpha") == CONV_ALPHA
    time_emb = (
        "lora_unet_down_blocks_0_resnets_0_time_emb_proj"
        if family == "sd15"
        else "lora_unet_middle_block_0_emb_layers_1"
    )
    assert header.tensors[f"{time_emb}.lora_down.weight"].shape[0] == DIM  # Linear in a ResNet: network_dim
    assert read_scalar(header, f"{time_emb}.alpha") == ALPHA
    assert json.loads(header.metadata["ss_network_args"]) == {"conv_dim": "8", "conv_alpha": "4"}
    assert (
        verify_kohya_file(path, family, network_dim=DIM, network_alpha=ALPHA, conv_dim=CONV_DIM, conv_alpha=CONV_ALPHA)
        == []
    )
    assert any("differs from conv_dim 4" in p for p in verify_kohya_file(path, family, conv_dim=4))


def test_plain_lora_file_says_no_network_args(tmp_path: Path) -> None:
    model, _ = lora_model("sd15", perturb=False)
    # network_args that train nothing (rank 0, zero dropouts) are not written as if they had
    path = save_lora_file(model, tmp_path / "plain.safetensors", network_args=["conv_dim=0", "rank_dropout=0"])
    assert read_header(path).metadata["ss_network_args"] == "{}"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_diffusers_loads_every_locon_key_and_reproduces_the_model(
    family: str, locon: dict[str, tuple[Any, Path]], request: pytest.FixtureRequest
) -> None:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    tiny: TinyModel = request.getfixturevalue(f"tiny_{family}")
    model, path = locon[family]
    lat, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)), torch.tensor([500])
    with torch.no_grad():
        cond = model.encode_prompt(model.tokenize(["a photo of sks dog"]))
        added = model.unet_added_cond(cond, [(64, 64)], [(0, 0)], [(64, 64)])
        trained = model.unet(lat, t, encoder_hidden_states=cond.hidden_states, added_cond_kwargs=added).sample
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(str(tiny.diffusers_dir), local_files_only=True)
    with torch.no_grad():
        base = pipe.unet(lat, t, encoder_hidden_states=cond.hidden_states, added_cond_kwargs=added).sample
    handler = WarningRecords()
    loggers = [logging.getLogger(n) for n in ("", "diffusers", "peft", "transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(str(path), adapter_name="locon")
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert [r.getMessage() for r in handler.records] == [] and [str(w.message) for w in caught] == []
    # every conv module arrived: peft wrapped each ResNet conv and sampler conv of the fresh UNet
    modules = dict(pipe.unet.named_modules())
    wrapped = [
        n for n, m in modules.items() if n.endswith((".conv1", ".conv2", "samplers.0.conv")) and hasattr(m, "lora_A")
    ]
    assert len(wrapped) == {"sd15": 50, "sdxl": 38}[family]
    with torch.no_grad():
        loaded = pipe.unet(lat, t, encoder_hidden_states=cond.hidden_states, added_cond_kwargs=added).sample
    assert (base - trained).abs().max().item() > 0.05
    assert (loaded - trained).abs().max().item() <= 1e-5
