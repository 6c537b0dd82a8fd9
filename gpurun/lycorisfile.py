"""LyCORIS files (ss_network_module "lycoris.kohya") checked without torch: every key a kohya module name with the
tensor names its algorithm saves, named as ComfyUI, A1111 and kohya map them, and the metadata kohya writes.

The tensor names are lycoris-lora's (and what ComfyUI's and A1111's LyCORIS loaders read): LoCon lora_down.weight /
lora_up.weight (/ lora_mid.weight with Tucker), LoHa hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b (/ hada_t1, hada_t2),
LoKr lokr_w1 or lokr_w1_a/_b and lokr_w2 or lokr_w2_a/_b (/ lokr_t2), Diag-OFT oft_blocks
(/ rescale); every module may add alpha and DoRA's dora_scale; train_norm's norm layers w_norm / b_norm.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from gpurun.lorafile import (
    BASE_MODEL_VERSIONS,
    REQUIRED_METADATA,
    Family,
    SafetensorsError,
    read_header,
    read_scalar,
    unet_module_names,
)

LYCORIS_MODULE = "lycoris.kohya"
_NAME = re.compile(r"^(?P<name>lora_(?P<prefix>unet|te|te1|te2)_[A-Za-z0-9_]+)\.(?P<part>[a-z0-9_.]+)$")
#: the tensors of one module: required groups (any one alternative of each) and what may come along
_ALGO_PARTS: dict[str, tuple[tuple[tuple[str, ...], ...], tuple[str, ...]]] = {
    "locon": ((("lora_down.weight",), ("lora_up.weight",)), ("lora_mid.weight",)),
    "loha": ((("hada_w1_a",), ("hada_w1_b",), ("hada_w2_a",), ("hada_w2_b",)), ("hada_t1", "hada_t2")),
    "lokr": ((("lokr_w1", "lokr_w1_a"), ("lokr_w2", "lokr_w2_a")), ("lokr_w1_b", "lokr_w2_b", "lokr_t2")),
    "diag-oft": ((("oft_blocks",),), ("rescale",)),
}
_COMMON = ("alpha", "dora_scale")
_NORM = ("w_norm", "b_norm")
#: presets whose UNet targets include kohya's LoRA modules (every Transformer2DModel Linear / 1x1 conv)
TRANSFORMER_PRESETS = ("full", "full-lin", "attn-mlp", "unet-only", "unet-transformer-only")
#: SDXL names in diffusers' layout, which kohya's own tools do not map (kohya writes the sgm layout)
_DIFFUSERS_SDXL = ("lora_unet_down_blocks_", "lora_unet_up_blocks_", "lora_unet_mid_block_")


def verify_lycoris_file(
    path: str | Path,
    family: Family,
    *,
    algo: str,
    preset: str = "full",
    network_dim: int | None = None,
    network_alpha: float | None = None,
    conv_alpha: float | None = None,
    trains_text_encoder: bool | None = None,
) -> list[str]:
    """Problems with a LyCORIS file (empty list = every key loads where kohya's LyCORIS files load). Alphas are
    compared for LoCon and LoHa (network_alpha, or conv_alpha on a convolution); LoKr writes the rank as alpha
    where a factor is a full matrix, and Diag-OFT's alpha is its constraint."""
    try:
        header = read_header(path)
    except SafetensorsError as exc:
        return [str(exc)]
    required, optional = _ALGO_PARTS["locon" if algo == "lora" else algo]
    allowed = {p for group in required for p in group} | set(optional) | set(_COMMON) | set(_NORM)
    te_prefixes = {"te1", "te2"} if family == "sdxl" else {"te"}
    problems: list[str] = []
    modules: dict[str, set[str]] = {}
    for key in header.tensors:
        match = _NAME.match(key)
        if not match or match.group("part") not in allowed:
            problems.append(f"unexpected key {key!r}: not a tensor of a LyCORIS {algo} module")
            continue
        name, prefix = match.group("name"), match.group("prefix")
        if prefix != "unet" and prefix not in te_prefixes:
            problems.append(f"{key}: lora_{prefix}_ is not a {family} text encoder prefix")
        elif prefix != "unet" and not name.startswith(f"lora_{prefix}_text_model_"):
            problems.append(f"{key}: text encoder names keep text_model_ (lora_{prefix}_text_model_...)")
        elif family == "sdxl" and name.startswith(_DIFFUSERS_SDXL):
            problems.append(f"{key}: SDXL UNet names are kohya's sgm layout (input_blocks...), not diffusers'")
        modules.setdefault(name, set()).add(match.group("part"))
    if not modules:
        return [*problems, f"no LyCORIS modules for {family} found"]
    for name, parts in sorted(modules.items()):
        if parts & set(_NORM):
            continue  # train_norm's norm layers: w_norm (and b_norm) only
        for group in required:
            if not parts & set(group):
                problems.append(f"{name}: missing {' or '.join(f'{name}.{p}' for p in group)}")
        if network_alpha is not None and "alpha" in parts and algo in ("lora", "locon", "loha"):
            value = read_scalar(header, f"{name}.alpha")
            wanted = [a for a in (network_alpha, conv_alpha) if a is not None]
            if not any(math.isclose(value, a, rel_tol=2e-3) for a in wanted):
                problems.append(f"{name}.alpha is {value:g}, expected {' or '.join(f'{a:g}' for a in wanted)}")
    if preset in TRANSFORMER_PRESETS:
        missing = sorted(set(unet_module_names(family)) - modules.keys())
        if missing:
            problems.append(f"{len(missing)} of kohya's UNet attention modules are missing, e.g. {missing[0]}")
    has_te = any(not n.startswith("lora_unet_") for n in modules)
    if trains_text_encoder is not None and has_te != trains_text_encoder:
        problems.append("text encoder modules are " + ("present" if has_te else "missing"))
    problems += _check_metadata(header.metadata, family, algo, network_dim)
    return problems


def _check_metadata(meta: dict[str, str], family: Family, algo: str, network_dim: int | None) -> list[str]:
    problems = [f"metadata {key} is missing" for key in REQUIRED_METADATA if key not in meta]
    if meta.get("ss_network_module") != LYCORIS_MODULE:
        problems.append(f"ss_network_module is {meta.get('ss_network_module')!r}, expected {LYCORIS_MODULE!r}")
    version = meta.get("ss_base_model_version")
    if version is not None and version not in BASE_MODEL_VERSIONS[family]:
        problems.append(f"ss_base_model_version is {version!r}, expected one of {BASE_MODEL_VERSIONS[family]}")
    try:
        args = json.loads(meta.get("ss_network_args", "{}"))
    except json.JSONDecodeError:
        args = None
    if not isinstance(args, dict) or args.get("algo") != algo:
        problems.append(f"ss_network_args {meta.get('ss_network_args')!r} does not name algo {algo!r}")
    if network_dim is not None and meta.get("ss_network_dim") != str(network_dim):
        problems.append(f"ss_network_dim is {meta.get('ss_network_dim')!r}, expected {network_dim}")
    return problems
