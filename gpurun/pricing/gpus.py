"""The GPUs the marketplaces rent: dense tensor TFLOP/s, VRAM, memory bandwidth, and name matching.

`tflops` is the dense (no 2:4 sparsity) FP16/BF16 tensor-core peak with FP32 accumulate, per GPU: the
precision a LoRA trainer runs in. GeForce cards run FP32-accumulate tensor math at half their FP16-accumulate
rate; workstation and datacenter cards run it at full rate, which is why an RTX A6000 out-computes an
RTX 3090 with the same chip.

Sources (vendor figures; derived ones say how):
- [AMP] NVIDIA Ampere GA102 whitepaper (RTX 3070/3080/3090, RTX A6000 tables) and the RTX A2000/A4000/A4500/A5000/
  A6000 datasheets ("Tensor performance" is the sparse figure; dense = half).
- [ADA] NVIDIA Ada AD102 whitepaper appendix (RTX 4090/4080/4080-12GB = 4070 Ti, RTX 6000 Ada) and the
  RTX 2000/4000/4500/5000/6000 Ada datasheets (their "Tensor performance" is FP8 with sparsity; dense FP16 = 1/4).
- [BW] GeForce RTX 50 series spec pages ("AI TOPS" is FP4 with sparsity; dense FP16 with FP32 accumulate on
  GeForce = 1/16) and the RTX PRO 6000 Blackwell datasheet (full-rate accumulate: 1/8).
- [DC] Datasheets: T4, V100, A10, A30, A40, A100, L4, L40, L40S, H100 (PCIe/SXM/NVL), H200, GH200, HGX B200
  (dense = the sparse figure halved), AMD Instinct MI300X.
- [SM] Derived from a sibling card in the same table: SMs × boost GHz × FLOP per SM per clock
  (GA10x/AD10x GeForce: 512 dense FP16-with-FP32-accumulate FLOP per SM per clock, which reproduces the
  whitepaper figures for the RTX 3090 (82 SM × 1.695 GHz → 71) and RTX 4090 (128 SM × 2.52 GHz → 165)).
- lora-format.md §5 cross-checks: RTX 3090 ≈ 71, RTX 4090 165, A100 312, H100 SXM ≈ 989 (PCIe ≈ 756), H200 ≈ 989.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

GpuClass = Literal["consumer", "workstation", "datacenter"]


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One GPU model's published capabilities."""

    name: str
    tflops: float  # dense FP16/BF16 tensor, FP32 accumulate, TFLOP/s per GPU
    vram_gb: float
    mem_bw_gbs: float  # memory bandwidth, GB/s
    bf16: bool
    gpu_class: GpuClass
    #: False for GPUs gpurun's CUDA trainer cannot use (AMD)
    cuda: bool = True


def _gpu(
    name: str, tflops: float, vram: float, bw: float, cls: GpuClass, *, bf16: bool = True, cuda: bool = True
) -> GpuInfo:
    return GpuInfo(name, tflops, vram, bw, bf16, cls, cuda)


C: GpuClass = "consumer"
W: GpuClass = "workstation"
D: GpuClass = "datacenter"

