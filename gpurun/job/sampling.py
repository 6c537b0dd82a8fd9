"""`gpurun sample`: render sample grids for LoRA files on a rented GPU (or this machine), with train's money
safety: the same offer ranking under a budget, the same watchdog and deadline, the same teardown and receipt.

The plan checks the files locally (kohya LoRA files of the base's family), prices the grids on every offer and
picks the cheapest under the budget; the payload uploads the files and starts `python -m gpurun.runner.sampling`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpurun.errors import ConfigError
from gpurun.job import machine
from gpurun.job.bases import BaseSpec, resolve_base
from gpurun.job.bundle import bundle_plan
from gpurun.job.context import RunContext
from gpurun.job.offers import offers
from gpurun.job.plan import (
    MAX_ATTEMPTS,
    OfferChoice,
    TrainRequest,
    UploadSummary,
    affordable_or_raise,
    check_base,
    validate_request,
)
from gpurun.lorafile import SafetensorsError, guess_family, read_header
from gpurun.models import CostEstimate, GpuRequest, Workload, to_dict
from gpurun.provision.registry import min_cuda_for
from gpurun.report.rundata import read_run
from gpurun.samplejob import SampleJob
from gpurun.trainconfig import TrainConfig

JOB_NAME = "sample.json"
LORA_DIR = "loras"


@dataclass(frozen=True)
class SampleRequest:
    """What the user asked `gpurun sample` for."""

    prompts: tuple[str, ...]
    loras: tuple[Path, ...] = ()
    #: sample a finished run's checkpoints (epoch by epoch) instead of, or as well as, `loras`
    run_dir: Path | None = None
    #: the base model (default: the run's, with `run_dir`)
    base: str | None = None
    seeds: tuple[int, ...] = (1,)
    weights: tuple[float, ...] = (0.0, 0.5, 1.0)
    compare_weight: float = 1.0
    steps: int = 20
    size: int | None = None  # px per cell; None = the family's native size
    negative_prompt: str = ""
    labels: tuple[str, ...] = ()
    budget: float | None = None
    providers: tuple[str, ...] = ()
    gpus: tuple[str, ...] = ()
    spot: bool = False
    offer: str | None = None
    #: where the run folder goes (default: `samples/` beside the first LoRA file)
    output: Path | None = None
    keep_on_failure_min: float = 0.0
    artifact_grace_min: float = 10.0
    max_attempts: int = MAX_ATTEMPTS
    image: str | None = None

    def options(self, first_file: Path) -> TrainRequest:
        """The run options `gpurun train` shares (budget, waits, output, image), in the shape run.py reads."""
        output = self.output or (first_file.parent / "samples")
        return TrainRequest(budget=self.budget, providers=self.providers, gpus=self.gpus, spot=self.spot,
                        offer=self.offer, output=output, keep_on_failure_min=self.keep_on_failure_min,
                        artifact_grace_min=self.artifact_grace_min, max_attempts=self.max_attempts,
                        image=self.image)  # fmt: skip


NATIVE_SIZE = {"sd15": 512, "sd2": 768, "sdxl": 1024}


@dataclass(frozen=True)
class SamplePlan(OfferChoice):
    sample: SampleRequest
    request: TrainRequest
    base: BaseSpec
    job: SampleJob
    loras: tuple[Path, ...]
    workload: Workload
    candidates: tuple[CostEstimate, ...]
    upload: UploadSummary
    notes: tuple[str, ...] = ()
    offers_considered: int = 0
    provider_errors: dict[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)

    def payload(self) -> SamplingPayload:
        return SamplingPayload(self.job, self.loras, self.upload)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "kind": "sample",
            "loras": [str(p) for p in self.loras],
            "base": dataclasses.asdict(self.base),
            "budget": self.request.budget,
            "workload": to_dict(self.workload),
            "job": self.job.model_dump(mode="json"),
            "images": self.job.cells,
            **self.offer_dict(),
            "upload": dataclasses.asdict(self.upload),
            "notes": list(self.notes),
            "offers_considered": self.offers_considered,
            "provider_errors": self.provider_errors,
        }


@dataclass(frozen=True)
class SamplingPayload:
    """The LoRA files go up (as loras/<i>-<name>), the sampler renders every grid into out/."""

    job: SampleJob
    loras: tuple[Path, ...]
    upload: UploadSummary

    def config_text(self) -> str:
        return self.job.to_json()

    def prepare(self, out_dir: Path) -> None:
        (out_dir / JOB_NAME).write_text(self.config_text(), encoding="utf-8")

    def upload_detail(self) -> str:
        return f"{len(self.loras)} LoRA files, {self.upload.bytes / 1e6:.1f} MB"

    async def ship(self, ctx: RunContext) -> None:
        assert ctx.transport is not None and ctx.layout is not None
        await ctx.transport.makedirs(ctx.layout.path(LORA_DIR))
        for local, remote in zip(self.loras, self.job.loras, strict=True):
            await ctx.transport.put_file(local, ctx.layout.path(remote))

    async def launch(self, ctx: RunContext, model_path: str) -> None:
        assert ctx.transport is not None and ctx.layout is not None
        job = self.job.model_copy(update={"pretrained_model_name_or_path": model_path, "output_dir": "out"})
        await machine.launch_module(ctx.transport, ctx.layout, "gpurun.runner.sampling", JOB_NAME, job.to_json())


def check_loras(paths: Sequence[Path], family: str | None) -> tuple[Path, ...]:
    """The files exist and are kohya LoRA files of one family (the base's, when it is known)."""
    checked = []
    for path in paths:
        path = path.expanduser().resolve()
        if not path.is_file():
            raise ConfigError("LoRA file not found", where=str(path))
        try:
            header = read_header(path)
        except SafetensorsError as exc:
            raise ConfigError(str(exc), where=str(path), hint="pass the .safetensors file a training wrote") from None
        guessed = guess_family(list(header.tensors))
        if guessed is None:
            raise ConfigError("not a kohya LoRA file (no lora_unet_/lora_te_ keys)", where=str(path))
        if family is not None and guessed != family and {guessed, family} != {"sd15", "sd2"}:
            raise ConfigError(f"a {guessed} LoRA cannot be sampled with a {family} base model", where=str(path),
                              hint="pass the --base it was trained on")  # fmt: skip
        checked.append(path)
    return tuple(checked)


def build_job(request: SampleRequest, base: BaseSpec, loras: tuple[Path, ...]) -> SampleJob:
    """The sample job as the machine will read it (file names under loras/, the model path filled in later)."""
    size = request.size or (64 if base.kind == "builtin" else NATIVE_SIZE[base.family])
    remote = [f"{LORA_DIR}/{i:02d}-{p.name}" for i, p in enumerate(loras)]
    labels = list(request.labels) or [p.stem for p in loras]
    data = {
        "pretrained_model_name_or_path": base.ref, "model_family": base.family, "loras": remote, "labels": labels,
        "prompts": list(request.prompts), "negative_prompt": request.negative_prompt, "seeds": list(request.seeds),
        "weights": list(request.weights), "compare_weight": request.compare_weight, "steps": request.steps,
        "width": size, "height": size,
    }  # fmt: skip
    return SampleJob.parse(data, "gpurun sample")


def run_checkpoints(run_dir: Path) -> tuple[list[Path], list[str], str | None]:
    """A finished run's LoRA files in the order they were written, labelled by epoch, and its base model."""
    data = read_run(run_dir)
    files = [run_dir / f.name for f in data.loras]
    labels = [f"epoch {f.epoch}" + (" (final)" if f.final else "") for f in data.loras]
    base = None
    if (run_dir / "config.toml").is_file():
        base = TrainConfig.from_toml(run_dir / "config.toml").pretrained_model_name_or_path
    if not files:
        raise ConfigError("the run has no LoRA file yet", where=str(run_dir), hint="sample it once it saved one")
    return files, labels, base


async def plan_sample(request: SampleRequest) -> SamplePlan:
    """Everything `gpurun sample` decides before renting: files, base, job, offers under the budget."""
    files, labels, base_text = list(request.loras), list(request.labels), request.base
    if request.run_dir is not None:
        run_files, run_labels, run_base = run_checkpoints(request.run_dir)
        labels = [*(labels or [p.stem for p in files]), *run_labels] if files else run_labels
        files += run_files
        base_text = base_text or run_base
    if not base_text:
        raise ConfigError("no base model", where="--base", hint="pass the base the LoRA was trained on: --base sd15")
    if not files:
        raise ConfigError("no LoRA file to sample", where="LORA", hint="pass .safetensors files, or --run RUN")
    request = dataclasses.replace(request, labels=tuple(labels))
    options = request.options(files[0].expanduser().resolve())
    validate_request(options)
    base = resolve_base(base_text)
    loras = check_loras(files, base.family if base.family_known else None)
    job = build_job(request, base, loras)
    base = await check_base(base)
    lora_bytes = sum(p.stat().st_size for p in loras)
    workload = Workload(
        family=base.family, resolution=job.width, images=1, repeats=1, epochs=1, dataset_bytes=lora_bytes,
        base_model_bytes=base.bytes, cache_latents=False, tiny=base.kind == "builtin", sample_images=job.cells,
        sample_steps=job.steps,
    )  # fmt: skip
    notes = [f"{job.cells} images at {job.width} px, {job.steps} steps; the training line is one sample (none run)"]
    min_cuda = min_cuda_for(request.image)
    result = await offers(
        workload, providers=request.providers or None,
        requirements=GpuRequest(gpu_names=request.gpus, spot=request.spot, min_cuda=min_cuda),
        budget=request.budget or None, limit=None,
    )  # fmt: skip
    pool = list(result.ranking.estimates)
    if request.offer:
        wanted = result.find(request.offer)
        pool = [e for e in pool if e.offer.key == wanted.key]
    affordable = affordable_or_raise(pool, options)
    bundle = bundle_plan()
    parts = {"LoRA files": lora_bytes, "gpurun": bundle.bytes}
    if base.kind == "local":
        parts["base model"] = base.bytes
    upload = UploadSummary(files=len(loras) + bundle.files, bytes=sum(parts.values()), parts=parts)
    return SamplePlan(
        sample=request, request=options, base=base, job=job, loras=loras, workload=workload,
        candidates=tuple(affordable[: max(1, options.max_attempts)]), upload=upload, notes=tuple(notes),
        offers_considered=result.ranking.considered,
        provider_errors={name: failure.message for name, failure in result.errors.items()},
    )  # fmt: skip
