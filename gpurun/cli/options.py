"""Options several commands share, defined once so they are spelled, typed and explained the same everywhere."""

from __future__ import annotations

from typing import Any

import typer


def json_option(what: str = "Print one JSON document instead of a table.") -> Any:
    return typer.Option(False, "--json", help=what)


CONFIG = typer.Option(None, "--config", "-c", help="A kohya-style training_config.toml.")
PROVIDERS = typer.Option(
    [], "--provider", "-p", help="Only this provider (repeatable; `gpurun providers` lists them, usable or not)."
)
GPUS = typer.Option([], "--gpu", help='Only these GPUs, e.g. 4090, "A100 80GB" (repeatable).')
SPOT = typer.Option(False, "--spot", help="Interruptible offers (cheaper; checkpoints come back as they are written).")
IMAGE = typer.Option(
    None,
    "--image",
    help="Container image to rent with (default per provider: PyTorch 2.8, CUDA 12.8). Hosts whose driver is older "
    "than the CUDA in its tag are left out; some providers start SSH only in their own images.",
)
REPEATS = typer.Option(None, "--repeats", help="Repeats per epoch for a plain folder of images.")
TRIGGER = typer.Option(None, "--trigger", help="The trigger word (default: each folder's name).")
YES = typer.Option(False, "--yes", "-y", help="Do not ask first.")
RUN_ID = typer.Argument(..., help="Run id (or a unique prefix) from `gpurun runs`.")


def epochs_option(what: str) -> Any:
    return typer.Option(None, "--epochs", help=what)


def budget_option(what: str) -> Any:
    return typer.Option(None, "--budget", help=what)


def dataset_argument(what: str) -> Any:
    return typer.Argument(None, help=what, show_default=False)
