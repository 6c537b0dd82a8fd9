"""What a report shows, read from a run folder: events, receipt, config, dataset, LoRA files and grids.

Everything here came back from a machine gpurun does not own (events.jsonl, the files) or was written by an
earlier gpurun (receipt.json, dataset.json): it is read leniently, bounded in size, and only files that are
really inside the run folder (no links out) are looked at.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpurun.events import Checkpoint, Done, ErrorEvent, Event, Sample, Start, Step, WarningEvent, parse_line

#: the largest events.jsonl read (a day of steps logged every few seconds is a few MB)
MAX_EVENTS_BYTES = 64 * 1024 * 1024
#: the largest JSON side file read (receipt.json, dataset.json)
MAX_JSON_BYTES = 8 * 1024 * 1024
DATASET_FILE = "dataset.json"


@dataclass(frozen=True)
class LoraFile:
    name: str
    bytes: int
    sha256: str
    epoch: int | None
    final: bool


@dataclass(frozen=True)
class Grid:
    name: str
    path: Path
    epoch: int


@dataclass
class RunData:
    run_dir: Path
    steps: list[Step] = field(default_factory=list)
    start: Start | None = None
    done: Done | None = None
    errors: list[ErrorEvent] = field(default_factory=list)
    warnings: list[WarningEvent] = field(default_factory=list)
    loras: list[LoraFile] = field(default_factory=list)
    grids: list[Grid] = field(default_factory=list)
    receipt: dict[str, Any] | None = None
    dataset: dict[str, Any] | None = None
    config_toml: str = ""
    #: lines of events.jsonl that were not protocol events (library prints, tracebacks), counted
    log_lines: int = 0

    @property
    def run_id(self) -> str:
        return str((self.receipt or {}).get("run_id") or self.run_dir.name)

    @property
    def status(self) -> str:
        if self.receipt and isinstance(self.receipt.get("outcome"), str):
            return self.receipt["outcome"]
        if self.errors:
            return "failed"
        return "done" if self.done is not None else "running"


def inside(run_dir: Path, name: str) -> Path | None:
    """`run_dir / name` if that is a regular file really inside the run folder (no `..`, no link out), else None."""
    root = run_dir.resolve()
    candidate = run_dir / name
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if candidate.is_symlink() or not resolved.is_relative_to(root) or not resolved.is_file():
        return None
    return resolved


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None or path.stat().st_size > MAX_JSON_BYTES:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _events(run_dir: Path) -> list[Event]:
    path = inside(run_dir, "events.jsonl")
    if path is None:
        return []
    with path.open("rb") as handle:
        raw = handle.read(MAX_EVENTS_BYTES)
    return [parse_line(line) for line in raw.decode("utf-8", "replace").splitlines() if line.strip()]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_run(run_dir: Path) -> RunData:
    """Everything the report needs from `run_dir`; missing pieces stay empty (a report of a run in progress)."""
    data = RunData(run_dir=run_dir)
    checkpoints: dict[str, Checkpoint] = {}
    samples: dict[str, Sample] = {}
    for event in _events(run_dir):
        if isinstance(event, Step):
            if event.step >= 0:
                data.steps.append(event)
        elif isinstance(event, Start):
            data.start = event
        elif isinstance(event, Done):
            data.done = event
        elif isinstance(event, ErrorEvent):
            data.errors.append(event)
        elif isinstance(event, WarningEvent):
            data.warnings.append(event)
        elif isinstance(event, Checkpoint):
            checkpoints[event.path] = event
        elif isinstance(event, Sample):
            samples[event.path] = event
        else:
            data.log_lines += 1
    # a resumed run logs its steps again from the resume point: keep the last report of each step
    by_step = {step.step: step for step in data.steps}
    data.steps = [by_step[s] for s in sorted(by_step)]
    for name, event in sorted(checkpoints.items(), key=lambda item: (item[1].step, item[0])):
        path = inside(run_dir, name)
        if path is not None and path.suffix == ".safetensors":
            data.loras.append(LoraFile(name, path.stat().st_size, _sha256(path), event.epoch, event.final))
    for name, event in sorted(samples.items(), key=lambda item: (item[1].epoch, item[0])):
        path = inside(run_dir, name)
        if path is not None and path.suffix.lower() == ".png":
            data.grids.append(Grid(name, path, event.epoch))
    data.receipt = _read_json(inside(run_dir, "receipt.json"))
    data.dataset = _read_json(inside(run_dir, DATASET_FILE))
    config = inside(run_dir, "config.toml")
    if config is not None and config.stat().st_size <= MAX_JSON_BYTES:
        data.config_toml = config.read_text(encoding="utf-8", errors="replace")
    return data
