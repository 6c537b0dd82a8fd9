"""`gpurun offers`: live offers from every usable provider, ranked by the estimated TOTAL cost of your job."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.status import Status

from gpurun.cli import options
from gpurun.cli.render import err, human_bytes, human_seconds, out, print_json, printable, safe

if TYPE_CHECKING:
    from gpurun.api import OffersResult, WorkloadSource
    from gpurun.models import CostEstimate

HELP = """\
Live GPU offers ranked by what YOUR job will cost in total, not by $/h.

Each offer is priced phase by phase from its own figures: boot and image pull, installing the training stack,
downloading the base model and uploading your dataset at the host's bandwidth, caching latents, training at
the GPU's speed, the sample grid, and fetching the LoRA; plus storage and bandwidth charges. The total is
divided by the host's reliability (a 90 % host costs 11 % more on average). Spot offers also price in the
chance of an interruption.

\b
The workload comes from (first match wins for each figure):
  --images/--repeats/--epochs/--model    numbers you give
  --dataset PATH                         your kohya dataset folder (N_name/ folders, counted and sized)
  --config training_config.toml          resolution, batch, epochs, checkpointing, text-encoder training
  the tutorial's example                 20 images × 10 repeats × 10 epochs of SD 1.5

\b
Examples:
  gpurun offers --model sd15 --dataset ./training_data --budget 2
  gpurun offers --config training_config.toml --gpu 4090 --gpu 3090 --sort time
  gpurun offers --model sdxl --images 40 --spot --max-price 0.5 --limit 10
  gpurun offers --explain vast:18492733          the phase-by-phase breakdown of one offer
  gpurun offers --json | jq '.offers[0]'
