"""LyCORIS (`network_module = "lycoris.kohya"`) trained through the lycoris-lora package itself: the network kohya's
train_network.py builds with it, on the diffusers UNet and CLIP encoders; its parameters, resumable state, and its
tensors under the module paths the file's kohya names are made from.

lycoris.kohya.create_network matches module classes and names; kohya hands it kohya's own UNet. Two presets act
differently on the diffusers UNet, so gpurun adjusts the preset to train what kohya trains:
- lycoris-lora 4.1 lists TimestepEmbedding (for Anima) among the target classes and time_embedding.linear_1/2 among
  the target names: on diffusers' SD UNet both match and create_network fails on the duplicate name. The class is
  dropped; SD 1.x/2.x time embeddings are still reached by name, as on kohya's UNet.
- kohya's SDXL UNet is Stability's sgm layout, where conv_in, conv_out and time_embedding do not exist by those
  names: for SDXL the name targets are dropped, so neither they nor add_embedding train (as in kohya).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpurun.runner.lora import TEXT_ENCODER_NAMES, LoraParams

if TYPE_CHECKING:
    import torch

    from gpurun.lycoris_args import LycorisArgs
    from gpurun.runner.model.loaded import LoadedModel

STATE_PREFIX = "lycoris."


def kohya_preset(preset: str, family: str) -> dict[str, Any]:
    """lycoris' built-in preset, adjusted to act on the diffusers UNet as it acts on kohya's (see the module doc);
    the keys apply_preset keeps between networks are reset, so one network's preset never leaks into the next."""
    from lycoris.config import PRESET

    out: dict[str, Any] = {
        "module_algo_map": {},
        "name_algo_map": {},
        "use_fnmatch": False,
        "exclude_name": [],
        **{k: list(v) if isinstance(v, list) else v for k, v in dict(PRESET[preset]).items()},
    }
    out["unet_target_module"] = [m for m in out.get("unet_target_module", []) if m != "TimestepEmbedding"]
    if family == "sdxl":
        out["unet_target_name"] = []
    return out


def add_lycoris(
    model: LoadedModel,
    args: LycorisArgs,
    *,
    rank: int,
    alpha: float,
    train_text_encoder: bool,
    seed: int | None = None,
) -> LoraParams:
    """Build kohya's LyCORIS network (lycoris.kohya.create_network with the network_args given), apply it to the
    UNet and, when trained, the text encoders; it lives in `model.network`. Only its parameters train (fp32)."""
    import torch
    from lycoris import kohya as lycoris_kohya
    from lycoris.config import PRESET

    if model.network is not None:
        raise ValueError("the model already has a LyCORIS network")
    name = f"gpurun-{args.preset}-{model.family}"
    PRESET[name] = kohya_preset(args.preset, model.family)
    encoders = model.text_encoders if train_text_encoder else []
    # kohya hands create_network one text encoder for SD 1.x/2.x and the list of two for SDXL
    te_arg: Any = (encoders if model.family == "sdxl" else encoders[0]) if encoders else None
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        network = lycoris_kohya.create_network(
            1.0, rank, alpha, None, te_arg, model.unet, **{**args.kwargs, "algo": args.algo, "preset": name}
        )
    network.apply_to(te_arg, model.unet, apply_text_encoder=bool(encoders), apply_unet=True)
    if not network.unet_loras:
        raise ValueError(f"LyCORIS {args.algo} with preset {args.preset} adapts no UNet module")
    for module in (model.unet, *model.text_encoders):
        module.requires_grad_(False)
    network.to(device=model.device, dtype=torch.float32)
    network.requires_grad_(True)
    model.network = network

    unet = [p for lora in network.unet_loras for p in lora.parameters()]
    text: list[list[Any]] = [[] for _ in model.text_encoders]
    for lora in network.text_encoder_loras:
        text[_encoder_index(lora.lora_name)].extend(lora.parameters())
    counts = {"unet_modules": len(network.unet_loras), "unet_params": sum(p.numel() for p in unet)}
    for index, component in enumerate(TEXT_ENCODER_NAMES[: len(model.text_encoders)]):
        counts[f"{component}_modules"] = sum(
            1 for lora in network.text_encoder_loras if _encoder_index(lora.lora_name) == index
        )
        counts[f"{component}_params"] = sum(p.numel() for p in text[index])
    return LoraParams(unet=unet, text_encoders=text, counts=counts)


def _encoder_index(lora_name: str) -> int:
    # lycoris names SDXL's encoders lora_te1_ / lora_te2_, a single encoder lora_te_
    return 1 if lora_name.startswith("lora_te2_") else 0


def module_tensors(model: LoadedModel) -> list[tuple[str, str, str, torch.Tensor]]:
    """(component, module path, tensor name, tensor) for every tensor the network saves, e.g. ("unet",
    "down_blocks.0.resnets.0.conv1", "hada_w1_a", ...): the path is the diffusers module the LyCORIS module wraps,
    from which the exporter makes kohya's name. Tensors are fp32 on the CPU."""
    network = model.network
    if network is None:
        raise ValueError("the model has no LyCORIS network")
    paths: dict[int, tuple[str, str]] = {}
    for component, root in [("unet", model.unet), *zip(TEXT_ENCODER_NAMES, model.text_encoders, strict=False)]:
        for path, module in root.named_modules():
            paths.setdefault(id(module), (component, path))
    out = []
    for lora in network.loras:
        component, path = paths[id(lora.org_module[0])]
        for key, value in lora.state_dict().items():
            out.append((component, path, key, value.detach().float().cpu().contiguous()))
    return out


def lycoris_state(model: LoadedModel) -> dict[str, torch.Tensor]:
    """The network's weights (CPU copies) for a resumable training state."""
    assert model.network is not None
    return {STATE_PREFIX + k: v.detach().to("cpu", copy=True) for k, v in model.network.state_dict().items()}


def load_lycoris_state(model: LoadedModel, state: dict[str, torch.Tensor]) -> None:
    """Restore weights saved by lycoris_state; the key sets must match exactly (same algo, preset and dims)."""
    network = model.network
    assert network is not None
    want = set(network.state_dict())
    given = {k.removeprefix(STATE_PREFIX): v for k, v in state.items() if k.startswith(STATE_PREFIX)}
    missing, unexpected = sorted(want - given.keys()), sorted(given.keys() - want)
    if missing or unexpected or len(given) != len(state):
        raise ValueError(
            f"LyCORIS state does not fit the network: {len(missing)} missing (e.g. {missing[:1]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:1]}); was it saved with other network_args, "
            "network_dim, text-encoder training or base model?"
        )
    network.load_state_dict(given, strict=True)
