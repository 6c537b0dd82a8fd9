"""What `gpurun train` and `gpurun sample` share: the plan as a table, the confirmation before renting, and the
live run with Ctrl-C wired to it."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import typer

from gpurun import api
from gpurun.cli.render import human_bytes, human_seconds, printable, safe
from gpurun.errors import ConfigError


def _what_lines(plan: Any, batch: int) -> list[str]:
    w = plan.workload
    if isinstance(plan, api.SamplePlan):
        job = plan.job
        return [
            f"sample: {len(plan.loras)} LoRA files, {len(job.prompts)} prompts × {len(job.seeds)} seeds × "
            f"{len(job.weights)} weights = {job.cells} images at {job.width} px, {job.steps} steps",
            *[f"  {label}: {path}" for label, path in zip(job.labels, plan.loras, strict=False)],
        ]
    return [
        f"dataset {plan.dataset}: {w.images} images × {w.repeats} repeats × {w.epochs} epochs, {w.family} at "
        f"{w.resolution} px, batch {batch}"
    ]


def _dataset_lines(plan: Any) -> list[str]:
    """The dataset check's verdict and warnings (a training plan only)."""
    if isinstance(plan, api.SamplePlan):
        return []
    report = plan.report
    lines = [f"dataset check: {report.verdict}"]
    warnings = report.warnings
    lines += [f"warning: {issue.line(report.scan.root)}" for issue in warnings[:PLAN_WARNINGS]]
    if len(warnings) > PLAN_WARNINGS:
        lines.append(f"… and {len(warnings) - PLAN_WARNINGS} more warnings: `gpurun dataset check` lists them all")
    return lines


def confirm_rent(plan: Any, yes: bool, *, what: str) -> None:
    """Ask before renting anything that bills (refuse without --yes when nobody can answer)."""
    chosen = plan.chosen
    confirm_cost(chosen.offer.price_per_hour, f"Rent {chosen.offer.key} and {what}", chosen.expected_dollars, yes)


def confirm_cost(price_per_hour: float, question: str, expected: float, yes: bool) -> None:
    """Ask "`question` (expected $X)?" when the machines bill; --yes answers it, and without a terminal it is
    required."""
    if price_per_hour <= 0 or yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(
            "renting needs confirmation", where="--yes", hint="pass --yes to rent without asking (the plan is above)"
        )
    if not typer.confirm(f"{question} (expected ${expected:.2f})?"):
        raise typer.Exit(1)


def print_receipt(receipt: Any, *, as_json: bool) -> None:
    """The run's last word: the receipt, as a table or as the final JSON line."""
    from gpurun.cli.render import out, print_json, render_receipt

    if as_json:
        print_json({"type": "receipt", **receipt.to_dict()})
    else:
        out.print(render_receipt(receipt))


def run_plan(plan: Any, *, as_json: bool, detach: bool) -> Any:
    """Execute the plan with the live view; Ctrl-C once detaches (training), twice cancels."""
    from gpurun.cli.live import make_view
    from gpurun.cli.signals import install_ctrl_c

    async def main() -> Any:
        task = asyncio.current_task()
        view = make_view(as_json=as_json)

        def on_start(ctx: Any) -> None:
            install_ctrl_c(ctx, task, view)

        if isinstance(plan, api.SamplePlan):
            return await api.sample(plan, view=view, on_start=on_start)
        return await api.train(plan, view=view, detach=detach, on_start=on_start)

    return asyncio.run(main())


#: dataset warnings shown in the plan; the rest are counted
PLAN_WARNINGS = 20


def render_plan(plan: Any) -> Any:
    """The dry-run view: chosen offer and runner-up, per-phase time and $, the deadline, the upload."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

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
        *_what_lines(plan, chosen.batch_size),
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
        "teardown: destroyed after the outputs are fetched and verified, or on any failure; never stopped",
    ]
    lines += _dataset_lines(plan)
    lines += [f"note: {note}" for note in plan.notes]
    lines += [f"provider {name} failed: {message}" for name, message in plan.provider_errors.items()]
    # plain text, never markup: notes and errors quote vendors, file names and the user's own words
    return Group(table, *(Text(printable(line)) for line in lines))
