"""`gpurun sample LORA... --prompt P`: sample grids for LoRA files on the cheapest GPU under a budget (or this
machine), with train's money safety; the grids and a report.html land in a run folder beside the files."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer

from gpurun.cli import options
from gpurun.cli.render import out, print_json


def sample(
    loras: list[Path] = typer.Argument(None, help="LoRA .safetensors files (kohya format) to sample."),
    prompt: list[str] = typer.Option([], "--prompt", "-P", help="A prompt (repeatable; at least one)."),
    run: str | None = typer.Option(
        None, "--run", help="Sample a run's checkpoints, epoch by epoch (run id from `gpurun runs`, or its folder)."
    ),
    base: str | None = typer.Option(
        None, "--base", "-b", help="The base model the files were trained on (default with --run: the run's)."
    ),
    seed: list[int] = typer.Option([], "--seed", help="A seed (repeatable; default 1)."),
    weight: list[float] = typer.Option([], "--weight", help="A LoRA weight column (repeatable; default 0, 0.5, 1)."),
    compare_weight: float = typer.Option(
        1.0, "--compare-weight", help="The weight of the comparison grid (several files: file × seed)."
    ),
    steps: int = typer.Option(20, "--steps", help="Sampler steps per image."),
    size: int | None = typer.Option(None, "--size", help="Pixels per image (default: the base's native size)."),
    negative: str = typer.Option("", "--negative", help="Negative prompt."),
    budget: float | None = options.budget_option("Most dollars the whole job may cost (renting needs one)."),
    provider: list[str] = options.PROVIDERS,
    gpu: list[str] = options.GPUS,
    offer: str | None = typer.Option(None, "--offer", help="Rent exactly this offer (provider:id)."),
    image: str | None = options.IMAGE,
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Where the run folder goes (default: samples/ beside the first file)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan and stop; nothing is rented."),
    yes: bool = options.YES,
    as_json: bool = options.json_option("Stream events and the receipt as JSON lines."),
) -> None:
    """Render sample grids for LoRA files: prompts × seeds by LoRA weight for each file, and with several files
    (a run's epochs) a comparison grid, file × seed, to pick the best epoch by eye.

    \b
    gpurun sample --run RUN -P "sks dog on a beach" --seed 1 --seed 2 --budget 1
    gpurun sample my_lora.safetensors --base sdxl -P "sks dog" --weight 0 --weight 1 --provider local

    The job is priced on every offer and runs on the cheapest under --budget, with the same watchdog, deadline
    and teardown as `gpurun train`; the grids, a report.html showing them and the receipt land in the run folder.
    """
    from gpurun import api
    from gpurun.cli.renting import confirm_rent, print_receipt, render_plan, run_plan

    run_dir = None
    if run is not None:
        run_dir = Path(run) if Path(run).is_dir() else Path(api.run_record(run).output_dir or run)
    request = api.SampleRequest(
        loras=tuple(loras or ()), run_dir=run_dir, base=base, prompts=tuple(prompt), seeds=tuple(seed or (1,)),
        weights=tuple(weight or (0.0, 0.5, 1.0)), compare_weight=compare_weight, steps=steps, size=size,
        negative_prompt=negative, budget=budget, providers=tuple(provider), gpus=tuple(gpu), offer=offer,
        output=output, image=image,
    )  # fmt: skip
    plan: Any = asyncio.run(api.plan_sample(request))
    if as_json and dry_run:
        print_json({"dry_run": True, **plan.to_dict()})
        return
    if not as_json:
        out.print(render_plan(plan))
    if dry_run:
        return
    confirm_rent(plan, yes, what="sample")
    receipt = run_plan(plan, as_json=as_json, detach=False)
    print_receipt(receipt, as_json=as_json)


def register(app: typer.Typer) -> None:
    app.command("sample")(sample)
