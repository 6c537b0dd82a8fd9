"""GPU speed model: training FLOPs per image × GPU peak × achieved efficiency, overridden by measured runs.

FLOPs per image come from lora-format.md §5, measured with torch's FlopCounterMode on diffusers' UNets:
SD 1.5 at 512 px: UNet forward 0.803 TFLOP, LoRA train step (forward + backward, frozen base) 1.78, with gradient
checkpointing 2.44 (+37 %); SDXL at 1024 px: 6.76 / 14.6 / 20.8 (+43 %); VAE encode 1.12 (512²) / 4.88 (1024²).

Other resolutions: FLOPs = F_native × ((1 − q)·r + q·r²), r = latent pixels / native latent pixels. Convolutions,
projections, feed-forwards and cross-attention (77 text tokens) grow linearly with pixels; self-attention's
QKᵀ and AV products grow with the square. q is the quadratic share at the native size, counted from the UNet
layouts (4·N²·C FLOPs per self-attention block with N tokens of C channels):
- SD 1.5 at 64×64 latents: 5 blocks at 4096 tokens × 320 ch (107 GF) + 5 at 1024 × 640 (13 GF) + 5 at 256 × 1280
  (1.7 GF) + mid → 122 GF of 803 GF → q = 0.153.
- SDXL at 128×128 latents: 10 blocks at 4096 × 640 (430 GF) + 60 at 1024 × 1280 (322 GF) → 752 of 6760 → q = 0.111.
The training step is assumed to keep the forward's split (attention backward costs ~2× its forward, like the rest).
The same form fits both VAE measurements exactly (1.12 at 512² → 4.88 at 1024² gives q = 0.0298, from the
encoder's mid-block attention).
SD 2.x (768 px, v-prediction) has SD 1.5's UNet layout (865 M vs 859.5 M parameters; 1024-wide cross-attention
context, linear projections), so its figures are SD 1.5's scaled to 96×96 latents: ≈ 4.80 TFLOP per train step.

Efficiency (achieved fraction of the dense peak) follows lora-format.md §5: ~10–15 % at batch 1–2 and ~25–40 % at
batch ≥ 4 on datacenter GPUs. Consumer cards are set from the speeds users report (lora-format.md §3), which the
curve reproduces within about 1.5×: SDXL on an RTX 4090 ~1 img/s at batch 1 (model: 0.96) and 2.7 img/s at batch 8
with checkpointing (model: 2.1); SD 1.x at batch 1 ~4 img/s on an RTX 4080 (model: 4.7) and ~3 on an RTX 3070 Ti
(model: 2.1); SD 1.5 at 768 px, batch 6, RTX 3090 ~2.6 img/s (model: 3.4); SDXL batch 4 on an RTX 5090 1.2–2.3 img/s
(model: 2.6). Measured runs replace the curve (`Calibration`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from gpurun.pricing.gpus import GpuClass, GpuInfo, gpu_key, match_gpu

# ---- FLOPs per image ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FamilyCompute:
    """Compute facts for one base-model family at its native resolution (TFLOP per image)."""

    native_resolution: int
    #: UNet LoRA train step (forward + backward with frozen base weights)
    train_tflop: float
    #: UNet forward alone (sampling)
    forward_tflop: float
    #: share of the FLOPs that grows with the square of the latent pixel count (self-attention)
    quadratic_share: float
    #: train-step multiplier with gradient checkpointing (recomputed forward)
    checkpointing_factor: float
    #: text encoder(s) forward per caption
    text_encoder_tflop: float


def _rescale(value: float, quadratic_share: float, pixel_ratio: float) -> float:
    return value * ((1.0 - quadratic_share) * pixel_ratio + quadratic_share * pixel_ratio * pixel_ratio)


_SD15 = FamilyCompute(
    native_resolution=512,
    train_tflop=1.78,
    forward_tflop=0.803,
    quadratic_share=0.153,
    checkpointing_factor=2.44 / 1.78,
    text_encoder_tflop=0.013,  # CLIP ViT-L/14 text tower, 77 tokens ≈ 6.7 GMAC
)
_SDXL = FamilyCompute(
    native_resolution=1024,
    train_tflop=14.6,
    forward_tflop=6.76,
    quadratic_share=0.111,
    checkpointing_factor=20.8 / 14.6,
    text_encoder_tflop=0.013 + 0.107,  # CLIP-L + OpenCLIP bigG (2 × 695 M params × 77 tokens)
)


def _sd2_from_sd15() -> FamilyCompute:
    ratio = (768 / 512) ** 2
    params = 865.0 / 859.5
    quad = _SD15.quadratic_share * ratio * ratio
    total = (1.0 - _SD15.quadratic_share) * ratio + quad
    return FamilyCompute(
        native_resolution=768,
        train_tflop=_rescale(_SD15.train_tflop, _SD15.quadratic_share, ratio) * params,
        forward_tflop=_rescale(_SD15.forward_tflop, _SD15.quadratic_share, ratio) * params,
        quadratic_share=quad / total,
        checkpointing_factor=_SD15.checkpointing_factor,
        text_encoder_tflop=2 * 354e6 * 77 / 1e12,  # OpenCLIP ViT-H/14 text tower
    )


FAMILIES: dict[str, FamilyCompute] = {"sd15": _SD15, "sd2": _sd2_from_sd15(), "sdxl": _SDXL}

#: VAE encode at 512² and the quadratic share that also reproduces the 1024² measurement (4.88 TFLOP)
VAE_ENCODE_TFLOP_512 = 1.12
VAE_QUADRATIC_SHARE = (4.88 / 1.12 - 4.0) / (16.0 - 4.0)
#: assumption: the VAE decoder does about twice the encoder's work (more, wider up-blocks at full resolution)
VAE_DECODE_FACTOR = 2.0
#: a text-encoder LoRA step is forward + backward ≈ 3 forwards
TEXT_ENCODER_TRAIN_FACTOR = 3.0


def family_compute(family: str) -> FamilyCompute:
    try:
        return FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}") from None


def pixel_ratio(family: str, resolution: int) -> float:
    """Latent pixels relative to the family's native resolution."""
    return (resolution / family_compute(family).native_resolution) ** 2


