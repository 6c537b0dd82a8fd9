"""A LyCORIS file loaded the way kohya and the UIs load it: lycoris-lora's own `create_network_from_weights`, over
views of the diffusers model whose module names are the file's kohya names. The sample grid renders with it (so
the grid shows the file the user downloads), and the tests prove with it that every key of a file loads.

The views: SD 1.x/2.x UNets already carry kohya's names (diffusers paths); SDXL's are Stability's sgm layout, so
the view re-registers each leaf layer at its sgm path. A text encoder without a `text_model` level (transformers
5 flattened CLIPTextModel) is wrapped in one, since kohya's names keep it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpurun.lorafile import SafetensorsError, read_header
from gpurun.runner.export import sgm_unet_path

if TYPE_CHECKING:
    from gpurun.runner.model.loaded import LoadedModel

LYCORIS_MODULE = "lycoris.kohya"


def is_lycoris_file(path: str | Path) -> bool:
    """Whether a file says it was trained with lycoris.kohya (its ss_network_module)."""
    try:
        return read_header(path).metadata.get("ss_network_module") == LYCORIS_MODULE
    except SafetensorsError:
        return False


def kohya_views(model: LoadedModel) -> tuple[list[Any], Any]:
    """(text encoder views, UNet view) whose named_modules() are the kohya names, minus the lora_ prefixes."""
    import torch

    encoders = []
    for encoder in model.text_encoders:
        if hasattr(encoder, "text_model"):
            encoders.append(encoder)
        else:
            holder = torch.nn.Module()
            holder.text_model = encoder
            encoders.append(holder)
    if model.family != "sdxl":
        return encoders, model.unet
    lpb = int(model.unet.config.layers_per_block)
    with_attention = frozenset(i for i, block in enumerate(model.unet.up_blocks) if hasattr(block, "attentions"))
    view = torch.nn.Module()
    for path, module in model.unet.named_modules():
        if not path or any(True for _ in module.children()):
            continue
        try:
            target = sgm_unet_path(path, lpb, with_attention)
        except ValueError:
            continue  # conv_in, time_embedding...: not part of kohya's SDXL LyCORIS targets
        parent = view
        *parents, leaf = target.split(".")
        for part in parents:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, module)
    return encoders, view


def load_lycoris_file(model: LoadedModel, path: str | Path) -> tuple[Any, dict[str, Any]]:
    """The file as a lycoris network (not yet applied) and its tensors, through lycoris' own loader; raises
    ValueError naming the keys it did not take."""
    from lycoris import kohya as lycoris_kohya

    encoders, unet = kohya_views(model)
    te_arg: Any = encoders if model.family == "sdxl" else encoders[0]
    network, weights = lycoris_kohya.create_network_from_weights(1.0, str(path), None, te_arg, unet, for_inference=True)
    loaded = set(network.state_dict()) if _register(network) else set()
    left = sorted(set(weights) - loaded)
    if left:
        raise ValueError(f"{len(left)} keys of {Path(path).name} are not loaded by lycoris, e.g. {left[:3]}")
    return network, weights


def _register(network: Any) -> bool:
    # modules join the network's state_dict when applied; register them without hooking any forward yet
    network.loras = network.text_encoder_loras + network.unet_loras
    for lora in network.loras:
        network.add_module(lora.lora_name, lora)
    return True


@contextlib.contextmanager
def lycoris_file_applied(model: LoadedModel, path: str | Path) -> Iterator[Callable[[float], None]]:
    """Apply the file on top of the model for rendering; yields a setter of its weight (the multiplier). The
    training network, if any, is unhooked meanwhile (the grid shows the file alone, and its fp32 weights would
    meet half-precision inputs outside autocast), and everything is back as it was afterwards."""
    training = model.network
    network, weights = load_lycoris_file(model, path)
    network.load_state_dict(weights, strict=True)
    network.to(device=model.device, dtype=model.dtype)
    if training is not None:
        for lora in training.loras:
            lora.restore()
    for lora in network.loras:
        lora.apply_to()
    try:

        def set_weight(weight: float) -> None:
            for lora in network.loras:
                lora.multiplier = float(weight)

        yield set_weight
    finally:
        for lora in reversed(network.loras):
            lora.restore()
        if training is not None:
            for lora in training.loras:
                lora.apply_to()
