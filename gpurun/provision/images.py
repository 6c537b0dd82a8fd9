"""Container images: the CUDA version an image needs, read from its tag.

A host whose driver is older than the image's CUDA cannot start it (or starts it without a usable GPU), so
offers are filtered by it: Vast's `cuda_max_good`, RunPod's `minCudaVersion`. The tag conventions of the
images users rent with:

    pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime      -> 12.8
    runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404    -> 12.8
    vastai/pytorch:2.8.0-cuda-12.8.1-py312-24.04-...   -> 12.8
    nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04       -> 12.4
"""

from __future__ import annotations

import re

# "cuda12.8", "cuda-12.8.1", "cuda_12.8", a bare "12.8.1-" at the start of an nvidia/cuda tag
_CUDA_DOTTED = re.compile(r"(?:^|[^0-9.])(?:cuda[-_]?)?(1[0-3])\.(\d{1,2})(?:\.\d+)?(?=$|[^0-9.])")
# runpod's "cu1281" (12.8.1), "cu128" (12.8), "cu124"
_CU_PACKED = re.compile(r"(?:^|[^a-z])cu(1[0-3])(\d)(\d?)(?=$|[^0-9])")


def image_cuda(image: str) -> float | None:
    """The CUDA major.minor an image's tag names, or None when the tag does not say (a custom image)."""
    _, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else ("", "", "")
    if not tag:
        return None
    lowered = tag.lower()
    packed = _CU_PACKED.search(lowered)
    if packed:
        return float(f"{packed.group(1)}.{packed.group(2)}")
    if "cuda" in lowered or image.lower().startswith(("nvidia/cuda", "nvcr.io/nvidia/cuda")):
        dotted = _CUDA_DOTTED.search(lowered)
        if dotted:
            return float(f"{dotted.group(1)}.{dotted.group(2)}")
    return None


def cuda_text(version: float) -> str:
    """12.8 -> "12.8", 13.0 -> "13.0": the major.minor form providers expect."""
    return f"{version:.1f}"
