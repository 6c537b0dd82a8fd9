"""kohya LoRA files without torch: safetensors header reading, kohya's module-name sets, and the file check.

The client verifies a fetched LoRA with this module (it must stay torch-free), and the runner's tests use the
same check. The name sets are generated from each family's block topology, the same rule kohya's
`networks/lora.py` applies (every Linear / 1x1 Conv2d inside a UNet Transformer2DModel; every Linear in CLIP
attention and MLP; with LoCon's conv_dim also the ResNet blocks and down/upsamplers), so a file passes only if
ComfyUI, A1111 and kohya's own tools recognise every key.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Family = Literal["sd15", "sd2", "sdxl"]
FAMILIES: tuple[Family, ...] = ("sd15", "sd2", "sdxl")

#: ss_base_model_version values kohya writes, per family (v-prediction variants end in _v)
BASE_MODEL_VERSIONS: dict[Family, tuple[str, ...]] = {
    "sd15": ("sd_v1", "sd_v1_v"),
    "sd2": ("sd_v2", "sd_v2_v"),
    "sdxl": ("sdxl_base_v1-0",),
}
#: modelspec.architecture values (kohya library/sai_model_spec.py), per family
ARCHITECTURES: dict[Family, tuple[str, ...]] = {
    "sd15": ("stable-diffusion-v1/lora",),
    "sd2": ("stable-diffusion-v2-512/lora", "stable-diffusion-v2-768-v/lora"),
    "sdxl": ("stable-diffusion-xl-v1-base/lora",),
}
REQUIRED_METADATA = (
    "ss_base_model_version",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_output_name",
    "ss_v2",
    "modelspec.sai_model_spec",
    "modelspec.architecture",
    "modelspec.title",
)

_TRANSFORMER_INNER: tuple[str, ...] = ("attn1_to_q", "attn1_to_k", "attn1_to_v", "attn1_to_out_0")
_TRANSFORMER_INNER += ("attn2_to_q", "attn2_to_k", "attn2_to_v", "attn2_to_out_0", "ff_net_0_proj", "ff_net_2")
_CLIP_INNER = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2")
_TE_LAYERS: dict[Family, dict[str, int]] = {
    "sd15": {"lora_te": 12},
    "sd2": {"lora_te": 23},  # SD 2.x uses OpenCLIP-H up to its penultimate layer: 23 of 24
    "sdxl": {"lora_te1": 12, "lora_te2": 32},
}
_KEY = re.compile(
    r"^(?P<name>lora_(?:unet|te|te1|te2)_[A-Za-z0-9_]+)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$"
)
#: a kohya module name followed by any tensor name (LyCORIS files: .hada_w1_a, .lokr_w1...)
_MODULE = re.compile(r"^(?P<name>lora_(?:unet|te|te1|te2)_[A-Za-z0-9_]+)\.")
_DTYPES = {"F16": ("e", 2), "F32": ("f", 4), "F64": ("d", 8), "I64": ("q", 8), "I32": ("i", 4)}


class SafetensorsError(ValueError):
    """The file is not a readable safetensors file."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def read_header(path: str | Path) -> SafetensorsHeader:
    """Parse a safetensors header (8-byte little-endian length, then JSON) without loading any tensor."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{path.name} is too short to be a safetensors file")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, 100 * 1024 * 1024):
                raise SafetensorsError(f"{path.name} is not a safetensors file (bad header length)")
            raw = f.read(length)
    except OSError as exc:
        raise SafetensorsError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SafetensorsError(f"{path.name} is not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path.name} is not a safetensors file (header is not an object)")
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    for name, info in header.items():
        try:
            start, end = (int(o) for o in info["data_offsets"])
            tensors[name] = TensorInfo(str(info["dtype"]), tuple(int(d) for d in info["shape"]), (start, end))
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path.name}: malformed header entry for {name!r}") from None
    return SafetensorsHeader(path, tensors, {str(k): str(v) for k, v in metadata.items()}, 8 + length)


def read_scalar(header: SafetensorsHeader, name: str) -> float:
    """The value of a one-element tensor (e.g. a LoRA `.alpha`), decoded from raw bytes."""
    info = header.tensors[name]
    if math.prod(info.shape) != 1:
        raise SafetensorsError(f"{name} has shape {list(info.shape)}, expected a scalar")
    begin, end = info.offsets
    with header.path.open("rb") as f:
        f.seek(header.data_start + begin)
        raw = f.read(end - begin)
    if info.dtype == "BF16":  # bfloat16 is the top half of a float32
        return struct.unpack("<f", b"\x00\x00" + raw[:2])[0]
    if info.dtype not in _DTYPES:
        raise SafetensorsError(f"{name} has unsupported dtype {info.dtype}")
    fmt, width = _DTYPES[info.dtype]
    return float(struct.unpack("<" + fmt, raw[:width])[0])


def _transformer_names(prefix: str, depth: int) -> list[str]:
    names = [f"{prefix}_proj_in", f"{prefix}_proj_out"]
    for block in range(depth):
        names += [f"{prefix}_transformer_blocks_{block}_{inner}" for inner in _TRANSFORMER_INNER]
    return names


def unet_module_names(family: Family) -> list[str]:
    """kohya's default UNet LoRA module names. SD 1.x/2.x use diffusers paths, SDXL kohya's sgm paths."""
    names: list[str] = []
    if family == "sdxl":
        blocks = [(f"input_blocks_{i}_1", 2) for i in (4, 5)] + [(f"input_blocks_{i}_1", 10) for i in (7, 8)]
        blocks += [("middle_block_1", 10)]
        blocks += [(f"output_blocks_{i}_1", 10) for i in (0, 1, 2)] + [(f"output_blocks_{i}_1", 2) for i in (3, 4, 5)]
    else:
        blocks = [(f"down_blocks_{b}_attentions_{a}", 1) for b in range(3) for a in range(2)]
        blocks += [("mid_block_attentions_0", 1)]
        blocks += [(f"up_blocks_{b}_attentions_{a}", 1) for b in (1, 2, 3) for a in range(3)]
    for block, depth in blocks:
        names += _transformer_names(f"lora_unet_{block}", depth)
    return names


#: a ResNet block's adapted layers in kohya's names: (3x3 conv, 3x3 conv, time-embedding Linear), then the 1x1
#: shortcut, which exists only where the block changes the channel count (so it is allowed, never required)
_RESNET_LAYERS = {
    "sgm": ("in_layers_2", "out_layers_3", "emb_layers_1"),
    "diffusers": ("conv1", "conv2", "time_emb_proj"),
}
_SHORTCUT = {"sgm": "skip_connection", "diffusers": "conv_shortcut"}


def _resnet_blocks(family: Family) -> tuple[list[str], list[str]]:
    """(ResNet block prefixes, down/upsampler conv names) of kohya's UNet for `family`."""
    if family == "sdxl":
        resnets = [f"lora_unet_input_blocks_{3 * i + j + 1}_0" for i in range(3) for j in range(2)]
        resnets += ["lora_unet_middle_block_0", "lora_unet_middle_block_2"]
        resnets += [f"lora_unet_output_blocks_{3 * i + j}_0" for i in range(3) for j in range(3)]
        samplers = [f"lora_unet_input_blocks_{3 * (i + 1)}_0_op" for i in range(2)]
        samplers += [f"lora_unet_output_blocks_{3 * i + 2}_2_conv" for i in range(2)]
        return resnets, samplers
    resnets = [f"lora_unet_down_blocks_{i}_resnets_{j}" for i in range(4) for j in range(2)]
    resnets += ["lora_unet_mid_block_resnets_0", "lora_unet_mid_block_resnets_1"]
    resnets += [f"lora_unet_up_blocks_{i}_resnets_{j}" for i in range(4) for j in range(3)]
    samplers = [f"lora_unet_down_blocks_{i}_downsamplers_0_conv" for i in range(3)]
    samplers += [f"lora_unet_up_blocks_{i}_upsamplers_0_conv" for i in range(3)]
    return resnets, samplers


