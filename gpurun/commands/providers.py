"""`gpurun providers`: which GPU providers are usable, storing an API key safely, checking a key works."""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from typing import Any

import typer

from gpurun.errors import ConfigError, GpurunError
from gpurun.render import err, out, print_json, safe, warn

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


def _overview() -> list[dict[str, Any]]:
    from gpurun.provision.http import mask_secret
    from gpurun.provision.registry import KEY_ENV, PROVIDER_NAMES, available_providers, base_urls
    from gpurun.settings import load_settings, settings_path

    settings = load_settings()
    status = available_providers(settings)
    rows = []
    for name in PROVIDER_NAMES:
        row: dict[str, Any] = {"name": name, "usable": status[name] is None, "reason": status[name]}
        if name in KEY_ENV:
            source = settings.api_key_source(name)
            key = settings.api_key(name)
            row["urls"] = base_urls(name, settings)
            row["key_source"] = None if source is None else (str(settings_path()) if source == "file" else source)
            row["key"] = mask_secret(key) if key else None
        else:
            row["hosts"] = list(base_urls(name, settings).values())
        rows.append(row)
    return rows


@providers_app.callback(invoke_without_command=True)
def overview(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
) -> None:
    """Show each provider: usable or why not, API base URL, where its key comes from (masked)."""
    if ctx.invoked_subcommand is not None:
        return
    rows = _overview()
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
    name: str = typer.Argument(..., help="vast or runpod"),
) -> None:
    """Store a provider's API key in the settings file (0600), keeping the other settings.

    The key is read from a hidden prompt, or from stdin when piped; never from the command line, where
    other users could read it in the process list.
    """
    from gpurun.provision.http import mask_secret
    from gpurun.provision.registry import KEY_ENV
    from gpurun.settings import load_settings, save_settings

    if name not in KEY_ENV:
        raise ConfigError(f"{name!r} takes no API key", hint=f"one of: {', '.join(KEY_ENV)}")
    key = _read_key(name)
    path = save_settings(load_settings().with_api_key(name, key))
    err.print(f"saved the {name} API key ({mask_secret(key)}) to {path} (readable only by you)", highlight=False)
    if os.environ.get(KEY_ENV[name]):
        warn(f"{KEY_ENV[name]} is set in the environment and takes precedence over the file")


async def _check(names: list[str]) -> list[dict[str, Any]]:
    from gpurun.provision.http import RetryPolicy
    from gpurun.provision.registry import make_provider
    from gpurun.settings import load_settings

    settings = load_settings()

    async def one(name: str) -> dict[str, Any]:
        try:
            provider = make_provider(name, settings, retry=RetryPolicy(attempts=2, initial_wait=0.5, max_wait=2.0))
        except GpurunError as error:
            return {"name": name, "ok": False, "error": error}
        try:
            detail = await provider.check()  # type: ignore[attr-defined]
            return {"name": name, "ok": True, "detail": detail}
        except GpurunError as error:
            return {"name": name, "ok": False, "error": error}
        finally:
            await provider.aclose()

    return list(await asyncio.gather(*(one(name) for name in names)))


@providers_app.command("check")
def check(
    name: str | None = typer.Argument(None, help="One provider (default: every usable one)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Make one cheap authenticated call per provider: is the key valid, is the host reachable?"""
    from gpurun.provision.registry import PROVIDER_NAMES, available_providers

    if name is not None and name not in PROVIDER_NAMES:
        raise ConfigError(f"unknown provider {name!r}", hint=f"one of: {', '.join(PROVIDER_NAMES)}")
    names = [name] if name else [n for n, reason in available_providers().items() if reason is None]
    results = asyncio.run(_check(names))
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
