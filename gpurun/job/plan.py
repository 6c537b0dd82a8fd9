"""Planning a training run before any money is spent: check the dataset (scanned once), settle the config, rank
live offers under the budget with this machine's measured speeds, and pick the offer to rent (with runners-up
for failover). `gpurun train --dry-run` prints exactly this plan; `gpurun train` executes it (run.py).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpurun.dataset import DatasetReport, check_dataset
from gpurun.dataset.trainset import scan_training_set
from gpurun.errors import BudgetError, ConfigError, DatasetError
from gpurun.job.basecheck import BaseChecker
from gpurun.job.bases import BaseSpec, resolve_base
from gpurun.job.bundle import bundle_plan
from gpurun.job.datasets import run_upload
from gpurun.job.offers import check_budget, offers
from gpurun.job.payload import TrainingPayload
from gpurun.job.workload import build_workload
from gpurun.journal import Journal
from gpurun.lorainit import check_family, read_lora_weights
from gpurun.models import CostEstimate, GpuRequest, Workload, to_dict
from gpurun.pricing import Calibration, calibration_key
from gpurun.pricing.serial import estimate_to_dict
from gpurun.provision.registry import image_for, min_cuda_for, provider_class
from gpurun.remote.excludes import plan_upload, upload_excludes
from gpurun.safenames import component_problem
from gpurun.trainconfig import TrainConfig

#: how many offers `gpurun train` may try in turn when one is gone or never comes up
MAX_ATTEMPTS = 3
#: what the watchdog keeps back from the budget for stopping, fetching and destroying, in seconds of billing
DEADLINE_MARGIN_S = 120.0
#: the longest a machine may wait for `gpurun attach` or a debugging session: one day (the budget's deadline
#: still ends it sooner)
MAX_WAIT_MIN = 24 * 60.0


@dataclass(frozen=True)
class TrainRequest:
    """What the user asked for (the `gpurun train` options), before anything is resolved."""

    dataset: Path | None = None
    config: Path | None = None
    base: str | None = None
    budget: float | None = None
    providers: tuple[str, ...] = ()
    gpus: tuple[str, ...] = ()
    spot: bool = False
    offer: str | None = None
    output: Path = Path("runs")
    repeats: int | None = None
    trigger: str | None = None
    epochs: int | None = None
    keep_on_failure_min: float = 0.0
    artifact_grace_min: float = 30.0
    max_attempts: int = MAX_ATTEMPTS
    #: the container image to rent with (default: each provider's own, see `Provider.default_image`)
    image: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The request as a run's record keeps it (paths as text), for `gpurun resume`."""
        data = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainRequest:
        """What `to_dict` wrote (fields a later gpurun added are dropped, missing ones take their defaults)."""
        paths = ("dataset", "config", "output")
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name not in known:
                continue
            if name in paths and value is not None:
                value = Path(value)
            elif name in ("providers", "gpus"):
                value = tuple(str(v) for v in value or ())
            values[name] = value
        return cls(**values)


@dataclass(frozen=True)
class UploadSummary:
    files: int
    bytes: int
    parts: dict[str, int] = field(default_factory=dict)


class OfferChoice:
    """What every plan that rents has: the offers to try, best first, under the request's budget."""

    request: TrainRequest
    #: offers to try, best first (the chosen one first); all within budget
    candidates: tuple[CostEstimate, ...]

    @property
    def chosen(self) -> CostEstimate:
        return self.candidates[0]

    @property
    def runner_up(self) -> CostEstimate | None:
        return self.candidates[1] if len(self.candidates) > 1 else None

    @property
    def hard_deadline_s(self) -> float | None:
        """Seconds of billing the budget buys at the chosen offer's price (the watchdog's limit), or None."""
        return deadline_seconds(self.request.budget, self.chosen.offer.price_per_hour)

    def offer_dict(self) -> dict[str, Any]:
        """The choice in the plan's JSON: chosen, runner-up, the order of the candidates, deadline, image."""
        return {
            "chosen": estimate_to_dict(self.chosen),
            "runner_up": estimate_to_dict(self.runner_up) if self.runner_up else None,
            "candidates": [c.offer.key for c in self.candidates],
            "hard_deadline_s": self.hard_deadline_s,
            "image": image_for(self.chosen.offer.provider, self.request.image),
        }