def locon_module_names(family: Family) -> tuple[list[str], list[str]]:
    """kohya's LoCon (conv_dim) UNet module names beyond the LoRA ones: (required, optional). The optional ones
    are the 1x1 shortcuts, present where a ResNet block changes the channel count."""
    style = "sgm" if family == "sdxl" else "diffusers"
    resnets, samplers = _resnet_blocks(family)
    required = [f"{block}_{layer}" for block in resnets for layer in _RESNET_LAYERS[style]] + samplers
    return required, [f"{block}_{_SHORTCUT[style]}" for block in resnets]


def is_conv_kxk_module(family: Family, name: str) -> bool:
    """A LoCon module on a 3x3 convolution (conv_dim/conv_alpha, 4-D weights with a 3x3 lora_down)."""
    style = "sgm" if family == "sdxl" else "diffusers"
    kxk = _RESNET_LAYERS[style][:2]
    return name.endswith(tuple(f"_{layer}" for layer in kxk)) or name in _resnet_blocks(family)[1]


def text_encoder_module_names(family: Family) -> dict[str, list[str]]:
    """kohya's text-encoder module names per prefix (`lora_te` for SD 1.x/2.x; `lora_te1`/`lora_te2` for SDXL)."""
    return {
        prefix: [f"{prefix}_text_model_encoder_layers_{i}_{inner}" for i in range(layers) for inner in _CLIP_INNER]
        for prefix, layers in _TE_LAYERS[family].items()
    }


