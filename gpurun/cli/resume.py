"""`gpurun resume RUN`: continue a training run whose machine is gone on a new one, from its last pulled state."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import typer

from gpurun.cli import options
from gpurun.cli.render import out, safe


def resume(
    run: str = options.RUN_ID,
    budget: float | None = options.budget_option(
        "The run's new TOTAL budget in dollars (what its machines cost so far counts); default: its own."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before renting."),
    as_json: bool = options.json_option(),
) -> None:
    """Continue a run on a new machine from the training state last pulled into its folder.

    \b
    For a run whose machine is gone: taken by the provider while this laptop was away, a host that failed,
    or a budget that ran out (raise it with --budget). The offers are ranked again for what is left of the
    training, under what is left of the budget; the run keeps its id and folder, and its receipt lists
    every machine it used. `gpurun runs` says which runs can be resumed.
    """
    from gpurun import api
    from gpurun.cli.live import make_view
    from gpurun.cli.renting import print_receipt
    from gpurun.cli.signals import install_ctrl_c

    ready = asyncio.run(api.plan_resume(run, budget=budget))
    _confirm(ready, yes, as_json)

    async def main() -> Any:
        task = asyncio.current_task()
        view = make_view(as_json=as_json)
        return await api.resume(ready, view=view, on_start=lambda ctx: install_ctrl_c(ctx, task, view))

    print_receipt(asyncio.run(main()), as_json=as_json)


def _confirm(ready: Any, yes: bool, as_json: bool) -> None:
    from gpurun.errors import ConfigError

    offer = ready.plan.chosen.offer
    left = "no budget" if ready.budget_left is None else f"${ready.budget_left:.2f} of the budget left"
    line = (
        f"continue run {ready.record.run_id} from step {ready.record.state_step} "
        f"({ready.training_left:.0%} of the training left) on {offer.key} ({offer.gpu.name}, "
        f"${offer.price_per_hour:.3f}/h): expected ${ready.expected_dollars:.2f}; {left}"
    )
    if not as_json:
        out.print(safe(line), highlight=False)
    if yes or offer.price_per_hour <= 0:
        return
    if not sys.stdin.isatty():
        raise ConfigError("renting needs confirmation", where="--yes", hint="pass --yes to rent without asking")
    if not typer.confirm("Rent it?"):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("resume")(resume)