@dataclass(frozen=True)
class TrainPlan(OfferChoice):
    request: TrainRequest
    config: TrainConfig
    base: BaseSpec
    dataset: Path
    #: the dataset check (facts, warnings, the scan the upload and the runner's folder follow)
    report: DatasetReport
    workload: Workload
    candidates: tuple[CostEstimate, ...]
    upload: UploadSummary
    notes: tuple[str, ...] = ()
    offers_considered: int = 0
    provider_errors: dict[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)

    def payload(self) -> TrainingPayload:
        request = self.request
        return TrainingPayload(self.config, self.report, self.dataset, request.repeats, request.trigger,
                               self.upload.files, self.upload.bytes)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "dataset": str(self.dataset),
            "base": dataclasses.asdict(self.base),
            "budget": self.request.budget,
            "workload": to_dict(self.workload),
            **self.offer_dict(),
            "upload": dataclasses.asdict(self.upload),
            "config": self.config.model_dump(mode="json"),
            "dataset_warnings": [i for i in self.report.to_dict()["issues"] if i.get("severity") == "warning"],
            "notes": list(self.notes),
            "offers_considered": self.offers_considered,
            "provider_errors": self.provider_errors,
        }


def deadline_seconds(budget: float | None, price_per_hour: float) -> float | None:
    """How long the budget lasts at this price, less the margin for teardown; None when either is free/unset."""
    if budget is None or price_per_hour <= 0:
        return None
    return max(0.0, budget / price_per_hour * 3600.0 - DEADLINE_MARGIN_S)


def settle_config(request: TrainRequest) -> tuple[TrainConfig, BaseSpec, Path, list[str]]:
    """The run's TrainConfig (the user's file, else the base family's preset), its base model and dataset."""
    notes: list[str] = []
    user = TrainConfig.from_toml(request.config) if request.config else None
    base_text = request.base or (user.pretrained_model_name_or_path if user else None)
    if not base_text:
        raise ConfigError(
            "no base model",
            where="--base",
            hint="pass --base sd15|sdxl|sd2|tiny-sd|FILE|HUB_ID, or set pretrained_model_name_or_path",
        )
    family_hint = user.model_family if user else None
    base = resolve_base(base_text, family_hint=family_hint)
    config = user or TrainConfig.preset(base.preset)
    if user is None:
        notes.append(f"training values: the {base.preset} preset (the tutorial's); pass --config to change them")
    updates: dict[str, Any] = {"pretrained_model_name_or_path": base.ref}
    if config.model_family is None and base.family_known:
        updates["model_family"] = base.family
    if request.epochs is not None:
        updates["max_train_epochs"] = request.epochs
        updates["max_train_steps"] = None
    if base.kind == "builtin":
        # the tiny demo model trains at its own small size; the preset's 512-1024 px would only cost time
        updates.update(
            resolution=(64, 64),
            min_bucket_reso=64,
            max_bucket_reso=128,
            bucket_reso_steps=64,
            sample_steps=4,
            sample_seeds=[1],
            optimizer_type="AdamW",
            lr_warmup_steps=0,
        )
        if user is None and request.epochs is None:
            updates.update(max_train_epochs=4, save_every_n_epochs=2)  # a demo that ends in about a minute
        notes.append("tiny demo model: 64 px, random weights — it proves the pipeline, it learns nothing")
    config = config.model_copy(update=updates)
    if config.network_weights and base.family_known:
        # the file is the user's: its keys must be this base's LoRA modules before anything is rented
        check_family(read_lora_weights(config.network_weights), base.family)
    if config.dataset_config:
        if request.dataset is not None:
            raise ConfigError(
                "a dataset folder and dataset_config were both given",
                where=str(request.dataset),
                hint="drop the folder: the dataset config names the images",
            )
        # the dataset is the dataset config file: its subsets name the folders (see job.datasets)
        return config, base, Path(config.dataset_config), notes
    dataset = request.dataset or (Path(config.train_data_dir) if config.train_data_dir else None)
    if dataset is None:
        raise ConfigError("no dataset", where="DATASET", hint="pass the training folder, or set train_data_dir")
    return config, base, dataset.expanduser().resolve(), notes


async def check_base(base: BaseSpec) -> BaseSpec:
    """The base model on the hub or a server: it exists, may be downloaded, and its size (nothing rented yet)."""
    if base.kind not in ("hub", "url"):
        return base
    checker = BaseChecker()
    try:
        return await checker.check(base)
    finally:
        await checker.aclose()


