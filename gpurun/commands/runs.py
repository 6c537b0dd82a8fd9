"""`gpurun runs | attach | logs | cancel | down`: what is running, what it cost, and ending it."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import typer

from gpurun.render import err, human_seconds, out, print_json, printable, safe

JSON_OPTION = typer.Option(False, "--json", help="Print JSON instead of a table.")


def runs(
    all_: bool = typer.Option(
        False, "--all", "-a", help="Also ask every provider account for gpurun-labelled instances and flag strays."
    ),
    limit: int = typer.Option(20, "--limit", help="Newest runs to show (0 = all)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List runs from the journal: phase, machine, price, cost, outputs.

    \b
    With --all, every gpurun-labelled instance on every provider account is listed too, and any instance the
    journal does not know, or believes destroyed, is flagged as a STRAY (`gpurun down --strays` ends them).
    """
    from gpurun.journal import Journal

    with Journal.open() as journal:
        records = journal.runs(limit=limit or None)
        problems = list(journal.problems)
    for problem in problems:
        err.print(f"[yellow]warning:[/] {safe(problem)}", highlight=False)
    strays: list[dict[str, Any]] = []
    provider_errors: dict[str, str] = {}
    if all_:
        strays, provider_errors = asyncio.run(_find_strays())
    if as_json:
        print_json(
            {
                "version": 1,
                "runs": [_run_dict(r) for r in records],
                "strays": strays,
                "provider_errors": provider_errors,
                "journal_problems": problems,
            }
        )
        return
    from rich.table import Table

    table = Table("run", "age", "phase", "machine", "$/h", "cost", "alive", "outputs")
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


def _run_dict(record: Any) -> dict[str, Any]:
    instance = record.instance
    return {
        "run_id": record.run_id, "created_at": record.created_at, "state": record.state, "phase": record.phase,
        "alive": record.alive, "spent": record.spent, "budget": record.budget, "output_dir": record.output_dir,
        "error": record.error,
        "instance": None if instance is None else {
            "provider": instance.provider, "instance_id": instance.instance_id, "status": instance.status,
            "billed_price": instance.billed_price, "gpu": instance.gpu,
        },
    }  # fmt: skip


async def _find_strays() -> tuple[list[dict[str, Any]], dict[str, str]]:
    """gpurun-labelled instances the journal does not know, or believes destroyed."""
    from gpurun.errors import GpurunError
    from gpurun.journal import Journal
    from gpurun.provision.registry import available_providers, make_provider

    strays: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    with Journal.open() as journal:
        for name, why in available_providers().items():
            if why is not None or name in ("local", "ssh"):
                continue
            provider = make_provider(name)
            try:
                listed = await provider.list_instances()
            except GpurunError as exc:
                errors[name] = exc.one_line()
                continue
            finally:
                await provider.aclose()
            for instance in listed:
                if not instance.state.is_alive:
                    continue
                known = journal.find_instance(name, instance.instance_id)
                if known is None:
                    why_stray = "the journal does not know it"
                elif known.status == "destroyed":
                    why_stray = "the journal believes it destroyed"
                else:
                    continue
                strays.append(
                    {
                        "provider": name,
                        "instance_id": instance.instance_id,
                        "label": instance.label,
                        "state": instance.state.value,
                        "price_per_hour": instance.price_per_hour,
                        "why": why_stray,
                    }
                )
    return strays, errors


def attach(
    run: str = typer.Argument(..., help="Run id (or a unique prefix) from `gpurun runs`."),
    as_json: bool = typer.Option(False, "--json", help="Stream events and the receipt as JSON lines."),
) -> None:
    """Follow a detached run again, fetch what is missing, then destroy its machine.

    \b
    Ctrl-C once detaches again; twice cancels the run and destroys the machine.
    """
    _control(run, as_json, "attach")


def cancel(
    run: str = typer.Argument(..., help="Run id (or a unique prefix)."),
    as_json: bool = typer.Option(False, "--json", help="Print the receipt as JSON."),
) -> None:
    """Stop a run (the runner saves a checkpoint first), fetch what exists, destroy its machine."""
    _control(run, as_json, "cancel")


def _control(run: str, as_json: bool, action: str) -> None:
    from gpurun.commands.train import install_ctrl_c
    from gpurun.journal import Journal
    from gpurun.live import make_view
    from gpurun.receipt import render_receipt
    from gpurun.runctl import JobOptions, RunControl

    async def main() -> Any:
        view = make_view(as_json=as_json)
        with Journal.open() as journal:
            control = await RunControl.reopen(run, view, journal, JobOptions.from_env())
            if action == "attach":
                install_ctrl_c(control, asyncio.current_task(), view)
                try:
                    return await control.attach()
                finally:
                    view.close()
            try:
                return await control.cancel()
            finally:
                view.close()

    receipt = asyncio.run(main())
    if as_json:
        print_json({"type": "receipt", **receipt.to_dict()})
    else:
        out.print(render_receipt(receipt))


def logs(
    run: str = typer.Argument(..., help="Run id (or a unique prefix)."),
    raw: bool = typer.Option(False, "--raw", help="The runner's JSON event lines as they are."),
    stderr: bool = typer.Option(False, "--stderr", help="Also show the runner's stderr (fetched from the machine)."),
) -> None:
    """Show a run's events (kept locally in DIR/<run>/events.jsonl, so they survive the machine)."""
    from gpurun.events import parse_line
    from gpurun.journal import Journal
    from gpurun.live import PlainView

    with Journal.open() as journal:
        record = journal.get(run)
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
    from gpurun import onbox
    from gpurun.journal import Journal
    from gpurun.live import PlainView
    from gpurun.runctl import JobOptions, RunControl

    with Journal.open() as journal:
        control = await RunControl.reopen(run_id, PlainView(), journal, JobOptions.from_env())
        assert control.transport is not None and control.layout is not None
        for line in await onbox.stderr_tail(control.transport, control.layout, lines=200):
            out.print(printable(line), markup=False, highlight=False)  # the box's words: no escape sequences
        await control.transport.close()


