"""What the fake hub holds by default: the repos behind gpurun's --base shortcuts, with their published file sizes
(listed, never downloaded), so plans and dry runs see the real download sizes."""

from __future__ import annotations

import json

from gpurun.job.bases import SHORTCUTS

_INDEX = {
    "sd15": {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0"},
    "sd2": {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.10.0"},
    "sdxl": {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.19.0"},
}


def shortcut_repos() -> dict[str, dict[str, bytes | int]]:
    """repo -> files for every hub shortcut: its single-file checkpoint and a diffusers layout beside it."""
    repos: dict[str, dict[str, bytes | int]] = {}
    for spec in SHORTCUTS.values():
        if spec.kind != "hub" or spec.filename is None:
            continue
        repos[spec.ref] = {
            "README.md": b"# model card\n",
            "model_index.json": json.dumps(_INDEX[spec.family]).encode(),
            spec.filename: spec.bytes,
            "unet/config.json": b"{}",
            "unet/diffusion_pytorch_model.safetensors": 3_438_167_536,
            "unet/diffusion_pytorch_model.fp16.safetensors": 1_719_125_304,
            "vae/config.json": b"{}",
            "vae/diffusion_pytorch_model.safetensors": 334_643_268,
        }
    return repos
