"""`network_args` of `network_module = "lycoris.kohya"` (the lycoris-lora package), parsed and validated torch-free:
which algorithm, preset and options train, and what `ss_network_args` records.

lycoris.kohya.create_network reads each "key=value" string itself, leniently: a boolean is anything but "false"
(so "use_tucker=0" turns Tucker on) and an unknown key is ignored. Here every key must be one that
create_network reads for an algorithm ComfyUI and A1111 load, booleans must be true/false and numbers must be
numbers, or the config is refused naming the entry. The kohya_ss GUI writes some keys create_network never reads
(rank_dropout_scale, train_on_input): they are accepted, said in `config check`, and left out of the metadata.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gpurun.network_args import NetworkArgsError, split

#: algorithms gpurun trains, with what ComfyUI and A1111 load them as
ALGOS: dict[str, str] = {
    "lora": "LoCon (lora_down/lora_up, also on 3x3 convolutions); lycoris' name for locon",
    "locon": "LoCon (lora_down/lora_up, also on 3x3 convolutions)",
    "loha": "LoHa (hada_w1_a...: Hadamard product of two low-rank pairs)",
    "lokr": "LoKr (lokr_w1/lokr_w2: Kronecker product)",
    "diag-oft": "Diag-OFT (oft_blocks: block-diagonal orthogonal fine-tuning)",
}
#: algorithms lycoris has that gpurun refuses, and why
REFUSED_ALGOS: dict[str, str] = {
    # lycoris-lora 4.1.3: IA3Module.make_module_from_state_dict takes 4 arguments, its loader passes 5
    "ia3": "iA3 files cannot be read back by lycoris-lora's own loader (4.1.3) and ComfyUI does not load iA3; "
    "use locon, loha or lokr",
    "full": "full-weight diffs are the size of the base model; gpurun sizes and prices LoRA-sized networks",
    "dylora": "DyLoRA's state cannot be restored (lycoris ignores its load_state_dict), so a run could not resume",
    "glora": "GLoRA is not implemented; use locon or loha",
    "boft": "BOFT is not implemented; use diag-oft",
    "tlora": "T-LoRA is not implemented; use locon",
}
#: lycoris' built-in presets gpurun takes; conv = whether the preset adapts 3x3 convolutions (enable_conv)
PRESETS: dict[str, bool] = {
    "full": True,
    "full-lin": False,
    "attn-mlp": False,
    "unet-only": True,
    "unet-transformer-only": False,
    "unet-convblock-only": True,
}
REFUSED_PRESETS: dict[str, str] = {
    "attn-only": "it targets kohya's own CrossAttention class, which the diffusers UNet does not have; use attn-mlp",
    "ia3": "its target names match no module of an SD UNet in lycoris.kohya (and algo=ia3 is not taken)",
}
#: keys create_network reads, by kind
_BOOLS = (
    "use_tucker",
    "use_scalar",
    "train_norm",
    "dora_wd",
    "wd_on_output",
    "bypass_mode",
    "rescaled",
    "decompose_both",
    "full_matrix",
    "rs_lora",
    "unbalanced_factorization",
)
#: lycoris' older spellings, renamed by create_network; disable_conv_cp means the opposite of use_tucker
_TUCKER_ALIASES = ("use_cp", "use_conv_cp", "disable_conv_cp")
_FRACTIONS = ("dropout", "rank_dropout", "module_dropout")
#: GUI-written keys lycoris.kohya.create_network does not read: no effect, said in config check
NO_EFFECT: dict[str, str] = {
    "rank_dropout_scale": "lycoris.kohya's create_network does not pass it to the modules",
    "train_on_input": "lycoris.kohya's create_network does not pass it (it is an iA3 option)",
}
UNIMPLEMENTED: dict[str, str] = {
    "loraplus_lr_ratio": "LoRA+ is not implemented",
    "loraplus_unet_lr_ratio": "LoRA+ is not implemented",
    "loraplus_text_encoder_lr_ratio": "LoRA+ is not implemented",
    "train_t5xxl": "SD models have no T5 encoder",
    "train_llm_adapter": "SD models have no LLM adapter",
    "block_size": "only BOFT and DyLoRA read it, which gpurun does not train",
}
KNOWN = (
    "algo",
    "preset",
    "conv_dim",
    "conv_alpha",
    "factor",
    "constraint",
    "constrain",
    *_BOOLS,
    *_TUCKER_ALIASES,
    *_FRACTIONS,
)


@dataclass(frozen=True, slots=True)
class LycorisArgs:
    """What network_args asks of lycoris.kohya. `kwargs` are the entries passed on to create_network (strings,
    normalised); `conv_dim`/`conv_alpha` are lycoris' effective values (absent = the linear ones; conv_dim=0 turns
    the 3x3 convolutions off, as create_network reads the string "0")."""

    algo: str
    preset: str
    kwargs: dict[str, str] = field(default_factory=dict)
    #: keys given that have no effect, with why
    no_effect: dict[str, str] = field(default_factory=dict)

    @property
    def trains_conv(self) -> bool:
        """Whether 3x3 convolutions get modules (the preset's enable_conv and conv_dim > 0)."""
        return PRESETS[self.preset] and self.kwargs.get("conv_dim") != "0"

    def conv_dim(self, network_dim: int) -> int:
        return int(self.kwargs["conv_dim"]) if "conv_dim" in self.kwargs else network_dim

    def conv_alpha(self, network_alpha: float) -> float:
        return float(self.kwargs["conv_alpha"]) if "conv_alpha" in self.kwargs else network_alpha

    def metadata(self) -> dict[str, str]:
        """ss_network_args: every entry that was passed to lycoris (kohya writes its network kwargs as given)."""
        return {"algo": self.algo, "preset": self.preset, **self.kwargs}


def parse_lycoris_args(args: list[str]) -> LycorisArgs:
    """Validate lycoris.kohya's network_args; raises NetworkArgsError naming the entry."""
    seen: dict[str, str] = {}
    for raw in args:
        key, value = split(raw)
        if key in seen and seen[key] != value:
            # the kohya_ss GUI writes use_tucker twice (same value): only a contradiction is an error
            raise NetworkArgsError(f"network_args gives {key} twice ({seen[key]!r} and {value!r})")
        seen[key] = value
    algo = seen.pop("algo", "lora").lower()
    if algo in REFUSED_ALGOS:
        raise NetworkArgsError(f"network_args algo={algo}: {REFUSED_ALGOS[algo]}")
    if algo not in ALGOS:
        raise NetworkArgsError(
            f"network_args algo={algo!r} is not a LyCORIS algorithm; choose one of {', '.join(ALGOS)}"
        )
    preset = seen.pop("preset", "full")
    if preset in REFUSED_PRESETS:
        raise NetworkArgsError(f"network_args preset={preset}: {REFUSED_PRESETS[preset]}")
    if preset not in PRESETS:
        raise NetworkArgsError(
            f"network_args preset={preset!r} is not a built-in LyCORIS preset (a preset file is not sent to the box); "
            f"choose one of {', '.join(PRESETS)}"
        )
    kwargs: dict[str, str] = {}
    no_effect: dict[str, str] = {}
    tucker: list[bool] = []
    for key, value in seen.items():
        if key in NO_EFFECT:
            no_effect[key] = NO_EFFECT[key]
        elif key in UNIMPLEMENTED:
            raise NetworkArgsError(f"network_args {key}={value}: {UNIMPLEMENTED[key]}")
        elif key not in KNOWN:
            raise NetworkArgsError(
                f"network_args {key!r} is not an argument of lycoris.kohya; gpurun takes {', '.join(KNOWN)}"
            )
        elif key in _BOOLS or key in _TUCKER_ALIASES:
            flag = _bool(key, value)
            if key == "use_tucker" or key in _TUCKER_ALIASES:
                tucker.append(not flag if key == "disable_conv_cp" else flag)
            else:
                kwargs[key] = str(flag)
        elif key in _FRACTIONS:
            kwargs[key] = _plain(_number(key, value, low=0.0, high=1.0, high_open=True))
        elif key in ("constraint", "constrain"):
            kwargs["constraint"] = _plain(_number(key, value, low=0.0))
        elif key == "factor":
            factor = _whole(key, value)
            if factor != -1 and factor < 1:
                raise NetworkArgsError(f"network_args factor={value} must be -1 (automatic) or a positive number")
            kwargs[key] = str(factor)
        elif key == "conv_dim":
            dim = _whole(key, value)
            if not 0 <= dim <= 1024:
                raise NetworkArgsError(f"network_args conv_dim={value} must be from 0 (no 3x3 convolutions) to 1024")
            kwargs[key] = str(dim)
        else:  # conv_alpha; lycoris would read 0 as "alpha = rank", which no GUI means
            alpha = _number(key, value, low=0.0)
            if alpha == 0:
                raise NetworkArgsError(f"network_args conv_alpha={value} must be positive")
            kwargs[key] = _plain(alpha)
    if len(set(tucker)) > 1:
        raise NetworkArgsError("network_args use_tucker and its older spellings (use_cp, use_conv_cp) disagree")
    if tucker:
        kwargs["use_tucker"] = str(tucker[0])
    if kwargs.get("dora_wd") == "True" and algo not in ("lora", "locon", "loha", "lokr"):
        raise NetworkArgsError(f"network_args dora_wd=True: DoRA applies to locon, loha and lokr, not {algo}")
    return LycorisArgs(algo, preset, dict(sorted(kwargs.items())), no_effect)


def _bool(key: str, value: str) -> bool:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    # lycoris reads anything but "false" as true, so "0" or "no" would silently turn the option on
    raise NetworkArgsError(f"network_args {key}={value!r} must be True or False")


def _number(key: str, value: str, *, low: float, high: float | None = None, high_open: bool = False) -> float:
    try:
        number = float(value)
    except ValueError:
        raise NetworkArgsError(f"network_args {key}={value!r} is not a number") from None
    too_high = high is not None and (number >= high if high_open else number > high)
    if not math.isfinite(number) or number < low or too_high:
        bound = f"from {low:g} to below {high:g}" if high is not None else f"at least {low:g}"
        raise NetworkArgsError(f"network_args {key}={value} must be {bound}")
    return number


def _whole(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise NetworkArgsError(f"network_args {key}={value!r} is not a whole number") from None


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