def down(
    run: str | None = typer.Argument(None, help="Destroy this run's machine(s)."),
    strays: bool = typer.Option(
        False, "--strays", help="Destroy gpurun-labelled instances the journal does not know or believes destroyed."
    ),
    all_: bool = typer.Option(False, "--all", help="Destroy every machine the journal believes alive, and strays."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask first."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Destroy machines through the provider API, confirmed by polling (never stopped: stopped ones bill disk)."""
    from gpurun.errors import ConfigError

    if not run and not strays and not all_:
        raise ConfigError("nothing to destroy", where="gpurun down", hint="name a RUN, or pass --strays or --all")
    targets = asyncio.run(_down_targets(run, strays or all_, all_))
    keys = asyncio.run(_forget_stray_keys()) if strays or all_ else []
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
            out.print(safe(f"{target['provider']}:{target['instance_id']} ({target['why']})"))
        if not typer.confirm(f"Destroy {len(targets)} machine(s)?"):
            raise typer.Exit(1)
    destroyed, unconfirmed = asyncio.run(_destroy(targets))
    if as_json:
        print_json({"version": 1, "destroyed": destroyed, "unconfirmed": unconfirmed, "keys_removed": keys})
    else:
        for item in destroyed:
            out.print(f"destroyed {safe(item)}")
        for item in unconfirmed:
            err.print(f"[red]not confirmed:[/] {safe(item)} — run `gpurun down` again, or check the provider's console")
    if unconfirmed:
        raise typer.Exit(1)


async def _down_targets(run: str | None, strays: bool, every_alive: bool) -> list[dict[str, Any]]:
    from gpurun.journal import Journal

    targets: list[dict[str, Any]] = []
    with Journal.open() as journal:
        if run:
            record = journal.get(run)
            for instance in journal.instances(record.run_id):
                if instance.instance_id and instance.status != "destroyed" and instance.status != "not_created":
                    targets.append(
                        {
                            "provider": instance.provider,
                            "instance_id": instance.instance_id,
                            "run_id": record.run_id,
                            "why": f"run {record.run_id}",
                        }
                    )
        if every_alive:
            for instance in journal.alive_instances():
                if instance.instance_id:
                    targets.append(
                        {
                            "provider": instance.provider,
                            "instance_id": instance.instance_id,
                            "run_id": instance.run_id,
                            "why": f"run {instance.run_id}, {instance.status}",
                        }
                    )
    if strays:
        found, _ = await _find_strays()
        targets += [
            {"provider": s["provider"], "instance_id": s["instance_id"], "run_id": None, "why": s["why"]} for s in found
        ]
    unique = {(t["provider"], t["instance_id"]): t for t in targets}
    return list(unique.values())


async def _forget_stray_keys() -> list[str]:
    """Run keys (comment `gpurun-<run id>`) left on provider accounts by runs that are over: removed, since an
    account key goes onto every later machine. Returns `provider:run id` of each key removed."""
    from gpurun.errors import GpurunError
    from gpurun.journal import Journal
    from gpurun.journal_records import is_run_id
    from gpurun.provision.registry import available_providers, make_provider

    removed: list[str] = []
    with Journal.open() as journal:
        alive = {record.run_id for record in journal.runs() if record.alive}
        for name, why in available_providers().items():
            if why is not None or name in ("local", "ssh"):
                continue
            provider = make_provider(name)
            try:
                for key in await provider.run_ssh_keys():
                    run_id = key.split()[-1].removeprefix("gpurun-")
                    # only keys whose comment is exactly gpurun-<a run id>: a user's own "gpurun-laptop" key stays
                    if is_run_id(run_id) and run_id not in alive:
                        await provider.forget_ssh_key(key)
                        removed.append(f"{name}:{run_id}")
            except GpurunError as exc:
                err.print(f"[yellow]warning:[/] could not clean {safe(name)}'s SSH keys: {safe(exc.one_line())}")
            finally:
                await provider.aclose()
    return removed


async def _destroy(targets: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    from gpurun.journal import Journal
    from gpurun.lifecycle import destroy_confirmed
    from gpurun.provision.registry import make_provider

    destroyed: list[str] = []
    unconfirmed: list[str] = []
    with Journal.open() as journal:
        for target in targets:
            provider = make_provider(target["provider"])
            try:
                confirmed = await destroy_confirmed(provider, target["instance_id"], timeout_s=300, poll_s=3)
            finally:
                await provider.aclose()
            name = f"{target['provider']}:{target['instance_id']}"
            (destroyed if confirmed else unconfirmed).append(name)
            if target["run_id"]:
                journal.mark_terminated(target["run_id"], confirmed, instance_id=target["instance_id"])
    return destroyed, unconfirmed


def register(app: typer.Typer) -> None:
    app.command("runs")(runs)
    app.command("ls", help="Alias of `gpurun runs`.", hidden=True)(runs)
    app.command("attach")(attach)
    app.command("logs")(logs)
    app.command("cancel")(cancel)
    app.command("down")(down)
