"""`gpurun train` with several datasets, `--queue FILE` or `--parallel N`: the queue's plan (every way of running
it, priced), the run, and its receipt."""

from __future__ import annotations

import asyncio
from typing import Any

from gpurun import api
from gpurun.cli.render import err, human_seconds, out, print_json, printable, safe
from gpurun.cli.renting import confirm_cost


def render_queue_plan(plan: api.QueuePlan) -> Any:
    """The jobs, the ways of running them with their expected totals, and what was chosen."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    jobs = Table(title=f"queue: {len(plan.jobs)} jobs", title_justify="left")
    for column in ("job", "dataset", "base", "images × repeats × epochs", "resolution"):
        jobs.add_column(column)
    for name, job in zip(plan.names, plan.jobs, strict=True):
        w = job.workload
        jobs.add_row(safe(name), safe(job.dataset), safe(job.base.ref), f"{w.images} × {w.repeats} × {w.epochs}",
                     f"{w.resolution} px")  # fmt: skip
    ways = Table(title="ways to run it", title_justify="left")
    for column in ("way", "machines", "offer", "time", "$", "expected $"):
        ways.add_column(column, justify="left" if column in ("way", "offer") else "right")
    chosen = {"one machine": "one machine", "separate": "separate rentals"}.get(
        plan.mode, f"{len(plan.slots)} machines"
    )
    for name, way in plan.alternatives.items():
        offers = sorted({o["key"] for o in way["offers"]})
        mark = " ← chosen" if name == chosen else ""
        ways.add_row(
            f"{name}{mark}", str(way["machines"]), safe(", ".join(offers[:3]) + (" …" if len(offers) > 3 else "")),
            human_seconds(way["seconds"]), f"{way['dollars']:.4f}", f"{way['expected_dollars']:.4f}",
        )  # fmt: skip
    budget = plan.budget
    lines = [
        f"budget: ${budget:.2f}, split over {len(plan.slots)} machine(s) by their expected cost; each machine's "
        "watchdog enforces its share"
        if budget is not None
        else "budget: none (free machines only)",
        "a job that fails is reported and the others go on; a lost machine's job goes to another machine",
        "Ctrl-C stops the queue: every runner is stopped, what exists is fetched, every machine destroyed",
    ]
    lines += [f"note: {note}" for note in plan.notes]
    lines += [f"provider {name} failed: {message}" for name, message in plan.provider_errors.items()]
    return Group(jobs, ways, *(Text(printable(line)) for line in lines))


def render_queue_receipt(receipt: api.QueueReceipt) -> Any:
    from rich.table import Table

    table = Table(title=f"queue {receipt.queue_id} ({receipt.mode})", title_justify="left")
    for column in ("job", "outcome", "time", "$", "LoRA"):
        table.add_column(column, justify="right" if column in ("time", "$") else "left")
    for job in receipt.jobs:
        outcome = job.outcome + (f": {job.error}" if job.error else "")
        table.add_row(safe(job.name), safe(outcome), human_seconds(job.seconds), f"{job.dollars:.4f}",
                      safe(job.final or "—"))  # fmt: skip
    destroyed = all(m.destroyed for m in receipt.machines)
    budget = f" of ${receipt.budget:.2f} budget" if receipt.budget is not None else ""
    table.caption = (
        f"{len(receipt.machines)} machine(s) billed ${receipt.actual_total_usd:.4f}{budget} in "
        f"{human_seconds(receipt.seconds)} (expected ${receipt.estimated_expected_usd:.4f}); "
        + ("every machine destroyed" if destroyed else "a machine is NOT confirmed destroyed — run `gpurun runs --all`")
    )
    return table


def train_queue(request: api.QueueRequest, *, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Plan the queue, show it, and (unless --dry-run) run it; exits 1 when a job did not finish."""
    import typer

    from gpurun.cli.live import make_view

    if as_json or not err.is_terminal:
        plan = asyncio.run(api.plan_queue(request))
    else:
        with err.status("checking every dataset and asking providers for offers…"):
            plan = asyncio.run(api.plan_queue(request))
    if dry_run:
        if as_json:
            print_json({"dry_run": True, **plan.to_dict()})
        else:
            out.print(render_queue_plan(plan))
        return
    if not as_json:
        out.print(render_queue_plan(plan))
    price = max(slot.chosen.offer.price_per_hour for slot in plan.slots)
    offers = ", ".join(sorted({slot.chosen.offer.key for slot in plan.slots}))
    question = f"Rent {len(plan.slots)} machine(s) ({offers}) for {len(plan.jobs)} jobs"
    confirm_cost(price, question, plan.expected_dollars, yes)
    receipt = asyncio.run(api.train_queue(plan, view=make_view(as_json=as_json)))
    if as_json:
        print_json({"type": "queue-receipt", **receipt.to_dict()})
    else:
        out.print(render_queue_receipt(receipt))
    if not receipt.ok:
        raise typer.Exit(1)
