"""`gpurun dataset check`: the local dataset check, before any money is spent."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from gpurun.cli.render import err, human_bytes, out, print_json, printable, safe
from gpurun.models import MIN_IMAGE_SIDE, MODEL_FAMILIES

if TYPE_CHECKING:
    from gpurun.dataset import DatasetReport
    from gpurun.trainconfig import TrainConfig

dataset_app = typer.Typer(help="Check a training dataset locally, before any money is spent.", no_args_is_help=True)


class ModelChoice(str, enum.Enum):
    """--model's choices: the base-model families (gpurun.models.MODEL_FAMILIES)."""

    sd15 = "sd15"
    sd2 = "sd2"
    sdxl = "sdxl"


assert tuple(choice.value for choice in ModelChoice) == MODEL_FAMILIES

#: the preset `gpurun dataset check` uses for each family when no --config is given
PRESET_FOR_MODEL = {"sd15": "sd15", "sd2": "sd2-v", "sdxl": "sdxl"}

CHECK_HELP = """\
Check a kohya-style dataset: images, captions, trigger word, sizes, buckets and step counts.

\b
PATH holds N_name/ folders (N = repeats per epoch, name = the caption of images without one):
  training_data/10_sks dog/img001.jpg + img001.txt
PATH may also be one such folder, or a plain folder of images with --repeats.

\b
Examples:
  gpurun dataset check examples/dataset
  gpurun dataset check ./training_data --model sdxl --trigger sks
  gpurun dataset check --config training_config.toml      (dataset, resolution, batch, epochs from it;
                                                           its dataset_config and reg_data_dir too)
  gpurun dataset check ./photos --repeats 10 --json

Without --config the settings are the preset of --model (sd15: 512 px, batch 2, 10 epochs). Exit code 1 when
there are errors (unreadable, truncated or empty files, non-UTF-8 captions, bad folder names, no images);
warnings are advice and do not fail.
"""


@dataset_app.command("check", help=CHECK_HELP, no_args_is_help=False)
def check(
    path: Path | None = typer.Argument(
        None, help="The dataset folder (optional with --config: its train_data_dir).", show_default=False
    ),
    model: ModelChoice | None = typer.Option(
        None,
        "--model",
        help="Base model family: sets the minimum image size (512 px sd15/sd2, 1024 px sdxl) and the preset.",
        show_default="sd15, or from --config",
    ),
    trigger: str | None = typer.Option(
        None, "--trigger", help="Trigger word to look for in every caption (default: each folder's name)."
    ),
    caption_ext: str | None = typer.Option(
        None, "--caption-ext", help="Caption file extension.", show_default=".txt, or from --config"
    ),
    repeats: int | None = typer.Option(
        None, "--repeats", min=1, help="Repeats per epoch for a plain folder of images (overrides N_ prefixes)."
    ),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs to count steps for.", show_default="10"),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Batch size.", show_default="2"),
    config: Path | None = typer.Option(
        None, "--config", help="A kohya-style training_config.toml; explicit options win over it."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON document."),
    no_verify: bool = typer.Option(
        False, "--no-verify", help="Read image headers only (fast): skips the full decode and the duplicate search."
    ),
) -> None:
    from gpurun.dataset import check_dataset
    from gpurun.dataset.trainset import scan_training_set
    from gpurun.errors import ConfigError
    from gpurun.trainconfig import TrainConfig

    train_config = TrainConfig.from_toml(config) if config is not None else None
    family = model.value if model is not None else _family_from(train_config)
    base = train_config or TrainConfig.preset(PRESET_FOR_MODEL[family])
    scan = None
    if base.dataset_config or base.reg_data_dir:
        # the config's whole training set: a dataset config's subsets, or the folder plus reg_data_dir's images
        chosen = base.model_copy(update={"caption_extension": caption_ext}) if caption_ext else base
        scan = scan_training_set(chosen, dataset=path, repeats=repeats, trigger=trigger)
    dataset = path if path is not None else (Path(base.train_data_dir) if base.train_data_dir else None)
    if base.dataset_config:
        dataset = Path(base.dataset_config)
    if dataset is None:
        where = f"{config}: [dataset].train_data_dir" if config else "PATH"
        raise ConfigError("no dataset folder given", where=where, hint="gpurun dataset check PATH")
    max_train_steps = None
    if epochs is None and base.max_train_epochs is None and base.max_train_steps is not None:
        max_train_steps = base.max_train_steps  # kohya: steps decide when no epoch count is set

    with _progress_bar(enabled=not no_verify and err.is_terminal) as progress:
        report = check_dataset(
            dataset,
            model=family,
            caption_ext=caption_ext or base.caption_extension,
            repeats=repeats,
            trigger=trigger,
            epochs=epochs or base.epochs,
            batch_size=batch_size or base.batch_size,
            resolution=base.resolution,
            enable_bucket=base.enable_bucket,
            min_bucket_reso=base.min_bucket_reso,
            max_bucket_reso=base.max_bucket_reso,
            bucket_reso_steps=base.bucket_reso_steps,
            bucket_no_upscale=base.bucket_no_upscale,
            gradient_accumulation_steps=base.gradient_accumulation_steps,
            max_train_steps=max_train_steps,
            verify=not no_verify,
            progress=progress,
            scan=scan,
        )
    if as_json:
        print_json(report.to_dict())
    else:
        _render(report, settings_from=str(config) if config else f"preset {PRESET_FOR_MODEL[family]}")
    if not report.ok:
        raise typer.Exit(1)


