"""Peak memory of the training process, for the progress events: the GPU's on CUDA, the process's RAM on a CPU."""

from __future__ import annotations

import resource
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def peak_memory_gb(device: torch.device) -> tuple[float, str]:
    """(peak GB so far, "gpu" | "ram"). On CUDA, what the caching allocator handed out (what decides an
    out-of-memory); elsewhere the process's peak resident set, the figure that decides a host's RAM."""
    if device.type == "cuda":
        import torch  # the runner's modules import the training stack late (see runner/__main__.py)

        return torch.cuda.max_memory_allocated(device) / 1e9, "gpu"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes
    return (peak / 1e9 if sys.platform == "darwin" else peak / 1e6), "ram"
