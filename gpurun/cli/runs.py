"""`gpurun runs | attach | logs | cancel | down`: what is running, what it cost, and ending it."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import typer

from gpurun.cli import options
from gpurun.cli.render import err, human_seconds, out, print_json, printable, safe

JSON_OPTION = options.json_option()


def runs(
    all_: bool = typer.Option(
        False, "--all", "-a", help="Also ask every provider account for gpurun-labelled instances and flag strays."
    ),
    limit: int = typer.Option(20, "--limit", help="Newest runs to show (0 = all)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List runs from the journal: phase, machine, price, cost, outputs, and whether `gpurun resume` can continue
    it on a new machine (a run whose machine is gone, with a pulled training state).

    \b
    With --all, every gpurun-labelled instance on every provider account is listed too, and any instance the
    journal does not know, or believes destroyed, is flagged as a STRAY (`gpurun down --strays` ends them).
    """
    from gpurun import api

    listing = api.runs(limit=limit or None)
    records, problems = listing.runs, listing.problems
    for problem in problems:
        err.print(f"[yellow]warning:[/] {safe(problem)}", highlight=False)
    strays: list[dict[str, Any]] = []
    provider_errors: dict[str, str] = {}
    if all_:
        found, provider_errors = asyncio.run(api.find_strays())
        strays = [stray.to_dict() for stray in found]
    if as_json:
        print_json(
            {
                "version": 1,
                "runs": [_run_dict(r, listing.resumable.get(r.run_id)) for r in records],
                "strays": strays,
                "provider_errors": provider_errors,
                "journal_problems": problems,
            }
        )
        return
    from rich.table import Table

    table = Table("run", "age", "phase", "machine", "$/h", "cost", "alive", "resumable", "outputs")
    for record in records:
        instance = record.instance
        machine = f"{instance.provider}:{instance.instance_id or '—'}" if instance else "—"
        price = instance.billed_price if instance and instance.billed_price is not None else None
        table.add_row(
            safe(record.run_id),
            human_seconds(_age(record.created_at)),
            safe(record.phase),
            safe(machine),
            "—" if price is None else f"{price:.3f}",
            f"${record.spent:.4f}",
            "[red]yes[/]" if record.alive else "no",
            "yes" if listing.resumable.get(record.run_id, (False, None))[0] else "no",
            safe(record.output_dir or "—"),
        )
    out.print(table)
    if not records:
        out.print("no runs yet: `gpurun train --help` starts one")
    for stray in strays:
        out.print(
            f"[red]STRAY[/] {safe(stray['provider'])}:{safe(stray['instance_id'])} ({safe(stray['label'])}, "
            f"{safe(stray['state'])}): {safe(stray['why'])} — `gpurun down --strays` destroys it"
        )
    for name, message in provider_errors.items():
        err.print(f"[yellow]warning:[/] could not list {safe(name)}: {safe(message)}")


def _age(created_at: float) -> float:
    import time

    return time.time() - created_at


def _run_dict(record: Any, resumable: tuple[bool, str | None] | None) -> dict[str, Any]:
    instance = record.instance
    can, why = resumable or (False, None)
    return {
        "resumable": can, "resumable_why_not": why,
        "run_id": record.run_id, "created_at": record.created_at, "state": record.state, "phase": record.phase,
        "alive": record.alive, "spent": record.spent, "budget": record.budget, "output_dir": record.output_dir,
        "error": record.error,
        "instance": None if instance is None else {
            "provider": instance.provider, "instance_id": instance.instance_id, "status": instance.status,
            "billed_price": instance.billed_price, "gpu": instance.gpu,
        },
    }  # fmt: skip


def attach(
    run: str = options.RUN_ID,
    as_json: bool = typer.Option(False, "--json", help="Stream events and the receipt as JSON lines."),
) -> None:
    """Follow a detached run again, fetch what is missing, then destroy its machine.

    \b
    Ctrl-C once detaches again; twice cancels the run and destroys the machine.
    """
    _control(run, as_json, "attach")


def cancel(
    run: str = options.RUN_ID,
    as_json: bool = typer.Option(False, "--json", help="Print the receipt as JSON."),
) -> None:
    """Stop a run (the runner saves a checkpoint first), fetch what exists, destroy its machine."""
    _control(run, as_json, "cancel")


