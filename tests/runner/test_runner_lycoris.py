"""LyCORIS through lycoris-lora: each algorithm's network on the tiny models, saved with kohya's names and metadata,
loads with every key through lycoris' own loader (create_network_from_weights) and reproduces the trained model;
its resumable state restores exactly; what diffusers does with these files is pinned down."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from gpurun.lorafile import guess_family, read_header
from gpurun.lycoris_args import parse_lycoris_args
from gpurun.lycorisfile import verify_lycoris_file
from tests.support.lora_files import ALPHA, DATASET, TINY_NAME, tutorial_config

torch = pytest.importorskip("torch")
pytest.importorskip("lycoris")

DIM = 8
#: network_args per case, as the kohya_ss GUI writes them
CASES: dict[str, list[str]] = {
    "locon": ["algo=locon", "conv_dim=4", "conv_alpha=2"],
    "loha": ["algo=loha", "conv_dim=4", "conv_alpha=1", "use_tucker=False"],
    "lokr": ["algo=lokr", "factor=4", "conv_dim=4", "conv_alpha=1"],
    "diag-oft": ["algo=diag-oft", "constraint=0"],
    "dora": ["algo=locon", "dora_wd=True", "train_norm=True"],
    "lokr-tucker": ["algo=lokr", "use_tucker=True", "factor=-1"],
}

#: lycoris scales neither DoRA's magnitude nor train_norm's norm layers by the multiplier: weight 0 is not the base
NOT_OFF_AT_ZERO = {"dora"}


def lycoris_model(family: str, args: list[str], *, seed: int = 0) -> tuple[Any, Any]:
    """A tiny base with the LyCORIS network applied, its weights moved as if trained."""
    from gpurun.runner.lycoris_net import add_lycoris
    from gpurun.runner.model.load import load_base_model

    model = load_base_model(TINY_NAME[family])
    params = add_lycoris(model, parse_lycoris_args(args), rank=DIM, alpha=ALPHA, train_text_encoder=True, seed=seed)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params.all():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model, params


def save(model: Any, args: list[str], path: Path) -> Path:
    from gpurun.runner.export import build_metadata, save_lora

    config = tutorial_config(network_module="lycoris.kohya", network_args=args, network_dim=DIM)
    meta = build_metadata(
        config=config, model=model, dataset=DATASET, epoch=1, steps=3, training_started_at=1_700_000_000.0
    )
    save_lora(model, path, metadata=meta, precision="float")
    return path


def unet_out(model: Any) -> Any:
    lat, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)), torch.tensor([500])
    with torch.no_grad():
        cond = model.encode_prompt(model.tokenize(["a photo of sks dog"]))
        added = model.unet_added_cond(cond, [(64, 64)], [(0, 0)], [(64, 64)])
        return cond.hidden_states, model.unet(
            lat, t, encoder_hidden_states=cond.hidden_states, added_cond_kwargs=added
        ).sample


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "case"),
    [("sd15", c) for c in CASES] + [("sdxl", "loha"), ("sdxl", "lokr"), ("sdxl", "dora")],
)
def test_the_file_loads_every_key_in_lycoris_and_reproduces_the_model(family: str, case: str, tmp_path: Path) -> None:
    from gpurun.runner.lycoris_file import lycoris_file_applied
    from gpurun.runner.model.load import load_base_model

    args = CASES[case]
    model, _ = lycoris_model(family, args)
    cond, trained = unet_out(model)
    path = save(model, args, tmp_path / f"{case}.safetensors")
    parsed = parse_lycoris_args(args)
    header = read_header(path)
    assert json.loads(header.metadata["ss_network_args"]) == parsed.metadata()
    assert header.metadata["ss_network_module"] == "lycoris.kohya"
    assert guess_family(list(header.tensors)) == family
    assert verify_lycoris_file(path, family, algo=parsed.algo, network_dim=DIM, trains_text_encoder=True) == []

    fresh = load_base_model(TINY_NAME[family])
    _, base = unet_out(fresh)
    with lycoris_file_applied(fresh, path) as set_weight:  # raises if lycoris leaves any key unloaded
        set_weight(1.0)
        loaded_cond, loaded = unet_out(fresh)
        set_weight(0.0)
        _, off = unet_out(fresh)
    _, after = unet_out(fresh)
    assert (base - trained).abs().max().item() > 1e-3
    assert (loaded - trained).abs().max().item() <= 1e-4
    assert (loaded_cond - cond).abs().max().item() <= 1e-4  # the text encoders' modules loaded too
    assert torch.equal(after, base)  # unloaded: the base again
    if case not in NOT_OFF_AT_ZERO:
        assert (off - base).abs().max().item() <= 1e-5  # weight 0: the base


def test_sdxl_names_are_kohyas_sgm_layout(tmp_path: Path) -> None:
    model, _ = lycoris_model("sdxl", CASES["loha"])
    header = read_header(save(model, CASES["loha"], tmp_path / "loha.safetensors"))
    names = {k.split(".")[0] for k in header.tensors}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
    assert "lora_unet_input_blocks_1_0_in_layers_2" in names  # a ResNet's 3x3 conv (conv_dim)
    assert "lora_te2_text_model_encoder_layers_0_mlp_fc1" in names
    # kohya's SDXL UNet has no conv_in / time_embedding by those names: LyCORIS trains neither there
    assert not any(n.startswith(("lora_unet_down_blocks", "lora_unet_conv_in", "lora_unet_time_emb")) for n in names)
    assert {k.rsplit(".", 1)[1] for k in header.tensors} == {
        "alpha",
        "hada_w1_a",
        "hada_w1_b",
        "hada_w2_a",
        "hada_w2_b",
    }


def test_the_resumable_state_restores_exactly() -> None:
    from gpurun.runner.lycoris_net import load_lycoris_state, lycoris_state

    model, _ = lycoris_model("sd15", CASES["lokr"])
    state = lycoris_state(model)
    fresh, _ = lycoris_model("sd15", CASES["lokr"], seed=3)
    load_lycoris_state(fresh, state)
    assert all(torch.equal(v, lycoris_state(fresh)[k]) for k, v in state.items())
    other, _ = lycoris_model("sd15", CASES["loha"])
    with pytest.raises(ValueError, match="does not fit the network"):
        load_lycoris_state(other, state)


@pytest.mark.slow
def test_diffusers_loads_a_lycoris_locon_file_with_every_key_and_refuses_loha_and_lokr(
    tmp_path: Path, tiny_sd15: Any
) -> None:
    """diffusers' kohya converter reads lora_down/lora_up (LyCORIS' LoCon) and refuses LoHa's and LoKr's tensors
    (diffusers 0.42: "keys have not been correctly renamed"); A1111 and ComfyUI load all three."""
    from diffusers import StableDiffusionPipeline

    from tests.support.lora_files import WarningRecords

    model, _ = lycoris_model("sd15", CASES["locon"])
    _, trained = unet_out(model)
    path = save(model, CASES["locon"], tmp_path / "locon.safetensors")
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd15.diffusers_dir), local_files_only=True)
    handler = WarningRecords()
    logging.getLogger().addHandler(handler)
    try:
        pipe.load_lora_weights(str(path), adapter_name="locon")
    finally:
        logging.getLogger().removeHandler(handler)
    assert [r.getMessage() for r in handler.records] == []
    wrapped = {n for n, m in pipe.unet.named_modules() if hasattr(m, "lora_A")}
    assert len(wrapped) == len(model.network.unet_loras)  # every UNet module, conv_in and time embedding included
    te_wrapped = [n for n, m in pipe.text_encoder.named_modules() if hasattr(m, "lora_A")]
    assert len(te_wrapped) == len(model.network.text_encoder_loras)
    model.unet = pipe.unet  # the same conditioning path, now through diffusers' adapter
    _, loaded = unet_out(model)
    assert (loaded - trained).abs().max().item() <= 1e-4
    for case in ("loha", "lokr"):
        other, _ = lycoris_model("sd15", CASES[case])
        file = save(other, CASES[case], tmp_path / f"{case}.safetensors")
        fresh = StableDiffusionPipeline.from_pretrained(str(tiny_sd15.diffusers_dir), local_files_only=True)
        with pytest.raises(ValueError, match="have not been correctly renamed"):
            fresh.load_lora_weights(str(file), adapter_name=case)
