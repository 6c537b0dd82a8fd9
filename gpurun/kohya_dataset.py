"""kohya's dataset config TOML (`--dataset_config`): `[general]`, `[[datasets]]`, `[[datasets.subsets]]`, validated
strictly and resolved into subsets with kohya's precedence.

kohya's meaning (sd-scripts library/config_util.py): a value is looked up in the subset, then its dataset, then
`[general]`, then the training config's own key (`train_batch_size` for `batch_size`), then kohya's default. Subset
keys (`num_repeats`, `caption_extension`, `class_tokens`, `shuffle_caption`, `keep_tokens`, `flip_aug`,
`caption_dropout_rate`) may sit at any of the three levels; dataset keys (`resolution`, `batch_size`, the bucket
keys) in a dataset or `[general]`; `image_dir` and `is_reg` only in a subset. Relative `image_dir`s are taken
relative to the dataset config file's folder (kohya takes them relative to its working directory, which the GUI
sets to nothing in particular: the file's folder is what a config that travels with its images means).

gpurun trains one dataset: a second `[[datasets]]` (kohya's own resolution and batch size per dataset) is refused,
and so is every key the runner cannot honour at the value given, with the reason; nothing is ignored silently.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpurun.errors import ConfigError
from gpurun.safenames import has_control_chars

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: the largest training side (as TrainConfig's)
MAX_RESOLUTION = 8192

#: keys kohya reads that gpurun accepts only at the values listed (where they change nothing), and why
_ONLY_AT: dict[str, tuple[tuple[Any, ...], str]] = {
    "color_aug": ((False,), "colour augmentation is not implemented (kohya refuses it with cached latents too)"),
    "random_crop": ((False,), "random crop is not implemented (kohya refuses it with cached latents too)"),
    "face_crop_aug_range": ((), "face-crop augmentation is not implemented"),
    "keep_tokens_separator": (("",), "keep_tokens_separator is not implemented; use keep_tokens"),
    "secondary_separator": (("",), "secondary_separator is not implemented"),
    "caption_separator": ((",",), "captions are split at commas"),
    "enable_wildcard": ((False,), "wildcard captions are not implemented"),
    "token_warmup_min": ((1,), "token warmup is not implemented"),
    "token_warmup_step": ((0,), "token warmup is not implemented"),
    "caption_prefix": (("",), "caption_prefix is not implemented; write it into the captions"),
    "caption_suffix": (("",), "caption_suffix is not implemented; write it into the captions"),
    "custom_attributes": (({},), "custom attributes are not read by any gpurun network"),
    "caption_dropout_every_n_epochs": ((0,), "not implemented; use caption_dropout_rate"),
    "caption_tag_dropout_rate": ((0,), "not implemented; use caption_dropout_rate"),
    "resize_interpolation": (("lanczos",), "gpurun resizes with Lanczos"),
    "validation_split": ((0,), "validation is not implemented"),
    "validation_seed": ((), "validation is not implemented"),
    "network_multiplier": ((1,), "a per-dataset network multiplier is not implemented"),
    "alpha_mask": ((False,), "masked loss is not implemented"),
    "metadata_file": ((), "fine-tuning datasets (metadata_file) are not implemented; use image_dir with captions"),
    "conditioning_data_dir": ((), "ControlNet datasets are not implemented"),
}
#: kohya keys with no effect at any value in gpurun
_NO_OP = {"cache_info": "image sizes are read from the headers; there is no info cache"}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, str) and isinstance(b, str):
        return a.strip().lower() == b.lower()
    return bool(a == b)


class _Table(BaseModel):
    """A table of the file: unknown keys are errors; kohya keys gpurun cannot honour are refused by name."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=False)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unhonoured(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        kept = {}
        for key, value in data.items():
            if key in _NO_OP:
                continue
            rule = _ONLY_AT.get(key)
            if rule is None:
                kept[key] = value
                continue
            accepted, why = rule
            if not any(_same(value, v) for v in accepted):
                at = " or ".join(json.dumps(v) for v in accepted)
                raise ValueError(
                    f"{key} = {json.dumps(value, default=str)} is refused: {why}"
                    + (f" (accepted only as {at})" if accepted else "")
                )
        return kept