# (GpuInfo, extra spellings). The canonical name is Vast's spelling; every name is matched after normalising
# (see `gpu_key`), so "NVIDIA GeForce RTX 4090", "RTX 4090" and "rtx_4090" are the same key.
_TABLE: tuple[tuple[GpuInfo, tuple[str, ...]], ...] = (
    # --- GeForce, Turing (no bf16) ---
    (_gpu("RTX 2080", 40.3, 8, 448, C, bf16=False), ()),  # Turing whitepaper
    (_gpu("RTX 2080 Ti", 53.8, 11, 616, C, bf16=False), ()),  # Turing whitepaper
    (_gpu("Titan RTX", 130.5, 24, 672, C, bf16=False), ()),  # full-rate accumulate (Turing whitepaper)
    # --- GeForce, Ampere ---
    (_gpu("RTX 3060", 25.5, 12, 360, C), ()),  # [SM] 28 SM × 1.777 GHz
    (_gpu("RTX 3060 Ti", 32.4, 8, 448, C), ()),  # [SM] 38 SM × 1.665 GHz
    (_gpu("RTX 3070", 40.6, 8, 448, C), ()),  # [AMP]
    (_gpu("RTX 3070 Ti", 43.5, 8, 608, C), ()),  # [SM] 48 SM × 1.77 GHz
    (_gpu("RTX 3080", 59.5, 10, 760, C), ()),  # [AMP] (12 GB variant: 70 SM, ≈61)
    (_gpu("RTX 3080 Ti", 68.2, 12, 912, C), ()),  # [SM] 80 SM × 1.665 GHz
    (_gpu("RTX 3090", 71.0, 24, 936, C), ()),  # [AMP]
    (_gpu("RTX 3090 Ti", 80.0, 24, 1008, C), ()),  # [SM] 84 SM × 1.86 GHz
    # --- GeForce, Ada ---
    (_gpu("RTX 4060", 30.2, 8, 272, C), ()),  # [SM] 24 SM × 2.46 GHz
    (_gpu("RTX 4060 Ti", 44.1, 16, 288, C), ()),  # [SM] 34 SM × 2.535 GHz (8 GB and 16 GB variants)
    (_gpu("RTX 4070", 58.3, 12, 504, C), ()),  # [SM] 46 SM × 2.475 GHz
    (_gpu("RTX 4070 Super", 71.0, 12, 504, C), ("RTX 4070S",)),  # [SM] 56 SM × 2.475 GHz
    (_gpu("RTX 4070 Ti", 80.2, 12, 504, C), ()),  # [ADA] (launched as "RTX 4080 12GB")
    (_gpu("RTX 4070 Ti Super", 88.2, 16, 672, C), ("RTX 4070S Ti", "RTX 4070 Ti S")),  # [SM] 66 SM × 2.61 GHz
    (_gpu("RTX 4080", 97.5, 16, 717, C), ()),  # [ADA]
    (_gpu("RTX 4080 Super", 104.4, 16, 736, C), ("RTX 4080S",)),  # [SM] 80 SM × 2.55 GHz
    (_gpu("RTX 4090", 165.2, 24, 1008, C), ()),  # [ADA]
    (_gpu("RTX 4090 D", 147.1, 24, 1008, C), ("RTX 4090D",)),  # [SM] 114 SM × 2.52 GHz
    # --- GeForce, Blackwell ---
    (_gpu("RTX 5060 Ti", 47.4, 16, 448, C), ()),  # [BW] 759 AI TOPS / 16
    (_gpu("RTX 5070", 61.8, 12, 672, C), ()),  # [BW] 988 / 16
    (_gpu("RTX 5070 Ti", 87.9, 16, 896, C), ()),  # [BW] 1406 / 16
    (_gpu("RTX 5080", 112.6, 16, 960, C), ()),  # [BW] 1801 / 16
    (_gpu("RTX 5090", 209.5, 32, 1792, C), ()),  # [BW] 3352 / 16
    # --- Workstation (full-rate FP32 accumulate) ---
    (_gpu("Q RTX 6000", 130.5, 24, 672, W, bf16=False), ("Quadro RTX 6000",)),  # datasheet
    (_gpu("Q RTX 8000", 130.5, 48, 672, W, bf16=False), ("Quadro RTX 8000",)),  # datasheet
    (_gpu("RTX A2000", 32.0, 12, 288, W), ()),  # [AMP] 63.9 sparse / 2 (6 GB and 12 GB variants)
    (_gpu("RTX A4000", 76.7, 16, 448, W), ()),  # [AMP] 153.4 / 2
    (_gpu("RTX A4500", 94.6, 20, 640, W), ()),  # [AMP] 189.2 / 2
    (_gpu("RTX A5000", 111.1, 24, 768, W), ()),  # [AMP] 222.2 / 2
    (_gpu("RTX A6000", 154.8, 48, 768, W), ()),  # [AMP] 309.7 / 2
    (_gpu("RTX 2000Ada", 48.0, 16, 224, W), ()),  # [ADA] 191.9 / 4
    (_gpu("RTX 4000SFF Ada", 76.7, 20, 280, W), ("RTX 4000 SFF Ada",)),  # [ADA] 306.8 / 4
    (_gpu("RTX 4000Ada", 81.9, 20, 360, W), ()),  # [ADA] 327.6 / 4
    (_gpu("RTX 4500Ada", 158.5, 24, 432, W), ()),  # [ADA] 634 / 4
    (_gpu("RTX 5000Ada", 261.1, 32, 576, W), ()),  # [ADA] 1044.4 / 4
    (_gpu("RTX 6000Ada", 364.2, 48, 960, W), ()),  # [ADA]
    (
        _gpu("RTX PRO 6000", 500.0, 96, 1792, W),  # [BW] 4000 AI TOPS / 8
        ("RTX PRO 6000 WS", "RTX PRO 6000 S", "RTX PRO 6000 Blackwell", "RTX PRO 6000 Blackwell Server Edition"),
    ),
    # --- Datacenter ---
    (_gpu("Tesla T4", 65.0, 16, 320, D, bf16=False), ("T4",)),  # [DC] mixed precision FP16/FP32
    (_gpu("Tesla V100", 112.0, 16, 900, D, bf16=False), ("V100", "V100 PCIE")),  # [DC] PCIe (conservative)
    (_gpu("V100 SXM2", 125.0, 32, 900, D, bf16=False), ("Tesla V100 SXM2",)),  # [DC]
    (_gpu("A10", 125.0, 24, 600, D), ()),  # [DC] BF16 tensor 125 dense
    # A10G (AWS): a GA102 with 80 SMs at 1.71 GHz; assumed GeForce-rate accumulate, so [SM] 80 × 1.71 × 512 ≈ 70.
    (_gpu("A10G", 70.0, 24, 600, D), ()),
    (_gpu("A30", 165.0, 24, 933, D), ()),  # [DC]
    (_gpu("A40", 149.7, 48, 696, D), ()),  # [DC]
    (_gpu("A100 PCIE", 312.0, 40, 1555, D), ("A100", "A100 40GB PCIe")),  # [DC]
    (_gpu("A100 PCIE", 312.0, 80, 1935, D), ("A100", "A100 80GB PCIe", "A100X")),  # [DC]
    (_gpu("A100 SXM4", 312.0, 40, 1555, D), ("A100 SXM", "A100 SXM4 40GB")),  # [DC]
    (_gpu("A100 SXM4", 312.0, 80, 2039, D), ("A100 SXM", "A100 SXM4 80GB")),  # [DC]
    (_gpu("L4", 121.0, 24, 300, D), ()),  # [DC] 242 sparse / 2
    (_gpu("L40", 181.0, 48, 864, D), ()),  # [DC] 362 / 2
    (_gpu("L40S", 362.0, 48, 864, D), ()),  # [DC] 733 / 2
    (_gpu("H100 PCIE", 756.0, 80, 2000, D), ("H100",)),  # [DC] 1513 / 2; a bare "H100" is taken as the slower PCIe
    (_gpu("H100 SXM", 989.0, 80, 3350, D), ("H100 SXM5", "H100 HBM3", "H100 80GB HBM3")),  # [DC] 1979 / 2
    (_gpu("H100 NVL", 835.0, 94, 3900, D), ()),  # [DC] 1671 / 2
    (_gpu("H200", 989.0, 141, 4800, D), ("H200 SXM",)),  # [DC]
    (_gpu("H200 NVL", 835.0, 141, 4800, D), ()),  # [DC]
    (_gpu("GH200 SXM", 989.0, 96, 4000, D), ("GH200",)),  # [DC]
    (_gpu("B200", 2250.0, 180, 8000, D), ()),  # [DC] HGX B200: 4.5 PFLOP sparse / 2, 1440 GB / 8
    # AMD: listed so it is recognised; gpurun's trainer (bitsandbytes, CUDA kernels) cannot use it.
    (_gpu("MI300X", 1307.0, 192, 5300, D, cuda=False), ("AMD Instinct MI300X OAM", "Instinct MI300X")),  # [DC]
)

