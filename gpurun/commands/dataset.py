"""`gpurun dataset check`: the local dataset check (filled in by the dataset work)."""

from __future__ import annotations

import typer

dataset_app = typer.Typer(help="Check a training dataset locally, before any money is spent.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(dataset_app, name="dataset")
