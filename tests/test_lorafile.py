"""The torch-free LoRA file check the client runs after fetching: header reading, kohya name sets, problems."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from gpurun.lorafile import (
    SafetensorsError,
    guess_family,
    read_header,
    read_scalar,
    text_encoder_module_names,
    unet_module_names,
    verify_lora_file,
)
from tests.support.env import REPO_ROOT, subprocess_env


def _write(path: Path, tensors: dict[str, tuple[str, list[int], bytes]], metadata: dict[str, str]) -> Path:
    """A safetensors file written by hand (no torch): name -> (dtype, shape, raw bytes)."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset, blobs = 0, []
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return path


def test_kohya_module_counts_per_family() -> None:
    assert len(unet_module_names("sd15")) == 192
    assert len(unet_module_names("sd2")) == 192
    assert len(unet_module_names("sdxl")) == 722
    assert {k: len(v) for k, v in text_encoder_module_names("sd15").items()} == {"lora_te": 72}
    assert {k: len(v) for k, v in text_encoder_module_names("sd2").items()} == {"lora_te": 138}
    assert {k: len(v) for k, v in text_encoder_module_names("sdxl").items()} == {"lora_te1": 72, "lora_te2": 192}
    sdxl = set(unet_module_names("sdxl"))
    assert "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q" in sdxl
    assert "lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_2" in sdxl
    assert "lora_unet_middle_block_1_proj_in" in sdxl
    assert "lora_unet_output_blocks_5_1_transformer_blocks_1_attn2_to_out_0" in sdxl
    assert "lora_unet_output_blocks_5_1_transformer_blocks_2_attn2_to_out_0" not in sdxl
    sd15 = set(unet_module_names("sd15"))
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj" in sd15
    assert "lora_unet_up_blocks_3_attentions_2_proj_out" in sd15
    assert "lora_unet_up_blocks_0_attentions_0_proj_out" not in sd15  # up_blocks.0 has no attention


def test_header_reader_and_scalars(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "a.safetensors",
        {
            "x.alpha": ("F16", [], struct.pack("<e", 16.0)),
            "y.alpha": ("BF16", [], struct.pack("<f", 0.5)[2:]),
            "z.alpha": ("F32", [], struct.pack("<f", 3.25)),
        },
        {"ss_output_name": "demo"},
    )
    header = read_header(path)
    assert header.metadata == {"ss_output_name": "demo"}
    assert header.tensors["x.alpha"].shape == ()
    assert [read_scalar(header, n) for n in ("x.alpha", "y.alpha", "z.alpha")] == [16.0, 0.5, 3.25]
    for name, data in [("short.safetensors", b"\x01\x02"), ("garbage.safetensors", b"\xff" * 64)]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SafetensorsError):
            read_header(tmp_path / name)
    assert verify_lora_file(tmp_path / "garbage.safetensors", "sd15")[0].startswith("garbage.safetensors is not")


def test_guess_family_from_names() -> None:
    assert guess_family({"lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha"}) == "sdxl"
    assert guess_family({"lora_unet_input_blocks_4_1_proj_in.alpha"}) == "sdxl"
    assert guess_family({"lora_te_text_model_encoder_layers_20_mlp_fc1.alpha"}) == "sd2"
    assert guess_family({"lora_unet_down_blocks_0_attentions_0_proj_in.alpha"}) == "sd15"
    assert guess_family({"unet.down_blocks.0.lora_A.weight"}) is None


def test_lorafile_imports_no_torch() -> None:
    code = "import sys, gpurun.lorafile; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