#: every GPU model in the table, canonical names, for `gpurun offers --gpu` help and tests
GPUS: tuple[GpuInfo, ...] = tuple(info for info, _ in _TABLE)

# Words that carry no identity: vendor and family prefixes, marketing suffixes.
_NOISE = frozenset({"nvidia", "geforce", "tesla", "generation", "gpu", "graphics", "edition", "amd", "radeon"})
_MEMORY = re.compile(r"(\d+)\s*gb\b")
_TOKEN = re.compile(r"[a-z]+|\d+")


@lru_cache(maxsize=4096)
def gpu_key(name: str) -> tuple[str, float | None]:
    """Normalise a provider's GPU spelling: (compact key, VRAM in GB if the name states it).

    "NVIDIA GeForce RTX 4090" → ("rtx4090", None); "NVIDIA A100-SXM4-80GB" → ("a100sxm4", 80.0);
    "RTX 6000Ada" and "NVIDIA RTX 6000 Ada Generation" → ("rtx6000ada", None).
    """
    text = name.lower()
    memory = _MEMORY.search(text)
    text = _MEMORY.sub(" ", text)
    tokens = [t for t in _TOKEN.findall(text) if t not in _NOISE]
    return "".join(tokens), float(memory.group(1)) if memory else None


def _tokens(name: str) -> list[str]:
    return [t for t in _TOKEN.findall(_MEMORY.sub(" ", name.lower())) if t not in _NOISE]


