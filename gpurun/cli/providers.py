"""`gpurun providers`: which GPU providers are usable, storing an API key safely, checking a key works."""

from __future__ import annotations

import asyncio
import getpass
import sys

import typer

from gpurun.cli.render import err, out, print_json, safe, warn
from gpurun.errors import ConfigError

HELP = """\
GPU providers: which are usable, their API keys, and whether the keys work.

\b
Examples:
  gpurun providers                      what is usable, and why not when it is not
  gpurun providers --json               the same as one JSON document
  gpurun providers set-key vast         store the Vast.ai key (hidden prompt, or piped on stdin)
  echo "$KEY" | gpurun providers set-key runpod
  gpurun providers check                one cheap authenticated call per usable provider
  gpurun providers check vast

Keys are read from VAST_API_KEY / RUNPOD_API_KEY first, then from the settings file (created 0600).
They are never taken as command-line arguments, never logged and never printed in full.
"""

providers_app = typer.Typer(help=HELP, invoke_without_command=True, rich_markup_mode=None)


@providers_app.callback(invoke_without_command=True)
def overview(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
) -> None:
    """Show each provider: usable or why not, API base URL, where its key comes from (masked)."""
    if ctx.invoked_subcommand is not None:
        return
    from gpurun import api

    rows = api.providers_overview()
    if as_json:
        print_json({"providers": rows})
        return
    from rich.table import Table

    table = Table("provider", "status", "endpoint", "key")
    for row in rows:
        status = "usable" if row["usable"] else f"not usable: {row['reason']}"
        endpoint = "\n".join(row.get("urls", {}).values()) or "\n".join(row.get("hosts", []))
        key = f"{row['key']} (from {row['key_source']})" if row.get("key") else "-"
        table.add_row(row["name"], status, endpoint, key)
    out.print(table)


def _read_key(name: str) -> str:
    # a hidden prompt on a terminal; a piped key is read from stdin (never from argv)
    interactive = sys.stdin.isatty()
    key = (getpass.getpass(f"{name} API key (input hidden): ") if interactive else sys.stdin.readline()).strip()
    if not key:
        raise ConfigError(f"no {name} API key given", hint="paste it at the prompt, or pipe it on stdin")
    if any(ch.isspace() or not ch.isprintable() for ch in key):
        raise ConfigError(f"the {name} API key contains spaces or control characters", hint="paste the key alone")
    return key


@providers_app.command("set-key")
def set_key(
    name: str = typer.Argument(..., help="A provider that takes an API key (`gpurun providers` lists them)."),
) -> None:
    """Store a provider's API key in the settings file (0600), keeping the other settings.

    The key is read from a hidden prompt, or from stdin when piped; never from the command line, where
    other users could read it in the process list.
    """
    from gpurun import api

    env = api.provider_key_env(name)
    key = _read_key(name)
    path, overridden = api.save_api_key(name, key)
    err.print(f"saved the {name} API key ({api.mask_secret(key)}) to {path} (readable only by you)", highlight=False)
    if overridden:
        warn(f"{env} is set in the environment and takes precedence over the file")


@providers_app.command("check")
def check(
    name: str | None = typer.Argument(None, help="One provider (default: every usable one)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Make one cheap authenticated call per provider: is the key valid, is the host reachable?"""
    from gpurun import api

    if name is not None and name not in api.PROVIDER_NAMES:
        raise ConfigError(f"unknown provider {name!r}", hint=f"one of: {', '.join(api.PROVIDER_NAMES)}")
    names = [name] if name else api.usable_providers()
    results = asyncio.run(api.check_providers(names))
    if name is not None and not results[0]["ok"]:
        raise results[0]["error"]
    if as_json:
        print_json(
            {
                "ok": all(r["ok"] for r in results),
                "providers": [
                    {"name": r["name"], "ok": r["ok"], "detail": r.get("detail")}
                    | ({"error": r["error"].to_dict()} if not r["ok"] else {})
                    for r in results
                ],
            }
        )
    else:
        for result in results:
            if result["ok"]:
                out.print(f"{result['name']}: ok, {safe(result['detail'])}", highlight=False)
            else:
                out.print(f"{result['name']}: FAILED, {safe(result['error'].one_line())}", highlight=False)
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(providers_app, name="providers")