def unet_train_tflop(family: str, resolution: int, *, gradient_checkpointing: bool = False) -> float:
    """UNet LoRA train-step TFLOP for one image."""
    fc = family_compute(family)
    value = _rescale(fc.train_tflop, fc.quadratic_share, pixel_ratio(family, resolution))
    return value * (fc.checkpointing_factor if gradient_checkpointing else 1.0)


def unet_forward_tflop(family: str, resolution: int) -> float:
    fc = family_compute(family)
    return _rescale(fc.forward_tflop, fc.quadratic_share, pixel_ratio(family, resolution))


def vae_encode_tflop(resolution: int) -> float:
    return _rescale(VAE_ENCODE_TFLOP_512, VAE_QUADRATIC_SHARE, (resolution / 512) ** 2)


def train_tflop_per_sample(
    family: str,
    resolution: int,
    *,
    gradient_checkpointing: bool = False,
    train_text_encoder: bool = True,
    cache_latents: bool = True,
) -> float:
    """Everything one training image pass costs: UNet step, text-encoder step if trained, VAE if not cached."""
    value = unet_train_tflop(family, resolution, gradient_checkpointing=gradient_checkpointing)
    if train_text_encoder:
        value += TEXT_ENCODER_TRAIN_FACTOR * family_compute(family).text_encoder_tflop
    if not cache_latents:
        value += vae_encode_tflop(resolution)
    return value


def sample_image_tflop(family: str, resolution: int, steps: int) -> float:
    """One sample-grid image: `steps` UNet forwards × 2 (classifier-free guidance) + a VAE decode."""
    return steps * 2 * unet_forward_tflop(family, resolution) + VAE_DECODE_FACTOR * vae_encode_tflop(resolution)


# ---- efficiency -------------------------------------------------------------------------------------------

_CURVE_BATCHES = (1, 2, 4, 8)
#: achieved fraction of dense peak at batch 1, 2, 4, 8 (log-linear in between, flat beyond 8)
EFFICIENCY_CURVES: dict[GpuClass, tuple[float, float, float, float]] = {
    "datacenter": (0.10, 0.15, 0.28, 0.35),
    "workstation": (0.09, 0.13, 0.21, 0.29),
    "consumer": (0.085, 0.12, 0.18, 0.26),
}
#: the unit the samplers and VAE reach: short, batch-1/2 convolution-heavy work
SAMPLING_BATCH = 2


def table_efficiency(gpu_class: GpuClass, batch_size: int) -> float:
    """Achieved fraction of peak for a GPU class at a batch size, from the built-in curve."""
    curve = EFFICIENCY_CURVES[gpu_class]
    if batch_size <= 1:
        return curve[0]
    if batch_size >= _CURVE_BATCHES[-1]:
        return curve[-1]
    position = math.log2(batch_size)  # 1→0, 2→1, 4→2, 8→3
    low = int(position)
    frac = position - low
    return curve[low] + (curve[low + 1] - curve[low]) * frac


# ---- calibration ------------------------------------------------------------------------------------------

#: Measured training speeds, samples (image passes) per second, keyed by `calibration_key(...)`:
#: "GPU|family|resolution|batch" with "|gc" appended for runs with gradient checkpointing, e.g.
#: {"RTX 4090|sdxl|1024|2": 1.9, "H100 SXM|sd15|512|4|gc": 31.0}. GPU names may be spelled as any provider
#: spells them. A measurement is used as-is for the same configuration on the same GPU; for other
#: configurations on that GPU it is turned into an achieved efficiency (see `Calibrator`).
Calibration = Mapping[str, float]


def calibration_key(
    gpu: str, family: str, resolution: int, batch_size: int, gradient_checkpointing: bool = False
) -> str:
    """The key a measured run is filed under in a `Calibration` mapping."""
    key = f"{gpu}|{family}|{int(resolution)}|{int(batch_size)}"
    return f"{key}|gc" if gradient_checkpointing else key