_BY_KEY: dict[str, list[GpuInfo]] = {}
for _info, _aliases in _TABLE:
    for _spelling in (_info.name, *_aliases):
        _key, _ = gpu_key(_spelling)
        _variants = _BY_KEY.setdefault(_key, [])
        if _info not in _variants:
            _variants.append(_info)


@dataclass(frozen=True, slots=True)
class GpuMatch:
    """The table entry a provider's GPU name resolved to, and how."""

    info: GpuInfo
    #: "exact" when the normalised name is in the table, "prefix" when trailing words were dropped to find it
    how: Literal["exact", "prefix"]


@lru_cache(maxsize=4096)
def match_gpu(name: str, vram_gb: float | None = None) -> GpuMatch | None:
    """The table entry for a provider's GPU name, or None when the GPU is unknown.

    Where a model comes in several memory sizes (A100 40/80 GB), the VRAM stated in the name wins, then
    `vram_gb` (the offer's own figure), else the smaller variant. Unknown names that extend a known one
    ("RTX PRO 6000 Blackwell Max-Q Workstation Edition") match it by dropping trailing words, and say so.
    """
    key, named_vram = gpu_key(name)
    wanted = named_vram if named_vram is not None else vram_gb
    variants = _BY_KEY.get(key)
    how: Literal["exact", "prefix"] = "exact"
    if variants is None:
        tokens = _tokens(name)
        # keep at least the model number: never shorten "h100sxm" to a bare "h"
        while variants is None and len(tokens) > 2:
            tokens.pop()
            variants = _BY_KEY.get("".join(tokens))
        if variants is None:
            return None
        how = "prefix"
    if len(variants) == 1 or not wanted:
        return GpuMatch(variants[0], how)
    best = min(variants, key=lambda info: (abs(info.vram_gb - wanted), info.vram_gb))
    return GpuMatch(best, how)


_NON_CUDA = re.compile(r"\b(amd|radeon|instinct|intel|arc|gaudi)\b")


def looks_non_cuda(name: str) -> bool:
    """True for GPU names that are clearly not NVIDIA (AMD Instinct/Radeon, Intel Arc/Gaudi)."""
    return _NON_CUDA.search(name.lower()) is not None


_FORM_FACTORS = ("pcie", "sxm", "nvl", "hbm", "x")
_FAMILY_PREFIXES = ("rtx", "gtx", "quadro", "q")


@lru_cache(maxsize=4096)
def gpu_matches(wanted: str, name: str, vram_gb: float = 0.0) -> bool:
    """Whether an offer's GPU `name` is what a user asked for with `wanted` ("4090", "A100", "A100 80GB", "L40").

    A bare model names every form factor of it ("A100" → PCIe and SXM4, "H100" → PCIe, SXM, NVL) but never a
    different card ("L40" is not "L40S", "RTX 4070" is not "RTX 4070 Ti"); the family prefix may be left out
    ("4090", "A6000"). A memory size in `wanted` ("A100 80GB") must be met.
    """
    want_key, want_vram = gpu_key(wanted)
    have_key, named_vram = gpu_key(name)
    if not want_key:
        return False
    if want_vram is not None and max(vram_gb, named_vram or 0.0) < want_vram * 0.95:
        return False
    want = match_gpu(wanted)
    have = match_gpu(name, vram_gb or None)
    if want is not None and have is not None and want.how == "exact" and want.info.name == have.info.name:
        return True
    candidates = [have_key] + [have_key[len(p) :] for p in _FAMILY_PREFIXES if have_key.startswith(p)]
    for candidate in candidates:
        if candidate == want_key:
            return True
        if candidate.startswith(want_key) and candidate[len(want_key) :].startswith(_FORM_FACTORS):
            return True
    return False


def provider_spellings(wanted: str) -> tuple[str, ...]:
    """What to ask a provider's GPU-name filter for when the user wants `wanted`: the user's words and every table
    name they match ("4090" → "RTX 4090"; "A100" → "A100 PCIE", "A100 SXM4"). Providers may over-return;
    `gpu_matches` re-filters."""
    names = [wanted]
    for info in GPUS:
        if info.name not in names and gpu_matches(wanted, info.name, info.vram_gb):
            names.append(info.name)
    return tuple(names)