"""


def offers_command(
    model: str | None = typer.Option(None, "--model", help="Base model family: sd15, sd2 or sdxl."),
    dataset: Path | None = typer.Option(None, "--dataset", help="Your dataset folder: images, repeats and bytes."),
    config: Path | None = options.CONFIG,
    images: int | None = typer.Option(None, "--images", help="Training images (default: the dataset's, else 20)."),
    repeats: int | None = typer.Option(None, "--repeats", help="Repeats per image per epoch (default 10)."),
    epochs: int | None = options.epochs_option("Epochs (default: the config's, else 10)."),
    gpu: list[str] = options.GPUS,
    min_vram: float | None = typer.Option(None, "--min-vram", help="Only GPUs with at least this many GB."),
    max_price: float | None = typer.Option(None, "--max-price", help="Only offers up to this $/h."),
    provider: list[str] = options.PROVIDERS,
    spot: bool = options.SPOT,
    budget: float | None = options.budget_option("Mark offers whose expected total exceeds this $."),
    sort: str = typer.Option("cost", "--sort", help="cost (expected total), time (fastest), or price ($/h)."),
    limit: int = typer.Option(20, "--limit", help="Show the best N offers (0: all)."),
    uplink: float | None = typer.Option(None, "--uplink", help="Your upload speed in Mbit/s (default 20)."),
    downlink: float | None = typer.Option(None, "--downlink", help="Your download speed in Mbit/s (default 100)."),
    image: str | None = options.IMAGE,
    explain: str | None = typer.Option(None, "--explain", help="Show the cost breakdown of one offer (provider:id)."),
    as_json: bool = options.json_option(),
) -> None:
    from gpurun.api import build_workload, min_cuda_for, offers
    from gpurun.errors import ConfigError
    from gpurun.models import GpuRequest
    from gpurun.pricing import DEFAULT
    from gpurun.settings import load_settings
    from gpurun.trainconfig import TrainConfig

    source = build_workload(
        model=model,
        dataset=dataset,
        config=TrainConfig.from_toml(config) if config else None,
        images=images,
        repeats=repeats,
        epochs=epochs,
    )
    for name, value in (
        ("--min-vram", min_vram),
        ("--max-price", max_price),
        ("--uplink", uplink),
        ("--downlink", downlink),
    ):
        if value is not None and not value > 0:
            raise ConfigError(f"must be positive, got {value}", where=name)
    settings = load_settings()
    assumptions = dataclasses.replace(
        DEFAULT,
        efficiency=dict(settings.pricing.efficiency),
        user_uplink_mbps=uplink or DEFAULT.user_uplink_mbps,
        user_downlink_mbps=downlink or DEFAULT.user_downlink_mbps,
    )
    requirements = GpuRequest(
        gpu_names=tuple(gpu or ()),
        min_vram_gb=min_vram or 0.0,
        max_price_per_hour=max_price,
        spot=spot,
        min_cuda=min_cuda_for(image),
    )
    progress = _Progress()
    try:
        result = asyncio.run(
            offers(
                source.workload,
                providers=provider or None,
                requirements=requirements,
                budget=budget,
                sort=sort,  # type: ignore[arg-type]  # validated by offers()
                limit=limit or None,
                settings=settings,
                assumptions=assumptions,
                on_progress=progress,
            )
        )
    finally:
        progress.stop()
    for failure in result.errors.values():
        err.print(f"[bold red]error:[/] {safe(failure.message)}", highlight=False, markup=True)
    if result.skipped and not as_json:
        names = ", ".join(f"{name} ({why})" for name, why in result.skipped.items())
        err.print(f"not asked: {names}", highlight=False, markup=False, style="dim")
    if explain:
        _explain(result, source, explain, as_json)
    elif as_json:
        print_json({**result.to_dict(), "workload_source": {"source": source.source, "notes": list(source.notes)}})
    else:
        _table(result, source)


class _Progress:
    """A spinner on a terminal, one plain line per provider otherwise (stderr either way)."""

    def __init__(self) -> None:
        self.pending: list[str] = []
        self.status: Status | None = None

    def __call__(self, provider: str, event: str, detail: str) -> None:
        if event == "start":
            self.pending.append(provider)
        elif provider in self.pending:
            self.pending.remove(provider)
        if err.is_terminal:
            if self.status is None:
                self.status = err.status("")
                self.status.start()
            self.status.update(f"asking {', '.join(self.pending)} for offers…" if self.pending else "ranking…")
        elif event == "done":
            err.print(printable(f"{provider}: {detail}"), highlight=False, markup=False)

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()


def _gpu_label(estimate: CostEstimate) -> str:
    gpu = estimate.offer.gpu
    return f"{gpu.name} ×{gpu.count}" if gpu.count > 1 else gpu.name


def _money(value: float) -> str:
    return f"${value:.2f}" if value >= 0.995 else f"${value:.3f}"


def _table(result: OffersResult, source: WorkloadSource) -> None:
    from rich.console import Console
    from rich.table import Table

    ranking = result.ranking
    console = out if out.is_terminal else Console(soft_wrap=True, width=240)  # pipes get whole lines
    if ranking.estimates:
        table = Table(title=None, show_edge=False, pad_edge=False)
        for column, justify in (
            ("#", "right"),
            ("OFFER", "left"),
            ("GPU", "left"),
            ("VRAM", "right"),
            ("$/H", "right"),
            ("RELIAB.", "right"),
            ("LOCATION", "left"),
            ("EST. TIME", "right"),
            ("EST. TOTAL", "right"),
            ("", "left"),
        ):
            table.add_column(column, justify=justify, no_wrap=column in ("OFFER", "GPU"))  # type: ignore[arg-type]
        for i, est in enumerate(ranking.estimates, 1):
            offer = est.offer
            over = ranking.is_over_budget(est)
            table.add_row(
                str(i),
                safe(offer.key),
                safe(_gpu_label(est)),
                f"{offer.gpu.vram_gb:.0f} GB",
                f"{offer.price_per_hour:.3f}",
                f"{offer.reliability:.1%}",
                safe(offer.location or "-"),
                human_seconds(est.seconds),
                _money(est.expected_dollars),
                ("over budget" if over else "") + (" spot" if offer.spot else ""),
                style="dim" if over else None,
            )
        console.print(table)
    else:
        console.print("No offer fits the job and the filters.", highlight=False)
    for line in _footer(result, source):
        console.print(printable(line), highlight=False, markup=False)


def _footer(result: OffersResult, source: WorkloadSource) -> list[str]:
    w, a, ranking = result.workload, result.assumptions, result.ranking
    family = {"sd15": "SD 1.5", "sd2": "SD 2", "sdxl": "SDXL"}[w.family]
    batch = f"batch {w.batch_size}" if w.batch_size else "batch chosen per GPU"
    lines = [
        f"Job: {family} at {w.resolution} px, {w.images} images × {w.repeats} repeats × {w.epochs} epochs = "
        f"{w.samples:,} samples, {batch}{', gradient checkpointing' if w.gradient_checkpointing else ''}, "
        f"text encoder {'trained' if w.train_text_encoder else 'frozen'}, dim {w.network_dim}; "
        f"dataset {human_bytes(w.dataset_bytes)} ({source.source}), base model {human_bytes(w.base_model_bytes)}.",
        f"Assumes: your uplink {a.user_uplink_mbps:g} / downlink {a.user_downlink_mbps:g} Mbit/s (--uplink, "
        f"--downlink), hosts reach {a.bandwidth_efficiency:.0%} of advertised bandwidth, a "
        f"{human_bytes(a.image_bytes)} PyTorch image, {human_bytes(a.env_bytes)} of wheels. "
        "EST. TOTAL = expected $: the cost divided by host reliability (spot: and by the chance of no interruption).",
    ]
    lines += [f"Note: {note}." for note in source.notes]
    shown, eligible = len(ranking.estimates), ranking.eligible
    left_out = f"; {len(ranking.rejected)} left out (--json says why)" if ranking.rejected else ""
    lines.append(f"Showing {shown} of {eligible} suitable offers{left_out}. --explain OFFER for the breakdown.")
    if ranking.budget is not None:
        fitting = sum(1 for e in ranking.estimates if not ranking.is_over_budget(e))
        if ranking.cheapest is None:
            pass
        elif ranking.cheapest.expected_dollars > ranking.budget:
            cheapest = ranking.cheapest
            lines.append(
                f"Nothing fits the ${ranking.budget:g} budget: the cheapest expected total is "
                f"{_money(cheapest.expected_dollars)} ({cheapest.offer.key}, {_gpu_label(cheapest)}, "
                f"{human_seconds(cheapest.seconds)})."
            )
        else:
            lines.append(f"Budget ${ranking.budget:g}: {fitting} of the {shown} shown fit.")
    return lines


def _explain(result: OffersResult, source: WorkloadSource, ref: str, as_json: bool) -> None:
    from gpurun.models import to_dict
    from gpurun.pricing.serial import estimate_to_dict

    estimate, rejected = result.explain(ref)
    if as_json:
        print_json(
            {
                "version": 1,
                "ok": True,
                "explain": {**estimate_to_dict(estimate), "left_out_because": list(rejected)},
                "workload": {**to_dict(result.workload), "samples": result.workload.samples},
                "workload_source": {"source": source.source, "notes": list(source.notes)},
                "assumptions": to_dict(result.assumptions),
                "budget": result.ranking.budget,
            }
        )
        return
    from rich.console import Console
    from rich.table import Table

    console = out if out.is_terminal else Console(soft_wrap=True, width=240)
    offer = estimate.offer
    down = f"{offer.inet_down_mbps:.0f}" if offer.inet_down_mbps else "?"
    up = f"{offer.inet_up_mbps:.0f}" if offer.inet_up_mbps else "?"
    console.print(
        printable(
            f"{offer.key}: {_gpu_label(estimate)}, {offer.gpu.vram_gb:.0f} GB, ${offer.price_per_hour:.3f}/h"
            f"{' (spot)' if offer.spot else ''}, reliability {offer.reliability:.1%}, "
            f"{offer.location or 'location ?'}, down/up {down}/{up} Mbit/s, batch {estimate.batch_size}"
        ),
        highlight=False,
        markup=False,
    )
    table = Table(show_edge=False, pad_edge=False)
    for column, justify in (("PHASE", "left"), ("TIME", "right"), ("COST", "right"), ("HOW", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for phase in estimate.phases:
        time_cell = human_seconds(phase.seconds) if phase.name not in ("storage", "bandwidth") else ""
        table.add_row(phase.name, time_cell, f"${phase.dollars:.4f}", safe(phase.note))
    table.add_row("total", human_seconds(estimate.seconds), f"${estimate.dollars:.4f}", "if nothing goes wrong")
    table.add_row("expected", "", f"${estimate.expected_dollars:.4f}", "÷ the chance the host finishes the job")
    console.print(table)
    if estimate.reasons:
        console.print(
            printable("Cannot run this job: " + "; ".join(estimate.reasons) + "."), highlight=False, markup=False
        )
    elif rejected:
        console.print(printable("Left out of the ranking: " + "; ".join(rejected) + "."), highlight=False, markup=False)
    budget = result.ranking.budget
    if budget is not None:
        verdict = "over" if estimate.expected_dollars > budget else "within"
        console.print(f"{verdict} the ${budget:g} budget", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("offers", help=HELP)(offers_command)
