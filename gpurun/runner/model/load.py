"""Load the base model for LoRA training: a single-file checkpoint (no hub needed), a diffusers folder, a hub id,
or a tiny test model; SD 1.x, SD 2.x and SDXL, frozen, in the requested dtypes, on the requested device.

Attention runs through PyTorch's scaled_dot_product_attention (diffusers' AttnProcessor2_0, set explicitly on
the UNet and VAE; transformers' CLIP uses its SDPA implementation by default): no xformers needed.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpurun.errors import ConfigError
from gpurun.runner.model.bundled import bundled_config_name, materialize
from gpurun.runner.model.detect import (
    FAMILY_NAMES,
    Detection,
    check_config_matches,
    checkpoint_shapes,
    detect_folder,
    detect_single_file,
)
from gpurun.runner.model.loaded import LoadedModel, PredictionType
from gpurun.runner.model.tiny import build_tiny_pipeline, tiny_family

if TYPE_CHECKING:
    import torch

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_base_model(
    name_or_path: str,
    *,
    v2: bool = False,
    v_parameterization: bool = False,
    family: str | None = None,
    vae: str | None = None,
    device: str | torch.device = "cpu",
    weight_dtype: torch.dtype | None = None,
    vae_dtype: torch.dtype | None = None,
    config_dir: str | Path | None = None,
) -> LoadedModel:
    """Load a base model for LoRA training, frozen, on `device`.

    name_or_path: a single-file checkpoint (.safetensors/.ckpt in the original layout), a diffusers folder, a hub
    id (needs the hub; on the rented box it is reachable), or "tiny-sd" / "tiny-sd2" / "tiny-sdxl" (tiny
    random-weight models built in-process, for tests and dry runs). Single files load with a bundled config
    folder (or `config_dir`, or a `<stem>.config/` folder next to the file), so no hub access is needed.
    v2 / v_parameterization follow kohya: the family is detected from the checkpoint (v2 must agree), and
    v_parameterization selects v-prediction. `family` (sd15|sd2|sdxl) must agree with detection when given.
    weight_dtype: UNet and text encoders (default fp32). vae_dtype: default fp32 for SDXL (its VAE overflows in
    fp16), else weight_dtype. Attention uses PyTorch SDPA (AttnProcessor2_0). Every failure is a ConfigError
    with a hint.
    """
    import torch

    weight_dtype = weight_dtype or torch.float32
    source = name_or_path.strip()
    if not source:
        raise ConfigError("no base model given", where="pretrained_model_name_or_path", hint="e.g. tiny-sd or a path")
    tiny = tiny_family(source)
    path = Path(source).expanduser()
    base_sha256 = base_model_hash = None
    if tiny is not None:
        detection = Detection(tiny, "tiny random-weight test model built in-process (seed 0)")
        _check_flags(detection, v2=v2, family=family, where=source)
        pipe = build_tiny_pipeline(tiny, seed=0)
        detection = Detection(tiny, detection.how, pipe.scheduler.config.get("prediction_type"))
        config_source: Path | None = None
    elif path.is_file():
        shapes = checkpoint_shapes(path)
        detection = detect_single_file(path, shapes)
        _check_flags(detection, v2=v2, family=family, where=str(path))
        config_source = _single_file_config(path, shapes, detection, v_parameterization, config_dir)
        pipe = _load_single_file(path, detection.family, config_source, weight_dtype, vae, vae_dtype)
        base_sha256, base_model_hash = _file_hashes(path)
    elif path.is_dir():
        detection = detect_folder(path)
        _check_flags(detection, v2=v2, family=family, where=str(path))
        config_source = path
        pipe = _load_pretrained(str(path), detection.family, weight_dtype, vae, vae_dtype, config_source, local=True)
    elif _HUB_ID.match(source) and not source.endswith((".safetensors", ".ckpt")):
        config_source = _hub_configs(source)
        detection = detect_folder(config_source, where=source)
        detection = Detection(
            detection.family, detection.how.replace("diffusers folder", "hub repo"), detection.prediction_type
        )
        _check_flags(detection, v2=v2, family=family, where=source)
        pipe = _load_pretrained(source, detection.family, weight_dtype, vae, vae_dtype, config_source, local=False)
    elif source.startswith((".", "/", "~")) or path.suffix in (".safetensors", ".ckpt", ".pt"):
        raise ConfigError("base model not found", where=source, hint="check the path (relative to the config file)")
    else:
        raise ConfigError(
            f"unknown base model {source!r}",
            where="pretrained_model_name_or_path",
            hint="give a .safetensors checkpoint, a diffusers folder, a hub id such as "
            "stabilityai/stable-diffusion-xl-base-1.0, or tiny-sd / tiny-sdxl",
        )
    if tiny is not None and vae:
        raise ConfigError("a vae override needs a real base model", where="vae", hint="remove vae for tiny models")

    prediction: PredictionType = "v_prediction" if v_parameterization else "epsilon"
    how = detection.how
    if not v_parameterization and detection.prediction_type == "v_prediction":
        prediction = "v_prediction"
        how += "; v-prediction per the model's scheduler config"
    elif v_parameterization:
        how += "; v-prediction (v_parameterization)"
    if detection.family == "sd2" and not v2:
        how += "; v2 was not set, SD 2.x detected from the model"
    return _finish(
        pipe,
        detection.family,
        prediction,
        f"{FAMILY_NAMES[detection.family]} ({how})",
        source=source,
        device=device,
        weight_dtype=weight_dtype,
        vae_dtype=vae_dtype,
        base_sha256=base_sha256,
        base_model_hash=base_model_hash,
    )


def _check_flags(detection: Detection, *, v2: bool, family: str | None, where: str) -> None:
    name = FAMILY_NAMES[detection.family]
    if v2 and detection.family != "sd2":
        raise ConfigError(
            f"v2 = true but the model is {name} ({detection.how})",
            where=where,
            hint="set v2 = false, or use an SD 2.x model",
        )
    if family is not None and family != detection.family:
        raise ConfigError(
            f"model_family = {family!r} but the model is {name} ({detection.how})",
            where=where,
            hint=f"set model_family = {detection.family!r} or remove it",
        )


def _single_file_config(
    path: Path, shapes: dict, detection: Detection, v_parameterization: bool, config_dir: str | Path | None
) -> Path:
    sidecar = path.parent / f"{path.stem}.config"
    if config_dir is not None:
        folder, label = Path(config_dir), f"given ({config_dir})"
        if not (folder / "model_index.json").is_file():
            raise ConfigError("config folder has no model_index.json", where=str(folder))
    elif (sidecar / "model_index.json").is_file():
        folder, label = sidecar, f"sidecar ({sidecar.name})"
    else:
        name = bundled_config_name(
            detection.family, v_prediction=v_parameterization or detection.prediction_type == "v_prediction"
        )
        folder, label = materialize(name), f"bundled {name}"
    check_config_matches(path, shapes, folder, label)
    return folder


def _load_single_file(path: Path, family: str, config: Path, weight_dtype, vae: str | None, vae_dtype):
    from diffusers import AutoencoderKL

    cls = _pipeline_class(family)
    vae_dtype = _vae_dtype(family, weight_dtype, vae_dtype)
    # Loaded in the training dtype: each weight is materialised once, as it will train (low_cpu_mem_usage, diffusers'
    # default, fills empty modules). Loading in fp32 and casting in _finish held an fp32 copy of the whole model
    # next to the checkpoint: 6.25 GiB of host RAM for a 2 GiB SD 1.5 file (SDXL about 21 GB), see
    # bench/bench_loader_memory.py. (ModelMixin.to(dtype) may log "modules to keep in float32"; the runner keeps
    # diffusers' log at ERROR.)
    with _as_config_error(path):
        vae_model = (
            _load_vae(vae, config, vae_dtype)
            if vae
            else AutoencoderKL.from_single_file(
                str(path), config=str(config), subfolder="vae", local_files_only=True, **_dtype_kw(vae_dtype)
            )
        )
        return cls.from_single_file(
            str(path),
            config=str(config),
            local_files_only=True,
            vae=vae_model,
            **_dtype_kw(weight_dtype),
            **_no_safety_checker(family),
        )


def _load_pretrained(source: str, family: str, weight_dtype, vae: str | None, vae_dtype, config: Path, *, local: bool):
    from diffusers import AutoencoderKL

    cls = _pipeline_class(family)
    vae_dtype = _vae_dtype(family, weight_dtype, vae_dtype)
    with _as_config_error(source):
        if vae:
            vae_model = _load_vae(vae, config, vae_dtype)
        else:
            variant = {"variant": "fp16"} if local and _only_fp16_weights(Path(source), "vae") else {}
            vae_model = AutoencoderKL.from_pretrained(
                source, subfolder="vae", local_files_only=local, **_dtype_kw(vae_dtype), **variant
            )
        kwargs = {"vae": vae_model, "local_files_only": local, **_dtype_kw(weight_dtype), **_no_safety_checker(family)}
        if local and _only_fp16_weights(Path(source)):
            # a hub repo fetched by bootstrap.sh where only half-precision files exist (gpurun.job.basecheck chose them)
            return cls.from_pretrained(source, variant="fp16", **kwargs)
        if not local and str(weight_dtype) != "torch.float32":
            # hub repos often carry half-precision copies: half the download on a billed box
            try:
                return cls.from_pretrained(source, variant="fp16", **kwargs)
            except (OSError, ValueError):
                pass
        return cls.from_pretrained(source, **kwargs)


def _only_fp16_weights(folder: Path, component: str = "unet") -> bool:
    """A diffusers folder whose component has fp16-variant weights and no plain ones."""
    inside = [p.name for p in (folder / component).glob("*.safetensors")]
    return bool(inside) and all(".fp16." in name for name in inside)


def _load_vae(vae: str, config: Path, vae_dtype):
    """A replacement VAE: a single file (original or diffusers layout), a folder, or a hub id."""
    from diffusers import AutoencoderKL

    path = Path(vae).expanduser()
    if path.is_file():
        return AutoencoderKL.from_single_file(str(path), config=str(config), subfolder="vae", local_files_only=True)
    if path.is_dir():
        sub = None if (path / "config.json").is_file() else "vae"
        return AutoencoderKL.from_pretrained(str(path), subfolder=sub, local_files_only=True, **_dtype_kw(vae_dtype))
    if _HUB_ID.match(vae):
        return AutoencoderKL.from_pretrained(vae, **_dtype_kw(vae_dtype))
    raise ConfigError("VAE not found", where=f"vae = {vae}", hint="give a .safetensors VAE, a folder or a hub id")


def _hub_configs(repo: str) -> Path:
    """Fetch only the small config files of a hub repo, to detect the family before downloading weights."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=["model_index.json", "*/config.json", "scheduler/*.json"]))
    except Exception as exc:  # offline, not found, gated, network errors: all end the same way for the user
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"cannot fetch {repo!r} from the Hugging Face hub ({type(exc).__name__}: {reason})",
            where="pretrained_model_name_or_path",
            hint="check the repo id and network (HF_HUB_OFFLINE must be unset; gated repos need HF_TOKEN), "
            "or give a local .safetensors checkpoint",
        ) from None


class _as_config_error:
    """Turn diffusers/transformers loading failures into one ConfigError naming the source."""

    def __init__(self, where: Path | str) -> None:
        self.where = str(where)

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, ConfigError) or not isinstance(exc, Exception):
            return False
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"could not load the model ({type(exc).__name__}: {message})",
            where=self.where,
            hint="the file may be truncated or not a Stable Diffusion model; re-download it or try another",
        ) from exc


def _dtype_kw(dtype) -> dict[str, Any]:
    """diffusers renamed `torch_dtype` to `dtype` (the old name now warns); use whichever this version takes."""
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


def _cast(module: Any, device, dtype) -> None:
    """Move a module, changing its dtype only when needed: diffusers' ModelMixin.to(dtype=...) logs a spurious
    "modules that should be kept in float32: []" warning, so casts go through torch's own Module.to."""
    import torch

    current = next(module.parameters()).dtype
    torch.nn.Module.to(module, device=device, dtype=None if current == dtype else dtype)


def _pipeline_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _no_safety_checker(family: str) -> dict[str, Any]:
    # requires_safety_checker=False: hub repos that list a checker would otherwise log a warning about its absence
    return (
        {}
        if family == "sdxl"
        else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    )


def _vae_dtype(family: str, weight_dtype, vae_dtype):
    import torch

    if vae_dtype is not None:
        return vae_dtype
    return torch.float32 if family == "sdxl" else weight_dtype


def _file_hashes(path: Path) -> tuple[str, str]:
    """(sha256 of the file, A1111's legacy hash: sha256 of 64 KiB at offset 1 MiB, first 8 hex digits)."""
    full = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            full.update(chunk)
        f.seek(0x100000)
        legacy = hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    return full.hexdigest(), legacy


def _finish(
    pipe: Any,
    family: str,
    prediction: PredictionType,
    detected: str,
    *,
    source: str,
    device,
    weight_dtype,
    vae_dtype,
    base_sha256: str | None,
    base_model_hash: str | None,
) -> LoadedModel:
    from diffusers import DDPMScheduler
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet, vae = pipe.unet, pipe.vae
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if family == "sdxl" else [])
    unet.set_attn_processor(AttnProcessor2_0())
    vae.set_attn_processor(AttnProcessor2_0())
    _cast(unet, device, weight_dtype)
    _cast(vae, device, _vae_dtype(family, weight_dtype, vae_dtype))
    for encoder in encoders:
        _cast(encoder, device, weight_dtype)
    for module in (unet, vae, *encoders):
        module.requires_grad_(False)
        module.eval()
    sched = dict(pipe.scheduler.config)
    # kohya's training scheduler: DDPM with the model's betas, no sample clipping
    noise_scheduler = DDPMScheduler(
        num_train_timesteps=sched.get("num_train_timesteps", 1000),
        beta_start=sched.get("beta_start", 0.00085),
        beta_end=sched.get("beta_end", 0.012),
        beta_schedule=sched.get("beta_schedule", "scaled_linear"),
        prediction_type=prediction,
        clip_sample=False,
    )
    name = Path(source).name if Path(source).expanduser().exists() else source
    return LoadedModel(
        family=family,  # type: ignore[arg-type]
        prediction_type=prediction,
        detected=detected,
        unet=unet,
        vae=vae,
        text_encoders=encoders,
        tokenizers=tokenizers,
        noise_scheduler=noise_scheduler,
        source=source,
        base_sha256=base_sha256,
        base_model_hash=base_model_hash,
        base_name=name,
        scheduler_config={k: v for k, v in sched.items() if not k.startswith("_")},
    )