class _SubsetKeys(_Table):
    """Keys kohya lets a subset inherit from its dataset and `[general]`."""

    num_repeats: int | None = Field(default=None, ge=1, le=100_000)
    caption_extension: str | None = None
    class_tokens: str | None = None
    shuffle_caption: bool | None = None
    keep_tokens: int | None = Field(default=None, ge=0)
    flip_aug: bool | None = None
    caption_dropout_rate: float | None = Field(default=None, ge=0.0, le=1.0)

    @field_validator("caption_extension")
    @classmethod
    def _check_ext(cls, value: str | None) -> str | None:
        if value is None:
            return value
        value = value if value.startswith(".") else f".{value}"
        if len(value) < 2 or not all(ch.isalnum() or ch in "_-" for ch in value[1:]):
            raise ValueError("must be a file extension such as '.txt'")
        return value

    @field_validator("class_tokens")
    @classmethod
    def _check_tokens(cls, value: str | None) -> str | None:
        if value is not None and has_control_chars(value):
            raise ValueError(f"{value!r} holds control characters")
        return value


class _DatasetKeys(_SubsetKeys):
    """Keys of a dataset (and `[general]`)."""

    resolution: int | tuple[int, int] | None = None
    batch_size: int | None = Field(default=None, ge=1, le=256)
    enable_bucket: bool | None = None
    min_bucket_reso: int | None = Field(default=None, ge=64, le=MAX_RESOLUTION)
    max_bucket_reso: int | None = Field(default=None, ge=64, le=MAX_RESOLUTION)
    bucket_reso_steps: int | None = Field(default=None, ge=1, le=MAX_RESOLUTION)
    bucket_no_upscale: bool | None = None

    @field_validator("resolution")
    @classmethod
    def _check_resolution(cls, value: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
        sides = [value] if isinstance(value, int) else list(value or ())
        if any(not 64 <= side <= MAX_RESOLUTION for side in sides):
            raise ValueError(f"each side must be from 64 to {MAX_RESOLUTION}")
        return value


class _Subset(_SubsetKeys):
    image_dir: str
    is_reg: bool = False

    @field_validator("image_dir")
    @classmethod
    def _check_dir(cls, value: str) -> str:
        if not value.strip() or has_control_chars(value):
            raise ValueError(f"{value!r} is not a folder path")
        return value


class _Dataset(_DatasetKeys):
    subsets: list[_Subset] = Field(min_length=1)


class _File(_Table):
    general: _DatasetKeys = Field(default_factory=_DatasetKeys)
    datasets: list[_Dataset] = Field(min_length=1, max_length=1)


#: the dataset-level keys, as TrainConfig names them (and kohya's defaults where the training config has none)
DATASET_KEYS = (
    "resolution",
    "batch_size",
    "enable_bucket",
    "min_bucket_reso",
    "max_bucket_reso",
    "bucket_reso_steps",
    "bucket_no_upscale",
)
#: the subset keys the training config may give as fallbacks
SUBSET_KEYS = ("caption_extension", "shuffle_caption", "keep_tokens", "flip_aug", "caption_dropout_rate")
_SUBSET_DEFAULTS: dict[str, Any] = {
    "num_repeats": 1,
    "class_tokens": "",
    "caption_extension": ".caption",
    "shuffle_caption": False,
    "keep_tokens": 0,
    "flip_aug": False,
    "caption_dropout_rate": 0.0,
}


@dataclass(frozen=True, slots=True)
class CaptionRules:
    """How a subset's captions and latents are augmented each step (kohya's per-subset options)."""

    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    flip_aug: bool = False


@dataclass(frozen=True, slots=True)
class Subset:
    """One resolved subset: a folder of images with its own repeats, class tokens, captions and augmentation."""

    image_dir: Path
    num_repeats: int
    class_tokens: str
    caption_extension: str
    is_reg: bool
    rules: CaptionRules


@dataclass(frozen=True, slots=True)
class DatasetConfig:
    """A dataset config file, validated: the raw tables, resolved on demand against the training config."""

    path: Path
    general: dict[str, Any]
    dataset: dict[str, Any]
    subsets: tuple[dict[str, Any], ...]

    def settings(self, fallback: Mapping[str, Any]) -> dict[str, Any]:
        """The dataset-level values (TrainConfig's names), dataset > general > `fallback` (the training config)."""
        out = {}
        for key in DATASET_KEYS:
            value = _first(key, self.dataset, self.general, fallback)
            if value is not None:
                out[key] = value
        return out

    def resolved(self, fallback: Mapping[str, Any]) -> list[Subset]:
        """Every subset with each key looked up subset > dataset > general > `fallback` > kohya's default."""
        subsets = []
        for raw in self.subsets:
            values = {
                key: _first(key, raw, self.dataset, self.general, fallback, _SUBSET_DEFAULTS)
                for key in _SUBSET_DEFAULTS
            }
            folder = Path(raw["image_dir"]).expanduser()
            subsets.append(
                Subset(
                    image_dir=folder if folder.is_absolute() else (self.path.parent / folder).resolve(),
                    num_repeats=int(values["num_repeats"]),
                    class_tokens=str(values["class_tokens"]),
                    caption_extension=str(values["caption_extension"]),
                    is_reg=bool(raw.get("is_reg", False)),
                    rules=CaptionRules(
                        shuffle_caption=bool(values["shuffle_caption"]),
                        keep_tokens=int(values["keep_tokens"]),
                        caption_dropout_rate=float(values["caption_dropout_rate"]),
                        flip_aug=bool(values["flip_aug"]),
                    ),
                )
            )
        return subsets


def _first(key: str, *levels: Mapping[str, Any]) -> Any:
    for level in levels:
        value = level.get(key)
        if value is not None:
            return value
    return None


def load_dataset_config(path: str | Path) -> DatasetConfig:
    """Read and validate a kohya dataset config TOML. Raises ConfigError naming the file and the field."""
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("dataset config file not found", where=str(path), hint="check dataset_config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the dataset config: {exc}", where=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", where=str(path), hint="fix the TOML syntax") from None
    except RecursionError:
        raise ConfigError("not valid TOML: nested too deeply", where=str(path)) from None
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        raise _error(exc, path) from None
    dataset = parsed.datasets[0]
    general = parsed.general.model_dump(exclude_none=True)
    return DatasetConfig(
        path=path.resolve(),
        general=general,
        dataset=dataset.model_dump(exclude_none=True, exclude={"subsets"}),
        subsets=tuple(s.model_dump(exclude_none=True) for s in dataset.subsets),
    )


def _error(exc: ValidationError, path: Path) -> ConfigError:
    first = exc.errors()[0]
    loc = list(first["loc"])
    field = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
    message = first["msg"].removeprefix("Value error, ")
    hint = None
    if loc == ["datasets"] and first["type"] == "too_long":
        message = "gpurun trains one [[datasets]]; kohya's separate datasets (each its own resolution) are refused"
        hint = "put every [[datasets.subsets]] in one [[datasets]]"
    elif first["type"] == "extra_forbidden":
        message = f"unknown key {loc[-1]!r}"
        hint = "see kohya's dataset config keys in docs/kohya-keys.md"
    elif first["type"] not in ("missing",) and "input" in first and "refused" not in message:
        message = f"{message} (got {first['input']!r})"
    more = len(exc.errors()) - 1
    if more and hint is None:
        hint = f"{more} more problem(s) after this one"
    return ConfigError(message, where=f"{path}: {field or 'file'}", hint=hint)


def canonical_toml(config: DatasetConfig, fallback: Mapping[str, Any], image_dirs: list[str]) -> str:
    """The dataset config as the box reads it: one dataset, every value resolved, `image_dirs` in place of the
    subsets' folders (same order). The dataset-level values are `fallback`'s: the training config took them
    from the file when it was loaded, and may have changed them since (the tiny demo model's size)."""
    lines = ["[[datasets]]"]
    for key in DATASET_KEYS:
        value = fallback[key]
        lines.append(f"{key} = {_toml(list(value) if isinstance(value, tuple) else value)}")
    for subset, folder in zip(config.resolved(fallback), image_dirs, strict=True):
        lines += ["", "[[datasets.subsets]]", f"image_dir = {_toml(folder)}"]
        values = {
            "num_repeats": subset.num_repeats,
            "class_tokens": subset.class_tokens,
            "caption_extension": subset.caption_extension,
            "is_reg": subset.is_reg,
            "shuffle_caption": subset.rules.shuffle_caption,
            "keep_tokens": subset.rules.keep_tokens,
            "caption_dropout_rate": subset.rules.caption_dropout_rate,
            "flip_aug": subset.rules.flip_aug,
        }
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)
