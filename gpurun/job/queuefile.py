"""The jobs of a queue: `gpurun train --queue jobs.toml`, or several dataset folders on the command line.

    [defaults]                     # optional: what every job has unless it says otherwise
    base = "sd15"
    config = "training_config.toml"

    [[job]]
    dataset = "robots"             # required; relative paths are relative to this file's folder
    name = "robot-v1"              # the job's output folder and LoRA name (default: the dataset folder's name)
    config = "robot.toml"          # optional: base, config, epochs, repeats, trigger as in `gpurun train`
    epochs = 8

Strict: an unknown key, a missing dataset, a duplicate name or a name that cannot be a folder is an error naming
the file, the job and the field.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpurun.errors import ConfigError
from gpurun.safenames import component_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: more jobs than this in one queue is almost surely a mistake (and a plan nobody can read)
MAX_JOBS = 100


class _JobFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str | None = None
    config: Path | None = None
    epochs: Annotated[int, Field(ge=1, le=100_000)] | None = None
    repeats: Annotated[int, Field(ge=1, le=100_000)] | None = None
    trigger: str | None = None


class QueueDefaults(_JobFields):
    """What every job has unless it says otherwise."""


class QueueEntry(_JobFields):
    """One job of the file."""

    dataset: Path
    name: str | None = None


class QueueFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: QueueDefaults = Field(default_factory=QueueDefaults)
    job: list[QueueEntry] = Field(min_length=1, max_length=MAX_JOBS)


@dataclass(frozen=True)
class QueuedJob:
    """One job of a queue, its paths resolved: what `gpurun train` would get for it alone."""

    name: str
    dataset: Path
    config: Path | None = None
    base: str | None = None
    epochs: int | None = None
    repeats: int | None = None
    trigger: str | None = None


def load_queue(path: Path) -> list[QueuedJob]:
    """Read and check a queue file (see the module docstring)."""
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("queue file not found", where=where, hint="check the path given to --queue") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the queue file: {exc}", where=where) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", where=where, hint="fix the TOML syntax") from None
    try:
        parsed = QueueFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise ConfigError(
            f"{field}: {first['msg']}", where=where,
            hint="a queue file has an optional [defaults] table and one [[job]] table per job (dataset required; "
            "name, base, config, epochs, repeats, trigger optional)",
        ) from None  # fmt: skip
    folder = path.resolve().parent
    defaults = parsed.defaults
    jobs = []
    for entry in parsed.job:
        config = entry.config or defaults.config
        jobs.append(
            QueuedJob(
                name=entry.name or "", dataset=_resolve(folder, entry.dataset),
                config=_resolve(folder, config) if config else None, base=entry.base or defaults.base,
                epochs=entry.epochs or defaults.epochs, repeats=entry.repeats or defaults.repeats,
                trigger=entry.trigger or defaults.trigger,
            )
        )  # fmt: skip
    return name_jobs(jobs, where=where)


def jobs_from_datasets(datasets: list[Path]) -> list[QueuedJob]:
    """`gpurun train A/ B/ C/`: one job per folder, named after it."""
    return name_jobs([QueuedJob(name="", dataset=d.expanduser().resolve()) for d in datasets], where="DATASET")


def name_jobs(jobs: list[QueuedJob], *, where: str) -> list[QueuedJob]:
    """Give unnamed jobs their dataset folder's name (`robots`, then `robots-2` ...) and check every name is one
    plain folder name, used once."""
    named: list[QueuedJob] = []
    taken: set[str] = set()
    for index, job in enumerate(jobs, 1):
        name = job.name
        if not name:
            stem = job.dataset.name or "job"
            name, n = stem, 2
            while name in taken:
                name, n = f"{stem}-{n}", n + 1
        problem = component_problem(name)
        if problem:
            raise ConfigError(
                f"job {index}: its name becomes its output folder, and {problem}: {name!r}", where=where,
                hint="name = a word or a few, without / or a leading dot",
            )  # fmt: skip
        if name in taken:
            raise ConfigError(f"job {index}: the name {name!r} is used twice", where=where, hint="give each a name")
        taken.add(name)
        named.append(QueuedJob(name, job.dataset, job.config, job.base, job.epochs, job.repeats, job.trigger))
    return named


def _resolve(folder: Path, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (folder / path).resolve()
