"""`gpurun config`: the accepted training-config keys, and validating a training_config.toml."""

from __future__ import annotations

from pathlib import Path

import typer

from gpurun import kohya_keys
from gpurun.cli.render import out, print_json, warn
from gpurun.trainconfig import SECTION_OF, TrainConfig

config_app = typer.Typer(help="Training configuration: accepted keys and validation.", no_args_is_help=True)


@config_app.command("keys")
def keys(as_json: bool = typer.Option(False, "--json", help="Print a JSON document instead of a table.")) -> None:
    """List every key a training_config.toml may contain, its section and default."""
    rows = []
    for name, field in TrainConfig.model_fields.items():
        default = field.get_default(call_default_factory=True)
        rows.append(
            {
                "key": name,
                "section": SECTION_OF.get(name, "training"),
                "default": default,
                "description": field.description or "",
            }
        )
    if as_json:
        kohya = {
            k: {"status": e.status, "note": e.note, "accepted_as": list(e.values)} for k, e in kohya_keys.KEYS.items()
        }
        print_json({"keys": rows, "kohya": kohya, "counts": kohya_keys.counts()})
        return
    from rich.table import Table

    table = Table("section", "key", "default")
    for row in rows:
        table.add_row(row["section"], row["key"], repr(row["default"]))
    out.print(table)
    for status in ("no-op", "no-op at", "refused"):
        names = sorted(k for k, e in kohya_keys.KEYS.items() if e.status == status)
        out.print(f"kohya keys, {status}: " + ", ".join(names), highlight=False, markup=False)
    out.print("Each key's rule and reason: docs/kohya-keys.md", highlight=False, markup=False)


@config_app.command("check")
def check(
    path: Path = typer.Argument(..., help="A kohya-style training_config.toml."),
    as_json: bool = typer.Option(False, "--json", help="Print the validated config as JSON."),
) -> None:
    """Validate a training config and print it with defaults filled in and paths resolved."""
    config = TrainConfig.from_toml(path)
    if as_json:
        print_json({"ok": True, "config": config.model_dump(mode="json"), "notes": config.kohya_notes()})
        return
    for key, why in config.kohya_notes().items():
        warn(f"{path}: {key}: {why}")
    out.print(config.to_toml(), highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
