"""Training data on the GPU box: kohya folders → bucketed, cached latents (and text-encoder outputs) → batches.

The folder scan and the bucket arithmetic are the ones `gpurun dataset check` uses (gpurun.dataset,
gpurun.buckets), so the step count the client planned is the step count the runner runs. Latents are encoded once
(kohya's cache_latents: one `latent_dist.sample()` per image, flipped copy too with flip_aug), kept in memory or,
with `cache_latents_to_disk`, as safetensors files under `<output_dir>/.cache/latents` keyed by the image's bytes
and bucket, so a resumed run does not pay for them again. Text-encoder outputs are cached per caption when the
text encoders are frozen and captions are not shuffled or dropped (the same rule kohya enforces).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpurun.buckets import BucketChoice, predefined_buckets, select_bucket
from gpurun.dataset.images import load_image
from gpurun.dataset.trainset import scan_training_set
from gpurun.dataset.types import DatasetScan, ImageItem
from gpurun.errors import ConfigError, DatasetError
from gpurun.kohya_dataset import CaptionRules
from gpurun.runner.model.loaded import Conditioning, LoadedModel

if TYPE_CHECKING:
    import torch

    from gpurun.trainconfig import TrainConfig

#: encode this many images per VAE call (same bucket only)
VAE_BATCH = 4


@dataclass
class TrainImage:
    """One image as training sees it: caption, bucket, SDXL size conditioning, and its cached latent(s)."""

    item: ImageItem
    choice: BucketChoice
    #: the image's subset options (caption shuffle/dropout, flip): a dataset config's, else the training config's
    rules: CaptionRules = field(default_factory=CaptionRules)
    #: a regularization image: its loss is weighted by prior_loss_weight
    is_reg: bool = False
    latent: torch.Tensor | None = None
    flipped: torch.Tensor | None = None

    @property
    def bucket(self) -> tuple[int, int]:
        return self.choice.bucket

    @property
    def caption(self) -> str:
        return self.item.caption

    @property
    def original_size_hw(self) -> tuple[int, int]:
        return (self.item.height, self.item.width)

    @property
    def crop_top_left(self) -> tuple[int, int]:
        return (self.choice.crop[1], self.choice.crop[0])

    @property
    def target_size_hw(self) -> tuple[int, int]:
        return (self.bucket[1], self.bucket[0])


@dataclass
class TrainData:
    """The whole training set, its per-epoch batch plan and the caches."""

    scan: DatasetScan
    images: list[TrainImage]
    #: bucket → image index per sample; an image with N repeats appears N times per epoch
    buckets: dict[tuple[int, int], list[int]]
    #: caption → cached conditioning (only when the text encoders are frozen)
    cond_cache: dict[str, Conditioning] = field(default_factory=dict)

    @property
    def samples_per_epoch(self) -> int:
        return sum(len(samples) for samples in self.buckets.values())

    def epoch_batches(self, epoch: int, batch_size: int, seed: int) -> list[list[int]]:
        """This epoch's batches of image indices, kohya's way: each bucket's samples (repeats included) shuffled
        and cut into batches, then all batches shuffled. Deterministic in (seed, epoch), so a resumed run
        replays exactly the order the interrupted one had."""
        rng = random.Random(f"{seed}:{epoch}")
        batches: list[list[int]] = []
        for key in sorted(self.buckets):
            samples = list(self.buckets[key])
            rng.shuffle(samples)
            batches.extend(samples[i : i + batch_size] for i in range(0, len(samples), batch_size))
        rng.shuffle(batches)
        return batches

    def batches_per_epoch(self, batch_size: int) -> int:
        return sum(math.ceil(len(samples) / batch_size) for samples in self.buckets.values())

    @property
    def trigger(self) -> str | None:
        """The first training folder's class token: the trigger word of a kohya dataset."""
        return next((f.class_token for f in self.scan.folders if not f.is_reg), None)

    def facts(self) -> dict[str, Any]:
        """Dataset facts for the start event and the LoRA metadata."""
        return {
            "path": str(self.scan.root),
            "images": len(self.images),
            "folders": {
                f.name: {"n_repeats": f.repeats, "img_count": len(f.items), **({"is_reg": True} if f.is_reg else {})}
                for f in self.scan.folders
            },
            "samples_per_epoch": self.samples_per_epoch,
            "buckets": {f"{w}x{h}": len(s) for (w, h), s in sorted(self.buckets.items())},
        }