def _control(run: str, as_json: bool, action: str) -> None:
    from gpurun import api
    from gpurun.cli.live import make_view
    from gpurun.cli.render import render_receipt
    from gpurun.cli.signals import install_ctrl_c

    async def main() -> Any:
        view = make_view(as_json=as_json)
        if action == "attach":
            task = asyncio.current_task()
            return await api.attach(run, view=view, on_start=lambda ctx: install_ctrl_c(ctx, task, view))
        return await api.cancel(run, view=view)

    receipt = asyncio.run(main())
    if as_json:
        print_json({"type": "receipt", **receipt.to_dict()})
    else:
        out.print(render_receipt(receipt))


def logs(
    run: str = options.RUN_ID,
    raw: bool = typer.Option(False, "--raw", help="The runner's JSON event lines as they are."),
    stderr: bool = typer.Option(False, "--stderr", help="Also show the runner's stderr (fetched from the machine)."),
) -> None:
    """Show a run's events (kept locally in DIR/<run>/events.jsonl, so they survive the machine)."""
    from gpurun import api
    from gpurun.cli.live import PlainView
    from gpurun.events import parse_line

    record = api.run_record(run)
    path = Path(record.output_dir or ".") / "events.jsonl"
    if not path.exists():
        err.print(
            f"no events yet for {safe(record.run_id)} (phase {safe(record.phase)}); `gpurun attach "
            f"{safe(record.run_id)}` follows a running one"
        )
    else:
        view = PlainView(stream=sys.stdout, interval=0.0)  # the events are this command's output: pipeable
        for line in path.read_text(encoding="utf-8").splitlines():
            if raw:
                out.print(printable(line), markup=False, highlight=False)
            else:
                view.event(parse_line(line))
    if stderr:
        asyncio.run(_print_stderr(record.run_id))


async def _print_stderr(run_id: str) -> None:
    from gpurun import api

    for line in await api.runner_stderr(run_id, lines=200):
        out.print(printable(line), markup=False, highlight=False)  # the box's words: no escape sequences


def down(
    run: str | None = typer.Argument(None, help="Destroy this run's machine(s)."),
    strays: bool = typer.Option(
        False, "--strays", help="Destroy gpurun-labelled instances the journal does not know or believes destroyed."
    ),
    all_: bool = typer.Option(False, "--all", help="Destroy every machine the journal believes alive, and strays."),
    yes: bool = options.YES,
    as_json: bool = JSON_OPTION,
) -> None:
    """Destroy machines through the provider API, confirmed by polling (never stopped: stopped ones bill disk)."""
    from gpurun import api
    from gpurun.errors import ConfigError

    if not run and not strays and not all_:
        raise ConfigError("nothing to destroy", where="gpurun down", hint="name a RUN, or pass --strays or --all")
    targets = asyncio.run(api.down_targets(run, strays=strays or all_, every_alive=all_))
    keys = asyncio.run(api.forget_stray_keys(_warn)) if strays or all_ else []
    if keys and not as_json:
        out.print(f"removed {len(keys)} SSH key(s) of finished runs from the provider accounts")
    if not targets:
        if as_json:
            print_json({"version": 1, "destroyed": [], "unconfirmed": [], "keys_removed": keys})
        else:
            out.print("nothing is alive: no machine to destroy")
        return
    if not yes:
        for target in targets:
            out.print(safe(f"{target.provider}:{target.instance_id} ({target.why})"))
        if not typer.confirm(f"Destroy {len(targets)} machine(s)?"):
            raise typer.Exit(1)
    destroyed, unconfirmed = asyncio.run(api.destroy(targets))
    if as_json:
        print_json({"version": 1, "destroyed": destroyed, "unconfirmed": unconfirmed, "keys_removed": keys})
    else:
        for item in destroyed:
            out.print(f"destroyed {safe(item)}")
        for item in unconfirmed:
            err.print(f"[red]not confirmed:[/] {safe(item)} — run `gpurun down` again, or check the provider's console")
    if unconfirmed:
        raise typer.Exit(1)


def _warn(text: str) -> None:
    err.print(f"[yellow]warning:[/] {safe(text)}")


def register(app: typer.Typer) -> None:
    app.command("runs")(runs)
    app.command("ls", help="Alias of `gpurun runs`.", hidden=True)(runs)
    app.command("attach")(attach)
    app.command("logs")(logs)
    app.command("cancel")(cancel)
    app.command("down")(down)
