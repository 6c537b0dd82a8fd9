"""A kohya LoRA file to start training from (kohya's `network_weights`, with `dim_from_weights`), read and checked
without torch, on the laptop before anything is rented and again where the runner loads it.

kohya's meaning (train_network.py): the network is built from network_dim/network_alpha (or, with
dim_from_weights, from the ranks and alphas in the file: networks/lora.py `create_network_from_weights`), then the
file's weights are loaded over it with `load_state_dict(strict=False)`. kohya loads the file's alpha buffers but
keeps the scale of network_alpha ("FIXME ... assumes that the alpha is not changed"), and silently drops keys
that match no module. gpurun refuses both cases instead of training something other than what the files say: a
file whose rank or alpha differs from the config (without dim_from_weights), keys that are not kohya LoRA
modules of the base family, text-encoder weights in a UNet-only run, LoCon conv weights in a run without conv_dim.
Modules the file lacks start fresh, as in kohya (a UNet-only file continued with the text encoder trained).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from gpurun.errors import ConfigError
from gpurun.lorafile import (
    Family,
    SafetensorsError,
    guess_family,
    locon_module_names,
    read_header,
    read_scalar,
    text_encoder_module_names,
    unet_module_names,
)

_PARTS = (".lora_down.weight", ".lora_up.weight", ".alpha")


@dataclass(frozen=True, slots=True)
class LoraWeights:
    """What a kohya LoRA file holds: its modules, their rank and alpha (LoRA and LoCon 3x3 apart)."""

    path: Path
    modules: frozenset[str]
    dim: int
    alpha: float
    #: rank and alpha of the 3x3 convolution modules (kohya's LoCon), None when there are none
    conv_dim: int | None
    conv_alpha: float | None
    #: the file's family as its key names tell it (None: no kohya keys)
    family: Family | None

    @property
    def has_text_encoder(self) -> bool:
        return any(name.startswith("lora_te") for name in self.modules)


def read_lora_weights(path: str | Path) -> LoraWeights:
    """Read a kohya LoRA file's header. Raises ConfigError naming the file when it is not one, or when its
    modules do not share one rank and alpha (one for LoRA modules, one for 3x3 conv modules)."""
    path = Path(path).expanduser()
    where = f"network_weights {path}"
    if not path.is_file():
        raise ConfigError("the LoRA file to continue from is not found", where=where, hint="check network_weights")
    try:
        header = read_header(path)
    except SafetensorsError as exc:
        raise ConfigError(str(exc), where=where, hint="network_weights must be a kohya LoRA .safetensors") from None
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, info in header.tensors.items():
        part = next((p for p in _PARTS if key.endswith(p)), None)
        if part is None or not key.startswith("lora_"):
            raise ConfigError(
                f"{key!r} is not a kohya LoRA key (lora_unet_*/lora_te*_* .lora_down/.lora_up/.alpha)",
                where=where,
                hint="only kohya-format LoRA files (networks.lora, LoCon) can be continued",
            )
        modules.setdefault(key[: -len(part)], {})[part] = info.shape
    if not modules:
        raise ConfigError("the file holds no LoRA weights", where=where)
    ranks: dict[bool, set[int]] = {False: set(), True: set()}
    alphas: dict[bool, set[float]] = {False: set(), True: set()}
    for name, parts in sorted(modules.items()):
        down, up = parts.get(".lora_down.weight"), parts.get(".lora_up.weight")
        if down is None or up is None or len(down) not in (2, 4) or up[1] != down[0]:
            raise ConfigError(f"module {name} has no matching lora_down/lora_up pair", where=where)
        kxk = len(down) == 4 and tuple(down[2:]) != (1, 1)
        ranks[kxk].add(down[0])
        # kohya: a file without alpha (old LoRA) means alpha = rank
        alpha = read_scalar(header, f"{name}.alpha") if ".alpha" in parts else float(down[0])
        if not math.isfinite(alpha) or alpha <= 0:
            raise ConfigError(f"module {name} has alpha {alpha}", where=where, hint="alpha must be a positive number")
        alphas[kxk].add(round(alpha, 6))
    for kxk, what in ((False, "LoRA"), (True, "LoCon 3x3 conv")):
        if len(ranks[kxk]) > 1 or len(alphas[kxk]) > 1:
            raise ConfigError(
                f"its {what} modules have different ranks {sorted(ranks[kxk])} or alphas {sorted(alphas[kxk])}",
                where=where,
                hint="per-module ranks (resized LoRAs) are not implemented: continue from a file with one rank",
            )
    if not ranks[False]:
        raise ConfigError("the file has only 3x3 conv modules", where=where)
    return LoraWeights(
        path=path,
        modules=frozenset(modules),
        dim=ranks[False].pop(),
        alpha=alphas[False].pop(),
        conv_dim=next(iter(ranks[True]), None),
        conv_alpha=next(iter(alphas[True]), None),
        family=guess_family(set(header.tensors)),
    )


def check_family(weights: LoraWeights, family: Family) -> None:
    """Every module of the file is a kohya LoRA/LoCon module of `family`. Raises ConfigError naming the file."""
    where = f"network_weights {weights.path}"
    if weights.family is not None and weights.family != family:
        raise ConfigError(
            f"the file is a {weights.family} LoRA, the base model is {family}",
            where=where,
            hint="continue from a LoRA trained on the same base family",
        )
    required, optional = locon_module_names(family)
    known = {*unet_module_names(family), *required, *optional}
    known |= {name for names in text_encoder_module_names(family).values() for name in names}
    strangers = sorted(weights.modules - known)
    if strangers:
        raise ConfigError(
            f"{len(strangers)} module(s) are not {family} kohya LoRA modules, e.g. {strangers[0]}",
            where=where,
            hint="continue from a kohya networks.lora file of the same base family",
        )