def scan_training_data(config: TrainConfig) -> TrainData:
    """Scan the dataset and assign every image its bucket (nothing decoded yet). Raises DatasetError on the scan's
    errors, ConfigError on an impossible bucket range."""
    scan = scan_training_set(config)
    if scan.errors:
        first = scan.errors[0]
        more = f" (and {len(scan.errors) - 1} more)" if len(scan.errors) > 1 else ""
        raise DatasetError(
            f"{first.message}{more}",
            where=str(first.path or scan.root),
            hint="run `gpurun dataset check` on it locally to see every problem",
        )
    step = config.bucket_reso_steps
    no_upscale = config.enable_bucket and config.bucket_no_upscale
    try:
        predefined = predefined_buckets(
            config.resolution,
            enable_bucket=config.enable_bucket,
            no_upscale=no_upscale,
            min_reso=config.min_bucket_reso,
            max_reso=config.max_bucket_reso,
            step=step,
        )
    except ValueError as exc:
        raise ConfigError(str(exc), where="min_bucket_reso/max_bucket_reso") from None
    default_rules = CaptionRules(
        shuffle_caption=config.shuffle_caption,
        keep_tokens=config.keep_tokens,
        caption_dropout_rate=config.caption_dropout_rate,
        flip_aug=config.flip_aug,
    )
    images = [
        TrainImage(
            item,
            select_bucket(
                item.width, item.height, predefined, no_upscale=no_upscale, resolution=config.resolution, step=step
            ),
            rules=folder.rules or default_rules,
            is_reg=folder.is_reg,
        )
        for folder in scan.folders
        for item in folder.items
    ]
    buckets: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        buckets.setdefault(image.bucket, []).extend([index] * image.item.repeats)
    return TrainData(scan=scan, images=images, buckets=buckets)


