"""Workload × Offer → time and dollars per phase, and the expected total once host failures are priced in.

Phases, in the order a run goes through them: boot (+ image pull), install (training stack), model (base-model
download), upload (dataset), caching (model load, VAE latents, text-encoder outputs), training, samples (the
final grid), fetch (LoRA + grid, verify, destroy). The GPU is billed from create to destroy, so every phase costs
price_per_hour × its time. Two money-only phases follow: storage and bandwidth.

Price convention (the adapters fill Offer this way):
- `Offer.price_per_hour` is everything billed per hour for the offer as quoted, including storage for
  `Offer.disk_gb` (Vast's dph_total already contains it: dph_base + storage_cost × allocated GB / 720).
- `Offer.storage_per_gb_month` is charged only for disk beyond `disk_gb` that the job needs (RunPod bills all
  of its disk that way: disk_gb 0 or None, storage_per_gb_month 0.10), for the whole time the machine exists,
  with a month of 720 h. When `disk_gb` is stated and no extra storage can be bought, a job that needs more disk
  is infeasible.
- `download_per_gb` / `upload_per_gb` are $ per 10⁹ bytes into / out of the machine (Vast does not say whether
  its GB is 10⁹ or 2³⁰ bytes; the difference is 7 % of a figure measured in cents).
Expected $ = ($ + expected interruptions × their cost) / reliability. An interruptible (spot) offer is taken away
about every `spot_mean_hours_to_interruption` hours; gpurun then rents again and resumes from the last pulled state,
so each interruption costs a new boot, setup, model download, dataset upload and model load, plus on average half a
checkpoint interval of training done again (not the whole run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gpurun.models import CostEstimate, GpuSpec, Offer, PhaseEstimate, Workload
from gpurun.pricing.assumptions import DEFAULT, Assumptions, BootProfile
from gpurun.pricing.gpus import GpuInfo, looks_non_cuda, match_gpu
from gpurun.pricing.throughput import (
    SAMPLING_BATCH,
    Calibration,
    Throughput,
    family_compute,
    gpu_id,
    parse_calibration,
    peak_for,
    sample_image_tflop,
    table_efficiency,
    train_tflop_per_sample,
    training_throughput,
    vae_encode_tflop,
)
from gpurun.pricing.vram import BatchChoice, choose_batch

#: time phases in run order, then the money-only phases
TIME_PHASES = ("boot", "install", "model", "upload", "caching", "training", "samples", "fetch")
PHASES = (*TIME_PHASES, "storage", "bandwidth")

#: base checkpoints as single files: v1-5-pruned-emaonly (4.27 GB), v2-1_768-ema-pruned (5.21 GB),
#: sd_xl_base_1.0 (6.94 GB)
BASE_MODEL_BYTES: dict[str, int] = {"sd15": 4_265_146_304, "sd2": 5_214_604_874, "sdxl": 6_938_078_334}
#: fp16 LoRA file bytes per unit of network_dim on kohya's default targets (lora-format.md §1.2: rank 32 is
#: 37.7 MB for SD 1.5, 228 MB for SDXL); SD 2's TE (OpenCLIP-H, 23 layers) makes it a little larger than SD 1.5's
LORA_BYTES_PER_DIM: dict[str, float] = {"sd15": 37.7e6 / 32, "sd2": 45e6 / 32, "sdxl": 228e6 / 32}
#: LoCon's extra parameters per unit of rank, counted on the real UNets (tests/pricing/test_locon_size.py): the
#: 3x3 convolutions of the ResNet blocks and samplers per unit of conv_dim, and the ResNets' time-embedding
#: Linear and 1x1 shortcuts, which LoCon also adapts, per unit of network_dim
LOCON_CONV_PARAMS_PER_DIM: dict[str, int] = {"sd15": 544_000, "sd2": 544_000, "sdxl": 355_840}
LOCON_RESNET_PARAMS_PER_DIM: dict[str, int] = {"sd15": 82_880, "sd2": 82_880, "sdxl": 58_560}
FP16_BYTES = 2


def lora_file_bytes(family: str, network_dim: int, conv_dim: int = 0) -> float:
    """fp16 bytes of the trained LoRA file: kohya's default targets, plus LoCon's modules when conv_dim > 0."""
    size = LORA_BYTES_PER_DIM[family] * network_dim
    if conv_dim > 0:
        extra = LOCON_CONV_PARAMS_PER_DIM[family] * conv_dim + LOCON_RESNET_PARAMS_PER_DIM[family] * network_dim
        size += FP16_BYTES * extra
    return size


#: a resumable checkpoint is the LoRA plus its fp32 copy and optimizer state
CHECKPOINT_TO_LORA = 4.0
MIN_RELIABILITY = 0.05
HOURS_PER_MONTH = 720.0


@dataclass(frozen=True, slots=True)
class GpuPlan:
    """Everything about one GPU model (name × VRAM × advertised FLOPs) for one workload; shared by its offers."""

    info: GpuInfo | None
    peak_tflops: float
    batch: BatchChoice
    throughput: Throughput
    caching_seconds: float
    training_seconds: float
    samples_seconds: float
    reasons: tuple[str, ...]
    notes: tuple[str, ...]
    #: caching + training + samples
    compute_seconds: float
    training_note: str


@dataclass(frozen=True, slots=True)
class ProviderPlan:
    """Per-provider constants for one workload (boot profile, what is downloaded, disk needed)."""

    boot_seconds: float
    image_mbit: float
    install_seconds: float
    env_mbit: float
    ingress_bytes: float
    disk_needed_gb: float
    #: achieved Mbit/s for offers that state no bandwidth, and how the notes name it
    unknown_rate: float
    unknown_note: str
    #: the boot note; the host's download rate is appended when an image is pulled
    boot_note: str
    install_note: str


#: what `CostModel.numbers` returns: (phase seconds, storage $, bandwidth $, seconds, $, expected $, reasons)
Numbers = tuple[tuple[float, ...], float, float, float, float, float, tuple[str, ...]]


class CostModel:
    """Per-workload constants, computed once and shared by every offer an estimate or a ranking looks at."""

    def __init__(self, workload: Workload, assumptions: Assumptions = DEFAULT, calibration: Calibration | None = None):
        check_workload(workload)
        a = assumptions
        self.workload = workload
        self.assumptions = a
        self.measurements = parse_calibration(calibration)
        self.overrides = {gpu_id(name): float(value) for name, value in a.efficiency.items()}
        family = workload.family
        lora = lora_file_bytes(family, workload.network_dim, workload.conv_dim)
        checkpoints = max(0, workload.epochs // max(1, a.checkpoint_every_epochs))
        self.sample_images = workload.sample_images if workload.sample_images is not None else a.sample_images
        self.sample_steps = workload.sample_steps or a.sample_steps
        grid = self.sample_images * workload.resolution**2 * 3 * 0.5  # PNG of photos ≈ half the raw RGB bytes
        self.final_bytes = lora + grid
        self.egress_bytes = self.final_bytes + checkpoints * lora * CHECKPOINT_TO_LORA
        self.model_bytes = float(workload.base_model_bytes)
        self.dataset_bytes = float(workload.dataset_bytes)
        latents = workload.images * 4 * (workload.resolution // 8) ** 2 * 4 if workload.cache_latents else 0
        self.job_disk_gb = (
            a.env_disk_gb
            + (self.model_bytes + self.dataset_bytes + latents + self.egress_bytes) / 1e9
            + a.disk_slack_gb
        )
        self.model_load_seconds = a.model_load_seconds + self.model_bytes / (a.disk_read_mbs * 1e6)
        # megabits, so that a transfer time is one division by a Mbit/s rate
        self.model_mbit = self.model_bytes * 8e-6
        self.dataset_mbit = self.dataset_bytes * 8e-6
        self.final_mbit = self.final_bytes * 8e-6
        # assumptions the hot path reads, as plain attributes
        self._eff = a.bandwidth_efficiency
        self._registry, self._pypi, self._hub = a.registry_mbps, a.pypi_mbps, a.hub_mbps
        self._uplink, self._downlink = a.user_uplink_mbps, a.user_downlink_mbps
        self._setup = a.transfer_setup_seconds
        self._fetch_fixed = a.transfer_setup_seconds + a.teardown_seconds
        self._spot_hours = a.spot_mean_hours_to_interruption
        # an interruption loses on average half the training between two pulled states (checkpoint_every_epochs)
        self._half_interval = min(1.0, a.checkpoint_every_epochs / max(1, workload.epochs)) / 2.0
        # the notes every offer shares; the host's rates are appended per offer
        self._model_note = f"{self.model_bytes / 1e9:.1f} GB from the hub (≤ {a.hub_mbps:.0f} Mbit/s), host at "
        self._upload_note = (
            f"{self.dataset_bytes / 1e6:.0f} MB over your {a.user_uplink_mbps:.0f} Mbit/s uplink, host at "
        )
        self._caching_note = f"model load + {workload.images if workload.cache_latents else 0} VAE latents"
        self._samples_note = f"{self.sample_images} grid images × {self.sample_steps} steps"
        self._fetch_note = (
            f"{self.final_bytes / 1e6:.0f} MB LoRA + grid to your {a.user_downlink_mbps:.0f} Mbit/s downlink, "
            "host up at "
        )
        self._gpu_plans: dict[tuple[str, float, float | None], GpuPlan] = {}
        self._provider_plans: dict[str, ProviderPlan] = {}
        #: numbers(offer) → (phase seconds in TIME_PHASES order, storage $, bandwidth $, seconds, $, expected $,
        #: reasons): the per-offer arithmetic, a closure (see `_hot_path`)
        self.numbers: Callable[[Offer], Numbers] = self._hot_path()

    # ---- per GPU model ------------------------------------------------------------------------------------

    def disk_needed_gb(self, boot: BootProfile) -> float:
        """Disk the job needs on a machine of this kind (the image counts where the provider pulls one)."""
        return self.job_disk_gb + (self.assumptions.image_disk_gb if boot.pulls_image else 0.0)

    def gpu_plan(self, gpu: GpuSpec) -> GpuPlan:
        key = (gpu.name, gpu.vram_gb, gpu.tflops)
        plan = self._gpu_plans.get(key)
        if plan is None:
            plan = self._gpu_plans[key] = self._build_gpu_plan(gpu)
        return plan

    def _build_gpu_plan(self, gpu: GpuSpec) -> GpuPlan:
        w, a = self.workload, self.assumptions
        match = match_gpu(gpu.name, gpu.vram_gb or None)
        info = match.info if match else None
        reasons: list[str] = []
        notes: list[str] = []
        peak, peak_note = peak_for(info, gpu.tflops, a.default_tflops)
        if peak_note:
            notes.append(peak_note)
        if match is not None and match.how == "prefix":
            notes.append(f"{gpu.name!r} taken as {info.name if info else '?'}")
        vram = gpu.vram_gb or (info.vram_gb if info else 0.0)
        if gpu.name.strip().lower() in ("cpu", "none", ""):
            if w.tiny:
                return self._tiny_cpu_plan()
            reasons.append("no GPU: this job needs an NVIDIA GPU (only the built-in tiny-sd demo runs on a CPU)")
            vram = 0.0
        elif (info is not None and not info.cuda) or looks_non_cuda(gpu.name):
            reasons.append(f"{gpu.name} is not an NVIDIA CUDA GPU, which gpurun's trainer needs")
        batch = choose_batch(
            w.family,
            w.resolution,
            vram,
            batch_size=w.batch_size,
            gradient_checkpointing=w.gradient_checkpointing,
            train_text_encoder=w.train_text_encoder,
            headroom=a.vram_headroom,
        )
        if vram <= 0:
            if not reasons:
                reasons.append("GPU memory unknown")
        elif not batch.fits:
            gc = " with gradient checkpointing" if batch.gradient_checkpointing else ""
            reasons.append(
                f"needs ~{batch.vram_needed_gb:.0f} GB VRAM at batch {batch.batch_size}{gc}; "
                f"{gpu.name} has {vram:.0f} GB"
            )
        if batch.note:
            notes.append(batch.note)
        if gpu.count > 1:
            notes.append(f"trains on 1 of the {gpu.count} GPUs")
        gpu_class = info.gpu_class if info else "consumer"  # the lowest curve for an unknown card
        per_sample = train_tflop_per_sample(
            w.family,
            w.resolution,
            gradient_checkpointing=batch.gradient_checkpointing,
            train_text_encoder=w.train_text_encoder,
            cache_latents=w.cache_latents,
        )
        identity = gpu_id(gpu.name, gpu.vram_gb or None)
        throughput = training_throughput(
            gpu_id_=identity,
            gpu_class=gpu_class,
            peak_tflops=peak,
            family=w.family,
            resolution=w.resolution,
            batch_size=batch.batch_size,
            gradient_checkpointing=batch.gradient_checkpointing,
            tflop_per_sample=per_sample,
            efficiency_overrides=self.overrides,
            measurements=self.measurements,
            train_text_encoder=w.train_text_encoder,
            cache_latents=w.cache_latents,
        )
        small_work = peak * 1e12 * table_efficiency(gpu_class, SAMPLING_BATCH)  # FLOP/s for VAE, TE, sampler
        cache_tflop = 0.0
        if w.cache_latents:
            cache_tflop += w.images * vae_encode_tflop(w.resolution)
        if not w.train_text_encoder:
            cache_tflop += w.images * family_compute(w.family).text_encoder_tflop
        samples_tflop = self.sample_images * sample_image_tflop(w.family, w.resolution, self.sample_steps)
        caching = self.model_load_seconds + cache_tflop * 1e12 / small_work
        training = w.samples / throughput.samples_per_second
        sampling = samples_tflop * 1e12 / small_work
        training_note = "; ".join(
            (
                f"{w.samples} samples at {throughput.samples_per_second:.2f}/s, batch {batch.batch_size}"
                + (", gradient checkpointing" if batch.gradient_checkpointing else ""),
                throughput.note,
                *notes,
            )
        )
        return GpuPlan(
            info=info,
            peak_tflops=peak,
            batch=batch,
            throughput=throughput,
            caching_seconds=caching,
            training_seconds=training,
            samples_seconds=sampling,
            reasons=tuple(reasons),
            notes=tuple(notes),
            compute_seconds=caching + training + sampling,
            training_note=training_note,
        )

    def _tiny_cpu_plan(self) -> GpuPlan:
        """The tiny demo model trains on a CPU; its speed is a measured constant, not a FLOP model."""
        w, a = self.workload, self.assumptions
        rate = a.tiny_cpu_samples_per_s
        note = f"{w.samples} samples at {rate:.1f}/s on the CPU (tiny demo model)"
        # a 64 px grid image at 4 steps took 0.23 s on this project's 2-core CI machine (15 images in 3.5 s)
        sampling = 0.25 * self.sample_images
        return GpuPlan(
            info=None, peak_tflops=0.0, batch=BatchChoice(w.batch_size or 1, False, 0.0, True),
            throughput=Throughput(rate, 0.0, 0.0, "table", note), caching_seconds=a.tiny_cpu_setup_seconds,
            training_seconds=w.samples / rate, samples_seconds=sampling, reasons=(), notes=(),
            compute_seconds=a.tiny_cpu_setup_seconds + w.samples / rate + sampling, training_note=note,
        )  # fmt: skip

    # ---- per offer ------------------------------------------------------------------------------------------

    def _provider_plan(self, provider: str) -> ProviderPlan:
        a = self.assumptions
        boot = a.boot_for(provider)
        unknown = boot.bandwidth_mbps or a.unknown_bandwidth_mbps
        image = a.image_bytes if boot.pulls_image else 0.0
        env = a.env_bytes if boot.installs_env else 0.0
        plan = ProviderPlan(
            boot_seconds=boot.seconds + (a.image_unpack_seconds if boot.pulls_image else 0.0),
            image_mbit=image * 8e-6,
            install_seconds=a.env_seconds if boot.installs_env else 0.0,
            env_mbit=env * 8e-6,
            ingress_bytes=image + env + self.model_bytes + self.dataset_bytes,
            disk_needed_gb=self.disk_needed_gb(boot),
            unknown_rate=unknown * a.bandwidth_efficiency,
            unknown_note=f"{unknown:.0f} Mbit/s assumed (not stated)",
            boot_note=f"{boot.seconds:.0f}s start"
            + (f" + {a.image_bytes / 1e9:.1f} GB image at " if boot.pulls_image else ", no image to pull"),
            install_note=f"{a.env_bytes / 1e6:.0f} MB of wheels + {a.env_seconds:.0f}s"
            if boot.installs_env
            else "nothing to install",
        )
        self._provider_plans[provider] = plan
        return plan

    def _hot_path(self) -> Callable[[Offer], Numbers]:
        """`numbers` as a closure over this plan's constants: the inner loop of `rank`, run once per offer, so
        every constant is a local name and nothing is allocated but the result."""
        gpu_plans, gpu_plan = self._gpu_plans, self.gpu_plan
        provider_plans, provider_plan = self._provider_plans, self._provider_plan
        eff, registry, pypi, hub = self._eff, self._registry, self._pypi, self._hub
        uplink, downlink, setup, fetch_fixed = self._uplink, self._downlink, self._setup, self._fetch_fixed
        model_mbit, dataset_mbit, final_mbit = self.model_mbit, self.dataset_mbit, self.final_mbit
        egress, spot_hours, half_interval = self.egress_bytes, self._spot_hours, self._half_interval

        def numbers(offer: Offer) -> Numbers:
            gpu = offer.gpu
            gp = gpu_plans.get((gpu.name, gpu.vram_gb, gpu.tflops)) or gpu_plan(gpu)
            pp = provider_plans.get(offer.provider) or provider_plan(offer.provider)
            down = offer.inet_down_mbps
            down = down * eff if down else pp.unknown_rate
            up = offer.inet_up_mbps
            up = up * eff if up else pp.unknown_rate
            t_boot = pp.boot_seconds + pp.image_mbit / (down if down < registry else registry)
            t_install = pp.install_seconds + pp.env_mbit / (down if down < pypi else pypi)
            t_model = model_mbit / (down if down < hub else hub)
            t_upload = setup + dataset_mbit / (down if down < uplink else uplink)
            t_fetch = fetch_fixed + final_mbit / (up if up < downlink else downlink)
            seconds = t_boot + t_install + t_model + t_upload + gp.compute_seconds + t_fetch
            hours = seconds / 3600.0
            reasons = gp.reasons
            storage = 0.0
            need = pp.disk_needed_gb
            disk = offer.disk_gb
            if disk is None or need > disk:
                if offer.storage_per_gb_month > 0:
                    storage = (need - (disk or 0.0)) * offer.storage_per_gb_month * hours / HOURS_PER_MONTH
                elif disk is not None:
                    reasons = (*reasons, f"needs ~{need:.0f} GB disk; the offer has {disk:.0f} GB")
            bandwidth = 0.0
            if offer.download_per_gb or offer.upload_per_gb:
                bandwidth = (pp.ingress_bytes * offer.download_per_gb + egress * offer.upload_per_gb) / 1e9
            dollars = offer.price_per_hour * hours + storage + bandwidth
            reliability = offer.reliability
            if not reliability >= MIN_RELIABILITY:  # also catches NaN
                reliability = 1.0 if reliability != reliability else MIN_RELIABILITY
            elif reliability > 1.0:
                reliability = 1.0
            expected = dollars
            if offer.spot:
                # each expected interruption: everything before training again, and half an interval retrained
                redo = t_boot + t_install + t_model + t_upload + gp.caching_seconds
                redo += gp.training_seconds * half_interval
                ingress = pp.ingress_bytes * offer.download_per_gb / 1e9
                expected += hours / spot_hours * (offer.price_per_hour * redo / 3600.0 + ingress)
            times = (
                t_boot,
                t_install,
                t_model,
                t_upload,
                gp.caching_seconds,
                gp.training_seconds,
                gp.samples_seconds,
                t_fetch,
            )
            return times, storage, bandwidth, seconds, dollars, expected / reliability, reasons

        return numbers

    def estimate(self, offer: Offer) -> CostEstimate:
        return self.materialize(offer, self.numbers(offer))

    def materialize(self, offer: Offer, numbers: Numbers) -> CostEstimate:
        """The full CostEstimate (phases with notes) for numbers computed by `numbers(offer)`."""
        times, storage, bandwidth, seconds, dollars, expected, reasons = numbers
        gpu = offer.gpu
        gp = self._gpu_plans.get((gpu.name, gpu.vram_gb, gpu.tflops)) or self.gpu_plan(gpu)
        pp = self._provider_plans.get(offer.provider) or self._provider_plan(offer.provider)
        down = f"{round(offer.inet_down_mbps)} Mbit/s advertised" if offer.inet_down_mbps else pp.unknown_note
        up = f"{round(offer.inet_up_mbps)} Mbit/s advertised" if offer.inet_up_mbps else pp.unknown_note
        notes = (
            pp.boot_note + down if pp.image_mbit else pp.boot_note,
            pp.install_note,
            self._model_note + down,
            self._upload_note + down,
            self._caching_note,
            gp.training_note,
            self._samples_note,
            self._fetch_note + up + "; destroy",
        )
        per_second = offer.price_per_hour / 3600.0
        phases = tuple(
            PhaseEstimate(name, t, t * per_second, note)
            for name, t, note in zip(TIME_PHASES, times, notes, strict=True)
        )
        if storage > 0:
            extra = pp.disk_needed_gb - (offer.disk_gb or 0.0)
            storage_note = f"{extra:.0f} GB beyond the offer's disk at ${offer.storage_per_gb_month:g}/GB-month"
        else:
            storage_note = "included in $/h"
        if bandwidth > 0:
            bandwidth_note = f"${offer.download_per_gb:g}/GB in, ${offer.upload_per_gb:g}/GB out"
        else:
            bandwidth_note = "free"
        phases += (
            PhaseEstimate("storage", 0.0, storage, storage_note),
            PhaseEstimate("bandwidth", 0.0, bandwidth, bandwidth_note),
        )
        return CostEstimate(
            offer=offer,
            phases=phases,
            batch_size=gp.batch.batch_size,
            feasible=not reasons,
            seconds=seconds,
            dollars=dollars,
            expected_dollars=expected,
            reasons=reasons,
        )


def check_workload(workload: Workload) -> None:
    """Raise ValueError naming the first impossible workload field."""
    family_compute(workload.family)
    for name in ("images", "repeats", "epochs", "resolution", "network_dim"):
        if getattr(workload, name) < 1:
            raise ValueError(f"workload.{name} must be at least 1, got {getattr(workload, name)}")
    if workload.batch_size is not None and workload.batch_size < 1:
        raise ValueError(f"workload.batch_size must be at least 1, got {workload.batch_size}")
    for name in ("sample_images", "sample_steps"):
        value = getattr(workload, name)
        if value is not None and value < 0:
            raise ValueError(f"workload.{name} must not be negative, got {value}")
    if workload.dataset_bytes < 0 or workload.base_model_bytes < 0:
        raise ValueError("workload byte counts must not be negative")


def estimate(
    workload: Workload, offer: Offer, *, assumptions: Assumptions = DEFAULT, calibration: Calibration | None = None
) -> CostEstimate:
    """Time and money for `workload` on `offer`, per phase. Infeasible offers are marked with reasons."""
    return CostModel(workload, assumptions, calibration).estimate(offer)