def check_training_data(config: TrainConfig, base: BaseSpec, dataset: Path, request: TrainRequest) -> DatasetReport:
    """The local dataset check; errors stop the run before anything is rented."""
    scan = scan_training_set(
        config, dataset=None if config.dataset_config else dataset, repeats=request.repeats, trigger=request.trigger
    )
    report = check_dataset(
        dataset, scan=scan, model=base.family, caption_ext=config.caption_extension, repeats=request.repeats,
        trigger=request.trigger, epochs=config.epochs, batch_size=config.batch_size, resolution=config.resolution,
        enable_bucket=config.enable_bucket, min_bucket_reso=config.min_bucket_reso,
        max_bucket_reso=config.max_bucket_reso, bucket_reso_steps=config.bucket_reso_steps,
    )  # fmt: skip
    if not report.ok:
        errors = report.errors
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DatasetError(
            f"{first.message}{more}",
            where=str(first.path) if first.path else str(dataset),
            hint=f"run `gpurun dataset check {dataset}` for every problem; nothing was rented",
        )
    return report


def summarise_upload(config: TrainConfig, dataset: Path, report: DatasetReport, base: BaseSpec) -> UploadSummary:
    """What goes up to the instance: the dataset's folders (after excludes), the gpurun bundle, a local base
    model."""
    upload = run_upload(config, dataset, report.scan.layout, None, None)
    plans = [plan_upload(folder, upload_excludes(folder)) for folder, _ in upload.folders]
    bundle = bundle_plan()
    parts = {"dataset": sum(p.bytes for p in plans), "gpurun": bundle.bytes}
    if upload.copies:
        parts["network weights"] = sum(local.stat().st_size for local, _ in upload.copies)
    files = sum(p.files for p in plans) + len(upload.files) + len(upload.copies) + bundle.files
    if base.kind == "local":
        parts["base model"] = base.bytes
        files += 1
    return UploadSummary(files=files, bytes=sum(parts.values()), parts=parts)


def validate_request(request: TrainRequest) -> None:
    """The options' ranges, checked before anything else: every failure-time wait is finite and bounded, names
    that become folders are plain names, the output folder can be a folder."""
    check_budget(request.budget)
    for option, minutes in (("--keep-on-failure", request.keep_on_failure_min),
                            ("--artifact-grace", request.artifact_grace_min)):  # fmt: skip
        if not (math.isfinite(minutes) and 0 <= minutes <= MAX_WAIT_MIN):
            raise ConfigError(
                f"must be a number of minutes from 0 to {MAX_WAIT_MIN:.0f}, got {minutes}",
                where=option,
                hint="the budget's deadline ends the machine sooner in any case",
            )
    for option, count in (("--epochs", request.epochs), ("--repeats", request.repeats)):
        if count is not None and not 1 <= count <= 100_000:
            raise ConfigError(f"must be from 1 to 100000, got {count}", where=option)
    if request.max_attempts < 1:
        raise ConfigError(f"must be at least 1, got {request.max_attempts}", where="max_attempts")
    if request.trigger is not None:
        problem = component_problem(request.trigger)
        if problem:
            raise ConfigError(
                f"the trigger names the training folder on the machine, and {problem}: {request.trigger!r}",
                where="--trigger",
                hint="a word or a few, without / or control characters, e.g. 'sks dog'",
            )
    output = request.output.expanduser()
    if output.exists() and not output.is_dir():
        raise ConfigError("is a file, not a folder", where=f"--output {output}", hint="pass a folder for the runs")


def measured_calibration() -> Calibration | None:
    """The samples/s this user's earlier runs measured, per GPU and workload shape (from the journal)."""
    with Journal.open() as journal:
        measured = journal.calibration()
    calibration = {
        calibration_key(gpu, family, res, batch): value for (gpu, family, res, batch), value in measured.items()
    }
    return calibration or None


#: how a plan picks the offers it may rent from the ranked pool (raising BudgetError when none will do)
Afford = Callable[[list[CostEstimate], TrainRequest], list[CostEstimate]]


@dataclass(frozen=True)
class PreparedJob:
    """A training job checked locally, before any offer is asked for: its settled config, base model (checked on
    the hub), dataset check and workload."""

    request: TrainRequest
    config: TrainConfig
    base: BaseSpec
    dataset: Path
    report: DatasetReport
    workload: Workload
    notes: tuple[str, ...]

    def upload(self) -> UploadSummary:
        return summarise_upload(self.config, self.dataset, self.report, self.base)


async def prepare_job(request: TrainRequest) -> PreparedJob:
    """Everything about one job that needs no offer: options, config, dataset, base. Raises the user's
    mistakes as GpurunErrors."""
    validate_request(request)
    config, base, dataset, notes = settle_config(request)
    report = check_training_data(config, base, dataset, request)
    base = await check_base(base)
    source = build_workload(
        model=base.family, dataset=dataset, config=config, repeats=request.repeats, epochs=request.epochs,
        scan=report.scan,
    )  # fmt: skip
    workload = dataclasses.replace(source.workload, base_model_bytes=base.bytes, tiny=base.kind == "builtin")
    return PreparedJob(request, config, base, dataset, report, workload, (*notes, *source.notes))


