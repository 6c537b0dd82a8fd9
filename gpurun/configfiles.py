"""The files a training config names besides the images: kohya's dataset config TOML (its dataset-level values
become the config's) and the LoRA file to continue from (checked against the config, or giving it its rank)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gpurun.errors import ConfigError
from gpurun.kohya_dataset import load_dataset_config
from gpurun.lorainit import read_lora_weights
from gpurun.network_args import NetworkArgsError, parse_network_args


def dataset_settings(value: Any, fallback: dict[str, Any], base_dir: Path | None, source: str) -> dict[str, Any]:
    """The dataset config's resolution, batch size and bucket keys, which win over the training config's (kohya
    reads them from the dataset config, falling back to the training config: `fallback`)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("must be the path of a dataset config TOML", where=f"{source}: dataset_config")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return load_dataset_config(path).settings(fallback)


def with_weights_settings(flat: dict[str, Any], base_dir: Path | None, source: str) -> dict[str, Any]:
    """network_weights read and checked against the config (see gpurun.lorainit); with dim_from_weights its rank,
    alpha and LoCon conv rank/alpha become the config's, and a file without text-encoder weights trains the UNet
    only (kohya builds the network from the file's modules)."""
    value = flat["network_weights"]
    where = f"{source}: network_weights"
    if not isinstance(value, str):
        raise ConfigError("must be the path of a kohya LoRA .safetensors", where=where)
    path = Path(value).expanduser()
    weights = read_lora_weights(path if path.is_absolute() else (base_dir or Path.cwd()) / path)
    try:
        network = parse_network_args(flat.get("network_args") or [])
    except NetworkArgsError:
        return flat  # the field's own validation names the bad argument
    if flat.get("dim_from_weights"):
        args = [
            a for a in flat.get("network_args") or [] if a.partition("=")[0].strip() not in ("conv_dim", "conv_alpha")
        ]
        if weights.conv_dim is not None:
            args += [f"conv_dim={weights.conv_dim}", f"conv_alpha={weights.conv_alpha:g}"]
        flat = {**flat, "network_dim": weights.dim, "network_alpha": weights.alpha, "network_args": args}
        if not weights.has_text_encoder:
            flat["network_train_unet_only"] = True
        return flat
    dim, alpha = flat.get("network_dim", 4), flat.get("network_alpha", 1.0)
    problems = []
    if weights.dim != dim or not math.isclose(weights.alpha, float(alpha), rel_tol=1e-6):
        problems.append(
            f"rank {weights.dim} and alpha {weights.alpha:g}, the config network_dim {dim} and alpha {alpha}"
        )
    if weights.conv_dim is not None and (
        network.conv_dim != weights.conv_dim or not math.isclose(weights.conv_alpha or 0, network.conv_alpha or 1.0)
    ):
        problems.append(
            f"LoCon conv_dim {weights.conv_dim} and conv_alpha {weights.conv_alpha:g}, network_args "
            f"conv_dim {network.conv_dim} and conv_alpha {network.conv_alpha}"
        )
    if problems:
        raise ConfigError(
            f"{weights.path} has " + "; ".join(problems) + " (kohya would train at the config's scale and save "
            "the file's alpha)",
            where=where,
            hint="set dim_from_weights = true to take them from the file, or match network_dim/network_alpha",
        )
    if weights.has_text_encoder and flat.get("network_train_unet_only"):
        raise ConfigError(
            f"{weights.path} has text-encoder weights, and network_train_unet_only drops them from the new file",
            where=where,
            hint="train the text encoder too, or continue from a UNet-only file",
        )
    return flat