def pixel_tensor(image: TrainImage, *, flip: bool = False) -> torch.Tensor:
    """The image resized to cover its bucket, centre-cropped, as a [3, H, W] tensor in [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    picture = load_image(image.item.path)
    resized = picture.resize(image.choice.resized, Image.Resampling.LANCZOS)
    left, top = image.choice.crop
    width, height = image.bucket
    cropped = resized.crop((left, top, left + width, top + height))
    if flip:
        cropped = cropped.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(cropped, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _cache_key(image: TrainImage, vae_tag: str) -> str:
    stat = image.item.path.stat()
    raw = f"{image.item.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{image.choice}|{vae_tag}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def cache_latents(model: LoadedModel, images: Sequence[TrainImage], *, disk_dir: Path | None) -> int:
    """Encode every image once with the VAE (same-bucket batches), a flipped copy too for images whose subset has
    flip_aug; returns how many came from the disk cache."""
    import torch
    from safetensors.torch import load_file, save_file

    vae_tag = f"{model.source}|{model.vae_dtype}"
    cached = {id(image): disk_dir / f"{_cache_key(image, vae_tag)}.safetensors" for image in images} if disk_dir else {}
    pending: dict[tuple[int, int], list[TrainImage]] = {}
    reused = 0
    for image in images:
        path = cached.get(id(image))
        if path is not None and path.is_file():
            stored = load_file(str(path))
            if "latent" in stored and (not image.rules.flip_aug or "flipped" in stored):
                image.latent, image.flipped = stored["latent"], stored.get("flipped")
                reused += 1
                continue
        pending.setdefault(image.bucket, []).append(image)
    generator = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for group in pending.values():
            for start in range(0, len(group), VAE_BATCH):
                chunk = group[start : start + VAE_BATCH]
                for image, latent in zip(
                    chunk, _encode(model, [pixel_tensor(i) for i in chunk], generator), strict=True
                ):
                    image.latent = latent
                flips = [image for image in chunk if image.rules.flip_aug]
                if flips:
                    flipped = _encode(model, [pixel_tensor(i, flip=True) for i in flips], generator)
                    for image, latent in zip(flips, flipped, strict=True):
                        image.flipped = latent
                for image in chunk if disk_dir is not None else ():
                    tensors = {"latent": image.latent}
                    if image.flipped is not None:
                        tensors["flipped"] = image.flipped
                    target = cached[id(image)]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_suffix(".tmp")
                    save_file(tensors, str(tmp))
                    tmp.replace(target)
    return reused


def _encode(model: LoadedModel, pixels: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """VAE latents (unscaled, like kohya's cache) on CPU in fp32; the sample is drawn on CPU for determinism."""
    import torch

    batch = torch.stack(pixels).to(model.device, dtype=model.vae_dtype)
    dist = model.vae.encode(batch).latent_dist
    mean, std = dist.mean.float().cpu(), dist.std.float().cpu()
    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
    # one tensor per image with its own storage: row views would share the batch (and cannot be saved apart)
    return [row.clone(memory_format=torch.contiguous_format) for row in mean + std * noise]


def cache_conditioning(model: LoadedModel, captions: Sequence[str], clip_skip: int | None) -> dict[str, Conditioning]:
    """Text-encoder outputs per distinct caption, computed once with the frozen encoders (kept on the device)."""
    import torch

    cache: dict[str, Conditioning] = {}
    unique = list(dict.fromkeys(captions))
    with torch.no_grad():
        for start in range(0, len(unique), 16):
            chunk = unique[start : start + 16]
            cond = model.encode_prompt(model.tokenize(chunk), clip_skip=clip_skip)
            for index, caption in enumerate(chunk):
                pooled = None if cond.pooled is None else cond.pooled[index : index + 1]
                cache[caption] = Conditioning(cond.hidden_states[index : index + 1], pooled)
    return cache


def caption_for_step(caption: str, rules: CaptionRules, rng: random.Random) -> str:
    """kohya's caption augmentation: caption dropout, then shuffling the comma-separated tags after keep_tokens."""
    if rules.caption_dropout_rate and rng.random() < rules.caption_dropout_rate:
        return ""
    if not rules.shuffle_caption:
        return caption
    tags = [t.strip() for t in caption.split(",")]
    fixed, rest = tags[: rules.keep_tokens], tags[rules.keep_tokens :]
    rng.shuffle(rest)
    return ", ".join(t for t in fixed + rest if t)


def can_cache_conditioning(config: TrainConfig, data: TrainData) -> bool:
    """Frozen text encoders and captions that never change between epochs (kohya's rule for the TE cache)."""
    if config.trains_text_encoder:
        return False
    if any(image.rules.shuffle_caption or image.rules.caption_dropout_rate > 0 for image in data.images):
        return False
    return config.cache_text_encoder_outputs is not False


def loss_weights(data: TrainData, indices: Sequence[int], prior_loss_weight: float) -> list[float]:
    """kohya's per-sample loss weights: prior_loss_weight for regularization images, 1 for the others."""
    return [prior_loss_weight if data.images[i].is_reg else 1.0 for i in indices]


def batch_latents(data: TrainData, indices: Sequence[int], rng: random.Random) -> torch.Tensor:
    """Stack the cached latents of one batch (a random flipped copy per sample with flip_aug)."""
    import torch

    chosen = []
    for index in indices:
        image = data.images[index]
        use_flip = image.flipped is not None and rng.random() < 0.5
        latent = image.flipped if use_flip else image.latent
        assert latent is not None, "latents are cached before training"
        chosen.append(latent)
    return torch.stack(chosen)