async def plan_train(
    request: TrainRequest, *, calibration: Calibration | None = None, afford: Afford | None = None
) -> TrainPlan:
    """Everything `gpurun train` decides before renting. Raises the user's mistakes as GpurunErrors. `afford`
    replaces the whole-job budget check (a continued run prices only what is left)."""
    job = await prepare_job(request)
    config, base, dataset, report, workload = job.config, job.base, job.dataset, job.report, job.workload
    notes = list(job.notes)
    budget = request.budget if request.budget else None  # $0 = "free providers only", checked below
    min_cuda = min_cuda_for(request.image)
    if request.image and min_cuda is None:
        notes.append(f"the tag of {request.image} does not name its CUDA: offers are not filtered by driver")
    elif min_cuda is not None:
        notes.append(f"hosts whose driver supports CUDA {min_cuda:g} or newer (what the image needs)")
    result = await offers(
        workload, providers=request.providers or None,
        requirements=GpuRequest(gpu_names=request.gpus, spot=request.spot, min_cuda=min_cuda),
        budget=budget, limit=None, calibration=calibration,
    )  # fmt: skip
    ranking = result.ranking
    pool, refused = usable_with_image(list(ranking.estimates), request.image)
    notes += [f"{name} offers left out: {error.message}" for name, error in refused.items()]
    if request.offer:
        wanted = result.find(request.offer)
        pool = [e for e in pool if e.offer.key == wanted.key]
        if not pool:
            reasons = next((r.reasons for r in ranking.rejected if r.offer.key == wanted.key), ())
            raise ConfigError(
                f"offer {wanted.key} cannot run this job: {'; '.join(reasons) or 'not eligible'}", where="--offer"
            )
    if not pool and refused:
        raise next(iter(refused.values()))  # only providers that cannot run this image had offers: say why
    affordable = (afford or affordable_or_raise)(pool, request)
    return TrainPlan(
        request=request, config=config, base=base, dataset=dataset, report=report, workload=workload,
        candidates=tuple(affordable[: max(1, request.max_attempts)]),
        upload=summarise_upload(config, dataset, report, base), notes=tuple(notes),
        offers_considered=ranking.considered,
        provider_errors={name: failure.message for name, failure in result.errors.items()},
    )  # fmt: skip


def usable_with_image(pool: list[CostEstimate], image: str | None) -> tuple[list[CostEstimate], dict[str, ConfigError]]:
    """Drop offers of providers that cannot run `image` (RunPod starts sshd only in its own images), with why."""
    if not image:
        return pool, {}
    kept, refused = [], {}
    for estimate in pool:
        name = estimate.offer.provider
        try:
            provider_class(name).check_image(image)
        except ConfigError as error:
            refused[name] = error
            continue
        kept.append(estimate)
    return kept, refused


def affordable_or_raise(pool: list[CostEstimate], request: TrainRequest) -> list[CostEstimate]:
    """The offers of `pool` the budget allows (a billing one needs an explicit budget); BudgetError if none."""
    affordable = [e for e in pool if _affordable(e, request.budget)]
    if not affordable:
        raise _budget_error(pool, request)
    return affordable


def _affordable(estimate: CostEstimate, budget: float | None) -> bool:
    price = estimate.offer.price_per_hour
    if budget is None:
        return price <= 0  # renting anything that bills needs an explicit --budget
    return estimate.expected_dollars <= budget + 1e-9


def _budget_error(pool: list[CostEstimate], request: TrainRequest) -> BudgetError:
    if not pool:
        return BudgetError(
            "no offer can run this job",
            where="offers",
            hint="relax --gpu/--provider filters, or see `gpurun offers` for why offers were rejected",
        )
    cheapest = min(pool, key=lambda e: e.expected_dollars)
    if request.budget is None:
        return BudgetError(
            f"renting a GPU needs a budget: the cheapest suitable offer ({cheapest.offer.key}, "
            f"{cheapest.offer.gpu.name}) is expected to cost ${cheapest.expected_dollars:.2f}",
            where="--budget",
            hint=f"pass --budget {math.ceil(cheapest.expected_dollars * 1.2 * 100) / 100:.2f} or more",
        )  # fmt: skip
    return BudgetError(
        f"nothing fits the budget of ${request.budget:.2f}: the cheapest suitable offer ({cheapest.offer.key}, "
        f"{cheapest.offer.gpu.name}) is expected to cost ${cheapest.expected_dollars:.2f}",
        where="--budget", hint="raise --budget, train fewer epochs, or use a smaller base model",
    )  # fmt: skip
