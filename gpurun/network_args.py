"""kohya's `network_args` for `networks.lora`, parsed and validated: what is trained comes from here, and only what
is trained is written back into the file's `ss_network_args`.

kohya passes each "key=value" as a string keyword to `networks.lora.create_network`; `conv_dim` (int) and
`conv_alpha` (float, default 1 when conv_dim is given) turn on LoCon: LoRA on the 3x3 convolutions of the UNet's
ResNet blocks and down/upsamplers. Other arguments of networks.lora are refused by name with the reason; a name
networks.lora does not have is refused as unknown (a typo there would silently train something else in kohya).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: networks.lora arguments gpurun does not implement, with what to do instead
UNIMPLEMENTED: dict[str, str] = {
    "block_dims": "per-block ranks are not implemented; use network_dim",
    "block_alphas": "per-block alphas are not implemented; use network_alpha",
    "conv_block_dims": "per-block conv ranks are not implemented; use conv_dim",
    "conv_block_alphas": "per-block conv alphas are not implemented; use conv_alpha",
    "down_lr_weight": "per-block learning rates are not implemented",
    "mid_lr_weight": "per-block learning rates are not implemented",
    "up_lr_weight": "per-block learning rates are not implemented",
    "block_lr_zero_threshold": "per-block learning rates are not implemented",
    "rank_dropout": "LoRA rank dropout is not implemented; remove it (0 is accepted)",
    "module_dropout": "LoRA module dropout is not implemented; remove it (0 is accepted)",
    "loraplus_lr_ratio": "LoRA+ is not implemented",
    "loraplus_unet_lr_ratio": "LoRA+ is not implemented",
    "loraplus_text_encoder_lr_ratio": "LoRA+ is not implemented",
    "train_blocks": "not an option of networks.lora for SD",
}
#: arguments accepted only at a value where they change nothing
ZERO_IS_NO_OP = ("rank_dropout", "module_dropout")
SUPPORTED = ("conv_dim", "conv_alpha")


class NetworkArgsError(ValueError):
    """A network_args entry that is malformed, unknown or not implemented; the message names it."""


@dataclass(frozen=True, slots=True)
class NetworkArgs:
    """What network_args asks of networks.lora. conv_dim None = plain LoRA (no 3x3 convolutions)."""

    conv_dim: int | None = None
    conv_alpha: float | None = None

    @property
    def is_locon(self) -> bool:
        return self.conv_dim is not None and self.conv_dim > 0

    def metadata(self) -> dict[str, str]:
        """kohya's ss_network_args: the arguments that shaped the trained network, as strings."""
        if not self.is_locon:
            return {}
        return {"conv_dim": str(self.conv_dim), "conv_alpha": _plain(self.conv_alpha or 1.0)}

    def as_list(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.metadata().items()]


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def split(raw: str) -> tuple[str, str]:
    key, sep, value = raw.partition("=")
    key, value = key.strip(), value.strip().strip("\"'")
    if not sep or not key:
        raise NetworkArgsError(f'network_args entry {raw!r} is not key=value (e.g. "conv_dim=8")')
    return key, value


def parse_network_args(args: list[str]) -> NetworkArgs:
    """Validate networks.lora's network_args as kohya reads them; raises NetworkArgsError naming the entry."""
    seen: dict[str, str] = {}
    for raw in args:
        key, value = split(raw)
        if key in seen:
            raise NetworkArgsError(f"network_args gives {key} twice ({seen[key]!r} and {value!r})")
        seen[key] = value
        if key in ZERO_IS_NO_OP and _is_zero(value):
            continue
        if key in UNIMPLEMENTED:
            raise NetworkArgsError(f"network_args {key}={value}: {UNIMPLEMENTED[key]}")
        if key not in SUPPORTED:
            raise NetworkArgsError(
                f"network_args {key!r} is not an argument of networks.lora; gpurun takes {', '.join(SUPPORTED)}"
            )
    conv_dim = _int(seen["conv_dim"], "conv_dim") if "conv_dim" in seen else None
    conv_alpha = _float(seen["conv_alpha"], "conv_alpha") if "conv_alpha" in seen else None
    if conv_dim is not None and not 0 <= conv_dim <= 1024:
        raise NetworkArgsError(f"network_args conv_dim={conv_dim} must be from 0 (off) to 1024")
    if conv_alpha is not None and conv_alpha <= 0:
        raise NetworkArgsError(f"network_args conv_alpha={conv_alpha:g} must be positive")
    if conv_dim is None and conv_alpha is not None:
        # kohya reads conv_alpha only with conv_dim: alone it trains nothing, and it would be ignored silently
        raise NetworkArgsError("network_args conv_alpha needs conv_dim (kohya's LoCon rank); add conv_dim=<rank>")
    if not conv_dim:
        return NetworkArgs()
    return NetworkArgs(conv_dim=conv_dim, conv_alpha=1.0 if conv_alpha is None else conv_alpha)


def _is_zero(value: str) -> bool:
    try:
        return float(value) == 0
    except ValueError:
        return False


def _int(value: str, key: str) -> int:
    try:
        return int(value)  # kohya: int(conv_dim); "8.0" fails there too
    except ValueError:
        raise NetworkArgsError(f"network_args {key}={value!r} is not a whole number") from None


def _float(value: str, key: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise NetworkArgsError(f"network_args {key}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise NetworkArgsError(f"network_args {key}={value!r} is not a finite number")
    return number
