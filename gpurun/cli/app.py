"""The root of the `gpurun` command line: the typer app, `--version`, and `main`, which renders every GpurunError.

Every command that reports data takes `--json`. A GpurunError (a user mistake, a provider refusal) is
rendered as one line — what is wrong, where, how to fix it — with exit code 1, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from gpurun import __version__
from gpurun.cli.render import err, print_error
from gpurun.errors import GpurunError

HELP = """\
Train Stable Diffusion LoRAs on the cheapest suitable rented GPU, for a known total price,
with nothing left billing afterwards.

\b
Typical session:
  gpurun dataset check ./training_data            check images and captions locally (free)
  gpurun offers --model sd15 --dataset ./training_data --budget 10
                                                  live offers ranked by estimated TOTAL cost
  gpurun train ./training_data --base sd15 --budget 10
                                                  rent, train, fetch the LoRA, destroy
  gpurun runs                                     what is running, what it cost

\b
Try it on this machine, no GPU or download needed:
  gpurun train examples/dataset --provider local --base tiny-sd --yes
"""

app = typer.Typer(
    name="gpurun",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gpurun {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """gpurun: LoRA training on rented GPUs."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    try:
        # standalone mode: typer/click render usage errors (exit 2) and --help themselves and call sys.exit
        app(args=args, prog_name="gpurun")
    except GpurunError as error:
        print_error(error, as_json=as_json)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
