"""The bundled diffusers config folders that let `from_single_file` load SD 1.5 / SD 2.x / SDXL with no hub access.

`configs/<name>/` holds model_index.json, */config.json, scheduler and tokenizer settings with the values of
the official repos (stable-diffusion-v1-5, stable-diffusion-2-1(-base), stable-diffusion-xl-base-1.0); the
safety checker is left out. The tokenizers' vocab.json/merges.txt are generated from the one vendored CLIP BPE
file into a cache folder on first use (`$GPURUN_CACHE_DIR`, default `~/.cache/gpurun`), so the package carries
one 1.4 MB vocabulary instead of five copies.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from gpurun.runner.model.clip_bpe import BPE_FILE, write_vocab_files

CONFIGS_DIR = Path(__file__).parent / "configs"
BUNDLED = ("sd15", "sd2-512-base", "sd2-768-v", "sdxl-base")


def bundled_config_name(family: str, *, v_prediction: bool) -> str:
    """Which bundled folder describes a family: SD 2.x has a 768-px v-prediction and a 512-px epsilon variant."""
    if family == "sd2":
        return "sd2-768-v" if v_prediction else "sd2-512-base"
    return {"sd15": "sd15", "sdxl": "sdxl-base"}[family]


def cache_dir() -> Path:
    """gpurun's cache folder ($GPURUN_CACHE_DIR, else $XDG_CACHE_HOME/gpurun, else ~/.cache/gpurun)."""
    explicit = os.environ.get("GPURUN_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpurun"


def _digest(source: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        h.update(path.relative_to(source).as_posix().encode())
        h.update(path.read_bytes())
    h.update(BPE_FILE.read_bytes())
    return h.hexdigest()[:12]


def materialize(name: str, *, root: Path | None = None) -> Path:
    """A complete config-only folder for a bundled config (tokenizer vocab files included), built once and cached."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled config {name!r}; choose one of {', '.join(BUNDLED)}")
    source = CONFIGS_DIR / name
    target = (root or cache_dir()) / "model-configs" / f"{name}-{_digest(source)}"
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        for tokenizer in staging.glob("tokenizer*"):
            write_vocab_files(tokenizer, real=True)
        try:
            os.replace(staging, target)  # atomic; a concurrent builder may have won, which is fine
        except OSError:
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