def is_conv_module(family: Family, name: str) -> bool:
    """SD 1.x's proj_in/proj_out and every ResNet shortcut are 1x1 convolutions (4-D LoRA weights); SD 2.x and
    SDXL's proj_in/proj_out are Linear."""
    if name.endswith(("_conv_shortcut", "_skip_connection")):
        return True
    return family == "sd15" and name.endswith(("_proj_in", "_proj_out"))


def guess_family(keys: list[str] | set[str]) -> Family | None:
    """Best guess of a kohya LoRA's family from its key names alone (None when there are no kohya keys); LyCORIS
    files' names are kohya's too, whatever their tensor suffixes."""
    names = {m.group("name") for k in keys if (m := _MODULE.match(k))}
    if not names:
        return None
    if any(
        n.startswith(("lora_te1_", "lora_te2_", "lora_unet_input_blocks", "lora_unet_output_blocks")) for n in names
    ):
        return "sdxl"
    if any(n.startswith("lora_te_text_model_encoder_layers_") and int(n.split("_")[6]) >= 12 for n in names):
        return "sd2"
    return "sd15"


def verify_lora_file(
    path: str | Path,
    family: Family,
    *,
    network_dim: int | None = None,
    network_alpha: float | None = None,
    conv_dim: int | None = None,
    conv_alpha: float | None = None,
) -> list[str]:
    """Check a kohya LoRA file; returns the problems found (empty = loads everywhere, as configured). A LoCon
    file (3x3 conv modules) is checked against conv_dim/conv_alpha when given."""
    try:
        header = read_header(path)
    except SafetensorsError as exc:
        return [str(exc)]
    problems: list[str] = []
    unet = set(unet_module_names(family))
    locon_required, locon_optional = locon_module_names(family)
    encoders = text_encoder_module_names(family)
    allowed = unet | {n for names in encoders.values() for n in names} | set(locon_required) | set(locon_optional)

    parts: dict[str, dict[str, TensorInfo]] = {}
    for key, info in header.tensors.items():
        match = _KEY.match(key)
        if not match or match.group("name") not in allowed:
            problems.append(
                f"unexpected key {key!r}: not a kohya {family} LoRA module (ComfyUI: 'lora key not loaded')"
            )
            continue
        parts.setdefault(match.group("name"), {})[match.group("part")] = info
    if not parts:
        metadata_problems = _check_metadata(header.metadata, family, network_dim, network_alpha)
        return [*problems, f"no kohya LoRA modules for {family} found", *metadata_problems]

    ranks: set[int] = set()
    conv_ranks: set[int] = set()
    dtypes = {info.dtype for info in header.tensors.values()}
    for name, found in sorted(parts.items()):
        kxk = is_conv_kxk_module(family, name)
        for part in ("lora_down.weight", "lora_up.weight", "alpha"):
            if part not in found:
                problems.append(f"{name}: missing {name}.{part}")
        down, up = found.get("lora_down.weight"), found.get("lora_up.weight")
        if down and up:
            problems += _check_shapes(family, name, down.shape, up.shape)
            (conv_ranks if kxk else ranks).add(down.shape[0])
        alpha = found.get("alpha")
        want, which = (conv_alpha, "conv_alpha") if kxk else (network_alpha, "network_alpha")
        if alpha is not None:
            if alpha.shape != ():
                problems.append(f"{name}.alpha has shape {list(alpha.shape)}, expected a 0-dim scalar")
            elif want is not None:
                value = read_scalar(header, f"{name}.alpha")
                if not math.isclose(value, want, rel_tol=2e-3, abs_tol=1e-6):
                    problems.append(f"{name}.alpha is {value:g}, expected {which} {want:g}")
    if network_dim is not None and ranks - {network_dim}:
        problems.append(f"LoRA rank {sorted(ranks)} differs from network_dim {network_dim}")
    elif len(ranks) > 1:
        problems.append(f"modules have different ranks {sorted(ranks)}")
    if conv_dim is not None and conv_ranks - {conv_dim}:
        problems.append(f"LoCon conv rank {sorted(conv_ranks)} differs from conv_dim {conv_dim}")
    elif len(conv_ranks) > 1:
        problems.append(f"3x3 conv modules have different ranks {sorted(conv_ranks)}")
    if conv_dim is not None and not conv_ranks:
        problems.append(f"no LoCon 3x3 conv modules, but conv_dim is {conv_dim}")
    if len(dtypes) > 1:
        problems.append(f"mixed tensor dtypes {sorted(dtypes)}")

    missing_unet = sorted(unet - parts.keys())
    if missing_unet:
        problems.append(f"{len(missing_unet)} of kohya's {len(unet)} UNet modules are missing, e.g. {missing_unet[0]}")
    missing_conv = sorted(set(locon_required) - parts.keys())
    if conv_ranks and missing_conv:
        problems.append(
            f"{len(missing_conv)} of kohya's {len(locon_required)} LoCon modules are missing, e.g. {missing_conv[0]}"
        )
    for prefix, names in encoders.items():
        present = [n for n in names if n in parts]
        if present and len(present) != len(names):
            missing = sorted(set(names) - parts.keys())
            problems.append(f"{len(missing)} of {len(names)} {prefix} modules are missing, e.g. {missing[0]}")
    problems += _check_metadata(header.metadata, family, network_dim, network_alpha)
    return problems


