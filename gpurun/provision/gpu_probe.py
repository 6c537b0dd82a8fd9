"""Reading a machine's GPUs from `nvidia-smi`, here or on a remote host, and its memory when it has none."""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass

#: one line per GPU: "NVIDIA GeForce RTX 4090, 24564 MiB"
NVIDIA_SMI_QUERY = "nvidia-smi --query-gpu=name,memory.total --format=csv,noheader"


@dataclass(frozen=True, slots=True)
class GpuFacts:
    name: str
    count: int
    #: per GPU, GB = MiB / 1000 (the factor Vast's filters use, so "24 GB" keeps a 24564 MiB card)
    vram_gb: float


def parse_nvidia_smi(text: str) -> GpuFacts | None:
    """The GPUs listed by NVIDIA_SMI_QUERY (named after the first, VRAM of the smallest); None if none parse."""
    names: list[str] = []
    memories: list[float] = []
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) < 2 or not parts[0]:
            continue
        amount = parts[1].split()
        try:
            mib = float(amount[0])
        except (IndexError, ValueError):
            continue
        names.append(parts[0])
        memories.append(mib / 1000)
    if not names:
        return None
    return GpuFacts(name=names[0], count=len(names), vram_gb=min(memories))


async def local_gpus(timeout: float = 5.0) -> GpuFacts | None:
    """This machine's GPUs, or None when there is no working nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            exe,
            *NVIDIA_SMI_QUERY.split()[1:],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return None
    try:
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    if proc.returncode != 0:
        return None
    return parse_nvidia_smi(stdout.decode(errors="replace"))


def memory_gb() -> float:
    """Physical memory of this machine in GB (1000³ bytes); 0 when the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 0.0
