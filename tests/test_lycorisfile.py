"""The torch-free LyCORIS file check: it passes what lycoris and the UIs load and names what they would not
(a missing factor, diffusers' SDXL names, a text encoder without text_model_, the wrong module in the metadata)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpurun.lorafile import unet_module_names
from gpurun.lycorisfile import verify_lycoris_file

np = pytest.importorskip("numpy")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

META = {
    "ss_base_model_version": "sd_v1",
    "ss_network_module": "lycoris.kohya",
    "ss_network_dim": "4",
    "ss_network_alpha": "2.0",
    "ss_network_args": json.dumps({"algo": "loha", "preset": "full"}),
    "ss_output_name": "x",
    "ss_v2": "False",
    "modelspec.sai_model_spec": "1.0.1",
    "modelspec.architecture": "stable-diffusion-v1/lora",
    "modelspec.title": "x",
}


def loha_tensors(names: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in names:
        for part in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"):
            out[f"{name}.{part}"] = np.zeros((4, 4), dtype=np.float16)
        out[f"{name}.alpha"] = np.array(2.0, dtype=np.float16)
    return out


def write(tmp_path: Path, tensors: dict[str, object], **meta: str) -> Path:
    path = tmp_path / "file.safetensors"
    safetensors_numpy.save_file(tensors, str(path), metadata={**META, **meta})
    return path


def test_a_complete_file_passes(tmp_path: Path) -> None:
    names = [*unet_module_names("sd15"), "lora_te_text_model_encoder_layers_0_mlp_fc1"]
    path = write(tmp_path, loha_tensors(names))
    assert verify_lycoris_file(path, "sd15", algo="loha", network_dim=4, network_alpha=2.0) == []


def test_what_a_loader_would_miss_is_named(tmp_path: Path) -> None:
    tensors = loha_tensors([*unet_module_names("sd15"), "lora_te_encoder_layers_0_mlp_fc1"])
    del tensors[f"{unet_module_names('sd15')[0]}.hada_w2_b"]
    tensors["lora_unet_conv_in.lora_down.weight"] = np.zeros((4, 4), dtype=np.float16)
    path = write(tmp_path, tensors, ss_network_module="networks.lora")
    problems = verify_lycoris_file(path, "sd15", algo="loha", network_alpha=8.0)
    assert any("missing" in p and ".hada_w2_b" in p for p in problems)
    assert any("lora_unet_conv_in.lora_down.weight" in p and "not a tensor of a LyCORIS loha" in p for p in problems)
    assert any("keep text_model_" in p for p in problems)
    assert any("ss_network_module is 'networks.lora'" in p for p in problems)
    assert any(".alpha is 2, expected 8" in p for p in problems)


def test_sdxl_files_need_kohyas_sgm_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        loha_tensors(["lora_unet_down_blocks_1_attentions_0_proj_in"]),
        ss_base_model_version="sdxl_base_v1-0",
        **{"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"},
    )
    problems = verify_lycoris_file(path, "sdxl", algo="loha")
    assert any("sgm layout" in p for p in problems)
    assert any("of kohya's UNet attention modules are missing" in p for p in problems)
