"""`gpurun report RUN [--open]`: the run's report.html, written or refreshed now (also during a run)."""

from __future__ import annotations

import webbrowser

import typer

from gpurun.cli import options
from gpurun.cli.render import err, out, print_json, safe

JSON_OPTION = options.json_option()


def report(
    run: str = typer.Argument(..., help="Run id (or a unique prefix) from `gpurun runs`, or a run folder."),
    open_: bool = typer.Option(False, "--open", help="Open the page in the default web browser."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write the run's report.html: loss and learning rate by step, speed and memory over time, the sample grid of
    every saved epoch side by side, the receipt (estimate against actual), the dataset with thumbnails and the
    check's warnings, the config, and the LoRA files with sizes and sha256.

    \b
    One self-contained file (no scripts, no fetched fonts: it works offline and can be mailed). Every finished
    run writes it; during a run this refreshes it from what has arrived so far.
    """
    from gpurun import api

    path = api.report(run)
    if as_json:
        print_json({"report": str(path), "bytes": path.stat().st_size})
    else:
        out.print(f"report: {safe(str(path))}", highlight=False)
    if open_ and not webbrowser.open(path.as_uri()):
        err.print("no web browser found here; open the file above yourself", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