def _family_from(config: TrainConfig | None) -> str:
    if config is None:
        return "sd15"
    if config.model_family:
        return config.model_family
    return "sd2" if config.v2 else "sd15"


@contextlib.contextmanager
def _progress_bar(*, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A transient rich bar on stderr while images are decoded; nothing at all when stderr is not a terminal."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("verifying images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("verify", total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


def _render(report: DatasetReport, *, settings_from: str) -> None:
    from rich.table import Table

    scan, settings = report.scan, report.settings
    minimum = MIN_IMAGE_SIDE[settings.model]
    layouts = {
        "kohya-root": "kohya layout",
        "concept-folder": "one concept folder",
        "plain": "plain folder",
        "dataset-config": "kohya dataset config",
    }
    folders, images = _count(len(report.folders), "concept folder"), _count(report.images, "image")
    out.print(
        f"[bold]{safe(printable(scan.root, one_line=True))}[/] — {layouts[scan.layout]}, {folders}, {images}, "
        f"{human_bytes(scan.total_bytes)} · model {settings.model} (min {minimum} px) · captions *{scan.caption_ext}",
        highlight=False,
    )
    for folder in report.folders:
        name = safe(printable(folder.name, one_line=True))
        table = Table(title=f"[bold]{name}[/]", title_justify="left", show_header=False, box=None, padding=(0, 2))
        table.add_column(style="dim", no_wrap=True)
        table.add_column()
        table.add_row(
            "repeats", str(folder.repeats) + (" (regularization, balanced as kohya)" if folder.is_reg else "")
        )
        table.add_row("images", f"{folder.images} ({folder.captioned} with a caption file)")
        if folder.trigger is None:
            table.add_row("trigger", "none (the folder name has no class token; use --trigger WORD)")
        else:
            source = "--trigger" if folder.trigger_source == "option" else "from the folder name"
            trigger = safe(printable(folder.trigger, one_line=True))
            table.add_row("trigger", f'"{trigger}" ({source}): in {folder.with_trigger}/{folder.images} captions')
        if folder.min_side is not None and folder.smallest is not None:
            verdict = "OK" if folder.below_minimum == 0 else f"{folder.below_minimum} image(s) below"
            table.add_row(
                "shorter side",
                f"min {folder.min_side} px ({folder.smallest[0]}×{folder.smallest[1]}), median {folder.median_side} px"
                f" — {settings.model} minimum {minimum} px: {verdict}",
            )
        table.add_row("aspect ratios", ", ".join(f"{label} ×{n}" for label, n in folder.aspect_ratios.items()) or "–")
        table.add_row("buckets", ", ".join(f"{label} ×{n}" for label, n in folder.buckets.items()) or "–")
        how = (
            "balanced to the training samples"
            if folder.is_reg
            else f"{folder.images} images × {folder.repeats} repeats"
        )
        table.add_row("samples/epoch", f"{folder.samples_per_epoch} ({how})")
        out.print(table, highlight=False)

    reso = f"{settings.resolution[0]}×{settings.resolution[1]}"
    if settings.enable_bucket and settings.bucket_no_upscale:
        bucketing = f"bucketing without upscaling (area {reso}, step {settings.bucket_reso_steps})"
    elif settings.enable_bucket:
        bucketing = (
            f"bucketing at {reso} ({settings.min_bucket_reso}–{settings.max_bucket_reso} px, "
            f"step {settings.bucket_reso_steps})"
        )
    else:
        bucketing = f"no bucketing: every image is resized and centre-cropped to {reso}"
    accumulation = (
        f", {settings.gradient_accumulation_steps} batches per step" if settings.gradient_accumulation_steps > 1 else ""
    )
    out.print(f"settings ({settings_from}): {bucketing}, batch {settings.batch_size}{accumulation}", highlight=False)
    counted = "batches counted per bucket, as kohya does" if settings.enable_bucket else "one bucket"
    out.print(
        f"steps: {report.samples_per_epoch} samples/epoch in {_count(len(report.buckets), 'bucket')} → "
        f"{report.steps_per_epoch} steps/epoch ({counted}) × {report.epochs} epochs = {report.total_steps} steps",
        highlight=False,
    )
    if scan.caption_ext != ".caption":
        out.print(
            f"captions: read from {scan.caption_ext} files — kohya's own default is .caption, so set "
            f'caption_extension = "{scan.caption_ext}" when training with kohya itself',
            style="dim",
            highlight=False,
        )
    if not report.verified:
        out.print("header-only scan (--no-verify): truncated images and duplicates were not checked", style="dim")

    if report.issues:
        out.print()
        for issue in report.issues:
            label = "[bold red]error  [/]" if issue.severity == "error" else "[yellow]warning[/]"
            out.print(f"{label} ", end="")
            out.print(printable(issue.line(), one_line=True), highlight=False, markup=False)
    out.print()
    style = "bold red" if not report.ok else ("yellow" if report.warnings else "bold green")
    out.print(report.verdict, style=style, highlight=False)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def register(app: typer.Typer) -> None:
    app.add_typer(dataset_app, name="dataset")
