"""`gpurun train`: one command from a dataset to a fetched, verified LoRA, with the machine destroyed after."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer

from gpurun.cli import options
from gpurun.cli.render import err, out, print_json

HELP = """\
Train a LoRA on the cheapest suitable GPU under --budget, fetch it, destroy the machine.

\b
gpurun checks the dataset locally, ranks live offers by expected TOTAL cost, rents exactly the
chosen offer, installs a lean environment, uploads the data, trains, pulls every checkpoint as it
is written, fetches the final .safetensors and a sample grid, verifies them, and destroys the
machine. A watchdog on the machine destroys it by itself if this laptop goes away or the budget
runs out.

\b
Examples:
  gpurun train ./training_data --base sd15 --budget 3
  gpurun train --config training_config.toml --budget 10 --provider vast --gpu "RTX 4090"
  gpurun train ./training_data --base sdxl --budget 8 --dry-run      the plan, nothing rented
  gpurun train examples/dataset --provider local --base tiny-sd --yes   the whole flow on this machine

\b
Ctrl-C once detaches (training goes on; `gpurun attach RUN` resumes following);
Ctrl-C twice, or `gpurun cancel RUN`, fetches what exists and destroys the machine.
"""


def train(
    dataset: Path | None = options.dataset_argument("The training folder (kohya layout: N_name/img.jpg + img.txt)."),
    config: Path | None = options.CONFIG,
    base: str | None = typer.Option(
        None, "--base", "-b", help="sd15 | sdxl | sd2 | tiny-sd | a .safetensors file | a hub id | a URL."
    ),
    budget: float | None = options.budget_option("Most dollars the whole run may cost."),
    provider: list[str] = options.PROVIDERS,
    gpu: list[str] = options.GPUS,
    spot: bool = options.SPOT,
    offer: str | None = typer.Option(
        None, "--offer", help="Rent exactly this offer (provider:id from `gpurun offers`)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan and stop; nothing is rented."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before renting."),
    detach: bool = typer.Option(False, "--detach", help="Return once training runs; `gpurun attach RUN` later."),
    keep_on_failure: float = typer.Option(
        0.0,
        "--keep-on-failure",
        metavar="MINUTES",
        help="On failure keep the machine this long for debugging, then destroy.",
    ),
    artifact_grace: float = typer.Option(
        30.0,
        "--artifact-grace",
        metavar="MINUTES",
        help="If this client is gone when training ends, keep the machine this long for `gpurun attach`, then destroy.",
    ),
    image: str | None = options.IMAGE,
    output: Path = typer.Option(Path("runs"), "--output", "-o", help="Where runs are written: DIR/<run>/."),
    epochs: int | None = options.epochs_option("Override max_train_epochs."),
    repeats: int | None = options.REPEATS,
    trigger: str | None = options.TRIGGER,
    as_json: bool = options.json_option("Stream events and the receipt as JSON lines."),
) -> None:
    from gpurun.api import TrainRequest

    request = TrainRequest(
        dataset=dataset, config=config, base=base, budget=budget, providers=tuple(provider), gpus=tuple(gpu),
        spot=spot, offer=offer, output=output, repeats=repeats, trigger=trigger, epochs=epochs,
        keep_on_failure_min=keep_on_failure, artifact_grace_min=artifact_grace, image=image,
    )  # fmt: skip
    plan = asyncio.run(_plan(request, as_json))
    if dry_run:
        if as_json:
            print_json({"dry_run": True, **plan.to_dict()})
        else:
            out.print(render_plan(plan))
        return
    if not as_json:
        out.print(render_plan(plan))
    if plan.chosen.offer.price_per_hour > 0 and not yes:
        if not _interactive():
            from gpurun.errors import ConfigError

            raise ConfigError(
                "renting needs confirmation",
                where="--yes",
                hint="pass --yes to rent without asking (the plan is above)",
            )
        if not typer.confirm(f"Rent {plan.chosen.offer.key} and train (expected ${plan.chosen.expected_dollars:.2f})?"):
            raise typer.Exit(1)
    receipt = _run(plan, as_json=as_json, detach=detach)
    if as_json:
        print_json({"type": "receipt", **receipt.to_dict()})
    else:
        from gpurun.cli.render import render_receipt

        out.print(render_receipt(receipt))


async def _plan(request: Any, as_json: bool) -> Any:
    from gpurun.api import plan

    if as_json or not err.is_terminal:
        return await plan(request)
    with err.status("checking the dataset and asking providers for offers…"):
        return await plan(request)


def _interactive() -> bool:
    import sys

    return sys.stdin.isatty()


def _run(plan: Any, *, as_json: bool, detach: bool) -> Any:
    from gpurun.api import train as run_plan
    from gpurun.cli.live import make_view
    from gpurun.cli.signals import install_ctrl_c

    async def main() -> Any:
        task = asyncio.current_task()
        view = make_view(as_json=as_json)
        return await run_plan(plan, view=view, detach=detach, on_start=lambda ctx: install_ctrl_c(ctx, task, view))

    return asyncio.run(main())


#: dataset warnings shown in the plan; the rest are counted
PLAN_WARNINGS = 20


def render_plan(plan: Any) -> Any:
    """The dry-run view: chosen offer and runner-up, per-phase time and $, the deadline, the upload."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from gpurun.cli.render import human_bytes, human_seconds, printable, safe

    chosen, runner_up = plan.chosen, plan.runner_up
    table = Table(title="plan", title_justify="left")
    table.add_column("phase")
    columns = [("chosen", chosen)] + ([("runner-up", runner_up)] if runner_up else [])
    for name, estimate in columns:
        table.add_column(
            f"{name}: {safe(estimate.offer.key)}\n{safe(estimate.offer.gpu.name)} ×{estimate.offer.gpu.count} "
            f"${estimate.offer.price_per_hour:.3f}/h",
            justify="right",
        )
    names = [p.name for p in chosen.phases]
    for phase in names:
        cells = []
        for _, estimate in columns:
            match = next((p for p in estimate.phases if p.name == phase), None)
            cells.append("—" if match is None else f"{human_seconds(match.seconds)}  ${match.dollars:.4f}")
        table.add_row(phase, *cells)
    table.add_row("total", *[f"{human_seconds(e.seconds)}  ${e.dollars:.4f}" for _, e in columns])
    table.add_row("expected (÷ reliability)", *[f"${e.expected_dollars:.4f}" for _, e in columns])
    deadline = plan.hard_deadline_s
    budget = plan.request.budget
    lines = [
        f"dataset {plan.dataset}: {plan.workload.images} images × {plan.workload.repeats} repeats × "
        f"{plan.workload.epochs} epochs, {plan.workload.family} at {plan.workload.resolution} px, "
        f"batch {chosen.batch_size}",
        f"base model: {plan.base.ref} ({plan.base.kind}"
        + (f", {human_bytes(plan.base.bytes)}" if plan.base.bytes else "")
        + (", gated: your HF_TOKEN goes to the machine" if plan.base.gated else "")
        + ")",
        f"image: {plan.to_dict()['image'] or 'none (this machine / your own host)'}",
        f"upload: {plan.upload.files} files, {human_bytes(plan.upload.bytes)} "
        + "("
        + ", ".join(f"{k} {human_bytes(v)}" for k, v in plan.upload.parts.items())
        + ")",
        "hard deadline: none (free machine)"
        if deadline is None
        else f"hard deadline: {human_seconds(deadline)} after the machine starts (the ${budget:.2f} budget at "
        f"${chosen.offer.price_per_hour:.3f}/h); the watchdog on the machine enforces it",
        "teardown: destroyed after the LoRA is fetched and verified, or on any failure; never stopped",
    ]
    report = plan.report
    lines.append(f"dataset check: {report.verdict}")
    warnings = report.warnings
    lines += [f"warning: {issue.line(report.scan.root)}" for issue in warnings[:PLAN_WARNINGS]]
    if len(warnings) > PLAN_WARNINGS:
        lines.append(f"… and {len(warnings) - PLAN_WARNINGS} more warnings: `gpurun dataset check` lists them all")
    lines += [f"note: {note}" for note in plan.notes]
    lines += [f"provider {name} failed: {message}" for name, message in plan.provider_errors.items()]
    # plain text, never markup: notes and errors quote vendors, file names and the user's own words
    return Group(table, *(Text(printable(line)) for line in lines))


def register(app: typer.Typer) -> None:
    app.command("train", help=HELP)(train)
