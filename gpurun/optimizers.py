"""kohya's optimizers by name: which class each `optimizer_type` builds, which `optimizer_args` it takes, and
those arguments parsed and checked before anything is rented (torch-free: the runner builds the classes).

kohya matches `optimizer_type` lower-cased ("" is AdamW) and passes each "key=value" of `optimizer_args` through
`ast.literal_eval` as a keyword of the class. A keyword the class does not have fails there only when the
optimizer is built, on the rented GPU; here it is an error naming the argument. The argument lists are the
signatures of the locked packages (tests/test_optimizers.py compares them with the installed classes).
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Any, Literal

#: how a value is checked: a number, a whole number, true/false, or a tuple of that many numbers
Kind = Literal["float", "int", "bool", "pair", "triple"]


class OptimizerArgsError(ValueError):
    """An optimizer_type or optimizer_args entry that is malformed, unknown or of the wrong kind; names it."""


@dataclass(frozen=True, slots=True)
class Optimizer:
    """One kohya optimizer_type: its canonical spelling, the class (ss_optimizer's name), the package the box
    installs for it, the keyword arguments it takes, and whether it adapts its own step size from the lr
    (D-Adaptation, Prodigy: kohya asks lr ~1.0 and one rate for every parameter group)."""

    name: str
    class_path: str
    package: str
    args: dict[str, Kind]
    adaptive: bool = False


_ADAM: dict[str, Kind] = {"betas": "pair", "eps": "float", "weight_decay": "float", "amsgrad": "bool"}
_BNB_8BIT: dict[str, Kind] = {"min_8bit_size": "int"}
_LION: dict[str, Kind] = {"betas": "pair", "weight_decay": "float"}
_DADAPT: dict[str, Kind] = {"log_every": "int", "d0": "float", "growth_rate": "float", "weight_decay": "float"}
_FSDP: dict[str, Kind] = {"fsdp_in_use": "bool"}


def _spec(name: str, class_path: str, package: str, args: dict[str, Kind], adaptive: bool = False) -> Optimizer:
    return Optimizer(name, class_path, package, args, adaptive)


OPTIMIZERS: dict[str, Optimizer] = {
    spec.name.lower(): spec
    for spec in (
        _spec(
            "AdamW",
            "torch.optim.adamw.AdamW",
            "torch",
            {**_ADAM, "maximize": "bool", "foreach": "bool", "capturable": "bool", "fused": "bool"},
        ),
        _spec("AdamW8bit", "bitsandbytes.optim.adamw.AdamW8bit", "bitsandbytes", {**_ADAM, **_BNB_8BIT}),
        _spec(
            "Adafactor",
            "transformers.optimization.Adafactor",
            "transformers",
            {
                "eps": "pair",
                "clip_threshold": "float",
                "decay_rate": "float",
                "beta1": "float",
                "weight_decay": "float",
                "scale_parameter": "bool",
                "relative_step": "bool",
                "warmup_init": "bool",
            },
        ),
        _spec(
            "Prodigy",
            "prodigyopt.prodigy.Prodigy",
            "prodigyopt",
            {
                "betas": "pair",
                "beta3": "float",
                "eps": "float",
                "weight_decay": "float",
                "decouple": "bool",
                "use_bias_correction": "bool",
                "safeguard_warmup": "bool",
                "d0": "float",
                "d_coef": "float",
                "growth_rate": "float",
                "slice_p": "int",
                **_FSDP,
            },
            adaptive=True,
        ),
        _spec("Lion", "lion_pytorch.lion_pytorch.Lion", "lion-pytorch", {**_LION, "decoupled_weight_decay": "bool"}),
        _spec("Lion8bit", "bitsandbytes.optim.lion.Lion8bit", "bitsandbytes", {**_LION, **_BNB_8BIT}),
        _spec("PagedLion8bit", "bitsandbytes.optim.lion.PagedLion8bit", "bitsandbytes", {**_LION, **_BNB_8BIT}),
        # kohya: "DAdaptation" is DAdaptAdamPreprint, the first D-Adaptation Adam
        _spec(
            "DAdaptation",
            "dadaptation.experimental.dadapt_adam_preprint.DAdaptAdamPreprint",
            "dadaptation",
            {**_DADAPT, **_FSDP, "betas": "pair", "eps": "float", "decouple": "bool"},
            adaptive=True,
        ),
        _spec(
            "DAdaptAdamPreprint",
            "dadaptation.experimental.dadapt_adam_preprint.DAdaptAdamPreprint",
            "dadaptation",
            {**_DADAPT, **_FSDP, "betas": "pair", "eps": "float", "decouple": "bool"},
            adaptive=True,
        ),
        _spec(
            "DAdaptAdam",
            "dadaptation.dadapt_adam.DAdaptAdam",
            "dadaptation",
            {**_DADAPT, **_FSDP, "betas": "pair", "eps": "float", "decouple": "bool", "use_bias_correction": "bool"},
            adaptive=True,
        ),
        _spec(
            "DAdaptAdaGrad",
            "dadaptation.dadapt_adagrad.DAdaptAdaGrad",
            "dadaptation",
            {**_DADAPT, "momentum": "float", "eps": "float"},
            adaptive=True,
        ),
        _spec(
            "DAdaptAdan",
            "dadaptation.dadapt_adan.DAdaptAdan",
            "dadaptation",
            {**_DADAPT, "betas": "triple", "eps": "float", "no_prox": "bool"},
            adaptive=True,
        ),
        _spec(
            "DAdaptAdanIP",
            "dadaptation.experimental.dadapt_adan_ip.DAdaptAdanIP",
            "dadaptation",
            {**_DADAPT, "betas": "triple", "eps": "float", "no_prox": "bool"},
            adaptive=True,
        ),
        _spec(
            "DAdaptLion",
            "dadaptation.dadapt_lion.DAdaptLion",
            "dadaptation",
            {k: v for k, v in {**_DADAPT, **_FSDP, "betas": "pair"}.items() if k != "growth_rate"},
            adaptive=True,
        ),
        _spec(
            "DAdaptSGD",
            "dadaptation.dadapt_sgd.DAdaptSGD",
            "dadaptation",
            {**_DADAPT, **_FSDP, "momentum": "float"},
            True,
        ),
    )
}
#: kohya optimizers gpurun does not train with, and why (named in the refusal instead of "unknown")
REFUSED: dict[str, str] = {
    "sgdnesterov": "SGD with Nesterov momentum is not implemented",
    "sgdnesterov8bit": "SGD with Nesterov momentum is not implemented",
    "pagedadamw": "paged AdamW is not implemented",
    "pagedadamw8bit": "paged AdamW is not implemented",
    "pagedadamw32bit": "paged AdamW is not implemented",
    "ademamix8bit": "AdEMAMix is not implemented",
    "pagedademamix8bit": "AdEMAMix is not implemented",
}
#: arguments kohya passes itself: given again in optimizer_args they would clash
_RESERVED = {"params": "the parameters are gpurun's", "lr": "use learning_rate (and unet_lr / text_encoder_lr)"}


def optimizer(name: str) -> Optimizer:
    """The optimizer kohya's `optimizer_type` names (any case; "" is AdamW, as kohya); raises
    OptimizerArgsError naming it when gpurun does not have it."""
    key = name.strip().lower() or "adamw"
    spec = OPTIMIZERS.get(key)
    if spec is not None:
        return spec
    known = ", ".join(s.name for s in OPTIMIZERS.values())
    if key in REFUSED:
        raise OptimizerArgsError(f"optimizer {name!r} is not available ({REFUSED[key]}); choose one of {known}")
    raise OptimizerArgsError(f"unsupported optimizer {name!r}; choose one of {known}")


def parse_optimizer_args(args: list[str]) -> dict[str, Any]:
    """kohya's `optimizer_args = ["weight_decay=0.01", "betas=0.9,0.99"]` → keyword arguments (literal_eval, as
    kohya; true/false in any case are booleans, anything else unreadable stays a string)."""
    out: dict[str, Any] = {}
    for raw in args:
        key, sep, value = raw.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise OptimizerArgsError(f'optimizer_args entry {raw!r} is not key=value (e.g. "weight_decay=0.01")')
        if key in out:
            raise OptimizerArgsError(f"optimizer_args gives {key} twice")
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            parsed = value.strip()
            if parsed.lower() in ("true", "false"):
                parsed = parsed.lower() == "true"
        out[key] = parsed
    return out


def check_optimizer_args(name: str, args: list[str]) -> dict[str, Any]:
    """The keyword arguments of `optimizer_type` = name, parsed and checked: each must be an argument of that
    optimizer, of the right kind. Raises OptimizerArgsError naming the argument and value."""
    spec = optimizer(name)
    kwargs = parse_optimizer_args(args)
    for key, value in kwargs.items():
        if key in _RESERVED:
            raise OptimizerArgsError(f"optimizer_args {key} is not taken: {_RESERVED[key]}")
        kind = spec.args.get(key)
        if kind is None:
            raise OptimizerArgsError(
                f"optimizer_args {key!r} is not an argument of {spec.name}; it takes {', '.join(sorted(spec.args))}"
            )
        problem = _kind_problem(kind, value)
        if problem:
            raise OptimizerArgsError(f"optimizer_args {key}={value!r} for {spec.name} {problem}")
    return kwargs


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _kind_problem(kind: Kind, value: Any) -> str | None:
    if kind == "float":
        return None if _is_number(value) else "must be a finite number"
    if kind == "int":
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be a whole number"
    if kind == "bool":
        return None if isinstance(value, bool) else "must be True or False"
    size = 2 if kind == "pair" else 3
    if isinstance(value, (tuple, list)) and len(value) == size and all(_is_number(v) for v in value):
        return None
    return f"must be {size} numbers separated by commas (e.g. {'0.9,0.99' if size == 2 else '0.98,0.92,0.99'})"