def gpu_id(name: str, vram_gb: float | None = None) -> str:
    """Stable identity of a GPU model across provider spellings (table name, else the normalised name)."""
    match = match_gpu(name, vram_gb)
    return match.info.name if match is not None else "?" + gpu_key(name)[0]


@dataclass(frozen=True, slots=True)
class Measurement:
    family: str
    resolution: int
    batch_size: int
    gradient_checkpointing: bool
    samples_per_second: float


def parse_calibration(calibration: Calibration | None) -> dict[str, list[Measurement]]:
    """Index a Calibration by GPU identity. Raises ValueError naming a malformed key or value."""
    table: dict[str, list[Measurement]] = {}
    for key, value in (calibration or {}).items():
        parts = key.split("|")
        gc = len(parts) == 5 and parts[4] == "gc"
        if len(parts) not in (4, 5) or (len(parts) == 5 and not gc):
            raise ValueError(f"calibration key {key!r}: expected 'GPU|family|resolution|batch' (optionally '|gc')")
        name, family, resolution, batch = parts[:4]
        if family not in FAMILIES:
            raise ValueError(f"calibration key {key!r}: unknown family {family!r}")
        try:
            res, bs, sps = int(resolution), int(batch), float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"calibration key {key!r}: resolution and batch must be integers, value a number"
            ) from None
        if res <= 0 or bs <= 0 or not sps > 0 or not math.isfinite(sps):
            raise ValueError(f"calibration {key!r} = {value!r}: resolution, batch and samples/s must be positive")
        table.setdefault(gpu_id(name), []).append(Measurement(family, res, bs, gc, sps))
    return table


# ---- training throughput ------------------------------------------------------------------------------------

ThroughputSource = Literal["table", "override", "measured", "calibrated"]


@dataclass(frozen=True, slots=True)
class Throughput:
    """How fast one GPU trains one workload configuration, and where the figure comes from."""

    samples_per_second: float
    #: achieved fraction of `peak_tflops`
    efficiency: float
    peak_tflops: float
    source: ThroughputSource
    note: str


def training_throughput(
    *,
    gpu_id_: str,
    gpu_class: GpuClass,
    peak_tflops: float,
    family: str,
    resolution: int,
    batch_size: int,
    gradient_checkpointing: bool,
    tflop_per_sample: float,
    efficiency_overrides: Mapping[str, float],
    measurements: Mapping[str, list[Measurement]],
    train_text_encoder: bool = True,
    cache_latents: bool = True,
) -> Throughput:
    """Samples/s for one configuration. Precedence: an exact measurement, then the user's efficiency setting,
    then a measurement of another configuration on the same GPU (as an efficiency), then the table."""
    runs = measurements.get(gpu_id_, ())
    for run in runs:
        if (run.family, run.resolution, run.batch_size, run.gradient_checkpointing) == (
            family,
            resolution,
            batch_size,
            gradient_checkpointing,
        ):
            sps = run.samples_per_second
            eff = sps * tflop_per_sample / peak_tflops
            return Throughput(sps, eff, peak_tflops, "measured", f"measured {sps:.3g} samples/s on this GPU")
    override = efficiency_overrides.get(gpu_id_)
    if override is not None:
        sps = peak_tflops * override / tflop_per_sample
        return Throughput(sps, override, peak_tflops, "override", f"efficiency {override:.0%} from settings")
    table = table_efficiency(gpu_class, batch_size)
    if runs:
        run = min(
            runs,
            key=lambda r: (
                r.family != family,
                abs(math.log2(r.batch_size / batch_size)),
                abs(r.resolution - resolution),
                r.gradient_checkpointing != gradient_checkpointing,
            ),
        )
        run_tflop = train_tflop_per_sample(
            run.family,
            run.resolution,
            gradient_checkpointing=run.gradient_checkpointing,
            train_text_encoder=train_text_encoder,
            cache_latents=cache_latents,
        )
        achieved = run.samples_per_second * run_tflop / peak_tflops
        # carry the measured/table ratio over to this batch size along the class curve
        eff = achieved * table / table_efficiency(gpu_class, run.batch_size)
        sps = peak_tflops * eff / tflop_per_sample
        note = (
            f"calibrated from {run.samples_per_second:.3g} samples/s measured at "
            f"{run.family} {run.resolution}px batch {run.batch_size}"
        )
        return Throughput(sps, eff, peak_tflops, "calibrated", note)
    sps = peak_tflops * table / tflop_per_sample
    return Throughput(sps, table, peak_tflops, "table", f"{table:.0%} of {peak_tflops:.0f} TFLOP/s ({gpu_class})")


def peak_for(info: GpuInfo | None, advertised_tflops: float | None, default_tflops: float) -> tuple[float, str]:
    """Peak TFLOP/s to plan with, and a note when it does not come from the table."""
    if info is not None:
        return info.tflops, ""
    if advertised_tflops and advertised_tflops > 0:
        return advertised_tflops, f"unknown GPU: using the offer's advertised {advertised_tflops:.0f} TFLOP/s"
    return default_tflops, f"unknown GPU: assuming a conservative {default_tflops:.0f} TFLOP/s"
