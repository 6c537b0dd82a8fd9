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
  gpurun train robots/ cats/ dogs/ --base sd15 --budget 6      three LoRAs, one machine (set up once)
  gpurun train --queue jobs.toml --parallel 2 --budget 12      a queue on up to two machines

\b
Ctrl-C once detaches (training goes on; `gpurun attach RUN` resumes following);
Ctrl-C twice, or `gpurun cancel RUN`, fetches what exists and destroys the machine.
"""


def train(
    datasets: list[Path] | None = options.dataset_argument(
        "The training folder (kohya layout: N_name/img.jpg + img.txt); several folders train one LoRA each, "
        "on one machine."
    ),
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
    queue: Path | None = typer.Option(
        None, "--queue", metavar="FILE", help="A jobs.toml: one [[job]] per LoRA (dataset, name, config, base ...)."
    ),
    parallel: int = typer.Option(
        1, "--parallel", metavar="N", help="Up to N machines take jobs from the queue at once, under one budget."
    ),
    as_json: bool = options.json_option("Stream events and the receipt as JSON lines."),
) -> None:
    from gpurun.api import TrainRequest
    from gpurun.cli.renting import confirm_rent, print_receipt, render_plan, run_plan

    datasets = list(datasets or [])
    request = TrainRequest(
        dataset=datasets[0] if len(datasets) == 1 else None, config=config, base=base, budget=budget,
        providers=tuple(provider), gpus=tuple(gpu), spot=spot, offer=offer, output=output, repeats=repeats,
        trigger=trigger, epochs=epochs,
        keep_on_failure_min=keep_on_failure, artifact_grace_min=artifact_grace, image=image,
    )  # fmt: skip
    if queue is not None or len(datasets) > 1 or parallel != 1:
        _train_queue(request, datasets, queue, parallel, dry_run=dry_run, yes=yes, detach=detach, as_json=as_json)
        return
    plan = asyncio.run(_plan(request, as_json))
    if dry_run:
        if as_json:
            print_json({"dry_run": True, **plan.to_dict()})
        else:
            out.print(render_plan(plan))
        return
    if not as_json:
        out.print(render_plan(plan))
    confirm_rent(plan, yes, what="train")
    receipt = run_plan(plan, as_json=as_json, detach=detach)
    print_receipt(receipt, as_json=as_json)


def _train_queue(
    common: Any,
    datasets: list[Path],
    queue: Path | None,
    parallel: int,
    *,
    dry_run: bool,
    yes: bool,
    detach: bool,
    as_json: bool,
) -> None:
    from gpurun import api
    from gpurun.cli.queueing import train_queue
    from gpurun.errors import ConfigError

    if detach:
        raise ConfigError("a queue cannot be detached from", where="--detach", hint="run the queue without --detach")
    if queue is not None and datasets:
        raise ConfigError("give the datasets in the queue file or on the command line, not both", where="--queue")
    jobs = api.load_queue(queue) if queue is not None else api.jobs_from_datasets(datasets)
    if not jobs:
        raise ConfigError("no dataset to train", where="DATASET", hint="pass dataset folders, or --queue FILE")
    request = api.QueueRequest(jobs=tuple(jobs), common=common, parallel=parallel)
    train_queue(request, dry_run=dry_run, yes=yes, as_json=as_json)


async def _plan(request: Any, as_json: bool) -> Any:
    from gpurun.api import plan

    if as_json or not err.is_terminal:
        return await plan(request)
    with err.status("checking the dataset and asking providers for offers…"):
        return await plan(request)


def register(app: typer.Typer) -> None:
    app.command("train", help=HELP)(train)