def _check_shapes(family: Family, name: str, down: tuple[int, ...], up: tuple[int, ...]) -> list[str]:
    kxk = is_conv_kxk_module(family, name)
    conv = kxk or is_conv_module(family, name)
    want = 4 if conv else 2
    problems = []
    if len(down) != want or len(up) != want:
        kind = (
            "3x3 conv [r,in,3,3]/[out,r,1,1]"
            if kxk
            else "1x1 conv [r,in,1,1]/[out,r,1,1]"
            if conv
            else "linear [r,in]/[out,r]"
        )
        problems.append(f"{name}: shapes down {list(down)} / up {list(up)} are not {kind}")
    elif kxk and (down[2:] != (3, 3) or up[2:] != (1, 1)):
        problems.append(f"{name}: LoCon kernels must be 3x3 down, 1x1 up, got down {list(down)} / up {list(up)}")
    elif conv and not kxk and (down[2:] != (1, 1) or up[2:] != (1, 1)):
        problems.append(f"{name}: conv LoRA kernels must be 1x1, got down {list(down)} / up {list(up)}")
    elif down[0] != up[1]:
        problems.append(f"{name}: rank mismatch, lora_down has {down[0]} rows but lora_up {up[1]} columns")
    return problems


def _check_metadata(meta: dict[str, str], family: Family, network_dim: int | None, alpha: float | None) -> list[str]:
    problems = [f"metadata {key} is missing" for key in REQUIRED_METADATA if key not in meta]
    version = meta.get("ss_base_model_version")
    if version is not None and version not in BASE_MODEL_VERSIONS[family]:
        problems.append(f"ss_base_model_version is {version!r}, expected one of {BASE_MODEL_VERSIONS[family]}")
    arch = meta.get("modelspec.architecture")
    if arch is not None and arch not in ARCHITECTURES[family]:
        problems.append(f"modelspec.architecture is {arch!r}, expected one of {ARCHITECTURES[family]}")
    if "ss_v2" in meta and meta["ss_v2"] != str(family == "sd2"):
        problems.append(f"ss_v2 is {meta['ss_v2']!r}, expected {str(family == 'sd2')!r}")
    if meta.get("ss_network_module", "networks.lora") != "networks.lora":
        problems.append(f"ss_network_module is {meta['ss_network_module']!r}, expected 'networks.lora'")
    if network_dim is not None and "ss_network_dim" in meta and meta["ss_network_dim"] != str(network_dim):
        problems.append(f"ss_network_dim is {meta['ss_network_dim']!r}, expected {network_dim}")
    if alpha is not None and "ss_network_alpha" in meta:
        try:
            ok = math.isclose(float(meta["ss_network_alpha"]), alpha, rel_tol=1e-6)
        except ValueError:
            ok = False
        if not ok:
            problems.append(f"ss_network_alpha is {meta['ss_network_alpha']!r}, expected {alpha:g}")
    return problems


def lora_summary(path: str | Path) -> dict[str, Any]:
    """Facts about a LoRA file for display: module counts per prefix, rank, dtype, family guess, output name."""
    header = read_header(path)
    names = {m.group("name") for k in header.tensors if (m := _KEY.match(k))}
    counts: dict[str, int] = {}
    for name in names:
        prefix = name.split("_", 2)[1]
        counts[f"lora_{prefix}"] = counts.get(f"lora_{prefix}", 0) + 1
    ranks = sorted({i.shape[0] for k, i in header.tensors.items() if k.endswith(".lora_down.weight")})
    return {
        "modules": counts,
        "ranks": ranks,
        "dtypes": sorted({i.dtype for i in header.tensors.values()}),
        "family": guess_family(set(header.tensors)),
        "output_name": header.metadata.get("ss_output_name"),
        "base_model_version": header.metadata.get("ss_base_model_version"),
    }
